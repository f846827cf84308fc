#!/usr/bin/env bash
# pgbench_vs_local.sh: pgbench TPC-B on the local disk vs bucketfs (vs bindfs), in one run.
#
# Usage (as root, after `make build`):
#   benches/pgbench_vs_local.sh            # or: make bench-pgbench
#   SCALE=1 DURATION=5 benches/pgbench_vs_local.sh   # a quick smoke run
#
# Runs the same workload, one target after the other, on:
#   local     a data directory on the plain local disk (under the scratch dir)
#   bucketfs  a data directory on a `bucketfs mount` whose --cache-dir is on that same disk
#   bindfs    a bindfs passthrough (plain FUSE, --multithreaded) of a directory on that disk;
#             skipped with a note if bindfs is not installed
#
# For each target: initdb, start Debian's newest PostgreSQL as the postgres user (Unix socket
# only, listen_addresses=''), `pgbench -i -s $SCALE`, CHECKPOINT, then
# `pgbench -c $CLIENTS -j $JOBS -T $DURATION -P 10` (TPC-B), stop Postgres, unmount.
# Every target gets the same settings: the defaults plus shared_buffers=128MB; fsync,
# synchronous_commit and full_page_writes stay on (durability is never weakened).
# At the end it prints the machine, the settings, the exact command line and a table of TPS
# and the ratio to the local disk, ready to paste into BENCHMARKS.md.
#
# Environment:
#   SCALE=20          pgbench scale factor (20 = 2M accounts, about 300 MB)
#   CLIENTS=4         pgbench clients
#   JOBS=2            pgbench worker threads (default 2, or 1 if CLIENTS is odd)
#   DURATION=60       seconds of pgbench per target
#   SHARED_BUFFERS=128MB
#   BENCH_DIR=/var/tmp   where the scratch dir is made (its disk is the "local disk")
#   PORT=54400        first port (used for the Unix socket name only); one per target
#   BUCKETFS=...      the bucketfs binary (default $CARGO_TARGET_DIR/debug/bucketfs,
#                     CARGO_TARGET_DIR defaulting to $HOME/.cache/bucketfs-target)
#   BINDFS_OPTS="--multithreaded"   extra bindfs options
#   TARGETS="local bucketfs bindfs" which targets to run (local always runs: it is the baseline)
#
# Everything lives in one scratch dir (mktemp -d under $BENCH_DIR), removed on exit; on any
# exit (error, Ctrl-C) Postgres is stopped and every mount under it is taken down first.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "pgbench_vs_local: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac

die() { echo "pgbench_vs_local: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# ---- settings --------------------------------------------------------------------------------
SCALE="${SCALE:-20}"
CLIENTS="${CLIENTS:-4}"
DURATION="${DURATION:-60}"
if [ -z "${JOBS:-}" ]; then
  if [ $((CLIENTS % 2)) -eq 0 ] 2>/dev/null; then JOBS=2; else JOBS=1; fi
fi
SHARED_BUFFERS="${SHARED_BUFFERS:-128MB}"
BENCH_DIR="${BENCH_DIR:-/var/tmp}"
PORT="${PORT:-54400}"
BINDFS_OPTS="${BINDFS_OPTS:---multithreaded}"
TARGETS="${TARGETS:-local bucketfs bindfs}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
BUCKETFS="${BUCKETFS:-$CARGO_TARGET_DIR/debug/bucketfs}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"

for v in SCALE CLIENTS JOBS DURATION PORT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[ $((CLIENTS % JOBS)) -eq 0 ] || die "CLIENTS ($CLIENTS) must be a multiple of JOBS ($JOBS)"
for t in $TARGETS; do
  case "$t" in local | bucketfs | bindfs) ;; *) die "unknown target '$t' in TARGETS" ;; esac
done
case " $TARGETS " in *" local "*) ;; *) TARGETS="local $TARGETS" ;; esac

# ---- preconditions ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (bucketfs mounts with --allow-other and Postgres runs as the postgres user): sudo $0"
id postgres >/dev/null 2>&1 || die "no postgres user: install Debian's postgresql package (make setup)"
PGBIN=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4n); do
  [ -x "$d/postgres" ] && PGBIN="$d"
