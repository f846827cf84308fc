#!/usr/bin/env bash
# replica_lag.sh: a read replica under a write load on its primary, in one run.
#
# Usage (as root, after `make build`):
#   benches/replica_lag.sh                    # or: make bench-replica
#   BENCH_SECONDS=30 SCALE=2 benches/replica_lag.sh   # a quick smoke run
#
# On a local-directory bucket:
#   a primary: `bucketfs run --initdb` (checkpoints every $CHECKPOINT), `pgbench -i -s $SCALE`;
#   a replica: `bucketfs run --replica` on an empty cache dir; its cold start is the time from
#   the command to the first answered query (SELECT count(*) FROM pgbench_branches);
#   lag: while pgbench -c 4 runs on the primary for $BENCH_SECONDS, a row is inserted on the
#   primary and the replica is polled (every 50 ms) until it shows it, one row after another:
#   the median and p99 of those times;
#   reads: pgbench -S -n on the replica for $SELECT_SECONDS, and the bytes the replica fetched
#   from the bucket (pages and WAL) per transaction, with its cache hit rate.
#
# Environment:
#   BENCH_SECONDS=120  seconds of pgbench on the primary while lag is sampled
#   SELECT_SECONDS=30  seconds of pgbench -S on the replica
#   SCALE=10           pgbench scale (10: about 150 MB)
#   CHECKPOINT=1s      the primary's --checkpoint-interval (the floor of the lag)
#   BENCH_DIR=/var/tmp where the scratch dir is made
#   PORT=54470         the primary's port; the replica's is PORT+1
#   BUCKETFS=...       the bucketfs binary (default $CARGO_TARGET_DIR/debug/bucketfs)
set -euo pipefail

BENCH_SECONDS="${BENCH_SECONDS:-120}"
SELECT_SECONDS="${SELECT_SECONDS:-30}"
SCALE="${SCALE:-10}"
CHECKPOINT="${CHECKPOINT:-1s}"
BENCH_DIR="${BENCH_DIR:-/var/tmp}"
PORT="${PORT:-54470}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
BUCKETFS="${BUCKETFS:-$CARGO_TARGET_DIR/debug/bucketfs}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
bench_start replica_lag "$@"
for v in BENCH_SECONDS SELECT_SECONDS SCALE PORT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"

