//! An S3 server for the benchmark scripts: s3s-fs on 127.0.0.1 (tests/common/s3.rs, the one
//! the tests use), with a fixed latency added to every request, as a bucket in the machine's
//! region has. `benches/peers.sh` starts it when `S3_LATENCY_MS` is set, so that bucketfs and
//! JuiceFS are measured against the same store with the same latency.
//!
//! `cargo bench --locked --profile dev --bench s3_server -- DIR LATENCY_MS`: serves the bucket
//! `pgdata` stored under DIR, prints `endpoint=http://127.0.0.1:PORT`, `bucket=pgdata` and the
//! access key and secret (the tests' fixed ones, which open nothing but this server) as shell
//! assignments on stdout, and serves until its standard input closes. Each line `stats` on its
//! standard input is answered on stdout with `stats requests=N puts=N put_bytes=N gets=N
//! get_bytes=N` (counted since it started); a line `latency MS` sets the latency from then on
//! (lines are taken in order, so a `stats` after it answers once it holds). Without arguments
//! (as a plain `cargo bench` runs every bench) it says how to use it and exits.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

fn main() {
    // `cargo bench` adds `--bench`: only the positional arguments count.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.is_empty() {
        eprintln!("s3_server: not a benchmark; benches/peers.sh starts it (usage: s3_server DIR LATENCY_MS)");
        return;
    }
    let [dir, latency] = args.as_slice() else {
        eprintln!("usage: s3_server DIR LATENCY_MS");
        std::process::exit(2);
    };
    let latency: u64 = latency.parse().unwrap_or_else(|_| {
        eprintln!("LATENCY_MS must be a whole number of milliseconds, got {latency:?}");
        std::process::exit(2);
    });
    let server = common::s3::S3Server::start(&PathBuf::from(dir));
    server.faults.latency_ms.store(latency, Ordering::SeqCst);
    let mut out = std::io::stdout();
    writeln!(out, "endpoint={}", server.endpoint).expect("stdout");
    writeln!(out, "bucket={}", common::s3::BUCKET).expect("stdout");
    writeln!(out, "access_key={}", common::s3::ACCESS_KEY).expect("stdout");
    writeln!(out, "secret_key={}", common::s3::SECRET_KEY).expect("stdout");
    out.flush().expect("stdout");
    // Until whoever started it closes our stdin (or exits). A line `stats` on stdin is
    // answered with the counters so far, so that a script can measure what one part of its
    // run asked of the store.
    let f = &server.faults;
    let counts = || {
        format!(
            "requests={} puts={} put_bytes={} gets={} get_bytes={}",
            f.requests.load(Ordering::SeqCst),
            f.puts.load(Ordering::SeqCst),
            f.put_bytes.load(Ordering::SeqCst),
            f.gets.load(Ordering::SeqCst),
            f.get_bytes.load(Ordering::SeqCst)
        )
    };
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "stats" {
            writeln!(out, "stats {}", counts()).expect("stdout");
            out.flush().expect("stdout");
        } else if let Some(ms) = line.strip_prefix("latency ") {
            match ms.parse::<u64>() {
                Ok(ms) => f.latency_ms.store(ms, Ordering::SeqCst),
                Err(_) => eprintln!("s3_server: `latency MS` needs a whole number, got {ms:?}"),
            }
        }
    }
    eprintln!("s3_server: {}", counts());
}
