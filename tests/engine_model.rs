//! A reference-model property test of the whole engine: the fs core with the checkpointer,
//! eviction through a cache far smaller than the files, fills from the bucket, restore into
//! an empty cache dir, takeover by another writer, and crashes, over a bucket that fails on
//! request.
//!
//! Random sequences of operations run against the engine and against a plain model: the
//! files' bytes and names as written (what the cache dir must hold, crash or not: a process
//! crash keeps everything written), and the image of the last committed checkpoint (what a
//! restore must give back: one consistent cut, exactly the files as they were when it was
//! taken, without the `--local-only` ones).
//!
//! - Checkpoints are stepped through by the test: writes, truncations, hole punches and
//!   renames land between the cut and the upload, or between the upload and the commit; the
//!   upload or the commit fails, or the commit lands and its answer is lost.
//! - Evictions run when the test says; kill -9 can happen in the middle of a checkpoint, an
//!   eviction, a fill, or a truncation or punch (its record synced, the cache file not cut).
//! - Each case draws a configuration: a `--max-dirty` small enough that writers wait for
//!   room all the time, and `--durability remote`, where fsync returns only once the bucket
//!   holds the change. Operations that wait run on a thread of their own while the test
//!   runs the checkpoints they wait for (a failed one first, if the case says so); they
//!   must finish once one succeeds.
//! - Files move in and out of a `--local-only` path (`*.tmp`) by rename: nothing of them is
//!   uploaded while they are in it, and they are whole in the bucket once they leave it.
//! - Another writer takes the bucket over: the old one's checkpoint, writes and fsyncs fail,
//!   and the new one holds exactly the last committed image.
//! - GC keeps only the latest checkpoint and compacts every small segment: whatever it
//!   rewrites and deletes, every page still reads back, and restores stay exact.
//!
//! Every read is checked, every file after each crash, the bucket after every remote fsync,
//! and every restore against the last committed image. No sleeps: waits are on events the
//! engine reports (a writer asking for room, an fsync waiting for the bucket), with a
//! deadline that only turns a hang into a failure.
//!
//! `PROPTEST_CASES` sets the number of cases per test (`make test-long` runs many more); a
//! failing case is shrunk and its seed kept in `engine_model.proptest-regressions`.

use std::ffi::OsStr;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bucketfs::checkpoint::{CheckpointError, CheckpointSettings, Checkpointer, GcSettings};
use bucketfs::fs::{
    Fs, FsError, RemoteSync, RenameMode, SetAttr, Step, SteppedEvictor, CHUNK_PAGES, PAGE_SIZE,
    ROOT_INO,
};
use bucketfs::gc::compact::CompactSettings;
use bucketfs::gc::Retention;
use proptest::prelude::*;

mod common;
use common::engine::{assert_same, Dirs, Engine, Options};

const FILES: usize = 3;
/// Offsets reach past two cache chunks, so that files span several and evictions matter.
const MAX_OFFSET: u64 = 3 * CHUNK_PAGES * PAGE_SIZE;
const MAX_LEN: u64 = 3 * PAGE_SIZE + 11;
/// Two chunks of cache for three files of up to three chunks each: evictions all the time.
const CACHE: u64 = 2 * CHUNK_PAGES * PAGE_SIZE;
/// The `--local-only` glob a rename moves files in and out of.
const LOCAL_ONLY: &str = "*.tmp";
/// How long an operation may take to finish or to say that it waits. Only turns a hang into
/// a failure: nothing waits for it to pass.
const DEADLINE: Duration = Duration::from_secs(120);

/// What a case mounts with.
#[derive(Clone, Copy, Debug)]
struct Config {
    /// `--max-dirty`, in pages: writers wait while this many are dirty or being uploaded.
    max_dirty: Option<u64>,
    /// `--durability remote`: fsync returns once a checkpoint holding the change is in.
    remote: bool,
}

/// A configuration with `--durability remote` or not, and a `--max-dirty` drawn.
fn config(remote: bool) -> impl Strategy<Value = Config> {
    prop_oneof![2 => Just(None), 1 => Just(Some(4)), 1 => Just(Some(16))]
        .prop_map(move |max_dirty| Config { max_dirty, remote })
}

#[derive(Clone, Debug)]
enum DataOp {
    Write {
        file: usize,
        offset: u64,
        len: u64,
        byte: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Punch {
        file: usize,
        offset: u64,
        len: u64,
    },
    Extend {
        file: usize,
        offset: u64,
        len: u64,
    },
    /// Renames the file into the `--local-only` path (`fN.tmp`) or out of it (`fN`).
    Rename {
        file: usize,
        local: bool,
    },
}

/// Where a checkpoint goes wrong, if it does.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// The segment upload fails (the bucket refuses writes from right after the cut).
    Upload,
    /// The manifest commit fails (the bucket refuses writes once the segments are up).
    /// Reads are answered throughout: a writer the cut woke may fill pages beside it.
    Commit,
    /// The manifest lands, but the answer is lost: the checkpoint reports failure, and the
    /// next one finds the epoch taken by its own earlier attempt.
    LostAnswer,
}

