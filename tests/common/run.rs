//! `bucketfs run` as a test starts it: one log file for bucketfs and its program, and
//! nothing left behind when a test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::pg::{bin_dir, children_of, run_ok};
use super::{describe_exit, is_mounted, wait_for, BIN};

/// A running (or finished) `bucketfs run`; stdout and stderr (its own and the program's) go
/// to one log file.
pub struct Run {
    pub mnt: PathBuf,
    pub cache: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl Run {
    /// `bucketfs run MNT --cache-dir CACHE ARGS -- PROGRAM`; returns at once.
    pub fn start(
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
        program: &[&str],
    ) -> Run {
        Run::start_bin(BIN.as_ref(), dir, name, args, env, program)
    }

    /// As `start`, running the bucketfs binary at `bin`.
    pub fn start_bin(
        bin: &Path,
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
        program: &[&str],
    ) -> Run {
        let (mnt, cache) = (
            dir.join(format!("{name}-mnt")),
            dir.join(format!("{name}-cache")),
        );
        if let Err(e) = fs::create_dir_all(&mnt) {
            // A dead mount left by kill -9 (bucketfs clears it).
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::AlreadyExists,
                "mountpoint: {e}"
            );
        }
        let log = dir.join(format!("{name}-{}.log", fastrand_suffix()));
        let out = fs::File::create(&log).expect("create log");
        let child = Command::new(bin)
            .arg("run")
            .arg(&mnt)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .arg("--")
            .args(program)
            .env("BUCKETFS_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("BUCKET_NAME")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .spawn()
            .expect("spawn bucketfs run");
        Run {
            mnt,
            cache,
            log,
            child: Some(child),
            status: None,
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for bucketfs to exit; panics with the log after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "bucketfs run did not exit within {timeout:?}; its log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.status = Some(status);
        assert!(
            !is_mounted(&self.mnt),
            "still mounted after bucketfs run exited ({}):\n{}",
            describe_exit(status),
            self.log_text()
        );
        status
    }

    /// Asserts that bucketfs exited with `code`, printing the log if not.
    pub fn assert_exit(&mut self, code: i32, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert_eq!(
            status.code(),
            Some(code),
            "bucketfs run ended with {}, not exit code {code}; its log:\n{}",
            describe_exit(status),
            self.log_text()
        );
    }

    /// Stops it as Fly and Docker do (SIGTERM) and asserts a clean exit.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        self.assert_exit(0, Duration::from_secs(120));
    }

    /// Asserts that the log contains each of `words`.
    pub fn assert_log(&self, words: &[&str]) {
        let log = self.log_text();
        for w in words {
            assert!(log.contains(w), "the log lacks {w:?}:\n{log}");
        }
    }

    /// kill -9 of bucketfs and every PostgreSQL process at once, as a lost host would take
    /// them: the postmaster is stopped first so that it forks no more, then all are killed.
    pub fn kill_all(&mut self) {
        let me = self.pid();
        let programs = children_of(me);
        for &p in &programs {
            // SAFETY: signalling processes this test started.
            unsafe { libc::kill(p, libc::SIGSTOP) };
        }
        let mut all: Vec<i32> = programs.clone();
        for &p in &programs {
            all.extend(children_of(p));
        }
        // SAFETY: as above.
        unsafe { libc::kill(me, libc::SIGKILL) };
        for &p in &all {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let mut child = self.child.take().expect("running");
        self.status = Some(child.wait().expect("reap bucketfs"));
        // Gone, not only dead: a zombie's pid still counts as taken (PostgreSQL's socket lock
        // file names the killed postmaster's) until whoever adopted it reaps it.
        wait_for(
            "every killed process to be reaped",
            Duration::from_secs(60),
            || {
                all.iter()
                    .all(|&p| !Path::new(&format!("/proc/{p}")).exists())
            },
        );
    }
}

impl Run {
    /// Waits until PostgreSQL under `run` accepts connections on `sock`, `port`.
    pub fn wait_ready(&mut self, sock: &Path, port: u16) {
        let isready = super::pg::bin_dir().join("pg_isready");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                panic!(
                    "bucketfs run exited ({}) before PostgreSQL was ready:\n{}",
                    describe_exit(status),
                    self.log_text()
                );
            }
            let ok = Command::new(&isready)
                .arg("-h")
                .arg(sock)
                .args(["-p", &port.to_string(), "-q"])
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL not ready within 180 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // A failing test leaves no process or mount behind: the program dies with bucketfs.
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A scratch directory, and one in it that the programs (as postgres or nobody) can write
/// their marker files to.
pub fn dirs() -> (tempfile::TempDir, PathBuf) {
    let dir = super::scratch();
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    (dir, shared)
}

/// PostgreSQL on the mount, listening on a Unix socket in `sock` only.
pub fn postgres(mnt: &Path, sock: &Path, port: u16) -> Vec<String> {
    let (uid, gid) = super::pg::postgres_user();
    fs::create_dir_all(sock).unwrap();
    std::os::unix::fs::chown(sock, Some(uid), Some(gid)).unwrap();
    vec![
        bin_dir().join("postgres").display().to_string(),
        "-D".into(),
        mnt.display().to_string(),
        "-k".into(),
        sock.display().to_string(),
        "-p".into(),
        port.to_string(),
        "-c".into(),
        "listen_addresses=".into(),
    ]
}

/// initdb as the tests want it: trust on the socket, no locale; initdb from Debian's bin
/// directory (found beside the program when that is postgres, named for a shell).
pub fn initdb() -> Vec<String> {
    [
        "--initdb",
        "--initdb-arg=--auth=trust",
        "--initdb-arg=--no-locale",
        "--initdb-arg=--encoding=UTF8",
        "--initdb-arg=--username=postgres",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--pg-bin={}", bin_dir().display())])
    .collect()
}

/// psql as postgres on `sock`, `port`, running `sql` with unaligned, tuples-only output.
fn psql_command(sock: &Path, port: u16, sql: &str) -> Command {
    let mut cmd = super::pg::as_postgres(bin_dir().join("psql"));
    cmd.arg("-h").arg(sock).args([
        "-p",
        &port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-XAtc",
        sql,
    ]);
    cmd
}

/// psql's output, whether or not the query succeeded.
pub fn psql(sock: &Path, port: u16, sql: &str) -> std::process::Output {
    psql_command(sock, port, sql).output().expect("run psql")
}

/// One value from a query, which must succeed.
pub fn query(sock: &Path, port: u16, sql: &str) -> String {
    let out = run_ok(&mut psql_command(sock, port, sql));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