done
[ -n "$PGBIN" ] || die "no PostgreSQL server under /usr/lib/postgresql/*/bin: install Debian's postgresql package (make setup)"
for tool in initdb pg_ctl pgbench psql; do
  [ -x "$PGBIN/$tool" ] || die "$PGBIN/$tool is missing: install postgresql and postgresql-contrib (make setup)"
done
case " $TARGETS " in
  *" bucketfs "*)
    [ -x "$BUCKETFS" ] || die "bucketfs binary not found at $BUCKETFS: run \`make build\` first (or set BUCKETFS=/path/to/bucketfs)"
    [ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
    ;;
esac
HAVE_BINDFS=0
if command -v bindfs >/dev/null 2>&1; then HAVE_BINDFS=1; fi
[ -d "$BENCH_DIR" ] || die "BENCH_DIR=$BENCH_DIR is not a directory"
command -v fusermount3 >/dev/null 2>&1 || command -v fusermount >/dev/null 2>&1 ||
  echo "pgbench_vs_local: note: no fusermount3; cleanup falls back to umount -l" >&2

# ---- scratch dir and cleanup -----------------------------------------------------------------
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
BENCH=pgbench_vs_local
pg_scratch pgbench-vs-local

PG_DATA_RUNNING=""  # data dir of the server currently up, if any
FUSE_PIDS=()        # FUSE daemons we started (bucketfs, bindfs -f)
KEEP_SCRATCH=0

# Is something mounted at $1 whose source (the field after the fs type) is $2?
mounted_with_source() {
  awk -v m="$1" -v s="$2" '
    { split($0, halves, " - "); split(halves[1], l, " "); split(halves[2], r, " ")
      if (l[5] == m && r[2] == s) found = 1 }
    END { exit !found }' /proc/self/mountinfo
}

as_pg() { runuser -u postgres -- env HOME=/tmp LC_ALL=C PGHOST="$SOCK" PGUSER=postgres "$@"; }

cleanup() {
  local rc=$? pid m
  trap - EXIT INT TERM
  set +e
  if [ -n "$PG_DATA_RUNNING" ]; then
    echo "pgbench_vs_local: cleanup: stopping postgres ($PG_DATA_RUNNING)" >&2
    if ! as_pg "$PGBIN/pg_ctl" -D "$PG_DATA_RUNNING" -m immediate -w -t 60 stop >/dev/null 2>&1; then
      pid="$(head -1 "$PG_DATA_RUNNING/postmaster.pid" 2>/dev/null)"
      if [[ "$pid" =~ ^[0-9]+$ ]]; then
        kill -KILL "$pid" 2>/dev/null
        wait_pid_gone "$pid" 30
      fi
    fi
  fi
  for pid in "${FUSE_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "pgbench_vs_local: cleanup: stopping FUSE daemon $pid" >&2
      kill -TERM "$pid" 2>/dev/null
      wait_pid_gone "$pid" 60 || kill -KILL "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    fi
  done
  for m in $(mounts_under "$SCRATCH"); do
    echo "pgbench_vs_local: cleanup: unmounting $m" >&2
    fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
  done
  if [ -n "$(mounts_under "$SCRATCH")" ]; then
    echo "pgbench_vs_local: cleanup: still mounted under $SCRATCH; leaving it in place" >&2
  elif [ "$KEEP_SCRATCH" = 1 ]; then
    echo "pgbench_vs_local: logs kept in $LOGS (scratch dir $SCRATCH; remove it when done)" >&2
  else
    rm -rf --one-file-system "$SCRATCH"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "pgbench_vs_local: interrupted" >&2; exit 130' INT
trap 'echo "pgbench_vs_local: terminated" >&2; exit 143' TERM

# On failure, show the tail of a log and keep the scratch dir's logs for a look.
fail_with_log() {
  local what="$1" log="$2"
  echo "pgbench_vs_local: error: $what; last lines of $log:" >&2
  tail -n 40 "$log" >&2 2>/dev/null
  KEEP_SCRATCH=1
  exit 1
}

# ---- postgres --------------------------------------------------------------------------------
PG_SETTINGS=(
  "listen_addresses = ''"
  "shared_buffers = $SHARED_BUFFERS"
  "fsync = on"
  "synchronous_commit = on"
  "full_page_writes = on"
  "max_connections = 100"
)

pg_init_start() { # data_dir port name
  local data="$1" port="$2" name="$3" log="$LOGS/$3-postgres.log"
  as_pg "$PGBIN/initdb" -D "$data" --auth=trust -U postgres --no-locale -E UTF8 --no-instructions \
    >"$LOGS/$name-initdb.log" 2>&1 || fail_with_log "initdb on $name failed" "$LOGS/$name-initdb.log"
  {
    echo "# pgbench_vs_local.sh: the same for every target"
    printf '%s\n' "${PG_SETTINGS[@]}"
    echo "port = $port"
    echo "unix_socket_directories = '$SOCK'"
  } >>"$data/postgresql.conf"
  PG_DATA_RUNNING="$data"
  as_pg "$PGBIN/pg_ctl" -D "$data" -l "$log" -w -t 300 start >/dev/null 2>&1 ||
    fail_with_log "postgres on $name did not start" "$log"
}

pg_stop() { # data_dir name
  as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w -t 300 stop >/dev/null 2>&1 ||
    fail_with_log "postgres on $2 did not stop" "$LOGS/$2-postgres.log"
  PG_DATA_RUNNING=""
}

# ---- mounts ----------------------------------------------------------------------------------
MOUNT_PID=""
wait_mounted() { # mnt source pid log name
  local mnt="$1" src="$2" pid="$3" log="$4" name="$5" i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; fail_with_log "$name exited before mounting" "$log"; }
    if mounted_with_source "$mnt" "$src" && ls "$mnt" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail_with_log "$name did not mount $mnt within 30 s" "$log"
}

stop_fuse() { # pid mnt log name
  local pid="$1" mnt="$2" log="$3" name="$4" rc=0
  kill -TERM "$pid"
  wait_pid_gone "$pid" 300 || fail_with_log "$name (pid $pid) did not exit within 300 s of SIGTERM" "$log"
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || fail_with_log "$name exited with status $rc after SIGTERM" "$log"
  ! is_mountpoint "$mnt" || fail_with_log "$mnt is still mounted after $name exited" "$log"
}

mount_bucketfs() { # mnt cache
  local mnt="$1" cache="$2" log="$LOGS/bucketfs.log"
  mkdir -p "$mnt"
  RUST_LOG="${RUST_LOG:-info}" "$BUCKETFS" mount "$mnt" --cache-dir "$cache" \
    --allow-other --uid postgres --gid postgres </dev/null >"$log" 2>&1 &
  MOUNT_PID=$!
  FUSE_PIDS+=("$MOUNT_PID")
  wait_mounted "$mnt" bucketfs "$MOUNT_PID" "$log" bucketfs
}

mount_bindfs() { # src mnt
  local src="$1" mnt="$2" log="$LOGS/bindfs.log"
  mkdir -p "$mnt"
  # -f: stay in the foreground so that we hold its pid; as root bindfs adds allow_other.
  # shellcheck disable=SC2086 # BINDFS_OPTS is a list of options
  bindfs -f $BINDFS_OPTS "$src" "$mnt" </dev/null >"$log" 2>&1 &
  MOUNT_PID=$!
  FUSE_PIDS+=("$MOUNT_PID")
  wait_mounted "$mnt" "$src" "$MOUNT_PID" "$log" bindfs
}

# ---- one target ------------------------------------------------------------------------------
declare -A TPS LAT INIT_S NOTE
PGBENCH_RUN=(-c "$CLIENTS" -j "$JOBS" -T "$DURATION" -P 10)

bench_target() { # name data_dir port
  local name="$1" data="$2" port="$3" t0 t1 out
  say "$name: initdb + start postgres (data dir $data)"
  pg_init_start "$data" "$port" "$name"
  say "$name: pgbench -i -s $SCALE"
  t0=$(date +%s.%N)
  as_pg "$PGBIN/pgbench" -p "$port" -i -s "$SCALE" postgres >"$LOGS/$name-init.log" 2>&1 ||
    fail_with_log "pgbench -i on $name failed" "$LOGS/$name-init.log"
  as_pg "$PGBIN/psql" -p "$port" -d postgres -XAtqc CHECKPOINT >>"$LOGS/$name-init.log" 2>&1 ||
    fail_with_log "CHECKPOINT on $name failed" "$LOGS/$name-init.log"
  t1=$(date +%s.%N)
  INIT_S[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  sync
  say "$name: pgbench ${PGBENCH_RUN[*]} (TPC-B)"
  out="$LOGS/$name-run.log"
  as_pg "$PGBIN/pgbench" -p "$port" "${PGBENCH_RUN[@]}" postgres 2>&1 | tee "$out" | sed 's/^/    /' ||
    fail_with_log "pgbench on $name failed" "$out"
  # PostgreSQL 14+: "(without initial connection time)"; 13 and older: "(excluding connections establishing)".
  TPS[$name]=$(sed -n -e 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' \
    -e 's/^tps = \([0-9.]*\) (excluding connections establishing).*/\1/p' "$out" | tail -1)
  LAT[$name]=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | tail -1)
  [ -n "${TPS[$name]}" ] || fail_with_log "no 'tps = N (without initial connection time)' line in the pgbench output for $name" "$out"
  grep -q '^number of failed transactions: [1-9]' "$out" && NOTE[$name]="has failed transactions, see log"
  say "$name: stop postgres"
  pg_stop "$data" "$name"
}

# ---- machine and settings (printed before and after) -----------------------------------------
PG_VERSION="$("$PGBIN/postgres" --version)"
BUCKETFS_VERSION="not run"
case " $TARGETS " in
  *" bucketfs "*) BUCKETFS_VERSION="$("$BUCKETFS" --version 2>/dev/null || echo unknown)" ;;
esac
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$GIT_REV" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  GIT_REV="$GIT_REV (with uncommitted changes)"
fi
BINDFS_VERSION="not installed"
[ "$HAVE_BINDFS" = 1 ] && BINDFS_VERSION="$(bindfs --version 2>/dev/null | head -1)"
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
DISK="$(df -hT "$SCRATCH" | awk 'NR == 2 { printf "%s (%s, %s, %s free)", $1, $2, $3, $5 }')"
DEV="$(df --output=source "$SCRATCH" | tail -1)"
DEV_NAME="$(basename "$(readlink -f "$DEV" 2>/dev/null || echo "$DEV")")"
ROTA="$(cat "/sys/class/block/$DEV_NAME/queue/rotational" 2>/dev/null || true)"
case "$ROTA" in 0) DISK="$DISK, non-rotational" ;; 1) DISK="$DISK, rotational" ;; esac
CMDLINE="SCALE=$SCALE CLIENTS=$CLIENTS JOBS=$JOBS DURATION=$DURATION SHARED_BUFFERS=$SHARED_BUFFERS"
[ "$BENCH_DIR" = /var/tmp ] || CMDLINE="$CMDLINE BENCH_DIR=$BENCH_DIR"
[ "$TARGETS" = "local bucketfs bindfs" ] || CMDLINE="$CMDLINE TARGETS='$TARGETS'"
[ "$BINDFS_OPTS" = "--multithreaded" ] || CMDLINE="$CMDLINE BINDFS_OPTS='$BINDFS_OPTS'"
CMDLINE="$CMDLINE benches/pgbench_vs_local.sh"