/// When, inside a checkpoint, the interleaved operations land.
#[derive(Clone, Copy, Debug)]
enum When {
    AfterCut,
    AfterUpload,
}

#[derive(Clone, Debug)]
enum Op {
    /// A change; should it wait for room under `--max-dirty`, the first checkpoint it gets
    /// goes wrong as the fault says.
    Data(DataOp, Fault),
    Read {
        file: usize,
        offset: u64,
        len: u32,
    },
    /// fsync; under `--durability remote` the checkpoints it waits for go wrong as `faults`
    /// say, one each, before a healthy one.
    Fsync {
        file: usize,
        faults: Vec<Fault>,
    },
    Checkpoint {
        fault: Fault,
        when: When,
        during: Vec<DataOp>,
    },
    Evict,
    /// kill -9 and a restart on the same cache dir.
    Crash,
    /// kill -9 in the middle of background work, at `StepKind`: during a checkpoint (after
    /// the cut, the upload or the commit), an eviction (marked, not synced or punched) or a
    /// fill (fetched, not installed). The process stops there: the test's hook panics, and
    /// everything is dropped as at any crash.
    CrashAt(StepKind),
    /// kill -9 in the middle of a truncation or a punched hole, once its record is synced
    /// and before the cache file is cut (`StepKind::Recorded`), and a restart on the same
    /// cache dir: the change is durable, so the restart finds it done (a change that records
    /// nothing first, a truncation up or a punch past the end, is simply done).
    CrashIn(DataOp),
    /// kill -9, the cache dir lost, and a restore of the bucket into an empty one.
    Restore,
    /// Another machine takes the bucket over while this one runs.
    Takeover,
    /// GC passes that keep only the latest checkpoint, compacting first: one that finds the
    /// garbage, and one past the grace that deletes it.
    Gc,
}

/// A change that takes bytes out of a file: a truncation or a punched hole.
fn cut_op() -> impl Strategy<Value = DataOp> {
    let file = || 0..FILES;
    prop_oneof![
        2 => (file(), 0..MAX_OFFSET).prop_map(|(file, size)| DataOp::Truncate { file, size }),
        // Emptied, as Postgres empties a dropped relation (its own path in the engine).
        1 => file().prop_map(|file| DataOp::Truncate { file, size: 0 }),
        1 => (file(), 0..MAX_OFFSET, 1..MAX_LEN)
            .prop_map(|(file, offset, len)| DataOp::Punch { file, offset, len }),
    ]
}

