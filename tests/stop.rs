mod common;

// A clean stop (SIGTERM, or SIGINT from Ctrl-C) exits 0 and leaves no mount behind, however
// soon after the mount it comes and whatever the mount is doing. On Fly the stop signal is the
// only chance to take the final checkpoint, and a supervisor reads any other exit as a crash.
// `Mount::stop` asserts that the mount is gone and prints the log of a stop that is not clean.

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::s3::S3Server;
use common::{describe_exit, incompressible, wait_for, Mount};

const MIB: usize = 1 << 20;

/// The signal of stop number `i`: SIGTERM and SIGINT in turn.
fn stop_signal(i: u32) -> libc::c_int {
    if i.is_multiple_of(2) {
        libc::SIGTERM
    } else {
        libc::SIGINT
    }
}

/// Mounts and stops the same cache dir `cycles` times. Every other cycle stops the moment the
/// mount is ready; the others first write a file of their own, which every later mount still
/// has.
fn stop_right_after_start(dir: &Path, cycles: u32, extra: &[&str], env: &[(&str, String)]) {
    let (mnt, cache) = (dir.join("mnt"), dir.join("cache"));
    for i in 0..cycles {
        let m = Mount::start_with_env(&mnt, &cache, extra, env);
        if !i.is_multiple_of(2) {
            fs::write(mnt.join(format!("f{i}")), i.to_le_bytes()).unwrap();
        }
        let status = m.stop_with(stop_signal(i));
        assert!(
            status.success(),
            "stop {i} of {cycles} (signal {}) was not clean: {}",
            stop_signal(i),
            describe_exit(status)
        );
    }
    let m = Mount::start_with_env(&mnt, &cache, extra, env);
    for i in (1..cycles).step_by(2) {
        assert_eq!(
            fs::read(mnt.join(format!("f{i}"))).unwrap(),
            i.to_le_bytes(),
            "file of cycle {i}"
        );
    }
    assert!(m.stop().success());
}

#[test]
fn a_stop_right_after_the_mount_is_ready_exits_0_every_time() {
    let dir = common::scratch();
    stop_right_after_start(dir.path(), 50, &[], &[]);
}

#[test]
fn a_stop_right_after_the_mount_is_ready_exits_0_every_time_with_a_bucket() {
    let dir = common::scratch();
    let s3 = S3Server::start(&dir.path().join("s3"));
    stop_right_after_start(dir.path(), 20, &["--bucket", &s3.url("db")], &s3.env());
}

/// Reads all of `f` past the kernel's page cache, so that every byte is asked of bucketfs.
fn read_all_uncached(mut f: &File, buf: &mut Vec<u8>) {
    // SAFETY: fadvise only reads the descriptor, which `f` keeps open.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "fadvise");
    buf.clear();
    std::io::Seek::rewind(&mut f).unwrap();
    f.read_to_end(buf).unwrap();
}

#[test]
fn a_stop_while_a_reader_is_busy_exits_0_once_the_reader_closes() {
    let dir = common::scratch();
    let m = Mount::start(&dir.path().join("mnt"), &dir.path().join("cache"), &[]);
    let data = incompressible(16 * MIB, 3);
    let big = m.mnt.join("big");
    fs::write(&big, &data).unwrap();
    File::open(&big).unwrap().sync_all().unwrap();

    let passes = AtomicU64::new(0);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            // Opened before the stop: the file stays readable until it is closed.
            let f = File::open(&big).unwrap();
            let mut buf = Vec::new();
            for _ in 0..8 {
                read_all_uncached(&f, &mut buf);
                assert!(buf == data, "the busy reader read other bytes");
                passes.fetch_add(1, Ordering::SeqCst);
            }
        });
        wait_for("the reader's first pass", Duration::from_secs(60), || {
            passes.load(Ordering::SeqCst) > 0 || reader.is_finished()
        });
        let status = m.stop();
        reader.join().expect("the reader ran into an error");
        assert!(status.success(), "{}", describe_exit(status));
    });
    assert_eq!(passes.load(Ordering::SeqCst), 8);
}

#[test]
fn a_stop_right_after_a_busy_reader_and_writer_finish_exits_0() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    let data = incompressible(8 * MIB, 4);
    for cycle in 0..10u32 {
        let m = Mount::start(&mnt, &cache, &[]);
        let big = mnt.join(format!("big{cycle}"));
        fs::write(&big, &data).unwrap();
        let small = mnt.join(format!("small{cycle}"));
        fs::create_dir(&small).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let f = File::open(&big).unwrap();
                let mut buf = Vec::new();
                for _ in 0..3 {
                    read_all_uncached(&f, &mut buf);
                    assert!(buf == data, "the reader read other bytes");
                }
            });
            s.spawn(|| {
                for i in 0..100u32 {
                    fs::write(small.join(format!("f{i}")), i.to_le_bytes()).unwrap();
                }
            });
        });
        let status = m.stop_with(stop_signal(cycle));
        assert!(
            status.success(),
            "stop {cycle} was not clean: {}",
            describe_exit(status)
        );
    }
    let m = Mount::start(&mnt, &cache, &[]);
    for cycle in 0..10u32 {
        assert!(fs::read(mnt.join(format!("big{cycle}"))).unwrap() == data);
        assert_eq!(
            fs::read(mnt.join(format!("small{cycle}/f99"))).unwrap(),
            99u32.to_le_bytes()
        );
    }
    assert!(m.stop().success());
}

