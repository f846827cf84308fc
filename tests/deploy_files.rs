//! Static checks of what bucketfs ships for deployment: docker/Dockerfile, docker/compose.yaml
//! with docker/.env.sample, fly.toml and oriole/. No engine or image registry is reachable
//! where tests run, so nothing here builds or starts a container; everything the image does at
//! run time lives in `bucketfs run`, which is tested for real. What is checked here:
//!
//! - each file parses (fly.toml as TOML, compose.yaml as YAML) and uses only the keys its
//!   platform documents (Fly's fly.toml reference; the Compose specification);
//! - the values bucketfs relies on: raw TCP 5432, autostop by stop, a kill timeout that covers
//!   the final checkpoint, the cache on a volume, metrics off the public internet, FUSE device
//!   and capability, pinned images, SCRAM only, OrioleDB settings;
//! - the files agree with each other: one mountpoint, one cache dir, one stop signal, one
//!   stop budget;
//! - no credential is in any of them;
//! - the real linters agree: hadolint for the Dockerfile, dclint (the Compose specification's
//!   JSON schema plus its rules) for compose.yaml, both installed pinned by scripts/setup.sh.
//!   Without them the test says so and skips that part; under CI=true it fails instead.
//!
//! Every check is a function from file text to a list of problems, and
//! `each_check_catches_a_broken_file` proves, case by case, that a broken copy of a real file
//! is caught.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bucketfs::config::{parse_duration, parse_size};
use toml_edit::{DocumentMut, Item, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// The files, read from the repository.
#[derive(Clone)]
struct Files {
    dockerfile: String,
    dockerignore: String,
    compose: String,
    env_sample: String,
    fly: String,
    pg_conf: String,
    pg_hba: String,
    init_sql: String,
    toolchain: String,
    gitignore: String,
    guide: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

impl Files {
    fn load() -> Files {
        Files {
            dockerfile: read("docker/Dockerfile"),
            dockerignore: read(".dockerignore"),
            compose: read("docker/compose.yaml"),
            env_sample: read("docker/.env.sample"),
            fly: read("fly.toml"),
            pg_conf: read("oriole/postgresql.conf"),
            pg_hba: read("oriole/pg_hba.conf"),
            init_sql: read("oriole/init.sql"),
            toolchain: read("rust-toolchain.toml"),
            gitignore: read(".gitignore"),
            guide: read("docs/deploy-fly.md"),
        }
    }

    /// Every problem in every file.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let docker = match Dockerfile::parse(&self.dockerfile) {
            Ok(d) => d,
            Err(e) => return vec![format!("docker/Dockerfile: {e}")],
        };
        let pg = PgConf::parse(&self.pg_conf);
        out.extend(dockerfile_problems(self, &docker, &pg));
        out.extend(oriole_problems(self, &docker, &pg));
        out.extend(fly_problems(&self.fly, &docker));
        out.extend(compose_problems(&self.compose, &self.env_sample, &docker));
        out.extend(env_sample_problems(&self.env_sample, &self.gitignore));
        out.extend(guide_problems(&self.guide, &self.fly));
        out
    }
}

// ------------------------------------------------------------------------------------------
// Secrets: names that say "secret" must not carry values, and no value may look like a key.

/// A name that holds a credential by convention.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "TOKEN",
        "PRIVATE",
        "CREDENTIAL",
        "ACCESS_KEY",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n.ends_with("_KEY")
}

/// A value that looks like a real credential: Tigris keys (tid_/tsec_), AWS key ids, or a long
/// run of key-like characters. URLs, paths and sizes are not.
fn credential_value(v: &str) -> bool {
    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
    if v.starts_with("tid_") || v.starts_with("tsec_") || v.starts_with("AKIA") {
        return v.len() > 8;
    }
    let keyish = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-'));
    let has_digit = v.chars().any(|c| c.is_ascii_digit());
    let has_alpha = v.chars().any(|c| c.is_ascii_alphabetic());
    keyish && has_digit && has_alpha && v.len() >= 20 && !v.contains("//")
}

// ------------------------------------------------------------------------------------------
// Dockerfile

struct Instr {
    line: usize,
    op: String,
    args: String,
}

struct Stage {
    image: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    /// Instructions with line continuations joined and comments dropped.
    fn parse(text: &str) -> Result<Dockerfile, String> {
        let mut stages: Vec<Stage> = Vec::new();
        let mut pending: Option<(usize, String)> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if pending.is_none() && (line.is_empty() || line.starts_with('#')) {
                continue;
            }
            if pending.is_some() && line.starts_with('#') {
                continue;
            }
            if stages.is_empty()
                && pending.is_none()
                && line.to_ascii_uppercase().starts_with("ARG ")
            {
                continue; // ARG before the first FROM is legal (it parameterises FROM)
            }
            let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
            if let Some(body) = line.strip_suffix('\\') {
                acc.push_str(body);
                acc.push(' ');
                pending = Some((start, acc));
                continue;
            }
            acc.push_str(line);
            let (op, args) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
            let instr = Instr {
                line: start,
                op: op.to_ascii_uppercase(),
                args: args.trim().to_string(),
            };
            if instr.op == "FROM" {
                let words: Vec<&str> = instr.args.split_whitespace().collect();
                let words: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
                let name = match words.as_slice() {
                    [_, as_kw, n] if as_kw.eq_ignore_ascii_case("as") => Some(n.to_string()),
                    _ => None,
                };
                stages.push(Stage {
                    image: words.first().map(|s| s.to_string()).unwrap_or_default(),
                    name,
                    instrs: Vec::new(),
                });
            } else {
                stages
                    .last_mut()
                    .ok_or_else(|| format!("line {start}: {} before the first FROM", instr.op))?
                    .instrs
                    .push(instr);
            }
        }
        if pending.is_some() {
            return Err("ends in a line continuation".into());
        }
        if stages.is_empty() {
            return Err("no FROM".into());
        }
        Ok(Dockerfile { stages })
    }

    fn last(&self) -> &Stage {
        self.stages
            .last()
            .expect("parse refuses a file without FROM")
    }

    /// The JSON-array form of ENTRYPOINT or CMD in the final stage (the last one wins).
    fn exec_form(&self, op: &str) -> Result<Vec<String>, String> {
        let instr = self
            .last()
            .instrs
            .iter()
            .rev()
            .find(|i| i.op == op)
            .ok_or_else(|| format!("the final stage has no {op}"))?;
        serde_json::from_str(&instr.args)
            .map_err(|_| format!("line {}: {op} is not a JSON array (exec form)", instr.line))
    }

    /// ENTRYPOINT followed by CMD: the command the container runs.
    fn command(&self) -> Result<Vec<String>, String> {
        let mut v = self.exec_form("ENTRYPOINT")?;
        v.extend(self.exec_form("CMD").unwrap_or_default());
        Ok(v)
    }

    /// ENV of the final stage, `K=V` pairs (quotes removed).
    fn env(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for i in self.last().instrs.iter().filter(|i| i.op == "ENV") {
            for (k, v) in split_env(&i.args) {
                out.insert(k, v);
            }
        }
        out
    }

    fn stop_signal(&self) -> Option<String> {
        let i = self
            .last()
            .instrs
            .iter()
            .rev()
            .find(|i| i.op == "STOPSIGNAL")?;
        Some(i.args.trim().to_string())
    }
}

