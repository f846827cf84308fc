//! The platforms: fly.toml (Fly's fly.toml reference), docker/compose.yaml (the Compose
//! specification), docker/.env.sample, and the guide that walks through them.

use super::*;

// ------------------------------------------------------------------------------------------
// fly.toml

pub(crate) const FLY_TOP: &[&str] = &[
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
pub(crate) const FLY_SERVICE: &[&str] = &[
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
pub(crate) const FLY_PORT: &[&str] = &[
    "port",
    "start_port",
    "end_port",
    "handlers",
    "force_https",
    "tls_options",
    "http_options",
    "proxy_proto_options",
];
pub(crate) const FLY_HANDLERS: &[&str] = &["tls", "pg_tls", "http", "edge_http", "proxy_proto"];
pub(crate) const FLY_MOUNT: &[&str] = &[
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
pub(crate) const FLY_METRICS: &[&str] = &["port", "path", "https", "processes"];
pub(crate) const FLY_SIGNALS: &[&str] = &[
    "SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP",
];

/// A table or an array of tables, as a list (fly.toml allows both for mounts and metrics).
pub(crate) fn tables(item: &Item) -> Vec<&dyn toml_edit::TableLike> {
    if let Some(t) = item.as_table_like() {
        return vec![t];
    }
    if let Some(a) = item.as_array_of_tables() {
        return a.iter().map(|t| t as &dyn toml_edit::TableLike).collect();
    }
    Vec::new()
}

pub(crate) fn unknown_keys(
    t: &dyn toml_edit::TableLike,
    known: &[&str],
    what: &str,
) -> Vec<String> {
    t.iter()
        .filter(|(k, _)| !known.contains(k))
        .map(|(k, _)| format!("{what}: unknown key {k:?} (not in Fly's fly.toml reference)"))
        .collect()
}

/// A TOML value for a message (toml_edit's Display is not compiled in).
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.value()),
        Value::Integer(n) => n.value().to_string(),
        Value::Boolean(b) => b.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        _ => "a value of another type".into(),
    }
}

/// Fly's durations: a number of seconds, or Go's "5s", "1m30s".
pub(crate) fn fly_duration(v: &Item) -> Option<Duration> {
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
pub(crate) fn all_keys(item: &Item, path: &str, out: &mut Vec<(String, Option<String>)>) {
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

pub(crate) fn fly_problems(text: &str, docker: &Dockerfile) -> Vec<String> {
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
            Some(Ok(_)) if env_str("BUCKETFS_METRICS_ALLOW_REMOTE").as_deref() != Some("true") => {
                bad("BUCKETFS_METRICS_ADDR is not loopback, and bucketfs serves it only with BUCKETFS_METRICS_ALLOW_REMOTE = \"true\"".to_string())
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

pub(crate) const COMPOSE_TOP: &[&str] = &[
    "version", "name", "include", "services", "models", "networks", "volumes", "secrets", "configs",
];
pub(crate) const COMPOSE_SERVICE: &[&str] = &[
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

pub(crate) fn ystr(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(n) => Some(n.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of strings (or the one string) under `key`.
pub(crate) fn ylist(y: &Yaml, key: &str) -> Vec<String> {
    match &y[key] {
        Yaml::Array(a) => a.iter().filter_map(ystr).collect(),
        other => ystr(other).into_iter().collect(),
    }
}

pub(crate) fn ykeys(y: &Yaml) -> Vec<String> {
    y.as_hash()
        .map(|h| h.keys().filter_map(ystr).collect())
        .unwrap_or_default()
}

/// Compose's durations: "300s", "5m", "1m30s".
pub(crate) fn compose_duration(s: &str) -> Option<Duration> {
    fly_duration(&Item::Value(Value::from(s)))
}

/// Every `${NAME...}` that compose.yaml interpolates ($$ is a literal $).
pub(crate) fn interpolated(text: &str) -> BTreeSet<String> {
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
pub(crate) fn env_lines(text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (i + 1, k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

pub(crate) fn compose_problems(text: &str, env_sample: &str, docker: &Dockerfile) -> Vec<String> {
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

pub(crate) fn env_sample_problems(text: &str, gitignore: &str) -> Vec<String> {
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

pub(crate) fn guide_problems(guide: &str, fly: &str) -> Vec<String> {
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
