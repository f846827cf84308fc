//! The image: docker/Dockerfile (and .dockerignore), oriole/, and the secret-spotting rules
//! every file is held to.

use super::*;

// ------------------------------------------------------------------------------------------
// Secrets: names that say "secret" must not carry values, and no value may look like a key.

/// A name that holds a credential by convention.
pub(crate) fn secret_name(name: &str) -> bool {
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
pub(crate) fn credential_value(v: &str) -> bool {
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

pub(crate) struct Instr {
    line: usize,
    op: String,
    args: String,
}

pub(crate) struct Stage {
    image: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

pub(crate) struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    /// Instructions with line continuations joined and comments dropped.
    pub(crate) fn parse(text: &str) -> Result<Dockerfile, String> {
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

    pub(crate) fn last(&self) -> &Stage {
        self.stages
            .last()
            .expect("parse refuses a file without FROM")
    }

    /// The JSON-array form of ENTRYPOINT or CMD in the final stage (the last one wins).
    pub(crate) fn exec_form(&self, op: &str) -> Result<Vec<String>, String> {
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
    pub(crate) fn command(&self) -> Result<Vec<String>, String> {
        let mut v = self.exec_form("ENTRYPOINT")?;
        v.extend(self.exec_form("CMD").unwrap_or_default());
        Ok(v)
    }

    /// ENV of the final stage, `K=V` pairs (quotes removed).
    pub(crate) fn env(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for i in self.last().instrs.iter().filter(|i| i.op == "ENV") {
            for (k, v) in split_env(&i.args) {
                out.insert(k, v);
            }
        }
        out
    }

    pub(crate) fn stop_signal(&self) -> Option<String> {
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
pub(crate) fn split_env(s: &str) -> Vec<(String, String)> {
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
pub(crate) fn flag_value<'a>(cmd: &'a [String], flag: &str) -> Option<&'a str> {
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
pub(crate) fn stop_timeout(cmd: &[String]) -> Result<Duration, String> {
    parse_duration(flag_value(cmd, "--stop-timeout").unwrap_or("280s"))
        .map_err(|e| format!("--stop-timeout: {e}"))
}

/// Whether `dir` is `base` or lies under it.
pub(crate) fn under(dir: &str, base: &str) -> bool {
    let d = Path::new(dir);
    d.starts_with(Path::new(base))
}

/// The VOLUMEs of the runtime's base image (orioledb/orioledb's docker/Dockerfile.ubuntu:
/// `VOLUME /var/lib/postgresql/data`, as the official PostgreSQL images declare).
const BASE_IMAGE_VOLUMES: [&str; 1] = ["/var/lib/postgresql/data"];

/// The bundle of CA certificates that Debian's and Ubuntu's ca-certificates installs.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub(crate) fn dockerfile_problems(files: &Files, docker: &Dockerfile, pg: &PgConf) -> Vec<String> {
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
    if !runs.iter().any(|r| {
        r.contains("apt-get install") && r.split_whitespace().any(|w| w == "ca-certificates")
    }) {
        bad(format!(
            "the runtime must install ca-certificates: TLS to the bucket, and {CA_BUNDLE}"
        ));
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
    // Docker mounts an anonymous volume on every VOLUME an image declares, and bucketfs
    // refuses to mount over another filesystem (tests/cli.rs).
    let volumes: Vec<String> = BASE_IMAGE_VOLUMES
        .iter()
        .map(|v| v.to_string())
        .chain(
            docker
                .stages
                .iter()
                .flat_map(|s| &s.instrs)
                .filter(|i| i.op == "VOLUME")
                .flat_map(|i| {
                    i.args
                        .split_whitespace()
                        .map(|w| w.trim_matches(|c| "[]\",".contains(c)).to_string())
                }),
        )
        .collect();
    if let Some(v) = volumes
        .iter()
        .find(|v| under(&mountpoint, v) || under(v, &mountpoint))
    {
        bad(format!(
            "bucketfs mounts {mountpoint}, but the image (or its OrioleDB base) declares a VOLUME at {v}: Docker mounts an anonymous volume there, and bucketfs refuses to mount on or over it"
        ));
    }
    let made = last.instrs.iter().filter(|i| i.op == "RUN").any(|i| {
        i.args.split(['&', ';', '|']).any(|cmd| {
            let mut words = cmd.split_whitespace().filter(|w| *w != "\\").map(|w| {
                w.trim_matches(|c| c == '"' || c == '\'')
                    .trim_end_matches('/')
            });
            words.next() == Some("mkdir") && words.any(|w| w == mountpoint)
        })
    });
    if !made {
        bad(format!(
            "no directory {mountpoint} is made in the image (RUN mkdir): bucketfs run needs an empty directory to mount on"
        ));
    }
    let env = docker.env();
    // The S3 client's TLS roots: the one bundle, not every file of /etc/ssl/certs as well.
    match env.get("SSL_CERT_FILE") {
        None => bad(format!(
            "no ENV SSL_CERT_FILE: set it to {CA_BUNDLE}, or the S3 client reads every file of /etc/ssl/certs at each start as well as the bundle"
        )),
        Some(f) if f != CA_BUNDLE => bad(format!(
            "ENV SSL_CERT_FILE={f}: it must be {CA_BUNDLE}, the bundle ca-certificates installs"
        )),
        Some(_) => {}
    }
    if env.contains_key("SSL_CERT_DIR") {
        bad("ENV SSL_CERT_DIR must not be set: the S3 client would read every file of that directory at each start as well as the bundle".into());
    }
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
    // A new database: the image's own first start through --initdb-command, which makes it
    // in a directory of its own. Left to the entrypoint (the program), it would be made
    // straight on the mount, and a stop in the middle would leave a half-made database that
    // every later start takes for a made one.
    let switched_on = cmd[..dashdash].iter().any(|a| a == "--initdb");
    match flag_value(&cmd, "--initdb-command") {
        Some(script) if switched_on => {
            let installed = copies.iter().any(|c| {
                let words: Vec<&str> = c.args.split_whitespace().collect();
                words.contains(&"oriole/first-start.sh")
                    && words.last() == Some(&script)
                    && words.iter().any(|w| matches!(*w, "--chmod=0755" | "--chmod=755"))
            });
            if !installed {
                bad(format!(
                    "--initdb-command {script}: oriole/first-start.sh must be copied there, executable (COPY --chmod=0755)"
                ));
            }
        }
        _ => bad("`bucketfs run` needs --initdb --initdb-command with oriole/first-start.sh: the entrypoint's own first start makes the database straight on the mount, where a stop in the middle leaves a half-made one".into()),
    }
    if child.first().map(String::as_str) != Some("docker-entrypoint.sh") {
        bad(format!(
            "the program must be the image's docker-entrypoint.sh, whose functions oriole/first-start.sh uses, not {:?}",
            child.first()
        ));
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

pub(crate) struct PgConf(BTreeMap<String, String>);

impl PgConf {
    pub(crate) fn parse(text: &str) -> PgConf {
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

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

pub(crate) fn oriole_problems(files: &Files, docker: &Dockerfile, pg: &PgConf) -> Vec<String> {
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
