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
//!   JSON schema plus its rules) for compose.yaml, both installed pinned by scripts/setup.sh,
//!   and shellcheck (Debian's) for oriole/first-start.sh, the image's first start.
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

mod deploy;
use deploy::{image::*, lint::*, platform::*};

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

#[path = "common/checkout.rs"]
mod checkout;

fn root() -> PathBuf {
    checkout::checkout()
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
fn the_images_first_start_script_passes_shellcheck() {
    if let Some(complaint) = shellcheck(&root().join("oriole/first-start.sh")) {
        panic!("shellcheck:\n{complaint}");
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
        ("fly: metrics beyond loopback not allowed", |f| &mut f.fly, "BUCKETFS_METRICS_ALLOW_REMOTE = \"true\"", "", "METRICS_ALLOW_REMOTE"),
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
        ("docker: shell form", |f| &mut f.dockerfile, "ENTRYPOINT [\"bucketfs\", \"run\", \"/var/lib/postgresql/pgdata\", \"--cache-dir\", \"/var/lib/bucketfs/cache\", \"--allow-other\", \"--uid\", \"postgres\", \"--gid\", \"postgres\", \"--user\", \"postgres\", \"--stop-timeout\", \"280s\", \"--initdb\", \"--initdb-command\", \"/usr/local/bin/bucketfs-first-start\"]", "ENTRYPOINT bucketfs run /var/lib/postgresql/pgdata", "JSON array"),
        ("docker: mount elsewhere", |f| &mut f.dockerfile, "\"run\", \"/var/lib/postgresql/pgdata\"", "\"run\", \"/mnt/pgdata\"", "data_directory"),
        ("docker: mount on the base image's VOLUME", |f| &mut f.dockerfile, "\"run\", \"/var/lib/postgresql/pgdata\"", "\"run\", \"/var/lib/postgresql/data\"", "declares a VOLUME"),
        ("docker: mount above the base image's VOLUME", |f| &mut f.dockerfile, "\"run\", \"/var/lib/postgresql/pgdata\"", "\"run\", \"/var/lib/postgresql\"", "declares a VOLUME"),
        ("docker: mountpoint not made", |f| &mut f.dockerfile, "mkdir -p /var/lib/bucketfs/cache /var/lib/postgresql/pgdata", "mkdir -p /var/lib/bucketfs/cache", "no directory"),
        ("docker: PGDATA elsewhere", |f| &mut f.dockerfile, "ENV PGDATA=/var/lib/postgresql/pgdata", "ENV PGDATA=/pgdata", "PGDATA"),
        ("docker: conf not installed", |f| &mut f.dockerfile, "oriole/postgresql.conf oriole/pg_hba.conf /etc/postgresql/", "oriole/pg_hba.conf /etc/postgresql/", "-D /etc/postgresql"),
        ("docker: no child", |f| &mut f.dockerfile, "CMD [\"--\", \"docker-entrypoint.sh\", \"postgres\", \"-D\", \"/etc/postgresql\"]", "CMD [\"--\"]", "nothing after"),
        ("docker: entrypoint's own first start", |f| &mut f.dockerfile, ", \"--initdb\", \"--initdb-command\", \"/usr/local/bin/bucketfs-first-start\"]", "]", "half-made"),
        ("docker: first start not installed", |f| &mut f.dockerfile, "COPY --chmod=0755 oriole/first-start.sh /usr/local/bin/bucketfs-first-start", "COPY oriole/first-start.sh /usr/local/bin/bucketfs-first-start", "executable"),
        ("docker: other program", |f| &mut f.dockerfile, "CMD [\"--\", \"docker-entrypoint.sh\"", "CMD [\"--\", \"postgres\"", "functions oriole/first-start.sh uses"),
        ("docker: no stopsignal", |f| &mut f.dockerfile, "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL", "STOPSIGNAL"),
        ("docker: stop-timeout over", |f| &mut f.dockerfile, "\"--stop-timeout\", \"280s\"", "\"--stop-timeout\", \"400s\"", "shorter than"),
        ("docker: secret ENV", |f| &mut f.dockerfile, "ENV PGDATA=", "ENV POSTGRES_PASSWORD=hunter2 PGDATA=", "carries a value"),
        ("docker: unignored COPY", |f| &mut f.dockerfile, "COPY benches ./benches", "COPY tests ./tests", "leaves out"),
        ("docker: no ca-certificates", |f| &mut f.dockerfile, "fuse3 ca-certificates", "fuse3", "must install ca-certificates"),
        ("docker: no CA bundle named", |f| &mut f.dockerfile, "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n", "", "no ENV SSL_CERT_FILE"),
        ("docker: another CA bundle", |f| &mut f.dockerfile, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_FILE=/etc/ssl/cert.pem", "it must be /etc/ssl/certs"),
        ("docker: CA dir too", |f| &mut f.dockerfile, "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt SSL_CERT_DIR=/etc/ssl/certs", "SSL_CERT_DIR must not be set"),
        ("docker: collation", |f| &mut f.dockerfile, "--locale=C ", "--locale=en_US.UTF-8 ", "collation"),
        (".dockerignore: no allowlist", |f| &mut f.dockerignore, "\n*\n", "\ntarget\n", "allowlist"),
        // oriole/
        ("pg: no orioledb", |f| &mut f.pg_conf, "shared_preload_libraries = 'orioledb'", "shared_preload_libraries = 'pg_stat_statements'", "shared_preload_libraries"),
        ("pg: s3_mode on", |f| &mut f.pg_conf, "orioledb.s3_mode = off", "orioledb.s3_mode = on", "s3_mode"),
        ("pg: md5", |f| &mut f.pg_conf, "password_encryption = 'scram-sha-256'", "password_encryption = 'md5'", "password_encryption"),
        ("pg: log collector", |f| &mut f.pg_conf, "logging_collector = off", "logging_collector = on", "logging_collector"),
        ("pg: wal recycle", |f| &mut f.pg_conf, "wal_recycle = off", "wal_recycle = on", "wal_recycle"),
        ("pg: data elsewhere", |f| &mut f.pg_conf, "data_directory = '/var/lib/postgresql/pgdata'", "data_directory = '/pgdata'", "data_directory"),
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
    let script = dir.path().join("first-start.sh");
    let real_script = read("oriole/first-start.sh");
    let unquoted = real_script.replacen(
        "-c ident_file=\"$PGDATA/pg_ident.conf\"",
        "-c ident_file=$PGDATA/pg_ident.conf",
        1,
    );
    assert_ne!(unquoted, real_script, "the broken copy must differ");
    std::fs::write(&script, unquoted).expect("write");
    if linter(
        "BUCKETFS_SHELLCHECK",
        PathBuf::from("/usr/bin/shellcheck"),
        "shellcheck",
    )
    .is_some()
    {
        let complaint =
            shellcheck(&script).expect("shellcheck passed a script with an unquoted $PGDATA");
        assert!(complaint.contains("SC2086"), "{complaint}");
    }
}
