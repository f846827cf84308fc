#!/usr/bin/env bash
# gc_growth.sh: the bucket's size over a pgbench run, without GC and with it, in one run.
#
# Usage (as root, after `make build`):
#   benches/gc_growth.sh                      # or: make bench-gc
#   BENCH_MINUTES=2 SCALE=2 benches/gc_growth.sh   # a quick smoke run
#
# For each case ("no-gc": --gc-interval off; "gc": the writer's GC and compaction), on a
# local-directory bucket:
#   `bucketfs run --initdb` (PostgreSQL on the mount, checkpoints every second),
#   `pgbench -i -s $SCALE`, a checkpoint, and the time a read-only restore of it takes to
#   serve (a mount on an empty cache dir, until the first file reads back);
#   `pgbench -c 4 -T $((BENCH_MINUTES * 60))` (TPC-B), sampling the bucket's bytes and objects
#   every $SAMPLE seconds; a clean stop; the same restore time again.
# Then a table per case: bucket bytes and objects over time (CSV beside it, to plot), the
# end's space amplification (bucket bytes / bytes the latest checkpoint uses, from
# `bucketfs gc --dry-run --json`), the restore chain, the objects GC deleted and the LIST and
# DELETE requests spent per GiB uploaded, and the two restore times.
#
# Environment:
#   BENCH_MINUTES=10  minutes of pgbench per case
#   SCALE=10          pgbench scale (10: about 150 MB)
#   SAMPLE=30         seconds between samples
#   GC_ARGS="--retain 2m --retain-checkpoints 2 --gc-grace 1m --gc-interval 30s"
#                     the GC case's settings (a window short next to the run, so that the
#                     run shows the steady state)
#   BENCH_DIR=/var/tmp   where the scratch dir is made
#   PORT=54480
#   BUCKETFS=...      the bucketfs binary (default $CARGO_TARGET_DIR/debug/bucketfs)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "gc_growth: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
die() { echo "gc_growth: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

BENCH_MINUTES="${BENCH_MINUTES:-10}"
SCALE="${SCALE:-10}"
SAMPLE="${SAMPLE:-30}"
GC_ARGS="${GC_ARGS:---retain 2m --retain-checkpoints 2 --gc-grace 1m --gc-interval 30s}"
BENCH_DIR="${BENCH_DIR:-/var/tmp}"
PORT="${PORT:-54480}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
BUCKETFS="${BUCKETFS:-$CARGO_TARGET_DIR/debug/bucketfs}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
for v in BENCH_MINUTES SCALE SAMPLE PORT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[ "$(id -u)" -eq 0 ] || die "run as root (FUSE, and PostgreSQL as the postgres user)"
id postgres >/dev/null 2>&1 || die "no postgres user: install Debian's postgresql package (make setup)"
[ -x "$BUCKETFS" ] || die "no bucketfs binary at $BUCKETFS: run \`make build\`"
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"
command -v bc >/dev/null || die "bc is missing (apt-get install bc)"
PGBIN=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4n); do
  [ -x "$d/postgres" ] && PGBIN="$d"
done
[ -n "$PGBIN" ] || die "no PostgreSQL under /usr/lib/postgresql/*/bin (make setup)"

