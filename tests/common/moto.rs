//! moto (PyPI `moto[server]`), the S3 server in Python behind many local test setups, started
//! by a test on 127.0.0.1 on a port of its own, with one bucket, and stopped when dropped.
//!
//! The server is found at `$BUCKETFS_MOTO_SERVER`, else in the venv `scripts/setup.sh` makes
//! (`~/.cache/bucketfs-venv/bin/moto_server`), else as `moto_server` on PATH. A machine
//! without it skips the moto tests with a notice; under CI (`CI=true`) that is a failure, since
//! CI is where the store contract is proven on more than one S3 implementation.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BUCKET: &str = "pgdata";
/// moto accepts any credentials; these only have to look like some.
pub const ACCESS_KEY: &str = "moto-test-access";
pub const SECRET_KEY: &str = "moto-test-secret-do-not-log";

/// Where the moto server program is, if anywhere.
pub fn server_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BUCKETFS_MOTO_SERVER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let venv = PathBuf::from(home).join(".cache/bucketfs-venv/bin/moto_server");
        if venv.exists() {
            return Some(venv);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.exists())
    })
}

/// A running moto server.
pub struct Moto {
    pub endpoint: String,
    /// host:port, for raw HTTP requests.
    pub addr: String,
    child: Child,
    /// The server's last lines of output, for messages when something goes wrong.
    output: Arc<Mutex<Vec<String>>>,
}

impl Moto {
    /// Starts moto with bucket `BUCKET`, or says why it could not.
    pub fn start() -> Result<Moto, String> {
        let program = server_program().ok_or(
            "moto_server not found: run scripts/setup.sh (it installs moto[server] into \
             ~/.cache/bucketfs-venv), or set BUCKETFS_MOTO_SERVER to the program",
        )?;
        // Port 0: the server picks a free one and prints it ("Running on http://...").
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {}: {e}", program.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = output.clone();
        // Reads the server's output for as long as it runs (moto logs every request: a pipe
        // nobody drains would stop it).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split("Running on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut keep = keep.lock().unwrap();
                keep.push(line);
                if keep.len() > 200 {
                    keep.remove(0);
                }
            }
        });
        let endpoint = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not say where it listens within 60 s:\n{}",
                    program.display(),
                    output.lock().unwrap().join("\n")
                ));
            }
        };
        let addr = endpoint
            .strip_prefix("http://")
            .ok_or_else(|| format!("moto listens at {endpoint:?}, not on http"))?
            .trim_end_matches('/')
            .to_string();
        let moto = Moto {
            endpoint: format!("http://{addr}"),
            addr,
            child,
            output,
        };
        let (code, body) = moto.http("PUT", &format!("/{BUCKET}"));
        if code != 200 {
            return Err(format!("create bucket on moto: http {code}: {body}"));
        }
        Ok(moto)
    }

    /// Starts moto, or returns None after saying why (outside CI), or fails the test (in CI,
    /// where a contract run on one S3 implementation only must not pass for two).
    pub fn start_or_skip(test: &str) -> Option<Moto> {
        match Moto::start() {
            Ok(m) => Some(m),
            Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
                panic!("{test}: moto is needed in CI and could not be started: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: moto could not be started: {why}");
                None
            }
        }
    }

    /// The environment a bucketfs child needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("BUCKETFS_S3_PATH_STYLE", "1".into()),
        ]
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// A request with a made-up signature (moto reads the access key from it and checks no
    /// more; without one, it refuses object deletes as anonymous): (status code, body).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        let mut conn = std::net::TcpStream::connect(&self.addr).expect("connect to moto");
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: AWS4-HMAC-SHA256 \
             Credential={ACCESS_KEY}/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, \
             Signature=00\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("send to moto");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read moto's answer");
        let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (code, body.to_string())
    }

    /// Deletes every object of the bucket and then the bucket itself, as someone cleaning up
    /// the wrong bucket would.
    pub fn delete_bucket(&self) {
        loop {
            let (code, body) = self.http("GET", &format!("/{BUCKET}?list-type=2"));
            assert_eq!(code, 200, "list the bucket: {body}");
            let keys: Vec<&str> = body
                .split("<Key>")
                .skip(1)
                .filter_map(|s| s.split("</Key>").next())
                .collect();
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let (code, body) = self.http("DELETE", &format!("/{BUCKET}/{key}"));
                assert_eq!(code, 204, "delete {key}: {body}");
            }
        }
        let (code, body) = self.http("DELETE", &format!("/{BUCKET}"));
        assert_eq!(code, 204, "delete the bucket: {body}");
    }

    /// The server's recent output.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // moto keeps everything in memory: nothing to lose by killing it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