fn data_op() -> impl Strategy<Value = DataOp> {
    let file = || 0..FILES;
    let off = || 0..MAX_OFFSET;
    prop_oneof![
        6 => (file(), off(), 1..MAX_LEN, any::<u8>())
            .prop_map(|(file, offset, len, byte)| DataOp::Write { file, offset, len, byte }),
        4 => cut_op(),
        1 => (file(), off(), 1..MAX_LEN).prop_map(|(file, offset, len)| DataOp::Extend { file, offset, len }),
        1 => (file(), any::<bool>()).prop_map(|(file, local)| DataOp::Rename { file, local }),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => Just(Fault::None),
        1 => Just(Fault::Upload),
        1 => Just(Fault::Commit),
        1 => Just(Fault::LostAnswer),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let when = prop_oneof![Just(When::AfterCut), Just(When::AfterUpload)];
    prop_oneof![
        8 => (data_op(), fault()).prop_map(|(d, f)| Op::Data(d, f)),
        4 => (0..FILES, 0..MAX_OFFSET, 1u32..(4 * CHUNK_PAGES * PAGE_SIZE) as u32)
            .prop_map(|(file, offset, len)| Op::Read { file, offset, len }),
        1 => (0..FILES, prop::collection::vec(fault(), 0..3))
            .prop_map(|(file, faults)| Op::Fsync { file, faults }),
        4 => (fault(), when, prop::collection::vec(data_op(), 0..4))
            .prop_map(|(fault, when, during)| Op::Checkpoint { fault, when, during }),
        3 => Just(Op::Evict),
        1 => Just(Op::Crash),
        2 => prop_oneof![
            Just(StepKind::Cut),
            Just(StepKind::Uploaded),
            Just(StepKind::Committed),
            Just(StepKind::EvictMarked),
            Just(StepKind::FillFetched),
        ]
        .prop_map(Op::CrashAt),
        1 => cut_op().prop_map(Op::CrashIn),
        1 => Just(Op::Restore),
        1 => Just(Op::Takeover),
        2 => Just(Op::Gc),
    ]
}

fn name(file: usize, local: bool) -> String {
    if local {
        format!("f{file}.tmp")
    } else {
        format!("f{file}")
    }
}

fn is_local(name: &str) -> bool {
    name.ends_with(".tmp")
}

#[derive(Clone, Debug, PartialEq)]
struct File {
    name: String,
    bytes: Vec<u8>,
}

/// The files by number. In a committed image, None is a file the bucket does not hold (a
/// restore has none, and the test creates it empty under its plain name).
type Files = Vec<Option<File>>;

/// The file `op` changes.
fn file_of(op: &DataOp) -> usize {
    match *op {
        DataOp::Write { file, .. }
        | DataOp::Truncate { file, .. }
        | DataOp::Punch { file, .. }
        | DataOp::Extend { file, .. }
        | DataOp::Rename { file, .. } => file,
    }
}

/// The files after `op`.
fn apply(files: &mut Files, op: &DataOp) {
    let n = file_of(op);
    let file = files[n].as_mut().expect("a live file");
    let f = &mut file.bytes;
    match *op {
        DataOp::Write {
            offset, len, byte, ..
        } => {
            let end = (offset + len) as usize;
            if f.len() < end {
                f.resize(end, 0);
            }
            f[offset as usize..end].fill(byte);
        }
        DataOp::Truncate { size, .. } => f.resize(size as usize, 0),
        DataOp::Punch { offset, len, .. } => {
            let end = ((offset + len) as usize).min(f.len());
            if (offset as usize) < end {
                f[offset as usize..end].fill(0);
            }
        }
        DataOp::Extend { offset, len, .. } => {
            let end = (offset + len) as usize;
            if f.len() < end {
                f.resize(end, 0);
            }
        }
        DataOp::Rename { local, .. } => file.name = name(n, local),
    }
}

/// What a checkpoint taken now commits: everything but the files in `--local-only` paths.
fn cut_of(files: &Files) -> Files {
    files
        .iter()
        .map(|f| f.clone().filter(|f| !is_local(&f.name)))
        .collect()
}

/// Runs `op` on the engine, whose files are `inos`, named `files` says.
fn run(fs: &Fs, inos: &[u64], files: &Files, op: &DataOp) {
    match *op {
        DataOp::Write {
            file,
            offset,
            len,
            byte,
        } => {
            let data = vec![byte; len as usize];
            assert_eq!(
                fs.write(inos[file], offset, &data).expect("write"),
                len as u32
            );
        }
        DataOp::Truncate { file, size } => {
            let changes = SetAttr {
                size: Some(size),
                ..SetAttr::default()
            };
            fs.setattr(inos[file], &changes).expect("truncate");
        }
        DataOp::Punch { file, offset, len } => fs
            .fallocate(
                inos[file],
                offset,
                len,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            )
            .expect("punch hole"),
        DataOp::Extend { file, offset, len } => {
            fs.fallocate(inos[file], offset, len, 0).expect("fallocate")
        }
        DataOp::Rename { file, local } => {
            let from = &files[file].as_ref().expect("a live file").name;
            let to = name(file, local);
            if *from != to {
                fs.rename(
                    ROOT_INO,
                    OsStr::new(from),
                    ROOT_INO,
                    OsStr::new(&to),
                    RenameMode::NoReplace,
                )
                .expect("rename");
            }
        }
    }
}

/// What an operation on a thread of its own reports.
#[derive(Debug)]
enum Event {
    Finished,
    /// A writer waits for room under `--max-dirty` (the engine asks for a checkpoint).
    WaitsForRoom,
    /// A remote-durability fsync waits for the bucket.
    WaitsForBucket,
}

/// The one channel operations on threads of their own report on (one runs at a time).
struct Events {
    tx: Mutex<Sender<Event>>,
    rx: Mutex<Receiver<Event>>,
}

/// An operation that waits, on its thread, and what for.
struct Waiting(JoinHandle<()>, Event);

impl Events {
    fn new() -> Arc<Events> {
        let (tx, rx) = channel();
        Arc::new(Events {
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
        })
    }

    fn send(&self, e: Event) {
        let _ = self.tx.lock().expect("events").send(e);
    }

    fn next(&self) -> Event {
        self.rx
            .lock()
            .expect("events")
            .recv_timeout(DEADLINE)
            .expect("an operation neither finished nor said that it waits")
    }

    /// Runs `f` on a thread of its own until it finishes (None) or says that it waits.
    fn start(
        self: &Arc<Self>,
        fs: &Arc<Fs>,
        f: impl FnOnce(&Fs) + Send + 'static,
    ) -> Option<Waiting> {
        let (fs, events) = (fs.clone(), self.clone());
        let thread = std::thread::spawn(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(&fs)));
            // The engine's handle goes before the test hears: a crash may follow at once.
            drop(fs);
            events.send(Event::Finished);
            if let Err(p) = r {
                std::panic::resume_unwind(p);
            }
        });
        match self.next() {
            Event::Finished => {
                join(thread);
                None
            }
            e @ (Event::WaitsForRoom | Event::WaitsForBucket) => Some(Waiting(thread, e)),
        }
    }

    /// Waits for `w` to finish (it may say again that it waits, while it is being woken).
    fn finish(&self, w: Waiting) {
        while !matches!(self.next(), Event::Finished) {}
        join(w.0);
    }
}