print_header() {
  echo "command:   $CMDLINE"
  echo "date:      $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine:   $(nproc) CPUs${CPU_MODEL:+ ($CPU_MODEL)}, $MEM RAM, Linux $(uname -r) $(uname -m)"
  echo "disk:      $DISK, under $SCRATCH"
  echo "postgres:  $PG_VERSION ($PGBIN)"
  echo "settings:  defaults + shared_buffers=$SHARED_BUFFERS, fsync=on, synchronous_commit=on, full_page_writes=on; Unix socket only"
  echo "workload:  pgbench -i -s $SCALE; CHECKPOINT; pgbench ${PGBENCH_RUN[*]} (TPC-B, $DURATION s per target, one run each)"
  echo "bucketfs:  $BUCKETFS_VERSION, git $GIT_REV, dev profile ($BUCKETFS), mount --allow-other --uid postgres --gid postgres"
  if [[ " $TARGETS " != *" bindfs "* ]]; then
    echo "bindfs:    not run"
  elif [ "$HAVE_BINDFS" = 1 ]; then
    echo "bindfs:    $BINDFS_VERSION, bindfs -f $BINDFS_OPTS (allow_other as root)"
  else
    echo "bindfs:    not installed (skipped)"
  fi
}

say "pgbench on the local disk vs bucketfs vs bindfs"
print_header | sed 's/^/    /'

