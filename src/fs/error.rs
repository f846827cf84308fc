//! Errors of the filesystem core and their one mapping to errno.

use std::io;

/// Everything an fs-core operation can fail with. The FUSE adapter turns it into an errno with
/// [`FsError::errno`]; nothing else inspects the variants.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("file name too long: len={0}")]
    NameTooLong(usize),
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("permission denied")]
    Access,
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("file too large: offset={0}")]
    TooLarge(u64),
    #[error("no data at or after offset={0}")]
    NoData(u64),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// Another writer took over the bucket: this mount accepts no more changes.
    #[error("read-only: another writer took over the bucket")]
    Fenced,
    /// The disk under the cache dir failed a write-back, or a commit or sync of the records:
    /// this mount accepts no more changes (`Fs::stop_for_failed_flush`,
    /// `Fs::stop_for_failed_commit`).
    #[error(
        "stopped: the disk under the cache dir failed (a write-back, or a commit or sync of \
         its records), and this mount takes no more changes"
    )]
    CacheFailed,
    /// File contents could not be fetched from the bucket (or failed their checksum).
    #[error("fetch from the bucket: {0}")]
    Fetch(String),
    #[error("metadata store: {0}")]
    Meta(#[from] crate::cache::MetaError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl FsError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: &'static str) -> impl FnOnce(io::Error) -> FsError {
        move |source| FsError::Io { context, source }
    }

    /// The errno the kernel should see. Exhaustive on purpose: a new variant must decide.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::Access => libc::EACCES,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::TooLarge(_) => libc::EFBIG,
            FsError::NoData(_) => libc::ENXIO,
            // A local disk error is reported as what it is (ENOSPC stays ENOSPC), so that
            // Postgres sees the real cause; anything without an errno is EIO.
            FsError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FsError::Fenced => libc::EROFS,
            FsError::CacheFailed => libc::EIO,
            FsError::Meta(_) | FsError::Cache(_) | FsError::Fetch(_) => libc::EIO,
        }
    }
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;