SCRATCH="$(mktemp -d "$BENCH_DIR/replica-lag.XXXXXX")"
chmod 755 "$SCRATCH"
SOCK="$SCRATCH/sock"
mkdir -p "$SOCK" "$SCRATCH/bin"
chown postgres:postgres "$SOCK"
# The standby runs `bucketfs wal-fetch` as postgres: a copy it can execute.
cp "$BUCKETFS" "$SCRATCH/bin/bucketfs"
chmod 755 "$SCRATCH/bin" "$SCRATCH/bin/bucketfs"
BFS="$SCRATCH/bin/bucketfs"
cd "$SCRATCH"
PIDS=()
cleanup() {
  local rc=$? p m
  trap - EXIT INT TERM
  set +e
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p"
      wait_pid_gone "$p" 300 || kill -KILL "$p"
    fi
  done
  for m in $(mounts_under "$SCRATCH"); do fusermount3 -uz "$m" 2>/dev/null || umount -l "$m"; done
  [ -z "$(mounts_under "$SCRATCH")" ] && rm -rf --one-file-system "$SCRATCH"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

URL="file://$SCRATCH/bucket"
psql_at() { # port sql
  runuser -u postgres -- env HOME=/tmp LC_ALL=C "$PGBIN/psql" -h "$SOCK" -p "$1" -U postgres \
    -d postgres -XAtqc "$2" 2>/dev/null
}
pg_tool() { # port tool args...
  local port="$1" tool="$2"
  shift 2
  runuser -u postgres -- env HOME=/tmp LC_ALL=C "$PGBIN/$tool" -h "$SOCK" -p "$port" -U postgres "$@"
}
start_run() { # name port args...
  local name="$1" port="$2"
  shift 2
  mkdir -p "$SCRATCH/$name-mnt"
  # shellcheck disable=SC2068
  "$BFS" run "$SCRATCH/$name-mnt" --cache-dir "$SCRATCH/$name-cache" --bucket "$URL" \
    --metrics-addr off $@ -- "$PGBIN/postgres" -D "$SCRATCH/$name-mnt" -k "$SOCK" \
    -p "$port" -c "listen_addresses=" >"$SCRATCH/$name.log" 2>&1 &
  PIDS+=($!)
}
now() { date +%s.%N; }

say "primary: bucketfs run --initdb --checkpoint-interval $CHECKPOINT, pgbench -i -s $SCALE"
start_run primary "$PORT" --checkpoint-interval "$CHECKPOINT" --initdb \
  --initdb-arg=--auth=trust --initdb-arg=--username=postgres --pg-bin "$PGBIN"
until pg_tool "$PORT" pg_isready -q; do sleep 0.2; done
pg_tool "$PORT" pgbench -i -s "$SCALE" -q postgres >"$SCRATCH/init.log" 2>&1
psql_at "$PORT" "CREATE TABLE lag_probe (n int PRIMARY KEY)" >/dev/null
"$BFS" checkpoint --cache-dir "$SCRATCH/primary-cache" >/dev/null 2>&1

say "replica: bucketfs run --replica on an empty cache dir, until its first answer"
R=$((PORT + 1))
t0=$(now)
start_run replica "$R" --replica
until [ "$(psql_at "$R" "SELECT count(*) FROM pgbench_branches")" = "$SCALE" ]; do
  kill -0 "${PIDS[1]}" 2>/dev/null || die "the replica exited: $(tail -20 "$SCRATCH/replica.log")"
  sleep 0.05
done
COLD=$(echo "$(now) - $t0" | bc)

say "lag: pgbench -c 4 on the primary for $BENCH_SECONDS s, one probe row after another"
pg_tool "$PORT" pgbench -c 4 -j 2 -T "$BENCH_SECONDS" postgres >"$SCRATCH/pgbench.log" 2>&1 &
BENCH=$!
: >"$SCRATCH/lag.txt"
n=0
while kill -0 "$BENCH" 2>/dev/null; do
  n=$((n + 1))
  psql_at "$PORT" "INSERT INTO lag_probe VALUES ($n)" >/dev/null
  t=$(now)
  until [ "$(psql_at "$R" "SELECT count(*) FROM lag_probe WHERE n = $n")" = 1 ]; do
    sleep 0.05
    if [ "$(echo "$(now) - $t > 120" | bc)" = 1 ]; then die "row $n not on the replica after 120 s"; fi
  done
  echo "$(now) - $t" | bc >>"$SCRATCH/lag.txt"
done
wait "$BENCH" || die "pgbench failed: $(tail -5 "$SCRATCH/pgbench.log")"
TPS=$(grep -oP 'tps = \K[0-9.]+' "$SCRATCH/pgbench.log" | head -1)
sort -n "$SCRATCH/lag.txt" >"$SCRATCH/lag.sorted"
SAMPLES=$(wc -l <"$SCRATCH/lag.sorted")
MEDIAN=$(sed -n "$(((SAMPLES + 1) / 2))p" "$SCRATCH/lag.sorted")
P99=$(sed -n "$(((SAMPLES * 99 + 99) / 100))p" "$SCRATCH/lag.sorted")
MAX=$(tail -1 "$SCRATCH/lag.sorted")
REBASES=$(grep -c "moving the replica from base epoch" "$SCRATCH/replica.log" || true)

say "reads: pgbench -S -n on the replica for $SELECT_SECONDS s"
status() { "$BFS" status --cache-dir "$SCRATCH/replica-cache" --json 2>/dev/null; }
get_bytes() { jq '[.bucket.store[] | select(.op == "get") | .bytes] | add'; }
before=$(status | get_bytes)
pg_tool "$R" pgbench -S -n -c 4 -j 2 -T "$SELECT_SECONDS" postgres >"$SCRATCH/select.log" 2>&1 ||
  die "pgbench -S on the replica failed: $(tail -5 "$SCRATCH/select.log")"
after_status=$(status)
after=$(get_bytes <<<"$after_status")
SELECT_TPS=$(grep -oP 'tps = \K[0-9.]+' "$SCRATCH/select.log" | head -1)
TX=$(grep -oP 'number of transactions actually processed: \K[0-9]+' "$SCRATCH/select.log")
PER_TX=$(echo "scale=1; ($after - $before) / $TX" | bc)
HITS=$(jq '.fs.read_hits' <<<"$after_status")
MISSES=$(jq '.fs.read_misses' <<<"$after_status")
HIT_RATE=$(echo "scale=4; 100 * $HITS / ($HITS + $MISSES)" | bc)
WRITES=$(jq '[.bucket.store[] | select(.op == "put" or .op == "delete") | .requests] | add' <<<"$after_status")

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); bucket on $(df -T "$SCRATCH" | awk 'NR==2 {print $2}')"
echo "command: BENCH_SECONDS=$BENCH_SECONDS SELECT_SECONDS=$SELECT_SECONDS SCALE=$SCALE CHECKPOINT=$CHECKPOINT benches/replica_lag.sh"
echo
printf '| %-44s | %s |\n' "measure" "value"
printf '| %-44s | %s |\n' "replica cold start to first query" "${COLD}s"
printf '| %-44s | %s |\n' "primary pgbench -c 4 TPS during the lag probes" "$TPS"
printf '| %-44s | %s |\n' "lag: probe rows" "$SAMPLES"
printf '| %-44s | %s |\n' "lag: median / p99 / max" "${MEDIAN}s / ${P99}s / ${MAX}s"
printf '| %-44s | %s |\n' "rebases during the run" "$REBASES"
printf '| %-44s | %s |\n' "replica pgbench -S -c 4 TPS" "$SELECT_TPS"
printf '| %-44s | %s |\n' "bytes fetched from the bucket per -S tx" "$PER_TX"
printf '| %-44s | %s |\n' "replica cache hit rate (whole run)" "${HIT_RATE}%"
printf '| %-44s | %s |\n' "replica PUT + DELETE requests" "$WRITES"