# ---- run -------------------------------------------------------------------------------------
RAN=()
i=0
for t in local bucketfs bindfs; do
  case " $TARGETS " in *" $t "*) ;; *) continue ;; esac
  port=$((PORT + i))
  i=$((i + 1))
  case "$t" in
    local)
      mkdir -p "$SCRATCH/local"
      chown postgres:postgres "$SCRATCH/local"
      bench_target local "$SCRATCH/local/data" "$port"
      ;;
    bucketfs)
      mkdir -p "$SCRATCH/bucketfs"
      say "bucketfs: mount $SCRATCH/bucketfs/mnt (cache dir $SCRATCH/bucketfs/cache)"
      mount_bucketfs "$SCRATCH/bucketfs/mnt" "$SCRATCH/bucketfs/cache"
      bench_target bucketfs "$SCRATCH/bucketfs/mnt" "$port"
      say "bucketfs: unmount (SIGTERM)"
      stop_fuse "$MOUNT_PID" "$SCRATCH/bucketfs/mnt" "$LOGS/bucketfs.log" bucketfs
      ;;
    bindfs)
      if [ "$HAVE_BINDFS" != 1 ]; then
        say "bindfs: not installed, skipped (apt-get install bindfs, or make setup)"
        NOTE[bindfs]="skipped: bindfs not installed"
        RAN+=(bindfs)
        continue
      fi
      mkdir -p "$SCRATCH/bindfs/src"
      chown postgres:postgres "$SCRATCH/bindfs/src"
      chmod 700 "$SCRATCH/bindfs/src"
      say "bindfs: mount $SCRATCH/bindfs/src on $SCRATCH/bindfs/mnt"
      mount_bindfs "$SCRATCH/bindfs/src" "$SCRATCH/bindfs/mnt"
      bench_target bindfs "$SCRATCH/bindfs/mnt" "$port"
      say "bindfs: unmount (SIGTERM)"
      stop_fuse "$MOUNT_PID" "$SCRATCH/bindfs/mnt" "$LOGS/bindfs.log" bindfs
      ;;
  esac
  RAN+=("$t")
