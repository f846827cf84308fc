#!/usr/bin/env bash
# ls.sh: what `bucketfs ls` costs on a bucket of many manifests, over S3 with a latency.
# Under --durability remote every group commit is a manifest, and `ls` shows a line for each
# (reading it), or with --last N only the newest N.
#
# Usage (as root, after `make build`):
#   benches/ls.sh                              # or: make bench-ls
#   MANIFESTS=5000 S3_LATENCY_MS=0 benches/ls.sh
#   COMPARE=/path/to/old/bucketfs benches/ls.sh   # the same bucket listed by another binary too
#
# A `bucketfs mount --durability remote --gc-interval off` on a `file://` bucket kept under
# an S3 server's directory (benches/s3_server.rs: s3s-fs on 127.0.0.1, S3_LATENCY_MS added to
# every request) writes MANIFESTS group commits (one writer rewrites an 8 KiB page of one
# file and fsyncs it, each time) and stops cleanly. Then, for BUCKETFS and each binary in
# COMPARE, in that order: `bucketfs ls` through the S3 server, and `bucketfs ls --last 10`
# if the binary has that option, each timed, with its peak resident memory, the lines it
# printed and its GET requests (the server's count). Its seconds include the LIST of
# manifests/, a request per 1,000 keys for which s3s-fs walks its whole directory; the first
# run meets a cold S3 server and page cache.
#
# Environment:
#   MANIFESTS=20000     group commits written
#   S3_LATENCY_MS=20    milliseconds the S3 server adds to every request
#   COMPARE=...         other bucketfs binaries (paths without spaces, separated by spaces)
#   BENCH_DIR=/var/tmp  where the scratch dir is made
#   KEEP_LOGS=DIR       copy the logs (and the listings) there
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
gc_bench_start ls "$@"

gc_bench_manifests 20000 1
gc_bench_latency
bench_compare

s3_start "$S3_LATENCY_MS"
say "$MANIFESTS group commits under --durability remote"
remote_commits "$MANIFESTS"

# timed_ls NAME BINARY ARG...: a row of the table (in rows), for `BINARY ls --bucket ...
# ARG...`.
rows=()
timed_ls() {
  local name="$1" binary="$2" lines
  shift 2
  say "$name: bucketfs ls $* ($binary), at $S3_LATENCY_MS ms a request"
  timed_gets "ls-$name" "$binary" ls --bucket s3://pgdata/p "$@"
  lines="$(($(wc -l <"$LOGS/ls-$name.out") - 1))"
  rows+=("$(awk -v b="$(basename "$binary")" -v c="ls${*:+ $*}" -v l="$lines" -v g="$GETS" \
    -v t="$SECS" -v p="$KIB" \
    'BEGIN { printf "| %s | `%s` | %d | %d | %s | %.1f |", b, c, l, g, t, p / 1024 }')")
}

i=0
for binary in "$BUCKETFS" $COMPARE; do
  i=$((i + 1))
  timed_ls "$i-all" "$binary"
  help="$("$binary" ls --help)"
  if [[ "$help" == *--last* ]]; then
    timed_ls "$i-last" "$binary" --last 10
  fi
done

gc_bench_header "MANIFESTS=$MANIFESTS, S3_LATENCY_MS=$S3_LATENCY_MS"
echo "| binary | command | checkpoints shown | GETs | seconds | peak RSS (MiB) |"
echo "|---|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