/// `A=1 B="two words"` → pairs.
fn split_env(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.push((key, value));
        rest = tail.trim();
    }
    out
}

/// The value given to `flag` in a command line, if any.
fn flag_value<'a>(cmd: &'a [String], flag: &str) -> Option<&'a str> {
    let end = cmd.iter().position(|a| a == "--").unwrap_or(cmd.len());
    let args = &cmd[..end];
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(|s| s.as_str())
        } else {
            a.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
        }
    })
}

/// `bucketfs run`'s stop budget: --stop-timeout in the image's command, or its default.
fn stop_timeout(cmd: &[String]) -> Result<Duration, String> {
    parse_duration(flag_value(cmd, "--stop-timeout").unwrap_or("280s"))
        .map_err(|e| format!("--stop-timeout: {e}"))
}

/// Whether `dir` is `base` or lies under it.
fn under(dir: &str, base: &str) -> bool {
    let d = Path::new(dir);
    d.starts_with(Path::new(base))
}

fn dockerfile_problems(files: &Files, docker: &Dockerfile, pg: &PgConf) -> Vec<String> {
    let mut p = Vec::new();
    let mut bad = |s: String| p.push(format!("docker/Dockerfile: {s}"));

    if docker.stages.len() < 2 {
        bad("not multi-stage: bucketfs is built in a Rust stage of its own".into());
    }
    let stage_names: BTreeSet<&str> = docker
        .stages
        .iter()
        .filter_map(|s| s.name.as_deref())
        .collect();
    for s in &docker.stages {
        if stage_names.contains(s.image.as_str()) {
            continue;
        }
        let pinned = s.image.contains('@')
            || s.image.rsplit_once(':').is_some_and(|(_, tag)| {
                !tag.contains('/') && tag != "latest" && !tag.starts_with("latest-")
            });
        if !pinned {
            bad(format!(
                "FROM {}: pin a tag (or digest), never latest",
                s.image
            ));
        }
    }

    // The Rust stage: the pinned toolchain, libclang for RocksDB's bindgen, a locked build.
    let channel = files
        .toolchain
        .parse::<DocumentMut>()
        .ok()
        .and_then(|d| d["toolchain"]["channel"].as_str().map(String::from))
        .unwrap_or_default();
    match docker.stages.iter().find(|s| s.image.starts_with("rust:")) {
        None => bad("no Rust stage (FROM rust:...) builds bucketfs".into()),
        Some(s) => {
            if !s.image.starts_with(&format!("rust:{channel}")) {
                bad(format!(
                    "FROM {}: the Rust stage must use rust-toolchain.toml's channel {channel}",
                    s.image
                ));
            }
            let runs: Vec<&str> = s
                .instrs
                .iter()
                .filter(|i| i.op == "RUN")
                .map(|i| i.args.as_str())
                .collect();
            if !runs
                .iter()
                .any(|r| r.contains("clang") && r.contains("libclang-dev"))
            {
                bad(
                    "the Rust stage must install clang and libclang-dev (RocksDB's bindgen)".into(),
                );
            }
            if !runs
                .iter()
                .any(|r| r.contains("cargo build") && r.contains("--locked"))
            {
                bad("the Rust stage must run `cargo build --locked`".into());
            }
        }
    }

    // The runtime: the glibc OrioleDB image, fuse3, bucketfs from the build stage.
    let last = docker.last();
    match last.image.split_once(':') {
        Some(("orioledb/orioledb", tag)) if tag.ends_with("-ubuntu") => {}
        _ => bad(format!(
            "the runtime must be a pinned -ubuntu (glibc) orioledb/orioledb tag, not {}",
            last.image
        )),
    }
    let runs: Vec<&str> = last
        .instrs
        .iter()
        .filter(|i| i.op == "RUN")
        .map(|i| i.args.as_str())
        .collect();
    if !runs
        .iter()
        .any(|r| r.contains("apt-get install") && r.split_whitespace().any(|w| w == "fuse3"))
    {
        bad("the runtime must install fuse3".into());
    }
    let copies: Vec<&Instr> = last.instrs.iter().filter(|i| i.op == "COPY").collect();
    if !copies
        .iter()
        .any(|i| i.args.starts_with("--from=") && i.args.contains("bucketfs"))
    {
        bad("the runtime must COPY --from the build stage the bucketfs binary".into());
    }

    // The command: bucketfs run, mounted where Postgres looks.
    let cmd = match docker.command() {
        Ok(c) => c,
        Err(e) => {
            bad(e);
            return p;
        }
    };
    let entry = docker.exec_form("ENTRYPOINT").unwrap_or_default();
    if entry.first().map(String::as_str) != Some("bucketfs")
        || entry.get(1).map(String::as_str) != Some("run")
    {
        bad(format!(
            "ENTRYPOINT must start with [\"bucketfs\", \"run\", ...], not {entry:?}"
        ));
    }
    let mountpoint = cmd.get(2).cloned().unwrap_or_default();
    if mountpoint.starts_with('-') || mountpoint.is_empty() {
        bad("`bucketfs run` must name its MOUNTPOINT first".into());
    }
    let env = docker.env();
    if let Some(pgdata) = env.get("PGDATA") {
        if *pgdata != mountpoint {
            bad(format!("ENV PGDATA={pgdata} but bucketfs mounts {mountpoint}: initdb and the mount would disagree"));
        }
    }
    match pg.get("data_directory") {
        Some(d) if d == mountpoint => {}
        other => bad(format!(
            "bucketfs mounts {mountpoint} but oriole/postgresql.conf has data_directory = {other:?}: Postgres would not run on the mount"
        )),
    }
    for flag in ["--cache-dir", "--user"] {
        if flag_value(&cmd, flag).is_none() {
            bad(format!("`bucketfs run` needs {flag}"));
        }
    }
    if !cmd.iter().any(|a| a == "--allow-other") {
        bad("`bucketfs run` needs --allow-other: bucketfs mounts as root, Postgres runs as postgres".into());
    }
    let Some(dashdash) = cmd.iter().position(|a| a == "--") else {
        bad("ENTRYPOINT + CMD must hold `-- PROGRAM ...`".into());
        return p;
    };
    let child = &cmd[dashdash + 1..];
    if child.is_empty() {
        bad("nothing after `--`: bucketfs run needs the program to supervise".into());
    }
    if let Err(e) = stop_timeout(&cmd) {
        bad(e);
    }
    // The server reads its configuration from the directory -D names: ours must be there.
    if let Some(i) = child.iter().position(|a| a == "-D") {
        let conf_dir = child.get(i + 1).cloned().unwrap_or_default();
        let installed = copies.iter().any(|c| {
            c.args.contains("oriole/postgresql.conf")
                && c.args
                    .split_whitespace()
                    .last()
                    .is_some_and(|d| d.trim_end_matches('/') == conf_dir)
        });
        if !installed {
            bad(format!(
                "Postgres runs with -D {conf_dir}, but oriole/postgresql.conf is not copied there"
            ));
        }
    }
    if let Some(hba) = pg.get("hba_file") {
        let dir = Path::new(&hba)
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let installed = copies.iter().any(|c| {
            c.args.contains("oriole/pg_hba.conf")
                && c.args
                    .split_whitespace()
                    .last()
                    .is_some_and(|d| d.trim_end_matches('/') == dir)
        });
        if !installed {
            bad(format!(
                "hba_file = {hba}, but oriole/pg_hba.conf is not copied to {dir}"
            ));
        }
    }
    if !copies.iter().any(|c| {
        c.args.contains("oriole/init.sql") && c.args.contains("/docker-entrypoint-initdb.d/")
    }) {
        bad("oriole/init.sql must be copied into /docker-entrypoint-initdb.d/".into());
    }
    match docker.stop_signal().as_deref() {
        Some("SIGTERM") | Some("SIGINT") => {}
        other => bad(format!(
            "STOPSIGNAL must be SIGTERM or SIGINT (a fast shutdown through bucketfs), not {other:?}"
        )),
    }
    for (k, v) in &env {
        if secret_name(k) && !v.is_empty() {
            bad(format!(
                "ENV {k} carries a value: secrets come from the environment at run time"
            ));
        }
        if credential_value(v) {
            bad(format!("ENV {k} looks like a credential"));
        }
    }
    for i in last.instrs.iter().filter(|i| i.op == "ARG") {
        if secret_name(i.args.split('=').next().unwrap_or("")) {
            bad(format!(
                "line {}: ARG {} would bake a secret into the image history",
                i.line, i.args
            ));
        }
    }

    // Every file the image copies from the context is let in by .dockerignore, and .env is not.
    let allowed: Vec<&str> = files
        .dockerignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let ignores_all = files.dockerignore.lines().any(|l| l.trim() == "*");
    if !ignores_all {
        bad(".dockerignore must start from `*` (an allowlist), so that no secret reaches the context".into());
    }
    for s in &docker.stages {
        for c in s
            .instrs
            .iter()
            .filter(|i| i.op == "COPY" && !i.args.starts_with("--from"))
        {
            let words: Vec<&str> = c
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            for src in &words[..words.len().saturating_sub(1)] {
                let top = src.split('/').next().unwrap_or(src);
                if !allowed.contains(&top) && !allowed.contains(&src.trim_end_matches('/')) {
                    bad(format!(
                        "line {}: COPY {src}, which .dockerignore leaves out",
                        c.line
                    ));
                }
            }
        }
    }
    if allowed.iter().any(|a| a.contains(".env")) {
        bad(".dockerignore lets an .env file into the build context".into());
    }
    p
}

