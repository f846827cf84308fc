#!/usr/bin/env bash
# pgbench_select_small_cache.sh: pgbench select-only on a database four times bucketfs's
# --cache-size, against the same on the plain local disk, in one run.
#
# Usage (as root, after `make build`):
#   benches/pgbench_select_small_cache.sh        # or: make bench-select
#   SCALE=10 CACHE_SIZE=40M DURATION=10 benches/pgbench_select_small_cache.sh   # smoke run
#
# For each target, one after the other: initdb, start PostgreSQL (shared_buffers=$SHARED_BUFFERS),
# `pgbench -i -s $SCALE`, CHECKPOINT, a $WARMUP s warm-up, then
# `pgbench -S -c $CLIENTS -j $JOBS -T $DURATION -P 10` (select-only: uniform random lookups by
# primary key over the whole pgbench_accounts table), stop Postgres.
#   local     the data directory on the plain local disk
#   bucketfs  the data directory on `bucketfs mount --bucket file://$SCRATCH/bucket
#             --cache-size $CACHE_SIZE`: evicted 256 KiB chunks are fetched again from the
#             bucket (a local directory on the same disk) when read
#
# The kernel's page cache would otherwise hold the whole database (this machine has far more
# RAM than the database), and then no read would ever reach either filesystem. So Postgres
# runs in a memory cgroup capped at $PG_MEMORY (shared_buffers, backends and the page cache of
# the files it reads: a child of this shell's own memory cgroup, removed at the end), on both
# targets. bucketfs itself is not capped: its reads of its cache files and of the bucket
# directory can come from the host's page cache (see the report's note).
#
# During the bucketfs target a sampler records, every second, the cache dir's disk usage
# (`du -sB1`: allocated blocks, so punched holes do not count), its data/ part, and bucketfs's
# dirty and cached bytes from `bucketfs status --json`; the report gives the maxima against the
# bound --cache-size + --max-dirty + metadata.
#
# Environment:
#   SCALE=70            pgbench scale (70 = 7M accounts, about 1.05 GiB)
#   CACHE_SIZE=256M     bucketfs --cache-size
#   MAX_DIRTY=1G        bucketfs --max-dirty (its default)
#   CLIENTS=4 JOBS=2    pgbench clients and threads
#   DURATION=60         seconds of measured pgbench -S per target
#   WARMUP=10           seconds of unmeasured pgbench -S before it
#   SHARED_BUFFERS=64MB
#   PG_MEMORY=256M      memory cgroup cap for Postgres ("0" for none)
#   BUCKETFS_ARGS=""    extra options for `bucketfs mount`
#   METRICS_PORT=19302  bucketfs --metrics-addr 127.0.0.1:PORT
#   PORT=54410          first port (Unix socket name only); one per target
#   BENCH_DIR=/var/tmp  where the scratch dir is made (its disk is the "local disk")
#   KEEP_LOGS=DIR       copy the logs (pgbench, Postgres, bucketfs, the du samples) there
#   BUCKETFS=...        the binary (default $CARGO_TARGET_DIR/debug/bucketfs, CARGO_TARGET_DIR
#                       defaulting to $HOME/.cache/bucketfs-target)
#
# Everything lives in one scratch dir (mktemp -d under $BENCH_DIR), removed on exit; on any
# exit Postgres is stopped, the mount taken down and the cgroup removed first.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "pgbench_select_small_cache: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
NAME=pgbench_select_small_cache
die() { echo "$NAME: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# ---- settings --------------------------------------------------------------------------------
SCALE="${SCALE:-70}"
CACHE_SIZE="${CACHE_SIZE:-256M}"
MAX_DIRTY="${MAX_DIRTY:-1G}"
CLIENTS="${CLIENTS:-4}"
JOBS="${JOBS:-2}"
DURATION="${DURATION:-60}"
WARMUP="${WARMUP:-10}"
SHARED_BUFFERS="${SHARED_BUFFERS:-64MB}"
PG_MEMORY="${PG_MEMORY:-256M}"
BUCKETFS_ARGS="${BUCKETFS_ARGS:-}"
METRICS_PORT="${METRICS_PORT:-19302}"
PORT="${PORT:-54410}"
BENCH_DIR="${BENCH_DIR:-/var/tmp}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
BUCKETFS="${BUCKETFS:-$CARGO_TARGET_DIR/debug/bucketfs}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"

for v in SCALE CLIENTS JOBS DURATION PORT METRICS_PORT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a number of seconds, got '$WARMUP'"
[ $((CLIENTS % JOBS)) -eq 0 ] || die "CLIENTS ($CLIENTS) must be a multiple of JOBS ($JOBS)"
to_bytes() { numfmt --from=iec "${1%B}" 2>/dev/null || die "not a size: '$1' (e.g. 256M, 1G)"; }
CACHE_BYTES="$(to_bytes "$CACHE_SIZE")"
MAX_DIRTY_BYTES="$(to_bytes "$MAX_DIRTY")"
PG_MEMORY_BYTES="$(to_bytes "$PG_MEMORY")"

# ---- preconditions ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (FUSE with --allow-other, Postgres as postgres, cgroups): sudo $0"
id postgres >/dev/null 2>&1 || die "no postgres user: install Debian's postgresql package (make setup)"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
for tool in initdb pg_ctl pgbench psql postgres; do
  [ -x "$PGBIN/$tool" ] || die "$PGBIN/$tool is missing: install postgresql and postgresql-contrib (make setup)"
done
[ -x "$BUCKETFS" ] || die "bucketfs binary not found at $BUCKETFS: run \`make build\` first (or set BUCKETFS=)"
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
command -v jq >/dev/null || die "jq is not installed: apt-get install jq"
[ -d "$BENCH_DIR" ] || die "BENCH_DIR=$BENCH_DIR is not a directory"
if (exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT") 2>/dev/null; then
  die "port $METRICS_PORT is in use; set METRICS_PORT"
fi

# ---- scratch dir and cleanup -----------------------------------------------------------------
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
BENCH=pgbench_select_small_cache
pg_scratch pgbench-select

PG_DATA_RUNNING=""
MOUNT_PID=""
SAMPLER_PID=""
KEEP_SCRATCH=0

AS_PG=(runuser -u postgres -- env HOME=/tmp LC_ALL=C PGHOST="$SOCK" PGUSER=postgres)
as_pg() { "${AS_PG[@]}" "$@"; }

cleanup() {
  local rc=$? m pid
  trap - EXIT INT TERM
  set +e
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null && wait "$SAMPLER_PID" 2>/dev/null
  if [ -n "$PG_DATA_RUNNING" ]; then
    echo "$NAME: cleanup: stopping postgres ($PG_DATA_RUNNING)" >&2
    if ! as_pg "$PGBIN/pg_ctl" -D "$PG_DATA_RUNNING" -m immediate -w -t 60 stop >/dev/null 2>&1; then
      pid="$(head -1 "$PG_DATA_RUNNING/postmaster.pid" 2>/dev/null)"
      [[ "$pid" =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null && wait_pid_gone "$pid" 30
    fi
  fi
  if [ -n "$MOUNT_PID" ] && kill -0 "$MOUNT_PID" 2>/dev/null; then
    echo "$NAME: cleanup: stopping bucketfs $MOUNT_PID" >&2
    kill -TERM "$MOUNT_PID"
    wait_pid_gone "$MOUNT_PID" 120 || kill -KILL "$MOUNT_PID"
    wait "$MOUNT_PID" 2>/dev/null
  fi
  for m in $(mounts_under "$SCRATCH"); do
    fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
  done
  cg_remove
  if [ -n "$(mounts_under "$SCRATCH")" ]; then
    echo "$NAME: cleanup: still mounted under $SCRATCH; leaving it in place" >&2
  elif [ "$KEEP_SCRATCH" = 1 ]; then
    echo "$NAME: logs kept in $LOGS (scratch dir $SCRATCH; remove it when done)" >&2
  else
    rm -rf --one-file-system "$SCRATCH"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "$NAME: interrupted" >&2; exit 130' INT
trap 'echo "$NAME: terminated" >&2; exit 143' TERM

fail_with_log() {
  echo "$NAME: error: $1; last lines of $2:" >&2
  tail -n 40 "$2" >&2 2>/dev/null
  KEEP_SCRATCH=1
  exit 1
}

[ "$PG_MEMORY_BYTES" -eq 0 ] || cg_make select

# ---- postgres --------------------------------------------------------------------------------
pg_init_start() { # data_dir port name
  local data="$1" port="$2" name="$3"
  as_pg "$PGBIN/initdb" -D "$data" --auth=trust -U postgres --no-locale -E UTF8 --no-instructions \
    >"$LOGS/$name-initdb.log" 2>&1 || fail_with_log "initdb on $name failed" "$LOGS/$name-initdb.log"
  {
    echo "# $NAME.sh: the same for every target"
    echo "listen_addresses = ''"
    echo "shared_buffers = $SHARED_BUFFERS"
    echo "port = $port"
    echo "unix_socket_directories = '$SOCK'"
  } >>"$data/postgresql.conf"
  PG_DATA_RUNNING="$data"
  # pg_ctl forks the postmaster: it and every backend stay in the cgroup.
  in_cg "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$data" -l "$LOGS/$name-postgres.log" -w -t 300 start >/dev/null 2>&1 ||
    fail_with_log "postgres on $name did not start" "$LOGS/$name-postgres.log"
  if [ -n "$CG" ]; then
    local pm
    pm="$(head -1 "$data/postmaster.pid")"
    grep -qx "$pm" "$CG/cgroup.procs" || die "the postmaster ($pm) is not in the cgroup $CG"
  fi
}
pg_stop() { # data_dir name
  as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w -t 300 stop >/dev/null 2>&1 ||
    fail_with_log "postgres on $2 did not stop" "$LOGS/$2-postgres.log"
  PG_DATA_RUNNING=""
}
sql() { as_pg "$PGBIN/psql" -p "$PORT_NOW" -d postgres -XAtqc "$1"; }

# ---- bucketfs --------------------------------------------------------------------------------
status_json() { "$BUCKETFS" status --cache-dir "$SCRATCH/cache" --json; }
# The sampler: one line a second, "unix_s phase du_total du_data dirty_bytes used_bytes".
PHASE_FILE="$SCRATCH/phase"
phase() { echo "$1" >"$PHASE_FILE"; }
sampler() {
  local s
  while :; do
    s="$(status_json 2>/dev/null)" || s="{}"
    printf '%s %s %s %s %s\n' "$(date +%s)" "$(cat "$PHASE_FILE" 2>/dev/null || echo -)" \
      "$(du -sB1 "$SCRATCH/cache" 2>/dev/null | cut -f1)" \
      "$(du -sB1 "$SCRATCH/cache/data" 2>/dev/null | cut -f1)" \
      "$(jq -r '"\(.fs.dirty_bytes // 0) \(.cache.used_bytes // 0)"' <<<"$s")"
    sleep 1
  done
}

# ---- one target ------------------------------------------------------------------------------
declare -A TPS LAT INIT_S DBSIZE BLKS_READ CG_PEAK
bench_target() { # name data_dir port
  local name="$1" data="$2" t0 t1 out
  PORT_NOW="$3"
  cg_set_limit "$PG_MEMORY_BYTES"
  say "$name: initdb + start postgres (data dir $data)"
  pg_init_start "$data" "$PORT_NOW" "$name"
  say "$name: pgbench -i -s $SCALE"
  phase load
  t0=$(date +%s.%N)
  as_pg "$PGBIN/pgbench" -p "$PORT_NOW" -i -s "$SCALE" postgres >"$LOGS/$name-init.log" 2>&1 ||
    fail_with_log "pgbench -i on $name failed" "$LOGS/$name-init.log"
  sql CHECKPOINT >>"$LOGS/$name-init.log" 2>&1 || fail_with_log "CHECKPOINT on $name failed" "$LOGS/$name-init.log"
  t1=$(date +%s.%N)
  INIT_S[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  DBSIZE[$name]="$(sql "select pg_database_size('postgres')")"
  say "$name: database $(numfmt --to=iec-i --suffix=B "${DBSIZE[$name]}"), loaded in ${INIT_S[$name]} s"
  if [ "$name" = bucketfs ]; then
    # Everything clean in the bucket, so that eviction can bring the cache within its bound.
    "$BUCKETFS" checkpoint --cache-dir "$SCRATCH/cache" >/dev/null
  fi
  phase warmup
  if [ "$WARMUP" -gt 0 ]; then
    say "$name: warm-up, pgbench -S -T $WARMUP"
    as_pg "$PGBIN/pgbench" -p "$PORT_NOW" -S -c "$CLIENTS" -j "$JOBS" -T "$WARMUP" postgres \
      >"$LOGS/$name-warmup.log" 2>&1 || fail_with_log "warm-up on $name failed" "$LOGS/$name-warmup.log"
  fi
  if [ "$name" = bucketfs ]; then status_json >"$LOGS/status-before.json"; fi
  local reads0
  reads0="$(sql "select blks_read from pg_stat_database where datname = 'postgres'")"
  say "$name: pgbench -S -c $CLIENTS -j $JOBS -T $DURATION -P 10"
  phase run
  out="$LOGS/$name-run.log"
  as_pg "$PGBIN/pgbench" -p "$PORT_NOW" -S -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -P 10 postgres 2>&1 |
    tee "$out" | sed 's/^/    /' || fail_with_log "pgbench on $name failed" "$out"
  if [ "$name" = bucketfs ]; then status_json >"$LOGS/status-after.json"; fi
  BLKS_READ[$name]=$(($(sql "select blks_read from pg_stat_database where datname = 'postgres'") - reads0))
  TPS[$name]=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out" | tail -1)
  LAT[$name]=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | tail -1)
  [ -n "${TPS[$name]}" ] || fail_with_log "no tps line in the pgbench output for $name" "$out"
  CG_PEAK[$name]="$(cg_peak)"
  phase stop
  say "$name: stop postgres"
  pg_stop "$data" "$name"
}

# ---- machine ---------------------------------------------------------------------------------
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
DISK="$(df -hT "$SCRATCH" | awk 'NR == 2 { printf "%s (%s, %s, %s free)", $1, $2, $3, $5 }')"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$GIT_REV" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  GIT_REV="$GIT_REV (with uncommitted changes)"
fi
CMDLINE="SCALE=$SCALE CACHE_SIZE=$CACHE_SIZE MAX_DIRTY=$MAX_DIRTY CLIENTS=$CLIENTS JOBS=$JOBS DURATION=$DURATION WARMUP=$WARMUP SHARED_BUFFERS=$SHARED_BUFFERS PG_MEMORY=$PG_MEMORY"
[ -z "$BUCKETFS_ARGS" ] || CMDLINE="$CMDLINE BUCKETFS_ARGS='$BUCKETFS_ARGS'"
CMDLINE="$CMDLINE benches/$NAME.sh"
MOUNT_CMD="bucketfs mount MNT --cache-dir CACHE --bucket file://BUCKET --cache-size $CACHE_SIZE --max-dirty $MAX_DIRTY --metrics-addr 127.0.0.1:$METRICS_PORT --allow-other --uid postgres --gid postgres${BUCKETFS_ARGS:+ $BUCKETFS_ARGS}"
print_header() {
  echo "command:   $CMDLINE"
  echo "date:      $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine:   $(nproc) CPUs${CPU_MODEL:+ ($CPU_MODEL)}, $MEM RAM, Linux $(uname -r) $(uname -m)"
  echo "disk:      $DISK, under $SCRATCH"
  echo "postgres:  $("$PGBIN/postgres" --version), defaults + shared_buffers=$SHARED_BUFFERS; Unix socket only"
  if [ -n "$CG" ]; then
    echo "memory:    Postgres in a memory cgroup capped at $PG_MEMORY (page cache included): $CG"
  else
    echo "memory:    Postgres not capped (PG_MEMORY=0)"
  fi
  echo "workload:  pgbench -i -s $SCALE; CHECKPOINT; pgbench -S -T $WARMUP (warm-up); pgbench -S -c $CLIENTS -j $JOBS -T $DURATION -P 10"
  echo "bucketfs:  $("$BUCKETFS" --version), git $GIT_REV, dev profile ($BUCKETFS)"
  echo "mount:     $MOUNT_CMD (cache dir and bucket on the same disk)"
}
say "pgbench select-only, database larger than bucketfs's cache, vs the local disk"
print_header | sed 's/^/    /'

# ---- run -------------------------------------------------------------------------------------
mkdir -p "$SCRATCH/local"
chown postgres:postgres "$SCRATCH/local"
bench_target local "$SCRATCH/local/data" "$PORT"

mkdir -p "$SCRATCH/mnt" "$SCRATCH/bucket"
say "bucketfs: mount $SCRATCH/mnt (cache dir $SCRATCH/cache, bucket $SCRATCH/bucket)"
# shellcheck disable=SC2086 # BUCKETFS_ARGS is a list of options
RUST_LOG="${RUST_LOG:-info}" "$BUCKETFS" mount "$SCRATCH/mnt" --cache-dir "$SCRATCH/cache" \
  --bucket "file://$SCRATCH/bucket" --cache-size "$CACHE_SIZE" --max-dirty "$MAX_DIRTY" \
  --metrics-addr "127.0.0.1:$METRICS_PORT" --allow-other --uid postgres --gid postgres $BUCKETFS_ARGS \
  </dev/null >"$LOGS/bucketfs.log" 2>&1 &
MOUNT_PID=$!
for ((i = 0; ; i++)); do
  kill -0 "$MOUNT_PID" 2>/dev/null || fail_with_log "bucketfs exited before mounting" "$LOGS/bucketfs.log"
  is_mountpoint "$SCRATCH/mnt" && break
  [ "$i" -lt 300 ] || fail_with_log "bucketfs did not mount within 30 s" "$LOGS/bucketfs.log"
  sleep 0.1
done
phase initdb
sampler >"$LOGS/du.txt" &
SAMPLER_PID=$!
bench_target bucketfs "$SCRATCH/mnt" "$((PORT + 1))"
kill "$SAMPLER_PID" && wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
DU_END="$(du -sB1 "$SCRATCH/cache" | cut -f1)"
DU_DATA_END="$(du -sB1 "$SCRATCH/cache/data" | cut -f1)"
say "bucketfs: unmount (SIGTERM)"
kill -TERM "$MOUNT_PID"
rc=0
wait "$MOUNT_PID" || rc=$?
MOUNT_PID=""
[ "$rc" -eq 0 ] || fail_with_log "bucketfs exited with status $rc" "$LOGS/bucketfs.log"

# ---- report ----------------------------------------------------------------------------------
iec() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }
d() { echo $(($(jq -r "$1" "$LOGS/status-after.json") - $(jq -r "$1" "$LOGS/status-before.json"))); }
HITS="$(d .fs.read_hits)"
MISSES="$(d .fs.read_misses)"
FETCHED="$(d .fs.fetched_bytes)"
EVICTED="$(d .fs.evicted_bytes)"
HIT_RATE="$(awk -v h="$HITS" -v m="$MISSES" 'BEGIN { if (h + m > 0) printf "%.1f%%", 100 * h / (h + m); else print "n/a" }')"
TXNS="$(awk -v t="${TPS[bucketfs]}" -v d="$DURATION" 'BEGIN { printf "%d", t * d }')"
# Maxima of the samples of one phase ("all" for every sample): "du data dirty_then used max_dirty
# max_excess samples", where excess = data - dirty - --cache-size.
du_stats() {
  awk -v p="$1" -v c="$CACHE_BYTES" 'p == "all" || $2 == p {
      n++; if ($3 > m) { m = $3; dm = $4; dt = $5 }
      if ($5 > md) md = $5; if ($6 > mu) mu = $6
      x = $4 - $5 - c; if (x > mx) mx = x
    } END { print m + 0, dm + 0, dt + 0, mu + 0, md + 0, mx + 0, n + 0 }' "$LOGS/du.txt"
}
META_END=$((DU_END - DU_DATA_END))
BOUND=$((CACHE_BYTES + MAX_DIRTY_BYTES + META_END))
[ -z "${KEEP_LOGS:-}" ] || { mkdir -p "$KEEP_LOGS" && cp -r "$LOGS"/. "$KEEP_LOGS"/; }

echo
echo "## pgbench select-only, database 4x bucketfs's --cache-size, vs the local disk"
echo
print_header
echo
echo "| target | TPS | latency avg (ms) | Postgres blocks read/s | init + checkpoint (s) | vs local disk |"
echo "|---|---:|---:|---:|---:|---|"
for t in local bucketfs; do
  if [ "$t" = local ]; then r="1.00x (baseline)"; else r="$(awk -v a="${TPS[$t]}" -v b="${TPS[local]}" 'BEGIN { printf "%.2fx", a / b }')"; fi
  printf '| %s | %.1f | %s | %.0f | %s | %s |\n' "$([ "$t" = local ] && echo "local disk" || echo bucketfs)" \
    "${TPS[$t]}" "${LAT[$t]}" "$(awk -v b="${BLKS_READ[$t]}" -v d="$DURATION" 'BEGIN { print b / d }')" "${INIT_S[$t]}" "$r"
done
echo
echo "Database: $(iec "${DBSIZE[bucketfs]}") (pg_database_size) on bucketfs, $(iec "${DBSIZE[local]}") on the local disk;" \
  "--cache-size $CACHE_SIZE is $(awk -v a="${DBSIZE[bucketfs]}" -v b="$CACHE_BYTES" 'BEGIN { printf "%.1f", a / b }')x smaller."
echo "\"Postgres blocks read\" is pg_stat_database.blks_read: shared_buffers misses, read from the filesystem (or the page cache)."
[ -n "$CG" ] && echo "Postgres's cgroup peaked at $(iec "${CG_PEAK[local]}") (local) and $(iec "${CG_PEAK[bucketfs]}") (bucketfs) of $PG_MEMORY."
echo
echo "bucketfs during the measured run ($DURATION s, from \`bucketfs status --json\` before and after):"
echo
echo "| measure | value |"
echo "|---|---:|"
echo "| FUSE reads that found their pages in the cache dir (hits) | $HITS |"
echo "| FUSE reads that had to fetch (misses) | $MISSES |"
echo "| hit rate | $HIT_RATE |"
echo "| bytes fetched from the bucket | $(iec "$FETCHED") ($(iec $((FETCHED / DURATION)))/s, $(awk -v f="$FETCHED" -v t="$TXNS" 'BEGIN { if (t > 0) printf "%.1f KiB", f / t / 1024; else print "-" }') per transaction) |"
echo "| bytes evicted | $(iec "$EVICTED") |"
echo
echo "Cache dir on disk (\`du -sB1\`: allocated blocks), sampled every second, by phase. \"Excess\" is"
echo "data/ minus dirty minus --cache-size at the same sample (0 when never positive). Bound:"
echo "--cache-size + --max-dirty + metadata at the end ($(iec "$META_END")) = $(iec "$BOUND")."
echo
echo "| phase | samples | largest cache dir (data/, dirty then) | largest dirty | largest \`used\` | largest excess | within the bound |"
echo "|---|---:|---|---:|---:|---:|---|"
for ph in load warmup run all; do
  read -r du dm dt mu md mx n < <(du_stats "$ph")
  [ "$n" -gt 0 ] || continue
  if [ "$du" -le "$BOUND" ]; then ok=yes; else ok="**no**, $(iec $((du - BOUND))) over"; fi
  label="$ph"
  case "$ph" in load) label="pgbench -i + CHECKPOINT" ;; warmup) label="bucketfs checkpoint + warm-up" ;; run) label="measured run" ;; all) label="whole mount" ;; esac
  echo "| $label | $n | $(iec "$du") ($(iec "$dm"), $(iec "$dt")) | $(iec "$md") | $(iec "$mu") | $(iec "$mx") | $ok |"
done
echo
echo "Cache dir at the end: $(iec "$DU_END") (data/ $(iec "$DU_DATA_END"), metadata and the rest $(iec "$META_END"))."
