//! The real linters: hadolint and dclint, pinned and installed by scripts/setup.sh, and
//! Debian's shellcheck, which it installs with the other packages.

use super::*;

// ------------------------------------------------------------------------------------------
// The real linters

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub(crate) fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

/// Where scripts/setup.sh installs dclint ($BUCKETFS_TOOLS, as for tests/posix.rs's tools).
pub(crate) fn dclint_default() -> PathBuf {
    std::env::var_os("BUCKETFS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/bucketfs-tools"))
        .join("dclint/node_modules/.bin/dclint")
}

/// A linter's path: the override variable, or where scripts/setup.sh installs it. Outside CI a
/// missing linter is a notice; in CI, a failure.
pub(crate) fn linter(var: &str, default: PathBuf, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} is missing (run scripts/setup.sh, or set {var})",
        path.display()
    );
    assert!(!in_ci(), "{test}: {why}; CI must run it");
    eprintln!("{test}: skipped: {why}");
    None
}

/// Runs a linter; returns its complaint, or None when it passes.
pub(crate) fn run_linter(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    if out.status.success() {
        return None;
    }
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

pub(crate) fn hadolint(dockerfile: &Path) -> Option<String> {
    let bin = linter(
        "BUCKETFS_HADOLINT",
        home().join(".cache/bucketfs-venv/bin/hadolint"),
        "hadolint",
    )?;
    // Every level fails, style included; the one rule the file waives (DL3008, apt version pins, which Debian
    // and Ubuntu archives do not keep) is waived in the file itself, with the reason.
    run_linter(
        Command::new(bin)
            .args(["--no-color", "--failure-threshold", "style"])
            .arg(dockerfile),
    )
}

pub(crate) fn dclint(compose: &Path) -> Option<String> {
    let bin = linter("BUCKETFS_DCLINT", dclint_default(), "dclint")?;
    run_linter(
        Command::new(bin)
            .args(["--no-color", "--max-warnings", "0", "-c"])
            .arg(root().join("docker/dclint.json"))
            .arg(compose),
    )
}

/// shellcheck of a bash script, every level (style included).
pub(crate) fn shellcheck(script: &Path) -> Option<String> {
    let bin = linter(
        "BUCKETFS_SHELLCHECK",
        PathBuf::from("/usr/bin/shellcheck"),
        "shellcheck",
    )?;
    run_linter(
        Command::new(bin)
            .args(["--color=never", "--severity=style", "--shell=bash"])
            .arg(script),
    )
}