done

# ---- report ----------------------------------------------------------------------------------
label() {
  case "$1" in
    local) echo "local disk" ;;
    bucketfs) echo "bucketfs" ;;
    bindfs) echo "bindfs (FUSE passthrough)" ;;
  esac
}
echo
echo "## pgbench TPC-B: local disk vs bucketfs vs bindfs"
echo
print_header
echo
echo "| target | TPS | latency avg (ms) | init + checkpoint (s) | vs local disk |"
echo "|---|---:|---:|---:|---|"
for t in "${RAN[@]}"; do
  if [ -z "${TPS[$t]:-}" ]; then
    printf '| %s | - | - | - | %s |\n' "$(label "$t")" "${NOTE[$t]:-}"
    continue
  fi
  if [ "$t" = local ]; then
    ratio="1.00x (baseline)"
  else
    ratio="$t/local = $(awk -v a="${TPS[$t]}" -v b="${TPS[local]}" 'BEGIN { printf "%.2fx", a / b }')"
  fi
  [ -n "${NOTE[$t]:-}" ] && ratio="$ratio; ${NOTE[$t]}"
  printf '| %s | %.1f | %s | %s | %s |\n' "$(label "$t")" "${TPS[$t]}" "${LAT[$t]:--}" "${INIT_S[$t]}" "$ratio"
done
echo
echo "TPS is pgbench's \"tps = N (without initial connection time)\"; one run per target, so expect a few % of noise."
