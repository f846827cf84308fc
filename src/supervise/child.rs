//! Processes `run` starts: the user they run as, how they are started, and how their ends
//! are read.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The variables a child never inherits: the bucket's credentials are bucketfs's business.
/// (A PostgreSQL superuser can read the server's environment, e.g. through COPY PROGRAM.)
pub const SECRET_VARS: [&str; 3] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// The user children run as, resolved once before any thread starts (getpwnam and
/// getgrouplist are not thread-safe, and nothing but system calls may run between fork and
/// exec).
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups, as initgroups would set them.
    pub groups: Vec<libc::gid_t>,
    pub home: PathBuf,
}

impl User {
    /// Whether this user may execute `path`: x on the file and on every directory above it,
    /// by the mode bits that apply to the user (owner, group, or other).
    pub fn can_execute(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.uid == 0 {
            return true;
        }
        let allows = |m: &std::fs::Metadata| {
            let mode = m.mode();
            if m.uid() == self.uid {
                mode & 0o100 != 0
            } else if m.gid() == self.gid || self.groups.contains(&m.gid()) {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            }
        };
        path.ancestors()
            .all(|p| p.as_os_str().is_empty() || std::fs::metadata(p).is_ok_and(|m| allows(&m)))
    }

    pub fn lookup(name: &str) -> anyhow::Result<User> {
        let c = CString::new(name).context("--user: the name has a NUL byte")?;
        // SAFETY: getpwnam returns a pointer into static storage or null; everything is copied
        // out before the next call that could overwrite it. Called before other threads exist.
        let (uid, gid, home) = unsafe {
            let pw = libc::getpwnam(c.as_ptr());
            if pw.is_null() {
                bail!("--user {name}: no such user");
            }
            let home = std::ffi::CStr::from_ptr((*pw).pw_dir);
            (
                (*pw).pw_uid,
                (*pw).pw_gid,
                PathBuf::from(OsStr::from_bytes(home.to_bytes())),
            )
        };
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        loop {
            let mut n = groups.len() as libc::c_int;
            // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that many
            // and sets `n` to the count it needs.
            let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
            if r >= 0 {
                groups.truncate(n.max(0) as usize);
                break;
            }
            if groups.len() >= 1 << 16 {
                bail!("--user {name}: too many groups");
            }
            let want = (n.max(0) as usize).max(groups.len() * 2);
            groups.resize(want, 0);
        }
        Ok(User {
            name: name.to_string(),
            uid,
            gid,
            groups,
            home,
        })
    }
}

/// Starts `program` with `args` as `user`: in a process group of its own (a terminal's
/// Ctrl-C reaches bucketfs, which passes it on), with no signal blocked, in `/`, without the
/// bucket's credentials, with `env` set, and killed if bucketfs dies (its mount is gone
/// then). Returns the pid; `reap` reads its end.
pub fn spawn(
    user: &User,
    program: &OsStr,
    args: &[OsString],
    env: &[(&str, &OsStr)],
) -> anyhow::Result<libc::pid_t> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir("/")
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .envs(env.iter().copied());
    for var in SECRET_VARS {
        cmd.env_remove(var);
    }
    let (uid, gid, groups) = (user.uid, user.gid, user.groups.clone());
    // SAFETY: getpid is async-signal-safe; read here, in the parent.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and makes only system calls (no
    // allocation: `groups` was allocated before the fork).
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::setpgid(0, 0))?;
            // bucketfs blocks the signals it waits for; the child must get them.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &none,
                std::ptr::null_mut(),
            ))?;
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            // After setuid, which clears it.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            if libc::getppid() != parent {
                // bucketfs died before the line above: nobody serves the mount.
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", Path::new(program).display()))?;
    // The std handle is dropped unwaited: `reap` waits for every child, this one included.
    Ok(child.id() as libc::pid_t)
}

/// One child that has ended: its pid and raw wait status.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub pid: libc::pid_t,
    pub status: libc::c_int,
}

impl Ended {
    /// The exit status a shell would give: the code, or 128 + the signal.
    pub fn code(&self) -> u8 {
        let s = self.status;
        if libc::WIFEXITED(s) {
            libc::WEXITSTATUS(s) as u8
        } else if libc::WIFSIGNALED(s) {
            128u8.saturating_add(libc::WTERMSIG(s) as u8)
        } else {
            1
        }
    }

    pub fn describe(&self) -> String {
        let s = self.status;
        if libc::WIFEXITED(s) {
            format!("exit code {}", libc::WEXITSTATUS(s))
        } else if libc::WIFSIGNALED(s) {
            format!("killed by signal {}", libc::WTERMSIG(s))
        } else {
            format!("wait status {s}")
        }
    }
}

/// Every child that has ended so far, without waiting. bucketfs is the reaper of every
/// process orphaned below it (PID 1, or a child subreaper), so zombies are collected here.
pub fn reap() -> Vec<Ended> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-parameter.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return out;
        }
        out.push(Ended { pid, status });
    }
}

/// The pids whose parent is this process (children, and orphans it adopted).
pub fn children() -> Vec<libc::pid_t> {
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| parent_of(pid) == Some(me))
        .collect()
}

/// The parent of `pid`, from /proc (the name may hold spaces and parentheses: parse after
/// the last ')').
fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, signal) };
}

/// Where a program named on the command line is, for running it from `/`: a relative path
/// becomes absolute; a bare name is left for PATH.
pub fn resolve_program(program: &OsStr) -> anyhow::Result<OsString> {
    let p = Path::new(program);
    if p.is_absolute() || !program.to_string_lossy().contains('/') {
        return Ok(program.to_owned());
    }
    Ok(std::path::absolute(p)
        .with_context(|| format!("resolve {}", p.display()))?
        .into_os_string())
}

/// The first `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_a_shells() {
        let exited = |c: i32| Ended {
            pid: 1,
            status: c << 8,
        };
        assert_eq!(exited(0).code(), 0);
        assert_eq!(exited(3).code(), 3);
        let killed = Ended { pid: 1, status: 9 };
        assert_eq!(killed.code(), 137);
        assert_eq!(killed.describe(), "killed by signal 9");
    }

    #[test]
    fn root_is_a_user_with_groups() {
        let root = User::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert!(User::lookup("no-such-user-here").is_err());
    }
}
