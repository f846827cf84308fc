#!/usr/bin/env bash
# verify.sh: what `bucketfs verify` costs on a bucket of many manifests, over S3 with a
# latency. Under --durability remote every group commit is a manifest, and verify reads every
# manifest, segment and chunk of GC's catalog (docs/gc.md, "verify checks what GC promises").
#
# Usage (as root, after `make build`):
#   benches/verify.sh                          # or: make bench-verify
#   MANIFESTS=5000 S3_LATENCY_MS=0 benches/verify.sh
#   BUCKETFS=/path/to/another/bucketfs benches/verify.sh   # the same with another binary
#   PAGES=16384 COMPARE=/path/to/old/bucketfs benches/verify.sh   # large bases, two verifies
#
# A `bucketfs mount --durability remote --gc-interval off` on a `file://` bucket kept under
# an S3 server's directory (benches/s3_server.rs: s3s-fs on 127.0.0.1, S3_LATENCY_MS added to
# every request) writes MANIFESTS group commits (one writer writes the next of PAGES 8 KiB
# pages of one file, in turn, and fsyncs it, each time; every base restates the file's
# extents, one a page written) and stops cleanly; `bucketfs gc` through the S3 server
# writes the chunks of GC's catalog (it deletes nothing: the default retention keeps every
# commit). Then `bucketfs verify` through the S3 server, timed, with its peak resident memory
# and its GET requests (the server's count: every manifest, segment and chunk; what an open
# of the bucket reads, the format marker and the latest checkpoint's chain among it;
# gc/boundary and gc/state, twice; and, since the fiftieth session, the oldest retained
# checkpoint's chain read again at the end, its "verify: chain" lines). Its seconds include
# the LIST of manifests/, a request per 1,000 keys for which s3s-fs walks its whole
# directory. Below 4,096 manifests no range
# of GC's catalog is closed, and the bucket holds no chunk to check. With COMPARE, those
# binaries' verify runs on the same bucket after BUCKETFS's, a row each (named by their
# order and file name): the first run meets a cold S3 server and page cache.
#
# Environment:
#   MANIFESTS=20000     group commits written
#   PAGES=64            pages of the file the commits write in turn
#   COMPARE=...         other bucketfs binaries (paths without spaces, separated by spaces)
#                       whose verify runs too, on the same bucket, in that order after BUCKETFS's
#   S3_LATENCY_MS=20    milliseconds the S3 server adds to every request
#   BENCH_DIR=/var/tmp  where the scratch dir is made
#   KEEP_LOGS=DIR       copy the logs (and verify's output) there
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
gc_bench_start verify "$@"

gc_bench_manifests 20000 1
gc_bench_latency
PAGES="${PAGES:-64}"
[[ "$PAGES" =~ ^[1-9][0-9]*$ ]] || die "PAGES must be a whole number of at least 1, got '$PAGES'"
bench_compare

s3_start "$S3_LATENCY_MS"
say "$MANIFESTS group commits under --durability remote"
remote_commits "$MANIFESTS" "$PAGES"
say "bucketfs gc (writes the chunks of GC's catalog)"
gc_pass s3://pgdata/p chunks >/dev/null || die "bucketfs gc failed; see $LOGS"
# What verify read, by its own progress lines (on stderr) in LOG.
count() { grep -c "^verify: $1 " "$2" || true; }
rows=()
i=0
for binary in "$BUCKETFS" $COMPARE; do
  say "bucketfs verify ($binary), at $S3_LATENCY_MS ms a request"
  i=$((i + 1))
  name="verify-$i-$(basename "$binary")"
  timed_gets "$name" "$binary" verify --bucket s3://pgdata/p
  log="$LOGS/$name.log"
  rows+=("$(awk -v b="${name#verify-}" -v m="$(count manifest "$log")" -v s="$(count segment "$log")" \
    -v c="$(count chunk "$log")" -v g="$GETS" -v t="$SECS" -v p="$KIB" \
    'BEGIN { printf "| %s | %d | %d | %d | %d | %s | %.1f |", b, m, s, c, g, t, p / 1024 }')")
done

gc_bench_header "MANIFESTS=$MANIFESTS, PAGES=$PAGES, S3_LATENCY_MS=$S3_LATENCY_MS"
echo "| binary | manifests | segments | chunks checked | GETs | seconds | peak RSS (MiB) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
