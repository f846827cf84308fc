#!/usr/bin/env bash
# gc_memory.sh: the memory a GC pass takes per manifest in the bucket. Under --durability
# remote every group commit is a manifest, and the default --retain (24h) keeps every one of a
# day; a writer's first pass after its start lists and reads all of them (docs/gc.md).
#
# Usage (as root, after `make build`):
#   benches/gc_memory.sh                      # or: make bench-gc-memory
#   MANIFESTS=20000 benches/gc_memory.sh      # a quick run (the least it takes)
#
# A `bucketfs mount --durability remote --gc-interval off` on a `file://` bucket kept under
# an S3 server's directory (benches/s3_server.rs: s3s-fs on 127.0.0.1, no added latency);
# one writer rewrites an 8 KiB page of one file (one of 64 in turn) and fsyncs it,
# MANIFESTS/2 times (a group commit, so a manifest, each); the mount stops (SIGTERM). Then `bucketfs gc --dry-run`
# runs on the bucket twice, once as `file://` and once as `s3://` through the server, each
# timed, with its peak resident memory (the kernel's count for the child, getrusage). The
# same again with the second half of the commits (the same cache dir, mounted again). The
# report gives both passes' peaks and what a manifest more costs: the difference between
# them over the manifests added (the process's fixed part, the runtime and the S3 client
# among it, drops out). About 20 minutes with the default: the S3 server (s3s-fs) walks its
# whole directory for each LIST page of 1,000 keys.
#
# Environment:
#   MANIFESTS=100000    group commits written in all (two halves)
#   BENCH_DIR=/var/tmp  where the scratch dir is made
#   KEEP_LOGS=DIR       copy the logs there
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
gc_bench_start gc_memory "$@"

# Fewer, and the allocator's and the kernel's rounding outweigh what the manifests add.
gc_bench_manifests 100000 20000

s3_start 0
HALF=$((MANIFESTS / 2))
declare -A PEAK SECS COUNT
for half in 1 2; do
  say "half $half: $HALF group commits under --durability remote"
  remote_commits "$HALF"
  for store in file s3; do
    case "$store" in
      file) url="file://$BUCKET_DIR" ;;
      s3) url="s3://pgdata/p" ;;
    esac
    say "half $half: bucketfs gc --dry-run --bucket $url"
    out="$(gc_pass "$url" "$store-$half" --dry-run)" || die "bucketfs gc failed on $url; see $LOGS"
    read -r kib secs <<<"$out"
    PEAK[$store-$half]="$kib"
    SECS[$store-$half]="$secs"
    COUNT[$store-$half]="$(json_field "$LOGS/gc-$store-$half.json" manifests)"
  done
done

gc_bench_header "MANIFESTS=$MANIFESTS"
echo "| store | manifests | gc --dry-run peak RSS (MiB) | seconds | manifests | peak RSS (MiB) | seconds | bytes per manifest more |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for store in file s3; do
  a="$store-1" b="$store-2"
  per=$(( (PEAK[$b] - PEAK[$a]) * 1024 / (COUNT[$b] - COUNT[$a]) ))
  awk -v s="$store" -v m1="${COUNT[$a]}" -v p1="${PEAK[$a]}" -v t1="${SECS[$a]}" \
    -v m2="${COUNT[$b]}" -v p2="${PEAK[$b]}" -v t2="${SECS[$b]}" -v per="$per" \
    'BEGIN { printf "| %s | %d | %.1f | %s | %d | %.1f | %s | %d |\n", s, m1, p1 / 1024, t1, m2, p2 / 1024, t2, per }'
done
