//! A reference-model property test of the whole engine: the fs core with the checkpointer,
//! eviction through a cache far smaller than the files, fills from the bucket, restore into
//! an empty cache dir, and crashes, over a bucket that fails on request.
//!
//! Random sequences of data operations run against the engine and against a plain model:
//! the files' bytes as written (what the cache dir must hold, crash or not: a process crash
//! keeps everything written), and the image of the last committed checkpoint (what a restore
//! must give back: one consistent cut, exactly the files as they were when it was taken).
//! Checkpoints are stepped through by the test: writes, truncations and hole punches land
//! between the cut and the upload, or between the upload and the commit; the upload or the
//! commit fails, or the commit lands and its answer is lost. Evictions run when the test
//! says. Every read is checked, every file is checked after each crash, and a restore is
//! checked against the last committed image.
//!
//! `PROPTEST_CASES` sets the number of cases (`make test-long` runs many more); a failing
//! case is shrunk and its seed kept in `engine_model.proptest-regressions`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};

use bucketfs::fs::{Fs, SetAttr, Step, SteppedEvictor, CHUNK_PAGES, PAGE_SIZE, ROOT_INO};
use proptest::prelude::*;

mod common;
use common::engine::{assert_same, Dirs, Engine, Options};

const FILES: usize = 3;
/// Offsets reach past two cache chunks, so that files span several and evictions matter.
const MAX_OFFSET: u64 = 3 * CHUNK_PAGES * PAGE_SIZE;
const MAX_LEN: u64 = 3 * PAGE_SIZE + 11;
/// Two chunks of cache for three files of up to three chunks each: evictions all the time.
const CACHE: u64 = 2 * CHUNK_PAGES * PAGE_SIZE;

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
}

/// Where a checkpoint goes wrong, if it does.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// The segment upload fails (an outage opens right after the cut).
    Upload,
    /// The manifest commit fails (the outage opens once the segments are up).
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
    Data(DataOp),
    Read {
        file: usize,
        offset: u64,
        len: u32,
    },
    Fsync {
        file: usize,
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
    /// kill -9, the cache dir lost, and a restore of the bucket into an empty one.
    Restore,
}

