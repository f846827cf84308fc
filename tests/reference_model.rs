//! A reference-model property test of the fs core, without a mount.
//!
//! Random sequences of namespace and data operations run against `bucketfs::fs::Fs` and
//! against a plain in-memory model of POSIX semantics; every operation's result (success or
//! errno) must match, every read must return the model's bytes, and the whole tree (listings,
//! kinds, sizes, link counts, contents, symlink targets) must match after every crash and at
//! the end. "Crash" drops the filesystem without its clean shutdown (as kill -9 would) and
//! reopens the cache dir: everything written, and so everything fsync'd, must be there.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use bucketfs::cache::CacheDir;
use bucketfs::fs::{Caller, FileKind, Fs, FsOptions, RenameMode, SetAttr, PAGE_SIZE, ROOT_INO};
use proptest::prelude::*;

mod common;

const NAMES: [&str; 3] = ["a", "b", "c"];
const ROOT: Caller = Caller { uid: 0, gid: 0 };
/// Offsets stay within a few pages so that runs collide, plus page-straddling lengths.
const MAX_OFFSET: u64 = 4 * PAGE_SIZE + 100;
const MAX_LEN: usize = 2 * PAGE_SIZE as usize + 7;

#[derive(Clone, Debug)]
enum Op {
    Create {
        dir: usize,
        name: usize,
    },
    Mkdir {
        dir: usize,
        name: usize,
    },
    Symlink {
        dir: usize,
        name: usize,
        target: usize,
    },
    Write {
        file: usize,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Read {
        file: usize,
        offset: u64,
        len: u32,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Allocate {
        file: usize,
        offset: u64,
        len: u64,
    },
    PunchHole {
        file: usize,
        offset: u64,
        len: u64,
    },
    Rename {
        from: usize,
        dir: usize,
        name: usize,
        mode: u8,
    },
    Unlink {
        path: usize,
    },
    Rmdir {
        dir: usize,
    },
    Link {
        file: usize,
        dir: usize,
        name: usize,
    },
    Open {
        file: usize,
    },
    Close {
        handle: usize,
    },
    WriteOpen {
        handle: usize,
        offset: u64,
        len: usize,
        byte: u8,
    },
    ReadOpen {
        handle: usize,
    },
    Fsync {
        file: usize,
    },
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    let ix = || 0usize..16;
    let off = || 0..MAX_OFFSET;
    prop_oneof![
        3 => (ix(), ix()).prop_map(|(dir, name)| Op::Create { dir, name }),
        2 => (ix(), ix()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        1 => (ix(), ix(), ix()).prop_map(|(dir, name, target)| Op::Symlink { dir, name, target }),
        6 => (ix(), off(), 0..MAX_LEN, any::<u8>())
            .prop_map(|(file, offset, len, byte)| Op::Write { file, offset, len, byte }),
        3 => (ix(), off(), 0u32..40_000).prop_map(|(file, offset, len)| Op::Read { file, offset, len }),
        2 => (ix(), 0..MAX_OFFSET + PAGE_SIZE).prop_map(|(file, size)| Op::Truncate { file, size }),
        1 => (ix(), off(), 1..3 * PAGE_SIZE).prop_map(|(file, offset, len)| Op::Allocate { file, offset, len }),
        1 => (ix(), off(), 1..3 * PAGE_SIZE).prop_map(|(file, offset, len)| Op::PunchHole { file, offset, len }),
        3 => (ix(), ix(), ix(), 0u8..3).prop_map(|(from, dir, name, mode)| Op::Rename { from, dir, name, mode }),
        2 => ix().prop_map(|path| Op::Unlink { path }),
        1 => ix().prop_map(|dir| Op::Rmdir { dir }),
        1 => (ix(), ix(), ix()).prop_map(|(file, dir, name)| Op::Link { file, dir, name }),
        2 => ix().prop_map(|file| Op::Open { file }),
        2 => ix().prop_map(|handle| Op::Close { handle }),
        2 => (ix(), off(), 1..MAX_LEN, any::<u8>())
            .prop_map(|(handle, offset, len, byte)| Op::WriteOpen { handle, offset, len, byte }),
        1 => ix().prop_map(|handle| Op::ReadOpen { handle }),
        2 => ix().prop_map(|file| Op::Fsync { file }),
        1 => Just(Op::Crash),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    File(u64),
    Dir,
    Symlink(String),
}

/// POSIX as a map from path ("" is the root) to node, and file contents by file id.
#[derive(Default)]
struct Model {
    tree: BTreeMap<String, Node>,
    contents: BTreeMap<u64, Vec<u8>>,
    /// Open handles: (file id, inode in the filesystem under test).
    handles: Vec<(u64, u64)>,
    next_id: u64,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn name_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

impl Model {
    fn new() -> Model {
        let mut m = Model::default();
        m.tree.insert(String::new(), Node::Dir);
        m
    }

    fn pick(list: &[String], i: usize) -> Option<&str> {
        (!list.is_empty()).then(|| list[i % list.len()].as_str())
    }

    fn paths(&self, want: impl Fn(&Node) -> bool) -> Vec<String> {
        self.tree
            .iter()
            .filter(|(_, n)| want(n))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn dirs(&self) -> Vec<String> {
        self.paths(|n| *n == Node::Dir)
    }

    fn files(&self) -> Vec<String> {
        self.paths(|n| matches!(n, Node::File(_)))
    }

    fn is_empty_dir(&self, path: &str) -> bool {
        !self
            .tree
            .keys()
            .any(|k| !k.is_empty() && parent_of(k) == path && k != path)
    }

    fn nlink(&self, id: u64) -> usize {
        self.tree.values().filter(|n| **n == Node::File(id)).count()
    }

    /// Drops a file's contents once it has neither names nor open handles.
    fn collect(&mut self, id: u64) {
        if self.nlink(id) == 0 && !self.handles.iter().any(|(h, _)| *h == id) {
            self.contents.remove(&id);
        }
    }

    fn write(&mut self, id: u64, offset: u64, data: &[u8]) {
        let buf = self.contents.get_mut(&id).expect("live file");
        let end = offset as usize + data.len();
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[offset as usize..end].copy_from_slice(data);
    }

    fn read(&self, id: u64, offset: u64, len: u32) -> Vec<u8> {
        let buf = &self.contents[&id];
        let start = (offset as usize).min(buf.len());
        let end = (start + len as usize).min(buf.len());
        buf[start..end].to_vec()
    }
}

struct Sut {
    cache: std::path::PathBuf,
    fs: Option<Fs>,
}

impl Sut {
    fn open(cache: &Path) -> Sut {
        let dir = CacheDir::open(cache, PAGE_SIZE).expect("open cache dir");
        Sut {
            cache: cache.to_owned(),
            fs: Some(Fs::new(dir, &FsOptions::default()).expect("open fs")),
        }
    }

    fn fs(&self) -> &Fs {
        self.fs.as_ref().expect("open")
    }

    /// Like kill -9: no shutdown, no final sync; then open the cache dir again.
    fn crash_and_reopen(&mut self) {
        drop(self.fs.take());
        *self = Sut::open(&self.cache.clone());
    }

    fn resolve(&self, path: &str) -> u64 {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self
                .fs()
                .lookup(ino, OsStr::new(part))
                .expect("model path exists")
                .ino;
        }
        ino
    }
}

/// The errno of a result, 0 for success.
fn code<T>(r: bucketfs::fs::Result<T>) -> i32 {
    r.map_or_else(|e| e.errno(), |_| 0)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut sut = Sut::open(&cache);
    let mut m = Model::new();
    for op in ops {
        step(&mut sut, &mut m, &op)?;
        if matches!(op, Op::Crash) {
            compare_trees(&sut, &m)?;
        }
    }
    compare_trees(&sut, &m)?;
    // A clean shutdown and reopen must show the same tree too.
    sut.fs().shutdown().unwrap();
    sut.crash_and_reopen();
    compare_trees(&sut, &m)
}

fn step(sut: &mut Sut, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let dirs = m.dirs();
    let files = m.files();
    match *op {
        Op::Create { dir, name } | Op::Mkdir { dir, name } | Op::Symlink { dir, name, .. } => {
            let d = Model::pick(&dirs, dir)
                .expect("root always exists")
                .to_owned();
            let path = join(&d, NAMES[name % 3]);
            let expected = if m.tree.contains_key(&path) {
                libc::EEXIST
            } else {
                0
            };
            let parent = sut.resolve(&d);
            let n = OsStr::new(NAMES[name % 3]);
            let got = match *op {
                Op::Create { .. } => code(sut.fs().create(parent, n, 0o644, ROOT, false)),
                Op::Mkdir { .. } => code(sut.fs().mkdir(parent, n, 0o755, ROOT)),
                Op::Symlink { target, .. } => {
                    let t = format!("target-{target}");
                    code(sut.fs().symlink(parent, n, t.as_bytes(), ROOT))
                }
                _ => unreachable!(),
            };
            prop_assert_eq!(got, expected, "{:?} at {}", op, path);
            if expected == 0 {
                let node = match *op {
                    Op::Create { .. } => {
                        m.next_id += 1;
                        m.contents.insert(m.next_id, Vec::new());
                        Node::File(m.next_id)
                    }
                    Op::Mkdir { .. } => Node::Dir,
                    Op::Symlink { target, .. } => Node::Symlink(format!("target-{target}")),
                    _ => unreachable!(),
                };
                m.tree.insert(path, node);
            }
        }
        Op::Write {
            file,
            offset,
            len,
            byte,
        } => {
            let Some(path) = Model::pick(&files, file) else {
                return Ok(());
            };
            let Node::File(id) = m.tree[path] else {
                unreachable!()
            };
            let data = vec![byte; len];
            let ino = sut.resolve(path);
            prop_assert_eq!(sut.fs().write(ino, offset, &data).unwrap(), len as u32);
            m.write(id, offset, &data);
        }
        Op::Read { file, offset, len } => {
            let Some(path) = Model::pick(&files, file) else {
                return Ok(());
            };
            let Node::File(id) = m.tree[path] else {
                unreachable!()
            };
            let got = sut.fs().read(sut.resolve(path), offset, len).unwrap();
            prop_assert!(
                got == m.read(id, offset, len),
                "read {path} at {offset}+{len}"
            );
        }
        Op::Truncate { file, size } => {
            let Some(path) = Model::pick(&files, file) else {
                return Ok(());
            };
            let Node::File(id) = m.tree[path] else {
                unreachable!()
            };
            let changes = SetAttr {
                size: Some(size),
                ..SetAttr::default()
            };
            let attr = sut.fs().setattr(sut.resolve(path), &changes).unwrap();
            prop_assert_eq!(attr.size, size);
            m.contents.get_mut(&id).unwrap().resize(size as usize, 0);
        }
        Op::Allocate { file, offset, len } | Op::PunchHole { file, offset, len } => {
            let Some(path) = Model::pick(&files, file) else {
                return Ok(());
            };
            let Node::File(id) = m.tree[path] else {
                unreachable!()
            };
            let punch = matches!(op, Op::PunchHole { .. });
            let mode = if punch {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                0
            };
            sut.fs()
                .fallocate(sut.resolve(path), offset, len, mode)
                .unwrap();
            let buf = m.contents.get_mut(&id).unwrap();
            let end = (offset + len) as usize;
            if punch {
                let stop = end.min(buf.len());
                if (offset as usize) < stop {
                    buf[offset as usize..stop].fill(0);
                }
            } else if buf.len() < end {
                buf.resize(end, 0);
            }
        }
        Op::Rename {
            from,
            dir,
            name,
            mode,
        } => rename(sut, m, from, dir, name, mode)?,
        Op::Unlink { path } => {
            let all = m.paths(|_| true);
            let Some(path) = Model::pick(&all[1..], path).map(str::to_owned) else {
                return Ok(());
            };
            let expected = if m.tree[&path] == Node::Dir {
                libc::EISDIR
            } else {
                0
            };
            let parent = sut.resolve(parent_of(&path));
            let got = code(sut.fs().unlink(parent, OsStr::new(name_of(&path))));
            prop_assert_eq!(got, expected, "unlink {}", path);
            if expected == 0 {
                if let Some(Node::File(id)) = m.tree.remove(&path) {
                    m.collect(id);
                }
            }
        }
        Op::Rmdir { dir } => {
            let Some(path) = Model::pick(&dirs[1..], dir).map(str::to_owned) else {
                return Ok(());
            };
            let expected = if m.is_empty_dir(&path) {
                0
            } else {
                libc::ENOTEMPTY
            };
            let parent = sut.resolve(parent_of(&path));
            let got = code(sut.fs().rmdir(parent, OsStr::new(name_of(&path))));
            prop_assert_eq!(got, expected, "rmdir {}", path);
            if expected == 0 {
                m.tree.remove(&path);
            }
        }
        Op::Link { file, dir, name } => {
            let Some(src) = Model::pick(&files, file).map(str::to_owned) else {
                return Ok(());
            };
            let d = Model::pick(&dirs, dir).unwrap().to_owned();
            let path = join(&d, NAMES[name % 3]);
            let expected = if m.tree.contains_key(&path) {
                libc::EEXIST
            } else {
                0
            };
            let (ino, parent) = (sut.resolve(&src), sut.resolve(&d));
            let got = code(sut.fs().link(ino, parent, OsStr::new(NAMES[name % 3])));
            prop_assert_eq!(got, expected, "link {} {}", src, path);
            if expected == 0 {
                let node = m.tree[&src].clone();
                m.tree.insert(path, node);
            }
        }
        Op::Open { file } => {
            let Some(path) = Model::pick(&files, file) else {
                return Ok(());
            };
            let Node::File(id) = m.tree[path] else {
                unreachable!()
            };
            let ino = sut.resolve(path);
            sut.fs().open(ino, libc::O_RDWR).unwrap();
            m.handles.push((id, ino));
        }
        Op::Close { handle } => {
            if m.handles.is_empty() {
                return Ok(());
            }
            let (id, ino) = m.handles.remove(handle % m.handles.len());
            sut.fs().release(ino).unwrap();
            m.collect(id);
        }
        Op::WriteOpen {
            handle,
            offset,
            len,
            byte,
        } => {
            if m.handles.is_empty() {
                return Ok(());
            }
            let (id, ino) = m.handles[handle % m.handles.len()];
            let data = vec![byte; len];
            prop_assert_eq!(sut.fs().write(ino, offset, &data).unwrap(), len as u32);
            m.write(id, offset, &data);
        }
        Op::ReadOpen { handle } => {
            if m.handles.is_empty() {
                return Ok(());
            }
            let (id, ino) = m.handles[handle % m.handles.len()];
            let got = sut.fs().read(ino, 0, u32::MAX).unwrap();
            prop_assert!(got == m.contents[&id], "read through an open handle");
        }
        Op::Fsync { file } => {
            let Some(path) = Model::pick(&files, file) else {
                return Ok(());
            };
            let ino = sut.resolve(path);
            sut.fs().fsync(ino, file % 2 == 0).unwrap();
            sut.fs().fsyncdir(sut.resolve(parent_of(path))).unwrap();
        }
        Op::Crash => {
            sut.crash_and_reopen();
            // Handles die with the process; files that only they kept alive go with them.
            let ids: Vec<u64> = m.handles.drain(..).map(|(id, _)| id).collect();
            for id in ids {
                m.collect(id);
            }
        }
    }
    Ok(())
}

fn rename(
    sut: &Sut,
    m: &mut Model,
    from: usize,
    dir: usize,
    name: usize,
    mode: u8,
) -> Result<(), TestCaseError> {
    let all = m.paths(|_| true);
    let Some(src) = Model::pick(&all[1..], from).map(str::to_owned) else {
        return Ok(());
    };
    let d = Model::pick(&m.dirs(), dir).unwrap().to_owned();
    let dst = join(&d, NAMES[name % 3]);
    let mode = [
        RenameMode::Replace,
        RenameMode::NoReplace,
        RenameMode::Exchange,
    ][mode as usize];
    let src_node = m.tree[&src].clone();
    let dst_node = m.tree.get(&dst).cloned();
    let inside = |dir: &str, path: &str| path == dir || path.starts_with(&format!("{dir}/"));
    let same_file =
        matches!((&src_node, &dst_node), (Node::File(a), Some(Node::File(b))) if a == b);
    let expected = if mode == RenameMode::NoReplace && dst_node.is_some() {
        libc::EEXIST
    } else if mode == RenameMode::Exchange && dst_node.is_none() {
        libc::ENOENT
    } else if src == dst || same_file {
        0
    } else if src_node == Node::Dir && inside(&src, &d) {
        libc::EINVAL
    } else if mode == RenameMode::Exchange {
        if dst_node == Some(Node::Dir) && inside(&dst, parent_of(&src)) {
            libc::EINVAL
        } else {
            0
        }
    } else {
        match (&src_node, &dst_node) {
            (Node::Dir, Some(Node::Dir)) if !m.is_empty_dir(&dst) => libc::ENOTEMPTY,
            (Node::Dir, Some(n)) if *n != Node::Dir => libc::ENOTDIR,
            (n, Some(Node::Dir)) if *n != Node::Dir => libc::EISDIR,
            _ => 0,
        }
    };
    let (p, np) = (sut.resolve(parent_of(&src)), sut.resolve(&d));
    let got = code(sut.fs().rename(
        p,
        OsStr::new(name_of(&src)),
        np,
        OsStr::new(name_of(&dst)),
        mode,
    ));
    prop_assert_eq!(got, expected, "rename {} -> {} ({:?})", src, dst, mode);
    if expected != 0 || src == dst || same_file {
        return Ok(());
    }
    // Move src's subtree to dst (and, for an exchange, dst's subtree to src).
    let take = |m: &mut Model, root: &str| -> Vec<(String, Node)> {
        let keys: Vec<String> = m.tree.keys().filter(|k| inside(root, k)).cloned().collect();
        keys.into_iter()
            .map(|k| {
                let node = m.tree.remove(&k).unwrap();
                (k[root.len()..].to_owned(), node)
            })
            .collect()
    };
    let moved_src = take(m, &src);
    let moved_dst = take(m, &dst);
    for (suffix, node) in moved_src {
        m.tree.insert(format!("{dst}{suffix}"), node);
    }
    if mode == RenameMode::Exchange {
        for (suffix, node) in moved_dst {
            m.tree.insert(format!("{src}{suffix}"), node);
        }
    } else if let Some(Node::File(id)) = dst_node {
        m.collect(id);
    }
    Ok(())
}

/// Walks the filesystem under test and checks it against the model, node by node.
fn compare_trees(sut: &Sut, m: &Model) -> Result<(), TestCaseError> {
    let fs = sut.fs();
    let mut seen = BTreeMap::new();
    let mut stack = vec![(String::new(), ROOT_INO)];
    while let Some((path, ino)) = stack.pop() {
        let fh = fs.opendir(ino).unwrap();
        let entries = fs.readdir(fh).unwrap();
        fs.releasedir(fh);
        prop_assert_eq!(&entries[0].name, ".");
        prop_assert_eq!(&entries[1].name, "..");
        let mut subdirs = 0;
        for e in entries.iter().skip(2) {
            let child = join(&path, e.name.to_str().unwrap());
            let attr = fs.getattr(e.ino).unwrap();
            prop_assert_eq!(attr.kind, e.kind, "kind of {}", child);
            let node = match attr.kind {
                FileKind::Dir => {
                    subdirs += 1;
                    stack.push((child.clone(), e.ino));
                    Node::Dir
                }
                FileKind::Symlink => {
                    Node::Symlink(String::from_utf8(fs.readlink(e.ino).unwrap()).unwrap())
                }
                FileKind::File => {
                    let Some(Node::File(id)) = m.tree.get(&child) else {
                        return Err(TestCaseError::fail(format!("unexpected file {child}")));
                    };
                    let want = &m.contents[id];
                    prop_assert_eq!(attr.size, want.len() as u64, "size of {}", child);
                    prop_assert_eq!(attr.nlink as usize, m.nlink(*id), "nlink of {}", child);
                    let got = fs.read(e.ino, 0, u32::MAX).unwrap();
                    prop_assert!(&got == want, "contents of {}", child);
                    Node::File(*id)
                }
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            };
            seen.insert(child, node);
        }
        prop_assert_eq!(
            fs.getattr(ino).unwrap().nlink,
            2 + subdirs,
            "nlink of dir {:?}",
            path
        );
    }
    let want: BTreeMap<String, Node> = m
        .tree
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    prop_assert_eq!(seen, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::proptest_cases(96), ..ProptestConfig::default() })]

    #[test]
    fn fs_core_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