SCRATCH="$(mktemp -d "$BENCH_DIR/gc-growth.XXXXXX")"
chmod 755 "$SCRATCH"
SOCK="$SCRATCH/sock"
mkdir -p "$SOCK"
chown postgres:postgres "$SOCK"
cd "$SCRATCH"
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
RUN_PID=""
cleanup() {
  local rc=$? m
  trap - EXIT INT TERM
  set +e
  if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
    kill -TERM "$RUN_PID"
    wait_pid_gone "$RUN_PID" 300 || kill -KILL "$RUN_PID"
  fi
  pkill -f "$SCRATCH/.*-ro" 2>/dev/null
  for m in $(mounts_under "$SCRATCH"); do fusermount3 -uz "$m" 2>/dev/null || umount -l "$m"; done
  [ -z "$(mounts_under "$SCRATCH")" ] && rm -rf --one-file-system "$SCRATCH"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_pg() { runuser -u postgres -- env HOME=/tmp LC_ALL=C PGHOST="$SOCK" PGPORT="$PORT" PGUSER=postgres "$@"; }

# Seconds (with ms) until a read-only mount of the bucket's latest checkpoint, on an empty
# cache dir, serves PG_VERSION.
restore_seconds() { # bucket_url tag
  local mnt="$SCRATCH/$2-ro" cache="$SCRATCH/$2-ro-cache" start end pid
  mkdir -p "$mnt"
  start=$(date +%s.%N)
  "$BUCKETFS" mount "$mnt" --cache-dir "$cache" --bucket "$1" --read-only \
    --metrics-addr off >"$SCRATCH/$2-ro.log" 2>&1 &
  pid=$!
  until [ -f "$mnt/PG_VERSION" ] && cat "$mnt/PG_VERSION" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "read-only mount of $1 failed: $(tail -5 "$SCRATCH/$2-ro.log")"
    sleep 0.02
  done
  end=$(date +%s.%N)
  kill -TERM "$pid"
  wait "$pid" || true
  rm -rf "$cache"
  echo "$end - $start" | bc
}

declare -A RESULT
run_case() { # name "report args" run-args...
  local name="$1" report_args="$2"
  shift 2
  local mnt="$SCRATCH/$name-mnt" cache="$SCRATCH/$name-cache" bucket="$SCRATCH/$name-bucket"
  local url="file://$bucket" csv="$SCRATCH/$name.csv" log="$SCRATCH/$name-run.log" t
  mkdir -p "$mnt"
  say "$name: bucketfs run --initdb, pgbench -i -s $SCALE"
  # shellcheck disable=SC2068
  "$BUCKETFS" run "$mnt" --cache-dir "$cache" --bucket "$url" --checkpoint-interval 1s \
    --metrics-addr off --initdb $@ -- "$PGBIN/postgres" -D "$mnt" -k "$SOCK" -p "$PORT" \
    -c "listen_addresses=" >"$log" 2>&1 &
  RUN_PID=$!
  until as_pg "$PGBIN/pg_isready" -q; do
    kill -0 "$RUN_PID" 2>/dev/null || die "bucketfs run ($name) exited: $(tail -20 "$log")"
    sleep 0.2
  done
  as_pg "$PGBIN/pgbench" -i -s "$SCALE" -q postgres >"$SCRATCH/$name-init.log" 2>&1
  "$BUCKETFS" checkpoint --cache-dir "$cache" >/dev/null
  RESULT[$name,restore_first]=$(restore_seconds "$url" "$name-first")
  say "$name: pgbench for $BENCH_MINUTES minutes, sampling the bucket every $SAMPLE s"
  echo "seconds,bytes,objects" >"$csv"
  as_pg "$PGBIN/pgbench" -c 4 -j 2 -T $((BENCH_MINUTES * 60)) postgres >"$SCRATCH/$name-pgbench.log" 2>&1 &
  local bench=$!
  t=0
  while kill -0 "$bench" 2>/dev/null; do
    echo "$t,$(du -sb "$bucket" | cut -f1),$(find "$bucket" -type f | wc -l)" >>"$csv"
    sleep "$SAMPLE"
    t=$((t + SAMPLE))
  done
  wait "$bench" || die "pgbench ($name) failed: $(tail -5 "$SCRATCH/$name-pgbench.log")"
  echo "$t,$(du -sb "$bucket" | cut -f1),$(find "$bucket" -type f | wc -l)" >>"$csv"
  RESULT[$name,tps]=$(grep -oP 'tps = \K[0-9.]+' "$SCRATCH/$name-pgbench.log" | head -1)
  kill -TERM "$RUN_PID"
  wait "$RUN_PID" || die "bucketfs run ($name) did not stop cleanly: $(tail -20 "$log")"
  RUN_PID=""
  RESULT[$name,restore_last]=$(restore_seconds "$url" "$name-last")
  local report
  # shellcheck disable=SC2086
  report=$("$BUCKETFS" gc --bucket "$url" --dry-run --json $report_args 2>/dev/null || true)
  RESULT[$name,amp]=$(jq -r '.space_amplification' <<<"$report")
  RESULT[$name,chain]=$(jq -r '.chain_length' <<<"$report")
  RESULT[$name,image]=$(jq -r '.image_bytes' <<<"$report")
  RESULT[$name,bytes]=$(du -sb "$bucket" | cut -f1)
  RESULT[$name,objects]=$(find "$bucket" -type f | wc -l)
  # The mount's totals (every attempt, GC's included) from its last log line of them.
  local totals
  totals=$(grep "object store totals" "$log" | tail -1)
  RESULT[$name,put_bytes]=$(grep -oP 'put_bytes=\K[0-9]+' <<<"$totals")
  RESULT[$name,lists]=$(grep -oP 'lists=\K[0-9]+' <<<"$totals")
  RESULT[$name,deletes]=$(grep -oP 'deletes=\K[0-9]+' <<<"$totals")
  cp "$csv" "$REPO/benches/last-gc-growth-$name.csv"
}

# The report of the GC case measures with its retention; the other with the defaults.
run_case no-gc "" --gc-interval off
# shellcheck disable=SC2086
run_case gc "$(sed -E 's/--gc-interval [^ ]+//' <<<"$GC_ARGS")" $GC_ARGS

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); bucket on $(df -T "$SCRATCH" | awk 'NR==2 {print $2}')"
echo "command: BENCH_MINUTES=$BENCH_MINUTES SCALE=$SCALE SAMPLE=$SAMPLE GC_ARGS=\"$GC_ARGS\" benches/gc_growth.sh"
echo
for name in no-gc gc; do
  echo "$name: bucket bytes / objects over time (s): $(tail -n +2 "$REPO/benches/last-gc-growth-$name.csv" | tr '\n' ' ')"
done
echo
printf '| %-6s | %8s | %14s | %8s | %12s | %6s | %14s | %16s | %16s | %12s | %12s |\n' \
  case tps "bucket bytes" objects "image bytes" amp chain "LISTs/GiB up" "DELETEs/GiB up" "restore first" "restore last"
for name in no-gc gc; do
  gib=$(echo "scale=3; ${RESULT[$name,put_bytes]:-0} / 1073741824" | bc)
  per() { if [ "$(echo "$gib > 0" | bc)" = 1 ]; then echo "scale=1; $1 / $gib" | bc; else echo -; fi; }
  printf '| %-6s | %8s | %14s | %8s | %12s | %6.2f | %14s | %16s | %16s | %11.3fs | %11.3fs |\n' \
    "$name" "${RESULT[$name,tps]}" "${RESULT[$name,bytes]}" "${RESULT[$name,objects]}" \
    "${RESULT[$name,image]}" "${RESULT[$name,amp]}" "${RESULT[$name,chain]}" \
    "$(per "${RESULT[$name,lists]:-0}")" "$(per "${RESULT[$name,deletes]:-0}")" \
    "${RESULT[$name,restore_first]}" "${RESULT[$name,restore_last]}"
done