fn join(thread: JoinHandle<()>) {
    if let Err(p) = thread.join() {
        std::panic::resume_unwind(p);
    }
}

/// Starts `op`: on a thread of its own when it may wait for room.
fn start(
    events: &Arc<Events>,
    config: Config,
    fs: &Arc<Fs>,
    inos: &[u64],
    files: &Files,
    op: &DataOp,
) -> Option<Waiting> {
    if config.max_dirty.is_none() {
        run(fs, inos, files, op);
        return None;
    }
    let (inos, files, op) = (inos.to_vec(), files.clone(), op.clone());
    events.start(fs, move |fs| run(fs, &inos, &files, &op))
}

/// `--durability remote` as a mount wires it, saying when an fsync starts to wait.
struct Remote {
    cp: Weak<Checkpointer>,
    events: Arc<Events>,
}

impl RemoteSync for Remote {
    fn wait_committed(&self, epoch: u64) -> bucketfs::fs::Result<()> {
        self.events.send(Event::WaitsForBucket);
        let cp = self.cp.upgrade().expect("the checkpointer");
        cp.wait_committed(epoch)
    }

    fn request(&self) {
        if let Some(cp) = self.cp.upgrade() {
            cp.request();
        }
    }
}

/// GC's grace in the model: its passes are told the time, so it is never waited out.
const GC_GRACE: Duration = Duration::from_secs(3600);

/// The panic payload that stands for kill -9 at a step.
struct CrashHere;

/// What the test does at a step of the next checkpoint.
type Action = Box<dyn FnOnce() + Send>;
type Slot = Arc<Mutex<Option<(StepKind, Action)>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepKind {
    Cut,
    Uploaded,
    Committed,
    EvictMarked,
    FillFetched,
    /// A truncation's or a punch's record synced, the cache file not yet cut.
    Recorded,
}

/// The engine under test, with its files' inode numbers, its stepped evictor, and the slot
/// its step hook takes actions from.
struct Sut {
    engine: Engine,
    inos: Vec<u64>,
    evictor: SteppedEvictor,
    slot: Slot,
    _remote: Option<Arc<dyn RemoteSync>>,
}

impl Sut {
    /// Opens cache dir `cache`. A new one restores the bucket, whose root must hold exactly
    /// the files `files` has (the files it lacks are created empty under their plain
    /// names); an existing one must hold every file of `files`.
    fn open(dirs: &Dirs, cache: u32, files: &Files, config: Config, events: &Arc<Events>) -> Sut {
        let mut local_only = CheckpointSettings::default().local_only;
        local_only.push(LOCAL_ONLY.into());
        let fresh = !dirs.cache(cache).exists();
        let options = Options {
            local_only,
            gc: Some(GcSettings::every(
                GC_GRACE,
                Retention {
                    window: Duration::ZERO,
                    min_checkpoints: 1,
                    grace: GC_GRACE,
                },
                // Every segment here is small: merge them whenever there are two.
                Some(CompactSettings {
                    min_small: 2,
                    ..CompactSettings::default()
                }),
            )),
            ..Options::default()
        };
        let engine = Engine::open(&dirs.cache(cache), &dirs.bucket(), options);
        let evictor = engine.fs.bound_cache_stepped(CACHE).expect("bound");
        let slot: Slot = Arc::default();
        let taken = slot.clone();
        engine.fs.set_step_hook(Box::new(move |step| {
            let kind = match step {
                Step::CutTaken { .. } => StepKind::Cut,
                Step::Uploaded { .. } => StepKind::Uploaded,
                Step::Committed { .. } => StepKind::Committed,
                Step::EvictMarked { .. } => StepKind::EvictMarked,
                Step::FillFetched { .. } => StepKind::FillFetched,
                Step::CutRecorded { .. } => StepKind::Recorded,
                // tests/engine.rs puts changes there (and between the files of a mark
                // clean); the flush's end, between `Committed` and the marks, is a point
                // nothing changes the pages' state at; a fill's flush holds the file's locks
                // (its fetch, `FillFetched`, is where a fill is crashed); a request's entry
                // is the model's own step, not background work's.
                Step::CutRunRead { .. }
                | Step::MarkingClean { .. }
                | Step::MarkedClean { .. }
                | Step::FillSynced { .. }
                | Step::Entered { .. } => return,
            };
            let action = {
                let mut slot = taken.lock().expect("slot");
                match slot.take() {
                    Some((at, action)) if at == kind => Some(action),
                    other => {
                        *slot = other;
                        None
                    }
                }
            };
            if let Some(action) = action {
                action();
            }
        }));
        if let Some(pages) = config.max_dirty {
            let events = events.clone();
            engine.fs.set_max_dirty(
                pages * PAGE_SIZE,
                Box::new(move || events.send(Event::WaitsForRoom)),
            );
        }
        let remote = config.remote.then(|| {
            let r: Arc<dyn RemoteSync> = Arc::new(Remote {
                cp: Arc::downgrade(&engine.cp),
                events: events.clone(),
            });
            engine.fs.set_remote_sync(&r);
            r
        });
        if fresh {
            let mut want: Vec<String> = files.iter().flatten().map(|f| f.name.clone()).collect();
            want.sort();
            let mut got = engine.names_in_bucket();
            got.sort();
            assert_eq!(got, want, "the files in the bucket's root");
        }
        let inos = files
            .iter()
            .enumerate()
            .map(|(n, f)| match f {
                Some(f) => engine.ino(&f.name),
                None => {
                    assert!(fresh, "file {n} is missing from the cache dir");
                    engine.create(&name(n, false))
                }
            })
            .collect();
        Sut {
            engine,
            inos,
            evictor,
            slot,
            _remote: remote,
        }
    }