/// Stops a mount while `clients` threads open and close its files as fast as they can, until
/// the mount is gone from under them. Every close sends the kernel's RELEASE in the background,
/// so the unmount (or, when a file is open at that moment, the last close after a lazy detach)
/// tears the connection down with requests still queued.
fn stop_under_opens_and_closes(mnt: &Path, m: Mount, clients: usize, signal: libc::c_int) {
    let opens = AtomicU64::new(0);
    let status = std::thread::scope(|s| {
        for c in 0..clients {
            let (opens, path) = (&opens, mnt.join(format!("f{}", c % 4)));
            s.spawn(move || {
                // Until the mount is gone: then the path resolves to the empty mountpoint.
                while let Ok(f) = File::open(&path) {
                    drop(f);
                    opens.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        wait_for("the clients to start", Duration::from_secs(30), || {
            opens.load(Ordering::Relaxed) >= 100
        });
        m.stop_with(signal)
    });
    assert!(status.success(), "{}", describe_exit(status));
}

#[test]
fn a_stop_while_clients_open_and_close_files_exits_0_every_time() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    for cycle in 0..20u32 {
        let m = Mount::start(&mnt, &cache, &[]);
        for i in 0..4 {
            fs::write(mnt.join(format!("f{i}")), format!("{cycle}")).unwrap();
        }
        stop_under_opens_and_closes(&mnt, m, 4, stop_signal(cycle));
    }
    let m = Mount::start(&mnt, &cache, &[]);
    assert_eq!(fs::read_to_string(mnt.join("f3")).unwrap(), "19");
    assert!(m.stop().success());
}

/// Asks the kernel to read all of `path` ahead, in the background, and closes it at once: the
/// reads stay queued in the kernel after the close.
fn read_ahead_and_close(path: &Path) {
    let f = File::open(path).unwrap();
    // SAFETY: fadvise only reads the descriptor, which `f` keeps open.
    unsafe {
        assert_eq!(
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED),
            0
        );
        assert_eq!(
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED),
            0
        );
    }
}

#[test]
fn a_stop_with_reads_ahead_still_queued_exits_0_every_time() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    let data = incompressible(64 * MIB, 5);
    let m = Mount::start(&mnt, &cache, &[]);
    fs::write(mnt.join("big"), &data).unwrap();
    File::open(mnt.join("big")).unwrap().sync_all().unwrap();
    assert!(m.stop().success());
    for cycle in 0..20u32 {
        let m = Mount::start(&mnt, &cache, &[]);
        read_ahead_and_close(&mnt.join("big"));
        let status = m.stop_with(stop_signal(cycle));
        assert!(
            status.success(),
            "stop {cycle} was not clean: {}",
            describe_exit(status)
        );
    }
    let m = Mount::start(&mnt, &cache, &[]);
    assert!(fs::read(mnt.join("big")).unwrap() == data);
    assert!(m.stop().success());
}

/// Files open on the mount when the stop signal comes keep it busy: bucketfs detaches it and
/// goes on serving them, and exits 0 once the last is closed. Many are closed at once, so that
/// the connection is torn down while the kernel still hands their RELEASE requests to bucketfs.
#[test]
fn a_stop_while_files_are_open_exits_0_once_they_are_closed_every_time() {
    let dir = common::scratch();
    let (mnt, cache) = (dir.path().join("mnt"), dir.path().join("cache"));
    for cycle in 0..30u32 {
        let m = Mount::start(&mnt, &cache, &[]);
        fs::write(mnt.join("f"), format!("{cycle}")).unwrap();
        let files: Vec<File> = (0..200)
            .map(|_| File::open(mnt.join("f")).unwrap())
            .collect();
        m.signal(stop_signal(cycle));
        wait_for("the lazy unmount", Duration::from_secs(30), || {
            !common::is_mounted(&mnt)
        });
        // Readers keep bucketfs's request threads busy up to the moment they all close.
        let go_on = AtomicBool::new(true);
        std::thread::scope(|s| {
            for chunk in files.chunks(50) {
                let go_on = &go_on;
                s.spawn(move || {
                    let mut buf = Vec::new();
                    while go_on.load(Ordering::Relaxed) {
                        read_all_uncached(&chunk[0], &mut buf);
                        assert_eq!(buf, format!("{cycle}").as_bytes(), "an open file reads");
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(20));
            go_on.store(false, Ordering::Relaxed);
        });
        drop(files);
        let status = m.wait_exit();
        assert!(
            status.success(),
            "stop {cycle} was not clean: {}",
            describe_exit(status)
        );
    }
    let m = Mount::start(&mnt, &cache, &[]);
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "29");
    assert!(m.stop().success());
}