// ------------------------------------------------------------------------------------------
// oriole/

struct PgConf(BTreeMap<String, String>);

impl PgConf {
    fn parse(text: &str) -> PgConf {
        let mut m = BTreeMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim().trim_matches('\'').to_string();
                m.insert(k.trim().to_ascii_lowercase(), v);
            }
        }
        PgConf(m)
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

fn oriole_problems(files: &Files, docker: &Dockerfile, pg: &PgConf) -> Vec<String> {
    let mut p = Vec::new();
    let mut bad = |s: String| p.push(format!("oriole/: {s}"));
    let want = |key: &str, ok: &dyn Fn(&str) -> bool| -> Option<String> {
        match pg.get(key) {
            Some(v) if ok(&v) => None,
            other => Some(format!("postgresql.conf: {key} = {other:?}")),
        }
    };
    let checks: Vec<Option<String>> = vec![
        want("shared_preload_libraries", &|v| {
            v.split(',')
                .any(|l| l.trim().trim_end_matches(".so") == "orioledb")
        }),
        want("orioledb.s3_mode", &|v| v == "off" || v == "false"),
        want("password_encryption", &|v| v == "scram-sha-256"),
        want("logging_collector", &|v| v == "off"),
        want("wal_recycle", &|v| v == "off"),
        want("wal_init_zero", &|v| v == "off"),
        want("archive_mode", &|v| v == "off"),
        want("max_wal_size", &|v| parse_size(v).is_ok()),
        want("hba_file", &|v| v.starts_with('/')),
    ];
    for c in checks.into_iter().flatten() {
        bad(format!("{c} (see the reason beside it)"));
    }
    for line in files.pg_hba.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let method_at = match words.first() {
            Some(&"local") => 3,
            Some(&"host")
            | Some(&"hostssl")
            | Some(&"hostnossl")
            | Some(&"hostgssenc")
            | Some(&"hostnogssenc") => 4,
            _ => {
                bad(format!("pg_hba.conf: unknown line {line:?}"));
                continue;
            }
        };
        if words.get(method_at) != Some(&"scram-sha-256") {
            bad(format!(
                "pg_hba.conf: {line:?} is not scram-sha-256 (SCRAM only)"
            ));
        }
    }
    // The extension in the first database ($POSTGRES_DB, where the script starts) and in
    // template1, which every later CREATE DATABASE copies.
    let sql = files.init_sql.to_ascii_lowercase();
    let creates = |part: &str| {
        part.lines().any(|l| {
            let l = l.trim();
            !l.starts_with("--") && l.contains("create extension") && l.contains("orioledb")
        })
    };
    match sql.split_once("\\connect template1") {
        Some((first, template1)) if creates(first) && creates(template1) => {}
        _ => {
            bad("init.sql must CREATE EXTENSION orioledb in $POSTGRES_DB, then in template1".into())
        }
    }
    // initdb's collation: one OrioleDB accepts (C, POSIX or ICU).
    let args = docker
        .env()
        .get("POSTGRES_INITDB_ARGS")
        .cloned()
        .unwrap_or_default();
    let accepted = args.contains("--locale=C ")
        || args.ends_with("--locale=C")
        || args.contains("--locale=POSIX")
        || args.contains("--lc-collate=C ")
        || args.contains("--locale-provider=icu");
    if !accepted {
        bad(format!(
            "POSTGRES_INITDB_ARGS ({args:?}) must pick a collation OrioleDB accepts: C, POSIX or ICU"
        ));
    }
    p
}

// ------------------------------------------------------------------------------------------
// fly.toml

const FLY_TOP: &[&str] = &[
    "app",
    "primary_region",
    "kill_signal",
    "kill_timeout",
    "swap_size_mb",
    "console_command",
    "experimental",
    "build",
    "deploy",
    "env",
    "processes",
    "mounts",
    "http_service",
    "services",
    "checks",
    "files",
    "host_dedication_id",
    "machine_config",
    "container",
    "machine_checks",
    "restart",
    "vm",
    "statics",
    "metrics",
];
const FLY_SERVICE: &[&str] = &[
    "protocol",
    "internal_port",
    "auto_stop_machines",
    "auto_start_machines",
    "min_machines_running",
    "ports",
    "concurrency",
    "tcp_checks",
    "http_checks",
    "machine_checks",
    "processes",
];
const FLY_PORT: &[&str] = &[
    "port",
    "start_port",
    "end_port",
    "handlers",
    "force_https",
    "tls_options",
    "http_options",
    "proxy_proto_options",
];
const FLY_HANDLERS: &[&str] = &["tls", "pg_tls", "http", "edge_http", "proxy_proto"];
const FLY_MOUNT: &[&str] = &[
    "source",
    "destination",
    "initial_size",
    "snapshot_retention",
    "scheduled_snapshots",
    "auto_extend_size_threshold",
    "auto_extend_size_increment",
    "auto_extend_size_limit",
    "processes",
];
const FLY_METRICS: &[&str] = &["port", "path", "https", "processes"];
const FLY_SIGNALS: &[&str] = &[
    "SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP",
];