    /// kill -9: everything dropped, nothing stopped cleanly.
    fn kill(self) {
        let Sut {
            engine,
            evictor,
            _remote,
            ..
        } = self;
        drop((evictor, _remote));
        engine.crash();
    }

    /// The next time background work (or a change) reaches `kind`, the process dies there.
    fn crash_at(&self, kind: StepKind) {
        *self.slot.lock().expect("slot") = Some((
            kind,
            Box::new(|| std::panic::panic_any(CrashHere)) as Action,
        ));
    }

    fn check_all(&self, what: &str, files: &Files) {
        for (n, f) in files.iter().enumerate() {
            let want = f.as_ref().map_or(&[][..], |f| &f.bytes[..]);
            let got = self.engine.read_all(self.inos[n]);
            assert_same(&format!("{what}: file {n}"), &got, want);
        }
    }
}

/// One case: the engine, and the model it must match.
struct Case {
    config: Config,
    dirs: Dirs,
    /// Cache dirs used so far (a restore or a takeover starts a new one).
    caches: u32,
    sut: Option<Sut>,
    events: Arc<Events>,
    /// The files as written.
    files: Files,
    /// The files as the last committed checkpoint holds them.
    committed: Files,
    /// After a lost answer, the next checkpoint may find its epoch already taken by that
    /// attempt and report so once.
    may_refuse: bool,
}

impl Case {
    fn new(config: Config) -> Case {
        let dirs = Dirs::in_memory();
        let events = Events::new();
        // The first checkpoint (of an empty root) is committed at open; the files follow.
        let committed: Files = vec![None; FILES];
        let sut = Sut::open(&dirs, 0, &committed, config, &events);
        let files = (0..FILES)
            .map(|n| {
                Some(File {
                    name: name(n, false),
                    bytes: Vec::new(),
                })
            })
            .collect();
        Case {
            config,
            dirs,
            caches: 1,
            sut: Some(sut),
            events,
            files,
            committed,
            may_refuse: false,
        }
    }

    fn sut(&self) -> &Sut {
        self.sut.as_ref().expect("open")
    }

    /// kill -9, then a restart on the same cache dir or (`lose_cache`) a restore of the
    /// bucket into a new one; the files must then be as written or as committed.
    fn restart(&mut self, what: &str, lose_cache: bool) {
        let sut = self.sut.take().expect("open");
        let cache = if lose_cache {
            self.caches += 1;
            self.caches - 1
        } else {
            self.caches - 1
        };
        sut.kill();
        if lose_cache {
            self.files = self.restored();
        }
        let sut = Sut::open(
            &self.dirs,
            cache,
            self.opened_with(lose_cache),
            self.config,
            &self.events,
        );
        sut.check_all(what, &self.files);
        self.sut = Some(sut);
        // The takeover at restart commits nothing new: the image stays.
        self.may_refuse = false;
    }

    fn opened_with(&self, restored: bool) -> &Files {
        if restored {
            &self.committed
        } else {
            &self.files
        }
    }

    /// The files a restore of the last committed checkpoint gives.
    fn restored(&self) -> Files {
        self.committed
            .iter()
            .enumerate()
            .map(|(n, f)| {
                Some(f.clone().unwrap_or(File {
                    name: name(n, false),
                    bytes: Vec::new(),
                }))
            })
            .collect()
    }

    /// A change, on a thread of its own if it may wait for room; should it wait, the
    /// checkpoints it needs run (`stall` going wrong in the first).
    fn data(&mut self, step: usize, op: &DataOp, stall: Fault) {
        let sut = self.sut();
        let waiting = start(
            &self.events,
            self.config,
            &sut.engine.fs,
            &sut.inos,
            &self.files,
            op,
        );
        if let Some(w) = waiting {
            self.settle(step, w, stall);
        }
        apply(&mut self.files, op);
    }