fn data_op() -> impl Strategy<Value = DataOp> {
    let file = || 0..FILES;
    let off = || 0..MAX_OFFSET;
    prop_oneof![
        6 => (file(), off(), 1..MAX_LEN, any::<u8>())
            .prop_map(|(file, offset, len, byte)| DataOp::Write { file, offset, len, byte }),
        2 => (file(), 0..MAX_OFFSET).prop_map(|(file, size)| DataOp::Truncate { file, size }),
        1 => (file(), off(), 1..MAX_LEN).prop_map(|(file, offset, len)| DataOp::Punch { file, offset, len }),
        1 => (file(), off(), 1..MAX_LEN).prop_map(|(file, offset, len)| DataOp::Extend { file, offset, len }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let fault = prop_oneof![
        4 => Just(Fault::None),
        1 => Just(Fault::Upload),
        1 => Just(Fault::Commit),
        1 => Just(Fault::LostAnswer),
    ];
    let when = prop_oneof![Just(When::AfterCut), Just(When::AfterUpload)];
    prop_oneof![
        8 => data_op().prop_map(Op::Data),
        4 => (0..FILES, 0..MAX_OFFSET, 1u32..(4 * CHUNK_PAGES * PAGE_SIZE) as u32)
            .prop_map(|(file, offset, len)| Op::Read { file, offset, len }),
        1 => (0..FILES).prop_map(|file| Op::Fsync { file }),
        4 => (fault, when, prop::collection::vec(data_op(), 0..4))
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
        1 => Just(Op::Restore),
    ]
}

fn name(file: usize) -> String {
    format!("f{file}")
}

/// The files' bytes.
type Image = BTreeMap<usize, Vec<u8>>;

fn apply(image: &mut Image, op: &DataOp) {
    match *op {
        DataOp::Write {
            file,
            offset,
            len,
            byte,
        } => {
            let f = image.get_mut(&file).expect("file");
            let end = (offset + len) as usize;
            if f.len() < end {
                f.resize(end, 0);
            }
            f[offset as usize..end].fill(byte);
        }
        DataOp::Truncate { file, size } => {
            image.get_mut(&file).expect("file").resize(size as usize, 0);
        }
        DataOp::Punch { file, offset, len } => {
            let f = image.get_mut(&file).expect("file");
            let end = ((offset + len) as usize).min(f.len());
            if (offset as usize) < end {
                f[offset as usize..end].fill(0);
            }
        }
        DataOp::Extend { file, offset, len } => {
            let f = image.get_mut(&file).expect("file");
            let end = (offset + len) as usize;
            if f.len() < end {
                f.resize(end, 0);
            }
        }
    }
}

fn run(fs: &Fs, ino: impl Fn(usize) -> u64, op: &DataOp) {
    match *op {
        DataOp::Write {
            file,
            offset,
            len,
            byte,
        } => {
            let data = vec![byte; len as usize];
            assert_eq!(
                fs.write(ino(file), offset, &data).expect("write"),
                len as u32
            );
        }
        DataOp::Truncate { file, size } => {
            let changes = SetAttr {
                size: Some(size),
                ..SetAttr::default()
            };
            fs.setattr(ino(file), &changes).expect("truncate");
        }
        DataOp::Punch { file, offset, len } => fs
            .fallocate(
                ino(file),
                offset,
                len,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            )
            .expect("punch hole"),
        DataOp::Extend { file, offset, len } => {
            fs.fallocate(ino(file), offset, len, 0).expect("fallocate")
        }
    }
}

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
}

/// The engine under test, with its files' inode numbers, its stepped evictor, and the slot
/// its step hook takes actions from.
struct Sut {
    dirs: Dirs,
    cache: u32,
    engine: Option<Engine>,
    inos: Vec<u64>,
    evictor: Option<SteppedEvictor>,
    slot: Slot,
}

impl Sut {
    fn open(dirs: Dirs, cache: u32) -> Sut {
        let engine = Engine::open(&dirs.cache(cache), &dirs.bucket(), Options::default());
        let evictor = Some(engine.fs.bound_cache_stepped(CACHE).expect("bound"));
        let slot: Slot = Arc::default();
        let taken = slot.clone();
        engine.fs.set_step_hook(Box::new(move |step| {
            let kind = match step {
                Step::CutTaken { .. } => StepKind::Cut,
                Step::Uploaded { .. } => StepKind::Uploaded,
                Step::Committed { .. } => StepKind::Committed,
                Step::EvictMarked { .. } => StepKind::EvictMarked,
                Step::FillFetched { .. } => StepKind::FillFetched,
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
        let inos = (0..FILES)
            .map(|f| match engine.fs.lookup(ROOT_INO, OsStr::new(&name(f))) {
                Ok(a) => a.ino,
                Err(_) => engine.create(&name(f)),
            })
            .collect();
        Sut {
            dirs,
            cache,
            engine: Some(engine),
            inos,
            evictor,
            slot,
        }
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("open")
    }

    fn crash(mut self, lose_cache: bool) -> Sut {
        self.evictor = None;
        self.engine.take().expect("open").crash();
        let cache = if lose_cache {
            self.cache + 1
        } else {
            self.cache
        };
        Sut::open(self.dirs, cache)
    }

    fn check_all(&self, what: &str, image: &Image) {
        for (file, want) in image {
            let got = self.engine().read_all(self.inos[*file]);
            assert_same(&format!("{what}: {}", name(*file)), &got, want);
        }
    }
}

/// Runs `ops` and checks every step against the model.
fn check(ops: &[Op]) {
    let mut sut = Sut::open(Dirs::in_memory(), 0);
    let mut files: Image = (0..FILES).map(|f| (f, Vec::new())).collect();
    // The first checkpoint (of the empty files) is committed at open.
    let mut committed = files.clone();
    // After a lost answer, the next checkpoint may find its epoch already taken by that
    // attempt and report so once.
    let mut may_refuse = false;
    for (step, op) in ops.iter().enumerate() {
        let e = sut.engine();
        let fs = &e.fs;
        let inos = sut.inos.clone();
        let ino = |f: usize| inos[f];
        match op {
            Op::Data(d) => {
                run(fs, ino, d);
                apply(&mut files, d);
            }
            Op::Read { file, offset, len } => {
                let got = fs.read(ino(*file), *offset, *len).expect("read");
                let f = &files[file];
                let from = (*offset as usize).min(f.len());
                let to = (*offset as usize + *len as usize).min(f.len());
                assert_same(
                    &format!("step {step}: read {}", name(*file)),
                    &got,
                    &f[from..to],
                );
            }
            Op::Fsync { file } => fs.fsync(ino(*file), false).expect("fsync"),
            Op::Checkpoint {
                fault,
                when,
                during,
            } => {
                // The image the cut takes, and the files once `during` has landed.
                let at_cut = files.clone();
                for d in during {
                    apply(&mut files, d);
                }
                let action: Action = {
                    let (fs, plan, during, inos) = (
                        Arc::downgrade(&e.fs),
                        e.plan.clone(),
                        during.clone(),
                        inos.clone(),
                    );
                    let fault = *fault;
                    Box::new(move || {
                        let fs = Weak::upgrade(&fs).expect("fs alive");
                        for d in &during {
                            run(&fs, |f| inos[f], d);
                        }
                        match fault {
                            Fault::None => {}
                            Fault::Upload | Fault::Commit => plan.set_outage(true),
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
                e.plan.set_outage(false);
                e.plan.lose_answers(0);
                // A checkpoint that had nothing to upload stops before either step: the
                // operations meant for inside it happen after it.
                let unreached = sut.slot.lock().expect("slot").take();
                if let Some((_, action)) = unreached {
                    action();
                    e.plan.set_outage(false);
                    e.plan.lose_answers(0);
                }
                match (&r, fault) {
                    (Ok(_), _) => {
                        committed = at_cut;
                        may_refuse = false;
                    }
                    // The first commit after a lost answer finds that epoch taken by its
                    // own earlier attempt, and says so (nothing of this one is committed).
                    (Err(err), Fault::None | Fault::LostAnswer) if may_refuse => {
                        assert!(
                            err.to_string().contains("earlier attempt"),
                            "step {step}: {err}"
                        );
                        may_refuse = false;
                    }
                    (Err(_), Fault::LostAnswer) => {
                        committed = at_cut;
                        may_refuse = true;
                    }
                    (Err(_), Fault::Upload | Fault::Commit) => {}
                    (Err(err), Fault::None) => panic!("step {step}: checkpoint failed: {err}"),
                }
            }
            Op::Evict => {
                let evictor = sut.evictor.as_ref().expect("bounded");
                evictor.run(fs).expect("evict");
            }
            Op::Crash => {
                sut = sut.crash(false);
                sut.check_all(&format!("step {step}: after a crash"), &files);
                // The takeover at restart commits nothing new: the image stays.
                may_refuse = false;
            }
            Op::CrashAt(kind) => {
                let at_cut = files.clone();
                *sut.slot.lock().expect("slot") = Some((
                    *kind,
                    Box::new(|| std::panic::panic_any(CrashHere)) as Action,
                ));
                let crashed = |r: std::thread::Result<()>| match r {
                    Ok(()) => false,
                    Err(p) if p.is::<CrashHere>() => true,
                    Err(p) => std::panic::resume_unwind(p),
                };
                let all = |e: &Engine| {
                    for f in 0..FILES {
                        e.read_all(ino(f));
                    }
                };
                let evictor = sut.evictor.as_ref().expect("bounded");
                let reached = match kind {
                    StepKind::Cut | StepKind::Uploaded | StepKind::Committed => {
                        let mut result = None;
                        let reached = crashed(std::panic::catch_unwind(AssertUnwindSafe(|| {
                            result = Some(e.cp.checkpoint(false));
                        })));
                        match result {
                            // Finished without reaching the step: nothing to upload.
                            Some(Ok(_)) => committed = at_cut.clone(),
                            // The refusal that follows a lost answer (the crash below
                            // ends that state anyway).
                            Some(Err(err)) => {
                                assert!(may_refuse, "step {step}: checkpoint failed: {err}")
                            }
                            None => {}
                        }
                        reached
                    }
                    StepKind::EvictMarked => {
                        all(e);
                        crashed(std::panic::catch_unwind(AssertUnwindSafe(|| {
                            evictor.run(fs).expect("evict");
                        })))
                    }
                    StepKind::FillFetched => {
                        evictor.run(fs).expect("evict");
                        crashed(std::panic::catch_unwind(AssertUnwindSafe(|| all(e))))
                    }
                };
                if reached && *kind == StepKind::Committed {
                    committed = at_cut;
                }
                sut.slot.lock().expect("slot").take();
                sut = sut.crash(false);
                sut.check_all(&format!("step {step}: after a crash at {kind:?}"), &files);
                may_refuse = false;
            }
            Op::Restore => {
                sut = sut.crash(true);
                sut.check_all(
                    &format!("step {step}: restored from the bucket"),
                    &committed,
                );
                files = committed.clone();
                may_refuse = false;
            }
        }
    }
    sut.check_all("at the end", &files);
    // And the bucket holds exactly the last committed image.
    let sut = sut.crash(true);
    sut.check_all("final restore", &committed);
    sut.crash(false);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::proptest_cases(256),
        max_shrink_iters: 2000,
        .. ProptestConfig::default()
    })]

    #[test]
    fn the_engine_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        check(&ops);
    }
}
