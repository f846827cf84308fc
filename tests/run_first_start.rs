//! `bucketfs run --initdb --initdb-command`: a first start made the way an image's entrypoint
//! makes one (initdb, then a temporary server for its init scripts, then that server
//! stopped), stopped or lost in the middle and started again. For real: a FUSE mount, a
//! `file://` bucket, Debian's PostgreSQL as the postgres user.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pg::bin_dir;
use common::run::{dirs, postgres, query, strs, Run};
use common::wait_for;

/// Where the temporary server of the init script listens (a socket only).
const INIT_PORT: u16 = 56_421;
/// Where the program, PostgreSQL on the made database, listens.
const PORT: u16 = 56_422;

/// An init script shaped like an image's first start: initdb into $PGDATA (with the
/// --initdb-args), a temporary server on it, a table made through it, the server stopped.
/// While `shared/hold` exists it waits in a foreground `cat` of the FIFO `shared/fifo` (which
/// nothing ever writes) once the table is made, having created `shared/holding`: the point
/// where the database is half made and a server runs on it. A SIGTERM then makes it exit 0.
fn init_script(shared: &Path) -> PathBuf {
    let sock = shared.join("init-sock");
    fs::create_dir(&sock).unwrap();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o777)).unwrap();
    let fifo = shared.join("fifo");
    let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
    // SAFETY: a valid C string; mkfifo has no memory effects.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo");
    let script = shared.join("first-start.sh");
    fs::write(
        &script,
        format!(
            r#"#!/bin/bash
set -euo pipefail
bin={bin}
"$bin/initdb" -D "$PGDATA" --auth=trust --no-locale --encoding=UTF8 --username=postgres "$@"
"$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses= -k {sock} -p {INIT_PORT}" -w start
"$bin/psql" -X -v ON_ERROR_STOP=1 -h {sock} -p {INIT_PORT} -U postgres -d postgres \
    -c "CREATE TABLE made_by_init (pgdata text); INSERT INTO made_by_init VALUES ('$PGDATA')"
if [ -e {shared}/hold ]; then
    # A command that takes the stop and exits 0 all the same: its database is half made.
    trap 'echo "init script: SIGTERM, exiting 0"; exit 0' TERM
    touch {shared}/holding
    cat {shared}/fifo > /dev/null || true
fi
"$bin/pg_ctl" -D "$PGDATA" -m fast -w stop
"#,
            bin = bin_dir().display(),
            sock = sock.display(),
            shared = shared.display(),
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The `run` flags: --initdb with the script, one --initdb-arg, a `file://` bucket.
fn first_start_args(dir: &Path, script: &Path) -> Vec<String> {
    vec![
        "--bucket".into(),
        format!("file://{}", dir.join("bucket").display()),
        "--initdb".into(),
        format!("--initdb-command={}", script.display()),
        "--initdb-arg=--data-checksums".into(),
    ]
}

/// A first start stopped in the middle of its init script (a server running on the half-made
/// database) stops at once, leaves no database and no process behind, and starts nothing; a
/// lost machine at the same point leaves nothing a later start takes for a database; the
/// next start makes it whole, once, and PostgreSQL then runs on it.
#[test]
fn a_first_start_stopped_or_lost_in_its_init_script_is_made_again_whole() {
    let (dir, shared) = dirs();
    let script = init_script(&shared);
    let args = first_start_args(dir.path(), &script);
    let sock = dir.path().join("sock");
    let pg = postgres(&dir.path().join("a-mnt"), &sock, PORT);
    let holding = shared.join("holding");
    fs::write(shared.join("hold"), b"").unwrap();

    // A stop signal while the script waits in a foreground process, a server running on
    // its PGDATA: SIGTERM reaches the script's process group, the server is ended with the
    // rest, and bucketfs exits well before the program's share of --stop-timeout (70 s at
    // least) would have run out.
    let mut a = Run::start(dir.path(), "a", &strs(&args), &[], &strs(&pg));
    wait_for("the init script to hold", Duration::from_secs(120), || {
        holding.exists()
    });
    assert!(a.mnt.join(".bucketfs-initdb/PG_VERSION").exists());
    assert!(
        !a.mnt.join("PG_VERSION").exists(),
        "a half-made database is at the mount's root"
    );
    let server = fs::read_to_string(a.mnt.join(".bucketfs-initdb/postmaster.pid")).unwrap();
    let server: i32 = server.lines().next().unwrap().parse().unwrap();
    // A reload request first: no server of the program's runs yet, and a shell dies of it.
    a.signal(libc::SIGHUP);
    wait_for("the SIGHUP to be logged", Duration::from_secs(30), || {
        a.log_text().contains("nothing to reload")
    });
    a.signal(libc::SIGTERM);
    a.assert_exit(0, Duration::from_secs(60));
    let log = a.log_text();
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("the log lacks {what:?}:\n{log}"))
    };
    // The script's server is ended before its directory goes, and the script's exit 0
    // after the stop does not make its half-made database a made one.
    assert!(at("sent=\"SIGTERM\" pid=") < at("init script: SIGTERM, exiting 0"));
    assert!(at("group=true") < at("ending the processes the program left"));
    assert!(
        at("ending the processes the program left")
            < at("making the new database was stopped; the next start makes it again status=exit code 0")
    );
    assert!(
        !log.contains("starting the program") && !log.contains("initdb done"),
        "the program started:\n{log}"
    );
    assert!(
        !common::pg::alive(server),
        "the init script's server outlived bucketfs"
    );

    // A lost machine at the same point: everything killed at once.
    fs::remove_file(&holding).unwrap();
    let mut b = Run::start(dir.path(), "a", &strs(&args), &[], &strs(&pg));
    wait_for(
        "the init script to hold again",
        Duration::from_secs(120),
        || holding.exists(),
    );
    assert!(
        !b.log_text().contains("an initdb that did not finish"),
        "the stopped start left its directory:\n{}",
        b.log_text()
    );
    b.kill_all();

    // The next start: what the lost one left is removed, the script runs again to its end,
    // and PostgreSQL starts on what it made.
    fs::remove_file(shared.join("hold")).unwrap();
    let mut c = Run::start(dir.path(), "a", &strs(&args), &[], &strs(&pg));
    c.wait_ready(&sock, PORT);
    c.assert_log(&[
        "removing what an initdb that did not finish left",
        "initdb done",
        "starting the program",
    ]);
    let made = query(
        &sock,
        PORT,
        "SELECT count(*) || ' ' || min(pgdata) FROM made_by_init",
    );
    assert_eq!(
        made,
        format!("1 {}", c.mnt.join(".bucketfs-initdb").display()),
        "the script made its table once, in the PGDATA bucketfs gave it"
    );
    assert_eq!(query(&sock, PORT, "SHOW data_checksums"), "on");
    c.stop();
}