    /// An operation waits (for room, or for the bucket): checkpoints run until one
    /// succeeds (`first` going wrong in the first), and then it must finish.
    fn settle(&mut self, step: usize, w: Waiting, first: Fault) {
        let mut fault = first;
        for _ in 0..4 {
            let ok = self.checkpoint(step, fault, When::AfterCut, &[]);
            if self.woken(&w, ok) {
                self.events.finish(w);
                return;
            }
            fault = Fault::None;
        }
        panic!("step {step}: an operation still waits after four checkpoints, three of them with a healthy bucket");
    }

    /// After a checkpoint (`ok` if it succeeded): whether `w` goes on now (or already has).
    /// A remote fsync waits for a commit. A writer waits for room until fewer than
    /// `--max-dirty` pages are dirty or being uploaded, which even a failed checkpoint can
    /// bring about (its cut forgets the dirty pages of local-only files). Once the writer
    /// goes on, its own write adds to that count, so the count alone cannot tell; read in
    /// this order, it can: if the count is still at the limit and the writer has not left
    /// the waiting room since, its write is not in the count, and it waits on.
    fn woken(&self, w: &Waiting, ok: bool) -> bool {
        match w.1 {
            Event::WaitsForRoom => {
                let max = self
                    .config
                    .max_dirty
                    .expect("a writer waits for room only under --max-dirty");
                let fs = &self.sut().engine.fs;
                fs.unsafe_pages() < max || fs.writers_waiting() == 0
            }
            _ => ok,
        }
    }

    /// One checkpoint: `fault` goes wrong in it and `during` lands `when` it says. Returns
    /// whether it succeeded.
    fn checkpoint(&mut self, step: usize, fault: Fault, when: When, during: &[DataOp]) -> bool {
        // The image the cut takes.
        let at_cut = self.files.clone();
        // How many of `during` ran inside the checkpoint, and the one that waits, if any.
        let landed: Arc<Mutex<(usize, Option<Waiting>)>> = Arc::default();
        let sut = self.sut();
        let e = &sut.engine;
        let action: Action = {
            let (fs, plan, events, landed) = (
                Arc::downgrade(&e.fs),
                e.plan.clone(),
                self.events.clone(),
                landed.clone(),
            );
            let (config, inos, mut files, during) = (
                self.config,
                sut.inos.clone(),
                self.files.clone(),
                during.to_vec(),
            );
            Box::new(move || {
                let fs = Weak::upgrade(&fs).expect("fs alive");
                let mut landed = landed.lock().expect("landed");
                for d in &during {
                    if let Some(w) = start(&events, config, &fs, &inos, &files, d) {
                        landed.1 = Some(w);
                        break;
                    }
                    apply(&mut files, d);
                    landed.0 += 1;
                }
                match fault {
                    Fault::None => {}
                    Fault::Upload | Fault::Commit => plan.refuse_writes(true),
                    Fault::LostAnswer => plan.lose_answers(1),
                }
            })
        };
        // An upload fault must open before the upload; a lost answer must be the
        // manifest's, after the segments are up.
        let at = match (fault, when) {
            (Fault::Upload, _) => StepKind::Cut,
            (Fault::LostAnswer, _) => StepKind::Uploaded,
            (_, When::AfterCut) => StepKind::Cut,
            (_, When::AfterUpload) => StepKind::Uploaded,
        };
        *sut.slot.lock().expect("slot") = Some((at, action));
        let r = e.cp.checkpoint(false);
        e.plan.refuse_writes(false);
        e.plan.lose_answers(0);
        // A checkpoint that had nothing to upload stops before either step: the operations
        // meant for inside it happen after it.
        let unreached = sut.slot.lock().expect("slot").take().is_some();
        let ok = r.is_ok();
        match (&r, fault) {
            // Every checkpoint that reaches the fault PUTs a manifest after it.
            (Ok(_), Fault::Upload | Fault::Commit) if !unreached => {
                panic!("step {step}: a checkpoint committed while the bucket refused writes")
            }
            (Ok(_), _) => {
                self.committed = cut_of(&at_cut);
                self.may_refuse = false;
            }
            // The first commit after a lost answer finds that epoch taken by its own
            // earlier attempt, and says so (nothing of this one is committed), unless a GC
            // pass's compaction took that commit in first (see `gc`).
            (Err(err), Fault::None | Fault::LostAnswer)
                if self.may_refuse && err.to_string().contains("earlier attempt") =>
            {
                self.may_refuse = false;
            }
            (Err(_), Fault::LostAnswer) => {
                self.committed = cut_of(&at_cut);
                self.may_refuse = true;
            }
            (Err(_), Fault::Upload | Fault::Commit) => {}
            (Err(err), Fault::None) => panic!("step {step}: checkpoint failed: {err}"),
        }
        let (ran, waiting) = std::mem::take(&mut *landed.lock().expect("landed"));
        let rest = if unreached {
            during
        } else {
            for d in &during[..ran] {
                apply(&mut self.files, d);
            }
            if let Some(w) = waiting {
                // The checkpoint may have made the room it waits for: it goes on now, and
                // the next checkpoint must not race it.
                if self.woken(&w, ok) {
                    self.events.finish(w);
                } else {
                    self.settle(step, w, Fault::None);
                }
                apply(&mut self.files, &during[ran]);
                &during[ran + 1..]
            } else {
                &during[ran..]
            }
        };
        for d in rest {
            self.data(step, d, Fault::None);
        }
        ok
    }

