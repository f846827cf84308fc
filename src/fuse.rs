//! The FUSE adapter: translates fuser's requests into fs-core calls and their results into
//! replies. No filesystem logic lives here; see `crate::fs`.
//!
//! Mount-time choices (TTLs, writeback cache, keep_cache, max_write, ...) are explained in
//! docs/fuse-options.md.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, debug_span, warn};

use crate::fs::{Attr, Caller, FileKind, Fs, FsError, RenameMode, SetAttr, SetTime, PAGE_SIZE};

/// How long the kernel may trust attributes and names without asking. bucketfs is the only
/// writer and every change passes through this kernel mount, which updates its own caches, so
/// there is nothing to go stale: long TTLs save a lookup/getattr round trip per access.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest write the kernel sends in one request: Postgres bulk writes and writeback flushes
/// arrive in 1 MiB pieces instead of 4 KiB ones.
const MAX_WRITE: u32 = 1 << 20;

/// Kernel-facing settings chosen at mount.
#[derive(Clone, Copy, Debug)]
pub struct FuseSettings {
    /// Let the kernel buffer writes in its page cache and send them in batches (see docs).
    pub writeback_cache: bool,
}

pub struct FuseFs {
    fs: Arc<Fs>,
    settings: FuseSettings,
}

impl FuseFs {
    pub fn new(fs: Arc<Fs>, settings: FuseSettings) -> FuseFs {
        FuseFs { fs, settings }
    }
}

/// One FUSE request being answered: its span is entered, and its latency goes to the
/// metrics when it ends.
struct Op {
    op: &'static str,
    started: Instant,
    counted: std::cell::Cell<bool>,
    _span: tracing::span::EnteredSpan,
}

impl Op {
    fn start(op: &'static str, span: tracing::Span) -> Op {
        Op {
            op,
            started: Instant::now(),
            counted: std::cell::Cell::new(false),
            _span: span.entered(),
        }
    }