/// A table or an array of tables, as a list (fly.toml allows both for mounts and metrics).
fn tables(item: &Item) -> Vec<&dyn toml_edit::TableLike> {
    if let Some(t) = item.as_table_like() {
        return vec![t];
    }
    if let Some(a) = item.as_array_of_tables() {
        return a.iter().map(|t| t as &dyn toml_edit::TableLike).collect();
    }
    Vec::new()
}

fn unknown_keys(t: &dyn toml_edit::TableLike, known: &[&str], what: &str) -> Vec<String> {
    t.iter()
        .filter(|(k, _)| !known.contains(k))
        .map(|(k, _)| format!("{what}: unknown key {k:?} (not in Fly's fly.toml reference)"))
        .collect()
}

/// A TOML value for a message (toml_edit's Display is not compiled in).
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.value()),
        Value::Integer(n) => n.value().to_string(),
        Value::Boolean(b) => b.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        _ => "a value of another type".into(),
    }
}

/// Fly's durations: a number of seconds, or Go's "5s", "1m30s".
fn fly_duration(v: &Item) -> Option<Duration> {
    if let Some(n) = v.as_integer() {
        return u64::try_from(n).ok().map(Duration::from_secs);
    }
    let s = v.as_str()?;
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next()?);
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        total += n * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// Every key anywhere in the document, with its value when it is a string.
fn all_keys(item: &Item, path: &str, out: &mut Vec<(String, Option<String>)>) {
    if let Some(t) = item.as_table_like() {
        for (k, v) in t.iter() {
            let p = if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            };
            out.push((p.clone(), v.as_str().map(String::from)));
            all_keys(v, &p, out);
        }
    } else if let Some(a) = item.as_array_of_tables() {
        for t in a.iter() {
            for (k, v) in t.iter() {
                let p = format!("{path}.{k}");
                out.push((p.clone(), v.as_str().map(String::from)));
                all_keys(v, &p, out);
            }
        }
    } else if let Some(Value::Array(a)) = item.as_value() {
        for v in a.iter() {
            if let Some(s) = v.as_str() {
                out.push((path.to_string(), Some(s.to_string())));
            }
        }
    }
}

fn fly_problems(text: &str, docker: &Dockerfile) -> Vec<String> {
    let mut p = Vec::new();
    let doc: DocumentMut = match text.parse() {
        Ok(d) => d,
        Err(e) => return vec![format!("fly.toml: not TOML: {e}")],
    };
    let mut bad = |s: String| p.push(format!("fly.toml: {s}"));
    let top = doc.as_table();
    for e in unknown_keys(top, FLY_TOP, "top level") {
        bad(e);
    }
    if doc
        .get("app")
        .and_then(Item::as_str)
        .is_none_or(str::is_empty)
    {
        bad("`app` must name the app".into());
    }
    if doc.contains_key("http_service") {
        bad(
            "Postgres is not HTTP: use [[services]] with protocol \"tcp\", not [http_service]"
                .into(),
        );
    }

    let cmd = docker.command().unwrap_or_default();
    let budget = stop_timeout(&cmd).unwrap_or(Duration::from_secs(280));
    match doc.get("kill_signal").and_then(Item::as_str) {
        Some(s) if FLY_SIGNALS.contains(&s) => {
            if Some(s.to_string()) != docker.stop_signal() {
                bad(format!(
                    "kill_signal {s} is not docker/Dockerfile's STOPSIGNAL {:?}",
                    docker.stop_signal()
                ));
            }
        }
        other => bad(format!(
            "kill_signal must be set to one Fly sends, not {other:?} (default SIGINT)"
        )),
    }
    match doc.get("kill_timeout").and_then(fly_duration) {
        Some(t) if t > Duration::from_secs(300) => {
            bad(format!("kill_timeout {t:?} is over 300 s, the most Fly waits"))
        }
        Some(t) if t < budget => bad(format!(
            "kill_timeout {t:?} is shorter than bucketfs' --stop-timeout {budget:?}: the final checkpoint would be killed"
        )),
        Some(_) => {}
        None => bad("kill_timeout must be set (Fly's default, 5 s, kills the final checkpoint)".into()),
    }

    // Postgres: raw TCP on 5432, stopped (not suspended) when idle, started on demand.
    let services = doc.get("services").map(tables).unwrap_or_default();
    let mut public_ports = BTreeSet::new();
    let mut pg_service = false;
    for (i, s) in services.iter().enumerate() {
        let what = format!("services[{i}]");
        for e in unknown_keys(*s, FLY_SERVICE, &what) {
            bad(e);
        }
        let internal = s.get("internal_port").and_then(Item::as_integer);
        if let Some(n) = internal {
            public_ports.insert(n);
        }
        let ports = s.get("ports").map(tables).unwrap_or_default();
        let mut outside = Vec::new();
        for (j, port) in ports.iter().enumerate() {
            for e in unknown_keys(*port, FLY_PORT, &format!("{what}.ports[{j}]")) {
                bad(e);
            }
            if let Some(n) = port.get("port").and_then(Item::as_integer) {
                outside.push(n);
                public_ports.insert(n);
            }
            if let Some(Value::Array(hs)) = port.get("handlers").and_then(Item::as_value) {
                for h in hs.iter() {
                    if !h.as_str().is_some_and(|h| FLY_HANDLERS.contains(&h)) {
                        bad(format!("{what}.ports[{j}]: unknown handler {}", show(h)));
                    }
                    if matches!(h.as_str(), Some("http") | Some("tls") | Some("edge_http"))
                        && internal == Some(5432)
                    {
                        bad(format!("{what}.ports[{j}]: handler {} breaks Postgres' protocol (use pg_tls or none)", show(h)));
                    }
                }
            }
        }
        if internal != Some(5432) {
            continue;
        }
        pg_service = true;
        if s.get("protocol").and_then(Item::as_str) != Some("tcp") {
            bad(format!("{what}: Postgres needs protocol = \"tcp\""));
        }
        if !outside.contains(&5432) {
            bad(format!("{what}: no [[services.ports]] with port = 5432"));
        }
        match s.get("auto_stop_machines").and_then(Item::as_value) {
            Some(v) if v.as_str() == Some("stop") => {}
            other => bad(format!(
                "{what}: auto_stop_machines must be \"stop\" (suspend sends no signal, so no final checkpoint), not {}",
                other.map(show).unwrap_or_else(|| "unset".into())
            )),
        }
        if s.get("auto_start_machines").and_then(Item::as_bool) != Some(true) {
            bad(format!("{what}: auto_start_machines must be true"));
        }
    }
    if !pg_service {
        bad("no [[services]] with internal_port = 5432".into());
    }

    // The cache dir on a volume.
    let cache_dir = flag_value(&cmd, "--cache-dir").unwrap_or("").to_string();
    let mounts = doc.get("mounts").map(tables).unwrap_or_default();
    if mounts.is_empty() {
        bad("no [[mounts]]: the cache dir would be on the ephemeral, slow root filesystem".into());
    }
    let mut volume_size = None;
    for (i, m) in mounts.iter().enumerate() {
        for e in unknown_keys(*m, FLY_MOUNT, &format!("mounts[{i}]")) {
            bad(e);
        }
        if m.get("source")
            .and_then(Item::as_str)
            .is_none_or(str::is_empty)
        {
            bad(format!("mounts[{i}]: no source volume"));
        }
        let dest = m.get("destination").and_then(Item::as_str).unwrap_or("");
        if !cache_dir.is_empty() && under(&cache_dir, dest) {
            volume_size = m
                .get("initial_size")
                .and_then(Item::as_str)
                .and_then(|s| parse_size(s).ok());
        }
    }
    if !mounts.is_empty()
        && !cache_dir.is_empty()
        && !mounts.iter().any(|m| {
            m.get("destination")
                .and_then(Item::as_str)
                .is_some_and(|d| under(&cache_dir, d))
        })
    {
        bad(format!(
            "the cache dir {cache_dir} (docker/Dockerfile) is on no [[mounts]] destination"
        ));
    }

    // Environment: sizes that fit the volume, metrics off the public internet.
    let env = doc.get("env").and_then(Item::as_table_like);
    let env_str = |k: &str| {
        env.and_then(|e| e.get(k))
            .and_then(Item::as_str)
            .map(String::from)
    };
    if let (Some(cache), Some(vol)) = (env_str("BUCKETFS_CACHE_SIZE"), volume_size) {
        match parse_size(&cache) {
            Ok(c) if c < vol => {}
            _ => bad(format!(
                "BUCKETFS_CACHE_SIZE {cache} must be a size below the volume's initial_size"
            )),
        }
    }
    let metrics = doc.get("metrics").map(tables).unwrap_or_default();
    let metrics_addr = env_str("BUCKETFS_METRICS_ADDR");
    for (i, m) in metrics.iter().enumerate() {
        for e in unknown_keys(*m, FLY_METRICS, &format!("metrics[{i}]")) {
            bad(e);
        }
        let port = m.get("port").and_then(Item::as_integer);
        if port.is_some_and(|n| public_ports.contains(&n)) {
            bad(format!(
                "metrics[{i}]: port {port:?} is also a [[services]] port, so public"
            ));
        }
        match metrics_addr.as_deref().map(|a| a.parse::<std::net::SocketAddr>()) {
            Some(Ok(a)) if a.ip().is_loopback() => {
                bad(format!("BUCKETFS_METRICS_ADDR {a} is loopback: Fly's scraper (on the private network) cannot reach it"))
            }
            Some(Ok(a)) if Some(i64::from(a.port())) != port => {
                bad(format!("BUCKETFS_METRICS_ADDR {a} and [metrics] port {port:?} differ"))
            }
            Some(Ok(_)) => {}
            _ => bad(format!("[metrics] is set, but BUCKETFS_METRICS_ADDR {metrics_addr:?} is not an ADDR:PORT bucketfs serves")),
        }
    }

    // No secrets anywhere in the file.
    let mut keys = Vec::new();
    all_keys(doc.as_item(), "", &mut keys);
    for (k, v) in keys {
        let leaf = k.rsplit('.').next().unwrap_or(&k);
        if secret_name(leaf) {
            bad(format!(
                "{k}: a secret-looking key; secrets are `fly secrets set --stage`"
            ));
        }
        if v.as_deref().is_some_and(credential_value) {
            bad(format!("{k}: the value looks like a credential"));
        }
    }
    p
}