    fn fsync(&mut self, step: usize, file: usize, faults: &[Fault]) {
        let sut = self.sut();
        let ino = sut.inos[file];
        if !self.config.remote {
            sut.engine.fs.fsync(ino, false).expect("fsync");
            return;
        }
        let w = self
            .events
            .start(&sut.engine.fs, move |fs| {
                fs.fsync(ino, false).expect("remote fsync")
            })
            .expect("a remote fsync waits for the bucket");
        for fault in faults {
            self.checkpoint(step, *fault, When::AfterCut, &[]);
        }
        self.settle(step, w, Fault::None);
        // What it returned for is in the bucket, read from there (a file in a local-only
        // path is not uploaded at all).
        let f = self.files[file].as_ref().expect("a live file");
        let got = self.sut().engine.in_bucket(ino);
        if is_local(&f.name) {
            assert!(
                got.is_none(),
                "step {step}: local-only file {file} is in the bucket"
            );
        } else {
            let got =
                got.unwrap_or_else(|| panic!("step {step}: file {file} is not in the bucket"));
            assert_same(
                &format!("step {step}: in the bucket after a remote fsync, file {file}"),
                &got,
                &f.bytes,
            );
        }
    }

    /// Another machine takes the bucket over (restoring it into a cache dir of its own).
    /// This one is fenced at its next commit: that commit, and every write and fsync after
    /// it, fail. The new one holds the last committed image.
    fn takeover(&mut self, step: usize) {
        let old = self.sut.take().expect("open");
        self.caches += 1;
        let new = Sut::open(
            &self.dirs,
            self.caches - 1,
            &self.committed,
            self.config,
            &self.events,
        );
        let e = &old.engine;
        // Something to commit (a name: it never waits for room).
        e.create("probe");
        let mut r = e.cp.checkpoint(false);
        if self.may_refuse && matches!(r, Err(CheckpointError::Refused(_))) {
            // First the refusal that follows a lost answer of its own.
            r = e.cp.checkpoint(false);
        }
        assert!(
            matches!(r, Err(CheckpointError::Fenced { .. })),
            "step {step}: the old writer's checkpoint: {r:?}"
        );
        let ino = old.inos[0];
        assert!(
            matches!(e.fs.write(ino, 0, b"x"), Err(FsError::Fenced)),
            "step {step}: a write after fencing"
        );
        assert!(
            matches!(e.fs.fsync(ino, false), Err(FsError::Fenced)),
            "step {step}: an fsync after fencing"
        );
        old.kill();
        self.files = self.restored();
        new.check_all(&format!("step {step}: after a takeover"), &self.files);
        self.sut = Some(new);
        self.may_refuse = false;
    }

    /// Two GC passes, the second past the grace: whatever they delete, every file reads back
    /// as written (absent pages come from the compacted segments), and later restores give
    /// the last committed image.
    fn gc(&mut self, step: usize) {
        let e = &self.sut().engine;
        let t = bucketfs::checkpoint::now_ms();
        for now in [t, t + GC_GRACE.as_millis() as u64] {
            if let Err(err) = e.cp.gc_pass(now) {
                panic!("step {step}: GC pass failed: {err}");
            }
        }
        // A commit of its own whose answer was lost stays for the next checkpoint to find
        // (passes leave the view to the checkpointer), unless compaction's commit met it (a
        // 412 on the same epoch) and took it in: the next checkpoint may be refused.
        self.sut()
            .check_all(&format!("step {step}: after GC"), &self.files);
    }

    /// kill -9 at `kind`, in the middle of background work; the restart must find the files
    /// as written.
    fn crash_at(&mut self, step: usize, kind: StepKind) {
        let at_cut = self.files.clone();
        let sut = self.sut.as_ref().expect("open");
        let e = &sut.engine;
        let fs = &e.fs;
        sut.crash_at(kind);
        let all = |e: &Engine| {
            for &ino in &sut.inos {
                e.read_all(ino);
            }
        };
        let reached = match kind {
            StepKind::Cut | StepKind::Uploaded | StepKind::Committed => {
                let mut result = None;
                let reached = crashed(std::panic::catch_unwind(AssertUnwindSafe(|| {
                    result = Some(e.cp.checkpoint(false));
                })));
                match result {
                    // Finished without reaching the step: nothing to upload.
                    Some(Ok(_)) => self.committed = cut_of(&at_cut),
                    // The refusal that follows a lost answer (the crash below ends that
                    // state anyway).
                    Some(Err(err)) => {
                        assert!(self.may_refuse, "step {step}: checkpoint failed: {err}")
                    }
                    None => {}
                }
                reached
            }
            StepKind::EvictMarked => {
                all(e);
                crashed(std::panic::catch_unwind(AssertUnwindSafe(|| {
                    sut.evictor.run(fs).expect("evict");
                })))
            }
            StepKind::FillFetched => {
                sut.evictor.run(fs).expect("evict");
                crashed(std::panic::catch_unwind(AssertUnwindSafe(|| all(e))))
            }
            StepKind::Recorded => unreachable!("a crash in a change is `crash_in`'s"),
        };
        if reached && kind == StepKind::Committed {
            self.committed = cut_of(&at_cut);
        }
        sut.slot.lock().expect("slot").take();
        self.restart(&format!("step {step}: after a crash at {kind:?}"), false);
    }

