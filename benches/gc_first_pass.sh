#!/usr/bin/env bash
# gc_first_pass.sh: what a process's first GC pass costs on a bucket of many manifests, before
# and after GC's catalog is kept in the bucket (gc/catalog/, docs/gc.md). Under --durability
# remote every group commit is a manifest; a process knows none of them at its start, and
# its first pass read each one (a GET each, 32 at a time). A Fly Machine that stops when idle
# runs a new process, and a first pass, at every wake-up.
#
# Usage (as root, after `make build`):
#   benches/gc_first_pass.sh                   # or: make bench-gc-first-pass
#   MANIFESTS=20000 S3_LATENCY_MS=0 benches/gc_first_pass.sh
#
# A `bucketfs mount --durability remote --gc-interval off` on a `file://` bucket kept under
# an S3 server's directory (benches/s3_server.rs: s3s-fs on 127.0.0.1, S3_LATENCY_MS added to
# every request) writes MANIFESTS group commits (one writer rewrites an 8 KiB page of one
# file and fsyncs it, each time) and stops cleanly. Then, each as a new process through the
# S3 server, timed, with its peak resident memory:
#   1. `bucketfs gc --dry-run`: a first pass on a bucket without the catalog's chunks (a dry
#      run writes none), which reads every manifest;
#   2. `bucketfs gc`: a deleting pass (no writer holds the prefix: it stopped cleanly), which
#      reads every manifest again and writes the chunks (the default retention keeps every
#      commit, so it deletes nothing);
#   3. `bucketfs gc --dry-run` again: a first pass that reads the chunks.
# Each pass's GET requests are the server's count (its `stats`). Its seconds include the
# LIST of manifests/, a request per 1,000 keys for which s3s-fs walks its whole directory:
# most of a pass that reads the chunks, where a real endpoint answers a page in a round trip.
#
# Environment:
#   MANIFESTS=50000     group commits written
#   S3_LATENCY_MS=20    milliseconds the S3 server adds to every request
#   BENCH_DIR=/var/tmp  where the scratch dir is made
#   KEEP_LOGS=DIR       copy the logs (and the passes' JSON reports) there
#   S3_SERVER=...       the S3 server's binary (default: built here with `cargo bench --no-run`)
#   BUCKETFS=...        the binary (default $CARGO_TARGET_DIR/debug/bucketfs, CARGO_TARGET_DIR
#                       defaulting to $HOME/.cache/bucketfs-target)
#
# Everything lives in one scratch dir (mktemp -d under $BENCH_DIR), removed on exit; on any
# exit the mount and the server are stopped first.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
gc_bench_start gc_first_pass "$@"

# Fewer, and no range of the catalog is closed: no chunk is written.
gc_bench_manifests 50000 4096 "a chunk covers 4,096 epochs"
gc_bench_latency

s3_start "$S3_LATENCY_MS"
say "$MANIFESTS group commits under --durability remote"
remote_commits "$MANIFESTS"
declare -A PEAK SECS GETS
for step in before write after; do
  case "$step" in
    before) what="bucketfs gc --dry-run (no chunks yet)"; opts=(--dry-run) ;;
    write) what="bucketfs gc (writes the chunks)"; opts=() ;;
    after) what="bucketfs gc --dry-run (reads the chunks)"; opts=(--dry-run) ;;
  esac
  say "$what, at $S3_LATENCY_MS ms a request"
  stats0="$(s3_stats)"
  out="$(gc_pass s3://pgdata/p "$step" "${opts[@]}")" || die "bucketfs gc failed; see $LOGS"
  stats1="$(s3_stats)"
  read -r gets0 _ <<<"$stats0"
  read -r gets1 _ <<<"$stats1"
  read -r kib secs <<<"$out"
  PEAK[$step]="$kib"
  SECS[$step]="$secs"
  GETS[$step]=$((gets1 - gets0))
done

gc_bench_header "MANIFESTS=$MANIFESTS, S3_LATENCY_MS=$S3_LATENCY_MS"
echo "| pass | manifests | chunks in the bucket | GETs | seconds | peak RSS (MiB) |"
echo "|---|---:|---:|---:|---:|---:|"
for step in before write after; do
  case "$step" in
    before) what="first pass, dry run, no chunks" ;;
    write) what="deleting pass, writes the chunks" ;;
    after) what="first pass, dry run, reads the chunks" ;;
  esac
  awk -v w="$what" -v m="$(json_field "$LOGS/gc-$step.json" manifests)" \
    -v c="$(json_field "$LOGS/gc-$step.json" catalog_chunks)" -v g="${GETS[$step]}" \
    -v t="${SECS[$step]}" -v p="${PEAK[$step]}" \
    'BEGIN { printf "| %s | %d | %d | %d | %s | %.1f |\n", w, m, c, g, t, p / 1024 }'
done