    /// Counts the request's time now, at its reply (work after the reply is not the
    /// caller's wait).
    fn answered(&self) {
        if !self.counted.replace(true) {
            crate::metrics::global().fuse_op(self.op, self.started.elapsed());
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        self.answered();
    }
}

fn errno(op: &'static str, e: FsError) -> Errno {
    crate::metrics::global().fuse_error(op);
    let code = e.errno();
    if code == libc::EIO {
        // An EIO reaches Postgres as a failed fsync or read: a human must look.
        tracing::error!(op, error = %e, "request failed");
    } else {
        debug!(op, error = %e, "request refused");
    }
    Errno::from_i32(code)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: PAGE_SIZE as u32,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn reply_entry(op: &'static str, reply: ReplyEntry, r: Result<Attr, FsError>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(op, e)),
    }
}

fn reply_empty(op: &'static str, reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, e)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let mut wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS;
        if self.settings.writeback_cache {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        for flag in wanted.iter() {
            if let Err(missing) = config.add_capabilities(flag) {
                warn!(
                    ?missing,
                    "kernel lacks a FUSE capability; going on without it"
                );
            }
        }
        let _ = config.set_max_write(MAX_WRITE);
        // The kernel caps readahead at what it offered; asking for more is refused, not fatal.
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        // Room for many writeback and readahead requests in flight at once.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = Op::start("lookup", debug_span!("lookup", parent = parent.0, ?name));
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            // A negative entry (inode 0) lets the kernel cache "no such file" for the TTL;
            // safe because any create goes through the kernel, which drops it.
            Err(FsError::NotFound) => {
                let mut none = file_attr(&placeholder_attr());
                none.ino = INodeNo(0);
                reply.entry(&TTL, &none, Generation(0));
            }
            Err(e) => reply.error(errno("lookup", e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = Op::start("getattr", debug_span!("getattr", ino = ino.0));
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _s = Op::start("setattr", debug_span!("setattr", ino = ino.0, ?size, ?mode));
        let changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            ctime,
        };
        match self.fs.setattr(ino.0, &changes) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("readlink", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _s = Op::start(
            "mknod",
            debug_span!("mknod", parent = parent.0, ?name, mode),
        );
        reply_entry(
            "mknod",
            reply,
            self.fs.mknod(parent.0, name, mode, rdev, caller(req)),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _s = Op::start(
            "mkdir",
            debug_span!("mkdir", parent = parent.0, ?name, mode),
        );
        reply_entry(
            "mkdir",
            reply,
            self.fs.mkdir(parent.0, name, mode, caller(req)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = Op::start("unlink", debug_span!("unlink", parent = parent.0, ?name));
        reply_empty("unlink", reply, self.fs.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = Op::start("rmdir", debug_span!("rmdir", parent = parent.0, ?name));
        reply_empty("rmdir", reply, self.fs.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _s = Op::start(
            "symlink",
            debug_span!("symlink", parent = parent.0, ?link_name),
        );
        let target = target.as_os_str().as_bytes();
        reply_entry(
            "symlink",
            reply,
            self.fs.symlink(parent.0, link_name, target, caller(req)),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _s = Op::start(
            "rename",
            debug_span!(
                "rename",
                parent = parent.0,
                ?name,
                newparent = newparent.0,
                ?newname
            ),
        );
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            // RENAME_WHITEOUT (overlayfs) and combinations.
            return reply.error(Errno::EINVAL);
        };
        reply_empty(
            "rename",
            reply,
            self.fs.rename(parent.0, name, newparent.0, newname, mode),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _s = Op::start(
            "link",
            debug_span!("link", ino = ino.0, newparent = newparent.0, ?newname),
        );
        reply_entry("link", reply, self.fs.link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _s = Op::start("open", debug_span!("open", ino = ino.0, flags = flags.0));
        match self.fs.open(ino.0, flags.0) {
            // keep_cache: the page cache stays valid across opens (OrioleDB reopens its files
            // constantly); no one but this mount changes the bytes.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let op = Op::start("read", debug_span!("read", ino = ino.0, offset, size));
        // The reply may go before a miss's install (see `Fs::read_then`): the request's time
        // is counted up to the reply.
        self.fs.read_then(ino.0, offset, size, |r| {
            match r {
                Ok(buf) => reply.data(buf),
                Err(e) => reply.error(errno("read", e)),
            }
            op.answered();
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _s = Op::start(
            "write",
            debug_span!("write", ino = ino.0, offset, len = data.len()),
        );
        match self.fs.write(ino.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is deferred past a write's reply, so close has no error left to report.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _s = Op::start("release", debug_span!("release", ino = ino.0));
        reply_empty("release", reply, self.fs.release(ino.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _s = Op::start("fsync", debug_span!("fsync", ino = ino.0, datasync));
        reply_empty("fsync", reply, self.fs.fsync(ino.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = Op::start("opendir", debug_span!("opendir", ino = ino.0));
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.fs.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno("readdir", e)),
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            let full = reply.add(
                INodeNo(entry.ino),
                i as u64 + 1,
                file_type(entry.kind),
                &entry.name,
            );
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.fs.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno("readdirplus", e)),
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            // An entry removed since opendir has no attributes left: leave it out.
            let Ok(attr) = self.fs.getattr(entry.ino) else {
                continue;
            };
            let attr = file_attr(&attr);
            if reply.add(
                INodeNo(entry.ino),
                i as u64 + 1,
                &entry.name,
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _s = Op::start("fsyncdir", debug_span!("fsyncdir", ino = ino.0));
        reply_empty("fsyncdir", reply, self.fs.fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        }
    }

    // Extended attributes are not supported. ENOSYS (rather than EOPNOTSUPP) makes the kernel
    // remember that and stop asking: without it every write is preceded by a GETXATTR of
    // security.capability.
    fn setxattr(
        &self,
        _: &Request,
        _: INodeNo,
        _: &OsStr,
        _: &[u8],
        _: i32,
        _: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(&self, _: &Request, _: INodeNo, _: &OsStr, _: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _: &Request, _: INodeNo, _: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _: &Request, _: INodeNo, _: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(
            "access",
            reply,
            self.fs.access(ino.0, caller(req), mask.bits()),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _s = Op::start(
            "create",
            debug_span!("create", parent = parent.0, ?name, mode, flags),
        );
        match self.fs.create(parent.0, name, mode, caller(req), true) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh.expect("create with open returns a handle")),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno("create", e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _s = Op::start(
            "fallocate",
            debug_span!("fallocate", ino = ino.0, offset, length, mode),
        );
        reply_empty(
            "fallocate",
            reply,
            self.fs.fallocate(ino.0, offset, length, mode),
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _s = Op::start("lseek", debug_span!("lseek", ino = ino.0, offset, whence));
        if self.settings.writeback_cache {
            // The kernel does not flush its dirty pages before FUSE_LSEEK, so with the
            // writeback cache our view of where data lies can miss bytes still in the page
            // cache, and a SEEK_DATA that skipped them would make `cp --sparse` lose data.
            // ENOSYS makes the kernel answer from its own i_size: all data, one hole at the
            // end. Always true, never hides data (docs/fuse-options.md).
            return reply.error(Errno::ENOSYS);
        }
        if offset < 0 {
            return reply.error(Errno::ENXIO);
        }
        match self.fs.lseek(ino.0, offset as u64, whence) {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => reply.error(errno("lseek", e)),
        }
    }
}

/// Attributes for a negative lookup reply; only the inode number (0) matters to the kernel.
fn placeholder_attr() -> Attr {
    Attr {
        ino: 0,
        kind: FileKind::File,
        perm: 0,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 0,
        rdev: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        parent: 0,
        target: Vec::new(),
    }
}
