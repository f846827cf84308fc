//! Shared harness for tests that run the real `bucketfs` binary on a real FUSE mount.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod checkout;
pub mod engine;
pub mod moto;
pub mod pg;
pub mod run;
pub mod s3;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bucketfs");

/// The lines of object store totals in a log: one per process that logged them (a mount at
/// its stop; `bucketfs run` at each start of its mount).
pub fn logged_totals(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("object store totals for this mount"))
        .collect()
}

/// Field `name` of a line of totals.
pub fn totals_field(totals: &str, name: &str) -> u64 {
    let at = totals
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in: {totals}"))
        + name.len()
        + 2;
    let digits: String = totals[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a number")
}

/// `PROPTEST_CASES` if set (`make test-long` sets it), else `default`: the case count of the
/// model tests.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_for_or(what, timeout, cond, String::new);
}

/// `wait_for`, with what `report` says (a log, the last answer) in the panic on timeout.
pub fn wait_for_or(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    report: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                report()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Is a bucketfs filesystem mounted exactly at `path`?
pub fn is_mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let want = path.to_str().expect("test paths are UTF-8");
    info.lines().any(|l| {
        let mut parts = l.split(" - ");
        let left = parts.next().unwrap_or_default();
        let right = parts.next().unwrap_or_default();
        left.split(' ').nth(4) == Some(want) && right.split(' ').nth(1) == Some("bucketfs")
    })
}

/// The directory in /sys/class/bdi of the mount at `mnt`: the kernel's writeback settings for
/// it, named after its device (MAJOR:MINOR in mountinfo).
pub fn bdi_of(mnt: &Path) -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let want = mnt.to_str().expect("test paths are UTF-8");
    let dev = info
        .lines()
        .rev()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&want))
        .map(|f| f[2].to_owned())
        .expect("the mount is in mountinfo");
    Path::new("/sys/class/bdi").join(dev)
}

/// A running `bucketfs mount`, with its mountpoint and cache dir.
pub struct Mount {
    pub mnt: PathBuf,
    pub cache: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Mount {
    /// Mounts `cache` on `mnt` (both created if missing) and waits until the kernel serves it.
    pub fn start(mnt: &Path, cache: &Path, extra: &[&str]) -> Mount {
        Mount::start_with_env(mnt, cache, extra, &[])
    }

    /// As `start`, with extra environment variables for bucketfs (S3 settings).
    pub fn start_with_env(
        mnt: &Path,
        cache: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Mount {
        if let Err(e) = fs::create_dir_all(mnt) {
            // A dead mount left by kill -9 answers ENOTCONN to stat (so create_dir_all calls
            // it "exists"); bucketfs itself clears it.
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::AlreadyExists,
                "create mountpoint: {e}"
            );
        }
        let log = cache.with_extension("log");
        let child = Command::new(BIN)
            .arg("mount")
            .arg(mnt)
            .arg("--cache-dir")
            .arg(cache)
            .args(extra)
            // Tests run many mounts at once: each serves its metrics on a port of its own
            // (a test that needs one finds it in the status).
            .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn bucketfs");
        let mut m = Mount {
            mnt: mnt.to_owned(),
            cache: cache.to_owned(),
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().expect("wait") {
                panic!("bucketfs exited early ({status}):\n{}", m.log_text());
            }
            if is_mounted(mnt) && fs::read_dir(mnt).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mount not ready:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `bucketfs checkpoint` on this mount: a checkpoint committed when it returns.
    pub fn checkpoint(&self) {
        let out = Command::new(BIN)
            .args(["checkpoint", "--cache-dir"])
            .arg(&self.cache)
            .output()
            .expect("run bucketfs checkpoint");
        assert!(
            out.status.success(),
            "bucketfs checkpoint failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What `bucketfs status --json` says of this mount.
    pub fn status(&self) -> bucketfs::status::Status {
        let out = Command::new(BIN)
            .args(["status", "--json", "--cache-dir"])
            .arg(&self.cache)
            .output()
            .expect("run bucketfs status");
        assert!(
            out.status.success(),
            "bucketfs status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for the exit and the mount to be gone. A stop that is not clean (an
    /// exit code other than 0, or death by a signal) prints how it ended and the mount's log on
    /// stderr, which the test's output shows when the caller's assertion fails.
    pub fn stop(self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// As `stop`, with another stop signal (SIGINT: Ctrl-C).
    pub fn stop_with(self, signal: libc::c_int) -> ExitStatus {
        self.signal(signal);
        self.wait_exit()
    }

    /// Sends `signal` to bucketfs and returns at once.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Waits for bucketfs to exit (after a stop signal) and checks that the mount is gone; the
    /// log of an exit that is not clean is printed, as for `stop`.
    pub fn wait_exit(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = wait_child(&mut child, Duration::from_secs(60), &self.log);
        if !status.success() {
            eprintln!(
                "bucketfs on {} did not stop cleanly: {}; its log ({}):\n{}",
                self.mnt.display(),
                describe_exit(status),
                self.log.display(),
                self.log_text()
            );
        }
        assert!(
            !is_mounted(&self.mnt),
            "still mounted after stop ({}):\n{}",
            describe_exit(status),
            self.log_text()
        );
        status
    }

    /// kill -9: the process dies at once, leaving a dead mount (which the next mount clears).
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9 bucketfs");
        child.wait().expect("reap bucketfs");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A failing test must not leave a live mount behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Waits for `child` to exit. One that does not within `timeout` is reported with its log and
/// what each of its threads is blocked in, then killed, so that no process is left behind.
fn wait_child(child: &mut Child, timeout: Duration, log: &Path) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let threads = thread_report(child.id());
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bucketfs did not exit within {timeout:?}; its threads:\n{threads}\nits log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a process ended, in words: its exit code, or the signal that killed it.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig}{}",
            if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        _ => status.to_string(),
    }
}

/// Each thread of process `pid`: its name, state and kernel stack (root can read them).
fn thread_report(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let p = task.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or_default()
            .to_owned();
        out += &format!(
            "{} {} {}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            state,
            read("stack")
        );
    }
    out
}

/// A scratch directory that other users (postgres) can traverse.
pub fn scratch() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("bucketfs-test-")
        .tempdir()
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod scratch");
    dir
}

/// `len` bytes of xorshift64 output from `seed`: data that zstd cannot shrink, so segments
/// keep the sizes a test counts on.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// GETs `path` from a mount's metrics endpoint (`addr`): (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to metrics");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read answer");
    let code = text[9..12].parse().expect("status code");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_string())
}

/// Reads a whole file through a mount, past the kernel's page cache: its cached pages are
/// dropped first, so every byte is asked of bucketfs.
pub fn read_uncached(path: &Path) -> Vec<u8> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut f = fs::File::open(path).expect("open");
    // SAFETY: fadvise only reads the descriptor, which `f` keeps open.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "fadvise");
    let mut out = Vec::new();
    f.read_to_end(&mut out).expect("read");
    out
}

/// The value of an unlabelled sample (or the sum of a labelled family's samples).
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

pub fn promtool_check(text: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `root` with its bytes, to prove that nothing was touched.
pub fn tree(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path.clone());
                out.insert(path, Vec::new());
            } else {
                let bytes = fs::read(&path).expect("read");
                out.insert(path, bytes);
            }
        }
    }
    out
}
