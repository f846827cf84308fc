//! Runs a real PostgreSQL server (Debian's package) as the postgres user, for end-to-end tests
//! and benchmarks on a bucketfs mount.

use std::ffi::CString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::wait_for;

/// The postgres user's uid and gid.
pub fn postgres_user() -> (u32, u32) {
    let name = CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no postgres user: install Debian's postgresql package"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// The newest installed PostgreSQL server's bin directory.
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL server version").1
}

/// A command run as the postgres user.
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let (uid, gid) = postgres_user();
    let mut cmd = Command::new(program);
    cmd.uid(uid).gid(gid).env("HOME", "/tmp").env("LC_ALL", "C");
    cmd
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Where a PostgreSQL server listens (a Unix socket): what a client needs, whoever started
/// the server (a test, or `bucketfs run`).
pub struct Server {
    pub socket_dir: PathBuf,
    pub port: u16,
}

/// A PostgreSQL server on a data directory, listening only on a Unix socket.
pub struct Postgres {
    pub data: PathBuf,
    pub log: PathBuf,
    server: Server,
    child: Option<Child>,
}

impl std::ops::Deref for Postgres {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Postgres {
    /// initdb into `data` (which the postgres user must be able to create or own).
    pub fn initdb(data: &Path) {
        run_ok(
            as_postgres(bin_dir().join("initdb"))
                .arg("-D")
                .arg(data)
                .args([
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--no-locale",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ])
                .stdout(Stdio::null()),
        );
    }

    /// Starts the server (in its own process group, away from the test runner's signals)
    /// and waits until it accepts connections.
    pub fn start(data: &Path, socket_dir: &Path, port: u16, extra: &[&str]) -> Postgres {
        let (uid, gid) = postgres_user();
        fs::create_dir_all(socket_dir).unwrap();
        std::os::unix::fs::chown(socket_dir, Some(uid), Some(gid)).unwrap();
        let log = socket_dir.join(format!("postgres-{port}.log"));
        let logfile = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        std::os::unix::fs::chown(&log, Some(uid), Some(gid)).unwrap();
        let child = as_postgres(bin_dir().join("postgres"))
            .arg("-D")
            .arg(data)
            .arg("-k")
            .arg(socket_dir)
            .args(["-p", &port.to_string(), "-c", "listen_addresses="])
            .args(extra.iter().flat_map(|s| ["-c", s]))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("start postgres");
        let mut pg = Postgres {
            data: data.to_owned(),
            log,
            server: Server {
                socket_dir: socket_dir.to_owned(),
                port,
            },
            child: Some(child),
        };
        let isready = bin_dir().join("pg_isready");
        wait_for(
            "postgres to accept connections",
            Duration::from_secs(300),
            || {
                if let Some(status) = pg.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("postgres exited ({status}):\n{}", pg.log_text());
                }
                Command::new(&isready)
                    .arg("-h")
                    .arg(socket_dir)
                    .args(["-p", &port.to_string(), "-q"])
                    .status()
                    .unwrap()
                    .success()
            },
        );
        pg
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Did this start run crash recovery (the data directory was not shut down cleanly)?
    pub fn ran_crash_recovery(&self) -> bool {
        let log = self.log_text();
        log.contains("database system was interrupted") || log.contains("not properly shut down")
    }

    /// kill -9 of the postmaster and every backend at once; waits until all are gone.
    pub fn kill_all(mut self) {
        let child = self.child.take().unwrap();
        kill_server(child);
    }
}

impl Server {
    pub fn conn_str(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    pub fn connect(&self) -> postgres::Client {
        postgres::Client::connect(&self.conn_str(), postgres::NoTls).expect("connect to postgres")
    }

    /// A client tool (psql, pgbench, pg_amcheck) pointed at this server.
    pub fn tool(&self, name: &str) -> Command {
        let mut cmd = as_postgres(bin_dir().join(name));
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }

    /// One value from a query, as text.
    pub fn query_one(&self, sql: &str) -> String {
        let out = run_ok(self.tool("psql").args(["-d", "postgres", "-XAtc", sql]));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// pg_amcheck of every database: heaps, B-tree indexes, and every heap tuple found in its
    /// indexes. Panics with what it reports.
    pub fn amcheck(&self) {
        run_ok(
            self.tool("pg_amcheck")
                .args(["--all", "--install-missing", "--heapallindexed"]),
        );
    }

    /// Row count and an order-independent checksum of every row of each table: equal digests
    /// mean equal contents.
    pub fn digest(&self, tables: &[&str]) -> Vec<(String, String)> {
        tables
            .iter()
            .map(|t| (t.to_string(), self.query_one(&digest_sql(t))))
            .collect()
    }
}

impl Postgres {
    /// Fast shutdown (SIGINT), waiting for the server to exit.
    pub fn stop(mut self) {
        let child = self.child.take().unwrap();
        let pid = child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        // A clean shutdown: the postmaster exits only after every backend has.
        reap(child);
    }
}

/// The query behind `Server::digest`: a table's row count and an order-independent
/// checksum of its rows.
pub fn digest_sql(table: &str) -> String {
    format!("SELECT count(*) || ':' || coalesce(sum(hashtext(x::text)::bigint), 0) FROM {table} x")
}

/// SIGKILL of a postmaster and all its backends, as a crash would take them. Backends call
/// setsid(), so they are not in the postmaster's process group: stop the postmaster (no more
/// forks), list its children, kill them all, and wait until every one is gone. A backend left
/// alive would wait forever on a lock that a killed one held.
fn kill_server(mut child: Child) {
    let pid = child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let backends = children_of(pid);
    for &b in &backends {
        // SAFETY: signalling a backend of the server this test started.
        unsafe { libc::kill(b, libc::SIGKILL) };
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    child.wait().expect("reap postgres");
    wait_for(
        "every postgres backend to exit",
        Duration::from_secs(120),
        || backends.iter().all(|&b| !alive(b)),
    );
}

/// The pids whose parent is `parent` (from /proc).
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if stat_fields(pid).is_some_and(|(_, ppid)| ppid == parent) {
            out.push(pid);
        }
    }
    out
}

/// (state, ppid) from /proc/PID/stat; the command name may hold spaces, so parse after ')'.
fn stat_fields(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Exists and is not a zombie (a zombie has exited; only its parent's wait is missing).
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

fn reap(mut child: Child) {
    child.wait().expect("reap postgres");
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_server(child);
        }
    }
}