// ------------------------------------------------------------------------------------------
// compose.yaml

const COMPOSE_TOP: &[&str] = &[
    "version", "name", "include", "services", "models", "networks", "volumes", "secrets", "configs",
];
const COMPOSE_SERVICE: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
];

fn ystr(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of strings (or the one string) under `key`.
fn ylist(y: &Yaml, key: &str) -> Vec<String> {
    match &y[key] {
        Yaml::Array(a) => a.iter().filter_map(ystr).collect(),
        other => ystr(other).into_iter().collect(),
    }
}

fn ykeys(y: &Yaml) -> Vec<String> {
    y.as_hash()
        .map(|h| h.keys().filter_map(ystr).collect())
        .unwrap_or_default()
}

/// Compose's durations: "300s", "5m", "1m30s".
fn compose_duration(s: &str) -> Option<Duration> {
    fly_duration(&Item::Value(Value::from(s)))
}

/// Every `${NAME...}` that compose.yaml interpolates ($$ is a literal $).
fn interpolated(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text.replace("$$", "");
    while let Some(i) = rest.find("${") {
        let tail = &rest[i + 2..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = tail[end..].to_string();
    }
    out
}

/// `NAME=value` lines of an env file.
fn env_lines(text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (i + 1, k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn compose_problems(text: &str, env_sample: &str, docker: &Dockerfile) -> Vec<String> {
    let mut p = Vec::new();
    let docs = match YamlLoader::load_from_str(text) {
        Ok(d) => d,
        Err(e) => return vec![format!("docker/compose.yaml: not YAML: {e}")],
    };
    let mut bad = |s: String| p.push(format!("docker/compose.yaml: {s}"));
    let [doc] = docs.as_slice() else {
        bad(format!("{} YAML documents, not one", docs.len()));
        return p;
    };
    for k in ykeys(doc) {
        if !COMPOSE_TOP.contains(&k.as_str()) && !k.starts_with("x-") {
            bad(format!(
                "unknown top-level key {k:?} (Compose specification)"
            ));
        }
    }
    let Some(services) = doc["services"].as_hash() else {
        bad("no services".into());
        return p;
    };
    for (name, s) in services {
        let name = ystr(name).unwrap_or_default();
        for k in ykeys(s) {
            if !COMPOSE_SERVICE.contains(&k.as_str()) && !k.starts_with("x-") {
                bad(format!(
                    "services.{name}: unknown key {k:?} (Compose specification)"
                ));
            }
        }
        if let Some(image) = s["image"].as_str() {
            let tag = image
                .rsplit_once(':')
                .map(|(_, t)| t)
                .filter(|t| !t.contains('/'));
            if tag.is_none_or(|t| t == "latest") && !image.contains('@') {
                bad(format!(
                    "services.{name}: image {image} must be pinned to a tag"
                ));
            }
        }
        for port in ylist(s, "ports") {
            if port.matches(':').count() < 2 || port.starts_with("0.0.0.0:") {
                bad(format!("services.{name}: port {port:?} is published on every address; bind it to 127.0.0.1"));
            }
        }
    }

    // The bucketfs service: the one built from docker/Dockerfile.
    let Some((_, pg)) = services
        .iter()
        .find(|(_, s)| s["build"]["dockerfile"].as_str() == Some("docker/Dockerfile"))
    else {
        bad("no service builds docker/Dockerfile".into());
        return p;
    };
    if pg["build"]["context"].as_str() != Some("..") {
        bad("the build context must be the repository root (\"..\" from docker/)".into());
    }
    if !ylist(pg, "devices")
        .iter()
        .any(|d| d == "/dev/fuse" || d.starts_with("/dev/fuse:"))
    {
        bad("the bucketfs service needs devices: [/dev/fuse]".into());
    }
    if !ylist(pg, "cap_add")
        .iter()
        .any(|c| c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN")
    {
        bad("the bucketfs service needs cap_add: [SYS_ADMIN] to mount".into());
    }
    if !ylist(pg, "security_opt")
        .iter()
        .any(|o| o == "apparmor:unconfined" || o == "apparmor=unconfined")
    {
        bad("the bucketfs service needs security_opt: [apparmor:unconfined] (Docker's AppArmor profile denies mount)".into());
    }
    if pg["privileged"].as_bool() == Some(true) {
        bad(
            "the bucketfs service must not be privileged: /dev/fuse and SYS_ADMIN are enough"
                .into(),
        );
    }
    let cmd = docker.command().unwrap_or_default();
    let cache_dir = flag_value(&cmd, "--cache-dir").unwrap_or("").to_string();
    let named_volumes = ykeys(&doc["volumes"]);
    let on_volume = ylist(pg, "volumes").iter().any(|v| {
        let mut parts = v.split(':');
        let (src, dst) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        named_volumes.iter().any(|n| n == src) && !cache_dir.is_empty() && under(&cache_dir, dst)
    });
    if !on_volume {
        bad(format!(
            "the cache dir {cache_dir} (docker/Dockerfile) is on no named volume"
        ));
    }
    let budget = stop_timeout(&cmd).unwrap_or(Duration::from_secs(280));
    match pg["stop_grace_period"].as_str().and_then(compose_duration) {
        Some(t) if t >= budget => {}
        other => bad(format!(
            "stop_grace_period {other:?} must cover bucketfs' --stop-timeout {budget:?} (Docker's default is 10 s)"
        )),
    }
    if let Some(sig) = pg["stop_signal"].as_str() {
        if Some(sig.to_string()) != docker.stop_signal() {
            bad(format!(
                "stop_signal {sig} is not docker/Dockerfile's STOPSIGNAL"
            ));
        }
    }
    for (k, v) in pg["environment"].as_hash().into_iter().flatten() {
        let (k, v) = (ystr(k).unwrap_or_default(), ystr(v).unwrap_or_default());
        if (secret_name(&k) || k.starts_with("AWS_"))
            && !v.trim().starts_with("${")
            && !v.is_empty()
        {
            bad(format!(
                "environment {k}: a literal value; take it from .env as ${{{k}}}"
            ));
        }
    }

    // The MinIO profile: a pinned S3 server and a job that creates the bucket.
    let profile_of = |s: &Yaml| ylist(s, "profiles");
    let minio = services.iter().find(|(_, s)| {
        s["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("minio/minio:"))
    });
    match minio {
        Some((_, m)) if profile_of(m).iter().any(|p| p == "minio") => {}
        _ => bad("no minio/minio service in a `minio` profile".into()),
    }
    let creates_bucket = services.iter().any(|(_, s)| {
        profile_of(s).iter().any(|p| p == "minio")
            && s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("minio/mc:"))
            && ylist(s, "command").iter().any(|c| c.contains("mb"))
    });
    if !creates_bucket {
        bad("the `minio` profile must create the bucket (mc mb)".into());
    }

    // `cp .env.sample .env` must give every variable the file interpolates, and the profile the
    // sample selects must start the bucketfs service.
    let sample: BTreeMap<String, String> = env_lines(env_sample)
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect();
    for var in interpolated(text) {
        if !sample.contains_key(&var) {
            bad(format!("${{{var}}} is not in .env.sample"));
        }
    }
    let selected: Vec<&str> = sample
        .get("COMPOSE_PROFILES")
        .map(|v| v.split(',').collect())
        .unwrap_or_default();
    if selected.is_empty()
        || !profile_of(pg)
            .iter()
            .any(|p| selected.contains(&p.as_str()))
    {
        bad(format!(
            "COMPOSE_PROFILES in .env.sample ({selected:?}) does not start the bucketfs service"
        ));
    }
    p
}

// ------------------------------------------------------------------------------------------
// .env.sample, the guide

fn env_sample_problems(text: &str, gitignore: &str) -> Vec<String> {
    let mut p = Vec::new();
    let mut bad = |s: String| p.push(format!("docker/.env.sample: {s}"));
    let lines = env_lines(text);
    for (line, k, v) in &lines {
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            bad(format!("line {line}: {k:?} is not a variable name"));
        }
        if secret_name(k) && !v.is_empty() {
            bad(format!(
                "line {line}: {k} must be empty in the sample (a placeholder, not a secret)"
            ));
        }
        if credential_value(v) {
            bad(format!(
                "line {line}: the value of {k} looks like a credential"
            ));
        }
    }
    let names: BTreeSet<&str> = lines.iter().map(|(_, k, _)| k.as_str()).collect();
    for need in [
        "BUCKET_NAME",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_S3",
        "POSTGRES_PASSWORD",
    ] {
        if !names.contains(need) {
            bad(format!("{need} is missing"));
        }
    }
    if !gitignore
        .lines()
        .any(|l| matches!(l.trim(), ".env" | "/docker/.env" | "docker/.env" | "*.env"))
    {
        p.push(".gitignore: must ignore .env, which holds the credentials".into());
    }
    p
}

fn guide_problems(guide: &str, fly: &str) -> Vec<String> {
    let mut p = Vec::new();
    let source = fly.parse::<DocumentMut>().ok().and_then(|d| {
        d.get("mounts").map(tables).and_then(|m| {
            m.first()
                .and_then(|t| t.get("source"))
                .and_then(Item::as_str)
                .map(String::from)
        })
    });
    if let Some(source) = source {
        if !guide.contains(&format!("fly volumes create {source}")) {
            p.push(format!(
                "docs/deploy-fly.md: does not create the volume {source} that fly.toml mounts"
            ));
        }
    }
    for must in [
        "fly secrets set --stage",
        "--takeover",
        "kill_timeout",
        "fly storage create",
    ] {
        if !guide.contains(must) {
            p.push(format!("docs/deploy-fly.md: says nothing of `{must}`"));
        }
    }
    p
}

// ------------------------------------------------------------------------------------------
// The real linters

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

/// Where scripts/setup.sh installs dclint ($BUCKETFS_TOOLS, as for tests/posix.rs's tools).
fn dclint_default() -> PathBuf {
    std::env::var_os("BUCKETFS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/bucketfs-tools"))
        .join("dclint/node_modules/.bin/dclint")
}

/// A linter's path: the override variable, or where scripts/setup.sh installs it. Outside CI a
/// missing linter is a notice; in CI, a failure.
fn linter(var: &str, default: PathBuf, test: &str) -> Option<PathBuf> {
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
fn run_linter(cmd: &mut Command) -> Option<String> {
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

fn hadolint(dockerfile: &Path) -> Option<String> {
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

fn dclint(compose: &Path) -> Option<String> {
    let bin = linter("BUCKETFS_DCLINT", dclint_default(), "dclint")?;
    run_linter(
        Command::new(bin)
            .args(["--no-color", "--max-warnings", "0", "-c"])
            .arg(root().join("docker/dclint.json"))
            .arg(compose),
    )
}

// ------------------------------------------------------------------------------------------
// Tests

#[test]
fn deployment_files_are_consistent_and_hold_no_secrets() {
    let problems = Files::load().problems();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn dockerfile_passes_hadolint() {
    if let Some(complaint) = hadolint(&root().join("docker/Dockerfile")) {
        panic!("hadolint:\n{complaint}");
    }
}

#[test]
fn compose_file_passes_the_compose_specification() {
    if let Some(complaint) = dclint(&root().join("docker/compose.yaml")) {
        panic!("dclint:\n{complaint}");
    }
}

/// Each case breaks one real file in one way; the checks must say so.
#[test]
fn each_check_catches_a_broken_file() {
    type Pick = fn(&mut Files) -> &mut String;
    let cases: &[(&str, Pick, &str, &str, &str)] = &[
        // fly.toml
        ("fly: not TOML", |f| &mut f.fly, "kill_timeout = 300", "kill_timeout = = 300", "not TOML"),
        ("fly: http_service", |f| &mut f.fly, "\n[[services]]\n", "\n[http_service]\n  internal_port = 8080\n\n[[services]]\n", "not HTTP"),
        ("fly: suspend", |f| &mut f.fly, "auto_stop_machines = \"stop\"", "auto_stop_machines = \"suspend\"", "auto_stop_machines must be \"stop\""),
        ("fly: autostart off", |f| &mut f.fly, "auto_start_machines = true", "auto_start_machines = false", "auto_start_machines"),
        ("fly: udp", |f| &mut f.fly, "protocol = \"tcp\"", "protocol = \"udp\"", "protocol = \"tcp\""),
        ("fly: http handler", |f| &mut f.fly, "handlers = [\"pg_tls\"]", "handlers = [\"http\"]", "breaks Postgres"),
        ("fly: no 5432", |f| &mut f.fly, "internal_port = 5432", "internal_port = 8080", "internal_port = 5432"),
        ("fly: kill_timeout too long", |f| &mut f.fly, "kill_timeout = 300", "kill_timeout = \"10m\"", "over 300"),
        ("fly: kill_timeout too short", |f| &mut f.fly, "kill_timeout = 300", "kill_timeout = 30", "shorter than"),
        ("fly: kill_signal", |f| &mut f.fly, "kill_signal = \"SIGTERM\"", "kill_signal = \"SIGUSR1\"", "STOPSIGNAL"),
        ("fly: no mount", |f| &mut f.fly, "[[mounts]]", "[[statics]]", "no [[mounts]]"),
        ("fly: mount elsewhere", |f| &mut f.fly, "destination = \"/var/lib/bucketfs\"", "destination = \"/data\"", "is on no [[mounts]]"),
        ("fly: cache over volume", |f| &mut f.fly, "BUCKETFS_CACHE_SIZE = \"6G\"", "BUCKETFS_CACHE_SIZE = \"20G\"", "below the volume"),
        ("fly: metrics on loopback", |f| &mut f.fly, "\"[::]:9187\"", "\"127.0.0.1:9187\"", "loopback"),
        ("fly: metrics public", |f| &mut f.fly, "port = 9187", "port = 5432", "also a [[services]] port"),
        ("fly: unknown key", |f| &mut f.fly, "primary_region = \"iad\"", "primary_region = \"iad\"\nkill_timout = 5", "unknown key \"kill_timout\""),
        ("fly: secret key", |f| &mut f.fly, "[env]", "[env]\n  AWS_SECRET_ACCESS_KEY = \"\"", "secret-looking key"),
        ("fly: secret value", |f| &mut f.fly, "[env]", "[env]\n  BUCKET = \"tid_ab12cd34ef56gh78\"", "looks like a credential"),
        // Dockerfile
        ("docker: latest base", |f| &mut f.dockerfile, "FROM orioledb/orioledb:beta16-pg17-ubuntu", "FROM orioledb/orioledb:latest", "pin a tag"),
        ("docker: alpine runtime", |f| &mut f.dockerfile, "FROM orioledb/orioledb:beta16-pg17-ubuntu", "FROM orioledb/orioledb:beta16-pg17", "-ubuntu"),
        ("docker: single stage", |f| &mut f.dockerfile, "FROM orioledb/orioledb:beta16-pg17-ubuntu\n", "", "multi-stage"),
        ("docker: no Rust stage", |f| &mut f.dockerfile, "FROM rust:1.95.0-bookworm AS build", "", "before the first FROM"),
        ("docker: other toolchain", |f| &mut f.dockerfile, "FROM rust:1.95.0-bookworm", "FROM rust:1.80.0-bookworm", "channel"),
        ("docker: no libclang", |f| &mut f.dockerfile, "clang libclang-dev", "clang", "libclang-dev"),
        ("docker: no fuse3", |f| &mut f.dockerfile, "fuse3 ca-certificates", "ca-certificates", "fuse3"),
        ("docker: not bucketfs run", |f| &mut f.dockerfile, "ENTRYPOINT [\"bucketfs\", \"run\",", "ENTRYPOINT [\"bucketfs\", \"mount\",", "ENTRYPOINT must start"),
        ("docker: shell form", |f| &mut f.dockerfile, "ENTRYPOINT [\"bucketfs\", \"run\", \"/var/lib/postgresql/data\", \"--cache-dir\", \"/var/lib/bucketfs/cache\", \"--allow-other\", \"--uid\", \"postgres\", \"--gid\", \"postgres\", \"--user\", \"postgres\", \"--stop-timeout\", \"280s\"]", "ENTRYPOINT bucketfs run /var/lib/postgresql/data", "JSON array"),
        ("docker: mount elsewhere", |f| &mut f.dockerfile, "\"run\", \"/var/lib/postgresql/data\"", "\"run\", \"/mnt/pgdata\"", "data_directory"),
        ("docker: PGDATA elsewhere", |f| &mut f.dockerfile, "ENV PGDATA=/var/lib/postgresql/data", "ENV PGDATA=/pgdata", "PGDATA"),
        ("docker: conf not installed", |f| &mut f.dockerfile, "oriole/postgresql.conf oriole/pg_hba.conf /etc/postgresql/", "oriole/pg_hba.conf /etc/postgresql/", "-D /etc/postgresql"),
        ("docker: no child", |f| &mut f.dockerfile, "CMD [\"--\", \"docker-entrypoint.sh\", \"postgres\", \"-D\", \"/etc/postgresql\"]", "CMD [\"--\"]", "nothing after"),
        ("docker: no stopsignal", |f| &mut f.dockerfile, "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL", "STOPSIGNAL"),
        ("docker: stop-timeout over", |f| &mut f.dockerfile, "\"--stop-timeout\", \"280s\"", "\"--stop-timeout\", \"400s\"", "shorter than"),
        ("docker: secret ENV", |f| &mut f.dockerfile, "ENV PGDATA=", "ENV POSTGRES_PASSWORD=hunter2 PGDATA=", "carries a value"),
        ("docker: unignored COPY", |f| &mut f.dockerfile, "COPY benches ./benches", "COPY tests ./tests", "leaves out"),
        ("docker: collation", |f| &mut f.dockerfile, "--locale=C ", "--locale=en_US.UTF-8 ", "collation"),
        (".dockerignore: no allowlist", |f| &mut f.dockerignore, "\n*\n", "\ntarget\n", "allowlist"),
        // oriole/
        ("pg: no orioledb", |f| &mut f.pg_conf, "shared_preload_libraries = 'orioledb'", "shared_preload_libraries = 'pg_stat_statements'", "shared_preload_libraries"),
        ("pg: s3_mode on", |f| &mut f.pg_conf, "orioledb.s3_mode = off", "orioledb.s3_mode = on", "s3_mode"),
        ("pg: md5", |f| &mut f.pg_conf, "password_encryption = 'scram-sha-256'", "password_encryption = 'md5'", "password_encryption"),
        ("pg: log collector", |f| &mut f.pg_conf, "logging_collector = off", "logging_collector = on", "logging_collector"),
        ("pg: wal recycle", |f| &mut f.pg_conf, "wal_recycle = off", "wal_recycle = on", "wal_recycle"),
        ("pg: data elsewhere", |f| &mut f.pg_conf, "data_directory = '/var/lib/postgresql/data'", "data_directory = '/pgdata'", "data_directory"),
        ("pg: hba elsewhere", |f| &mut f.pg_conf, "hba_file = '/etc/postgresql/pg_hba.conf'", "hba_file = '/etc/pg_hba.conf'", "is not copied"),
        ("hba: trust", |f| &mut f.pg_hba, "local   all       all               scram-sha-256", "local   all       all               trust", "SCRAM only"),
        ("hba: md5", |f| &mut f.pg_hba, "host    all       all   ::/0        scram-sha-256", "host    all       all   ::/0        md5", "SCRAM only"),
        ("sql: no extension", |f| &mut f.init_sql, "CREATE EXTENSION IF NOT EXISTS orioledb;\n\n", "", "CREATE EXTENSION"),
        // compose.yaml
        ("compose: not YAML", |f| &mut f.compose, "services:", "services: [", "not YAML"),
        ("compose: unknown key", |f| &mut f.compose, "    cap_add:", "    cap_ad:", "unknown key \"cap_ad\""),
        ("compose: unknown top", |f| &mut f.compose, "volumes:\n  bucketfs-cache:", "volume:\n  bucketfs-cache:", "unknown top-level"),
        ("compose: no fuse", |f| &mut f.compose, "      - /dev/fuse:/dev/fuse", "      - /dev/null", "/dev/fuse"),
        ("compose: no cap", |f| &mut f.compose, "      - SYS_ADMIN", "      - NET_ADMIN", "SYS_ADMIN"),
        ("compose: apparmor", |f| &mut f.compose, "      - apparmor:unconfined", "      - no-new-privileges:true", "apparmor"),
        ("compose: privileged", |f| &mut f.compose, "    shm_size: 256mb", "    shm_size: 256mb\n    privileged: true", "privileged"),
        ("compose: cache not on volume", |f| &mut f.compose, "      - bucketfs-cache:/var/lib/bucketfs\n", "      - bucketfs-cache:/srv\n", "no named volume"),
        ("compose: grace too short", |f| &mut f.compose, "stop_grace_period: 300s", "stop_grace_period: 10s", "stop_grace_period"),
        ("compose: public port", |f| &mut f.compose, "\"127.0.0.1:5432:5432\"", "\"5432:5432\"", "every address"),
        ("compose: literal secret", |f| &mut f.compose, "AWS_REGION: ${AWS_REGION:-auto}", "AWS_REGION: eu", "literal value"),
        ("compose: latest image", |f| &mut f.compose, "minio/minio:RELEASE.2025-09-07T16-13-09Z", "minio/minio:latest", "pinned"),
        ("compose: no minio profile", |f| &mut f.compose, "    profiles: [minio]\n    command: [server, /data]", "    command: [server, /data]", "`minio` profile"),
        ("compose: no bucket job", |f| &mut f.compose, "mc mb --ignore-existing", "mc ls", "create the bucket"),
        ("compose: var not in sample", |f| &mut f.compose, "${BUCKETFS_MAX_DIRTY:-1G}", "${BUCKETFS_DIRTY:-1G}", "not in .env.sample"),
        ("compose: profile not selected", |f| &mut f.env_sample, "COMPOSE_PROFILES=tigris", "COMPOSE_PROFILES=other", "does not start"),
        // .env.sample
        (".env: secret value", |f| &mut f.env_sample, "AWS_SECRET_ACCESS_KEY=\n", "AWS_SECRET_ACCESS_KEY=changeme\n", "must be empty"),
        (".env: credential", |f| &mut f.env_sample, "BUCKET_NAME=\n", "BUCKET_NAME=tid_AbCdEf0123456789\n", "looks like a credential"),
        (".env: missing name", |f| &mut f.env_sample, "POSTGRES_PASSWORD=\n", "\n", "POSTGRES_PASSWORD is missing"),
        (".gitignore: .env", |f| &mut f.gitignore, ".env", "env", ".gitignore"),
        // the guide
        ("guide: no stage", |f| &mut f.guide, "fly secrets set --stage", "fly secrets set", "--stage"),
    ];
    let real = Files::load();
    assert!(real.problems().is_empty(), "the real files must pass first");
    let mut failures = Vec::new();
    for (name, pick, from, to, expect) in cases {
        let mut files = real.clone();
        let text = pick(&mut files);
        assert!(
            text.contains(from),
            "case {name:?}: the real file no longer holds {from:?}"
        );
        *text = text.replace(from, to);
        let problems = files.problems();
        if !problems.iter().any(|p| p.contains(expect)) {
            failures.push(format!(
                "{name}: expected a problem with {expect:?}, got {problems:#?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "checks that missed a broken file:\n{}",
        failures.join("\n")
    );
}

/// The linters must reject broken files too, or passing them proves nothing.
#[test]
fn linters_reject_broken_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let real = Files::load();
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        real.dockerfile
            .replacen("# hadolint ignore=DL3008\n", "", 1),
    )
    .expect("write");
    if linter(
        "BUCKETFS_HADOLINT",
        home().join(".cache/bucketfs-venv/bin/hadolint"),
        "hadolint",
    )
    .is_some()
    {
        let complaint =
            hadolint(&dockerfile).expect("hadolint passed a Dockerfile with unpinned apt packages");
        assert!(complaint.contains("DL3008"), "{complaint}");
    }
    let compose = dir.path().join("compose.yaml");
    std::fs::write(
        &compose,
        real.compose.replacen("    cap_add:", "    cap_ad:", 1),
    )
    .expect("write");
    if linter("BUCKETFS_DCLINT", dclint_default(), "dclint").is_some() {
        let complaint = dclint(&compose).expect("dclint passed a compose file with an unknown key");
        assert!(complaint.contains("invalid-schema"), "{complaint}");
    }
}