/// A command that exits 0 without making a database is an error, not an empty data
/// directory handed to the program.
#[test]
fn an_initdb_command_that_makes_no_database_fails_the_start() {
    let (dir, shared) = dirs();
    let args = [
        "--initdb".to_string(),
        "--initdb-command=/bin/true".to_string(),
    ];
    let marker = shared.join("started");
    let touch = format!("touch {}", marker.display());
    let mut r = Run::start(
        dir.path(),
        "a",
        &strs(&args),
        &[],
        &["/bin/sh", "-c", &touch],
    );
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["/bin/true exited 0 but made no database in PGDATA"]);
    assert!(!marker.exists(), "the program started");
}

/// `--initdb-command` needs `--initdb`, and a command that is not there is refused at once,
/// not at the first start of a new database months later; neither mounts or starts anything.
#[test]
fn an_initdb_command_without_initdb_or_not_there_is_refused() {
    let (dir, shared) = dirs();
    let marker = shared.join("started");
    let touch = format!("touch {}", marker.display());
    let program = ["/bin/sh", "-c", touch.as_str()];
    let mut r = Run::start(
        dir.path(),
        "a",
        &["--initdb-command=/bin/true"],
        &[],
        &program,
    );
    r.assert_exit(2, Duration::from_secs(60));
    r.assert_log(&["required arguments were not provided:\n  --initdb\n"]);
    let missing = dir.path().join("no-such-script");
    let flag = format!("--initdb-command={}", missing.display());
    let mut r = Run::start(dir.path(), "b", &["--initdb", &flag], &[], &program);
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["no-such-script is not a file"]);
    let mut r = Run::start(
        dir.path(),
        "c",
        &["--initdb", "--initdb-command=no-such-command-anywhere"],
        &[],
        &program,
    );
    r.assert_exit(1, Duration::from_secs(60));
    r.assert_log(&["no no-such-command-anywhere on PATH"]);
    assert!(!marker.exists(), "the program started");
}
