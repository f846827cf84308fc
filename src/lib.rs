//! bucketfs: a FUSE filesystem for a PostgreSQL data directory.
//!
//! # Layout
//!
//! - [`config`]: the command line, as plain settings.
//! - [`mount`]: `bucketfs mount`: mountpoint checks, the FUSE session, signals, clean stop.
//! - [`fuse`]: the thin fuser adapter; no logic.
//! - [`fs`]: the filesystem core (namespace, inodes, handles, POSIX rules, fsync), testable
//!   without a mount.
//! - [`cache`]: the cache dir: format marker, lock, RocksDB metadata, sparse cache files.
//! - [`store`]: the object store seam (trait, local directory, retry and fault wrappers).
//! - [`manifest`]: the bucket's formats: segments and manifests.
//! - [`checkpoint`]: cut, pack, upload, commit, mark clean; restore; fetching absent pages.
//! - [`gc`]: retention, garbage collection and compaction of the bucket.
//! - [`bucket`]: attaching a bucket to a mount: restore, takeover, prefetch and prewarm.
//! - [`placement`]: which bucket each class of objects (manifest, WAL, data) lives in.
//! - [`replica`]: read replicas: following the bucket, serving WAL to a hot standby.
//! - [`status`], [`metrics`]: what a mount reports (control socket, /metrics, /status).
//! - [`supervise`]: `bucketfs run`: a program (PostgreSQL) on the mount as PID 1: initdb,
//!   signals, orphans, the final checkpoint, and stopping the program when the mount is
//!   fenced.
//!
//! A request travels `fuse` → `fs` → (`cache` metadata + cache file). See docs/ and
//! ../shared/DESIGN.md for the whole picture.

pub mod admin;
pub mod bucket;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod failpoint;
pub mod fs;
pub mod fuse;
pub mod gc;
pub mod manifest;
pub mod metrics;
pub mod mount;
pub mod placement;
pub mod replica;
pub mod status;
pub mod store;
pub mod supervise;