    /// kill -9 in the middle of `op` (a truncation or a punch), once its record is synced
    /// and before it cuts the cache file; the restart must find the change done. (Neither
    /// waits for room under `--max-dirty`: it runs here.)
    fn crash_in(&mut self, step: usize, op: &DataOp) {
        let sut = self.sut.as_ref().expect("open");
        sut.crash_at(StepKind::Recorded);
        let reached = crashed(std::panic::catch_unwind(AssertUnwindSafe(|| {
            run(&sut.engine.fs, &sut.inos, &self.files, op)
        })));
        sut.slot.lock().expect("slot").take();
        apply(&mut self.files, op);
        let at = if reached { "in" } else { "after" };
        self.restart(&format!("step {step}: after a crash {at} {op:?}"), false);
    }
}

/// Whether `r` is the end of a run that died at a step (`Sut::crash_at`).
fn crashed(r: std::thread::Result<()>) -> bool {
    match r {
        Ok(()) => false,
        Err(p) if p.is::<CrashHere>() => true,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Runs `ops` and checks every step against the model.
fn check(config: Config, ops: &[Op]) {
    let mut case = Case::new(config);
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Data(d, stall) => case.data(step, d, *stall),
            Op::Read { file, offset, len } => {
                let sut = case.sut();
                let got = sut
                    .engine
                    .fs
                    .read(sut.inos[*file], *offset, *len)
                    .expect("read");
                let f = &case.files[*file].as_ref().expect("a live file").bytes;
                let from = (*offset as usize).min(f.len());
                let to = (*offset as usize + *len as usize).min(f.len());
                assert_same(
                    &format!("step {step}: read file {file}"),
                    &got,
                    &f[from..to],
                );
            }
            Op::Fsync { file, faults } => case.fsync(step, *file, faults),
            Op::Checkpoint {
                fault,
                when,
                during,
            } => {
                case.checkpoint(step, *fault, *when, during);
            }
            Op::Evict => {
                let sut = case.sut();
                sut.evictor.run(&sut.engine.fs).expect("evict");
            }
            Op::Crash => case.restart(&format!("step {step}: after a crash"), false),
            Op::CrashAt(kind) => case.crash_at(step, *kind),
            Op::CrashIn(d) => case.crash_in(step, d),
            Op::Restore => case.restart(&format!("step {step}: restored from the bucket"), true),
            Op::Takeover => case.takeover(step),
            Op::Gc => case.gc(step),
        }
    }
    case.sut().check_all("at the end", &case.files);
    // And the bucket holds exactly the last committed image.
    case.restart("final restore", true);
    case.sut.take().expect("open").kill();
}

#[path = "engine_model/past_failures.rs"]
mod past_failures;

/// The cases proptest shrank past failures to still pass, replayed as they were saved
/// (`past_failures`): the saved seeds draw other cases once `op()` draws differently.
#[test]
fn the_past_failures_of_the_model_pass() {
    quiet_crashes();
    let past = past_failures::past_failures();
    let saved = include_str!("engine_model.proptest-regressions")
        .matches("# shrinks to")
        .count();
    assert_eq!(
        past.len(),
        saved,
        "past_failures.rs holds a case for each shrunk failure the regressions file saved"
    );
    for (seed, config, ops) in past {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| check(config, &ops)));
        if let Err(p) = r {
            eprintln!("the past failure saved under seed {seed}.. fails again");
            std::panic::resume_unwind(p);
        }
    }
}

/// kill -9 in the middle of background work is a panic the test catches: it says nothing.
fn quiet_crashes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<CrashHere>() {
                report(info);
            }
        }));
    });
}

// Two tests, one per durability mode, so that the two halves of the cases run side by side.
proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::proptest_cases(1000),
        max_shrink_iters: 2000,
        .. ProptestConfig::default()
    })]

    #[test]
    fn the_engine_matches_the_model_with_local_durability(
        config in config(false),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        quiet_crashes();
        check(config, &ops);
    }

    #[test]
    fn the_engine_matches_the_model_with_remote_durability(
        config in config(true),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        quiet_crashes();
        check(config, &ops);
    }
}
