#!/usr/bin/env bash
# fio_vs_local.sh: fio on the local disk vs bucketfs (with a bucket, data in its cache dir), in
# one run.
#
# Usage (as root, after `make build`):
#   benches/fio_vs_local.sh                 # or: make bench-fio
#   SIZE=256M RUNTIME=5 benches/fio_vs_local.sh   # a quick smoke run
#
# The same fio jobs run on a directory of the plain local disk and on a
# `bucketfs mount --bucket file://... --cache-size $CACHE_SIZE` whose cache dir and bucket are
# on that same disk, each job on the local disk and then at once on bucketfs (so that the
# shared VM disk's drift over minutes hits both alike). CACHE_SIZE is far above SIZE, so every
# byte read is in bucketfs's cache dir: nothing is fetched from the bucket (the report shows
# bucketfs's own counters to prove it). The jobs, in this order, on one file of SIZE:
#
#   seq write 1M     rw=write, bs=1M, the whole file, then fsync (end_fsync=1)
#   (then `sync` and `bucketfs checkpoint`: no upload runs behind the read jobs)
#   seq read 1M      rw=read, bs=1M, page cache dropped first
#   rand read 8K     rw=randread, bs=8K, page cache dropped first; one pass over the file at most
#   (bucketfs only) rand read 8K, cache file in RAM: the mount's page cache dropped, the cache
#                    file's not: the cost of the FUSE round trip alone
#   rand read 8K, page cache warm    both files read whole first; time-based
#   rand write 8K    rw=randwrite, bs=8K, every block of the file once, then fsync; bucketfs's
#                    checkpoints (every 5 s, or at 256M dirty) run as they come
#
# What "cached" means here. bucketfs opens files with FOPEN_KEEP_CACHE, so a page the kernel
# holds is served by the kernel and bucketfs never sees the read: a warm page cache makes
# bucketfs and the local disk equal by construction (that row is there to show it). To measure
# bucketfs, the read jobs start with the file's pages dropped from the page cache, on both
# targets, and for bucketfs also the pages of its cache files (fadvise DONTNEED via
# `dd iflag=nocache count=0`, after sync): otherwise bucketfs would read its cache file from RAM
# while the local disk reads the device. So "cached" = in bucketfs's cache dir on local disk,
# not in RAM; the read jobs compare local disk reads with local disk reads through bucketfs.
# Random reads run at most one pass (fio's random map reads each block once), so they never hit
# pages an earlier read brought in. Writes are buffered (direct=0, as Postgres writes) and each
# write job ends with an fsync that fio counts in its time, so both targets pay for reaching
# the disk.
#
# Environment:
#   SIZE=1G            size of the test file
#   RUNTIME=20         seconds at most per job (the warm random read runs exactly this long)
#   NUMJOBS=1          fio jobs for the random jobs, each on its own slice of the file
#   IOENGINE=psync     fio ioengine
#   CACHE_SIZE=4G      bucketfs --cache-size (must hold SIZE)
#   BUCKETFS_ARGS=""   extra options for `bucketfs mount`
#   METRICS_PORT=19301 bucketfs --metrics-addr 127.0.0.1:PORT
#   FUSE_READ_AHEAD_KB=   if set, written to the mount's /sys/class/bdi/*/read_ahead_kb after
#                      mounting (the kernel's default for a FUSE mount is 128)
#   BENCH_DIR=/var/tmp where the scratch dir is made (its disk is the "local disk")
#   BUCKETFS=...       the binary (default $CARGO_TARGET_DIR/debug/bucketfs, CARGO_TARGET_DIR
#                      defaulting to $HOME/.cache/bucketfs-target)
#
# Everything lives in one scratch dir (mktemp -d under $BENCH_DIR), removed on exit; on any
# exit the mount is stopped first.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "fio_vs_local: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
die() { echo "fio_vs_local: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# ---- settings --------------------------------------------------------------------------------
SIZE="${SIZE:-1G}"
RUNTIME="${RUNTIME:-20}"
NUMJOBS="${NUMJOBS:-1}"
IOENGINE="${IOENGINE:-psync}"
CACHE_SIZE="${CACHE_SIZE:-4G}"
BUCKETFS_ARGS="${BUCKETFS_ARGS:-}"
METRICS_PORT="${METRICS_PORT:-19301}"
FUSE_READ_AHEAD_KB="${FUSE_READ_AHEAD_KB:-}"
BENCH_DIR="${BENCH_DIR:-/var/tmp}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
BUCKETFS="${BUCKETFS:-$CARGO_TARGET_DIR/debug/bucketfs}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"

[ -z "$FUSE_READ_AHEAD_KB" ] || [[ "$FUSE_READ_AHEAD_KB" =~ ^[1-9][0-9]*$ ]] ||
  die "FUSE_READ_AHEAD_KB must be a positive integer, got '$FUSE_READ_AHEAD_KB'"
for v in RUNTIME NUMJOBS METRICS_PORT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
to_bytes() { numfmt --from=iec "${1%B}" 2>/dev/null || die "not a size: '$1' (e.g. 512M, 1G)"; }
SIZE_BYTES="$(to_bytes "$SIZE")"
CACHE_BYTES="$(to_bytes "$CACHE_SIZE")"
[ "$CACHE_BYTES" -ge $((SIZE_BYTES + SIZE_BYTES / 4)) ] ||
  die "CACHE_SIZE ($CACHE_SIZE) must hold the working set: at least SIZE + 25% ($SIZE)"
SLICE=$((SIZE_BYTES / NUMJOBS / 8192 * 8192))
[ "$SLICE" -gt 0 ] || die "SIZE too small for NUMJOBS=$NUMJOBS"

# ---- preconditions ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (page cache control and FUSE mounts): sudo $0"
command -v fio >/dev/null || die "fio is not installed: apt-get install fio"
command -v jq >/dev/null || die "jq is not installed: apt-get install jq"
[ -x "$BUCKETFS" ] || die "bucketfs binary not found at $BUCKETFS: run \`make build\` first (or set BUCKETFS=)"
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
[ -d "$BENCH_DIR" ] || die "BENCH_DIR=$BENCH_DIR is not a directory"
if (exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT") 2>/dev/null; then
  die "port $METRICS_PORT is in use; set METRICS_PORT"
fi

SCRATCH="$(mktemp -d "$BENCH_DIR/fio-vs-local.XXXXXX")"
SCRATCH="$(cd "$SCRATCH" && pwd -P)"
LOGS="$SCRATCH/logs"
mkdir -p "$LOGS" "$SCRATCH/local" "$SCRATCH/mnt" "$SCRATCH/bucket"
MOUNT_PID=""

# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
cleanup() {
  local rc=$? m
  trap - EXIT INT TERM
  set +e
  if [ -n "$MOUNT_PID" ] && kill -0 "$MOUNT_PID" 2>/dev/null; then
    echo "fio_vs_local: cleanup: stopping bucketfs $MOUNT_PID" >&2
    kill -TERM "$MOUNT_PID"
    wait_pid_gone "$MOUNT_PID" 120 || kill -KILL "$MOUNT_PID"
    wait "$MOUNT_PID" 2>/dev/null
  fi
  for m in $(mounts_under "$SCRATCH"); do
    fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
  done
  if [ -n "$(mounts_under "$SCRATCH")" ]; then
    echo "fio_vs_local: cleanup: still mounted under $SCRATCH; leaving it in place" >&2
  elif [ "$rc" -ne 0 ] && [ "${KEEP_ON_ERROR:-0}" = 1 ]; then
    echo "fio_vs_local: logs kept in $LOGS" >&2
  else
    [ "$rc" -eq 0 ] || { echo "fio_vs_local: last lines of the bucketfs log:" >&2; tail -20 "$LOGS/bucketfs.log" 2>/dev/null >&2; }
    rm -rf --one-file-system "$SCRATCH"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "fio_vs_local: interrupted" >&2; exit 130' INT TERM

# ---- page cache control ----------------------------------------------------------------------
# Drops the page cache of the given files and of every file under the given directories
# (fadvise DONTNEED; only clean pages go, so sync first).
drop_pages() {
  local f left paths=()
  for f in "$@"; do [ -e "$f" ] && paths+=("$f"); done
  [ "${#paths[@]}" -gt 0 ] || return 0
  sync
  find "${paths[@]}" -type f -exec dd if={} iflag=nocache count=0 status=none \;
  # Check that it worked: what is still resident, per fincore.
  if command -v fincore >/dev/null; then
    left="$(find "${paths[@]}" -type f -exec fincore --bytes --noheadings -o RES {} + | awk '{ s += $1 } END { print s + 0 }')"
    [ "$left" -le $((SIZE_BYTES / 100)) ] ||
      echo "fio_vs_local: warning: $left bytes still in the page cache after dropping it" >&2
  fi
}

# ---- fio -------------------------------------------------------------------------------------
declare -A BW IOPS
FIO_COMMON=(--ioengine="$IOENGINE" --direct=0 --output-format=json --group_reporting)

# run_job target job file [fio options...]: runs one fio job, records its MB/s and IOPS.
run_job() {
  local target="$1" job="$2" file="$3" out="$LOGS/$1-$2.json" rw
  shift 3
  fio --name="$job" --filename="$file" "${FIO_COMMON[@]}" "$@" >"$out" 2>"$LOGS/$target-$job.err" ||
    { cat "$LOGS/$target-$job.err" >&2; die "fio $job on $target failed"; }
  case "$job" in *write*) rw=write ;; *) rw=read ;; esac
  BW[$target.$job]="$(jq -r ".jobs[0].$rw.bw_bytes / 1e6" "$out")"
  IOPS[$target.$job]="$(jq -r ".jobs[0].$rw.iops" "$out")"
  printf '%10.1f MB/s %12.0f IOPS\n' "${BW[$target.$job]}" "${IOPS[$target.$job]}"
}

LOCAL_FILE="$SCRATCH/local/fio.dat"
BFS_FILE="$SCRATCH/mnt/fio.dat"
# pair job [fio options...]: the job on the local disk, then on bucketfs, each from a dropped
# page cache (the local file's; the mount's file and bucketfs's cache files) unless the
# options say --invalidate=0. One job after the other on both targets, rather than all jobs on
# one and then the other, so that the shared VM disk's drift over minutes hits both alike.
pair() {
  local job="$1"
  shift
  say "$job"
  case " $* " in *" --invalidate=0 "*) ;; *) drop_pages "$LOCAL_FILE" ;; esac
  printf '    %-9s' local
  run_job local "$job" "$LOCAL_FILE" "$@"
  case " $* " in *" --invalidate=0 "*) ;; *) drop_pages "$BFS_FILE" "$SCRATCH/cache/data" ;; esac
  printf '    %-9s' bucketfs
  run_job bucketfs "$job" "$BFS_FILE" "$@"
}
RAND=(--bs=8k --numjobs="$NUMJOBS" --size="$SLICE" --offset_increment="$SLICE" --runtime="$RUNTIME")

jobs() {
  pair seqwrite --rw=write --bs=1M --size="$SIZE_BYTES" --runtime="$RUNTIME" --end_fsync=1
  # The read jobs measure reads alone: the written data is on disk on both sides (the local
  # side's sync, bucketfs's checkpoint: no upload runs behind the reads).
  sync
  "$BUCKETFS" checkpoint --cache-dir "$SCRATCH/cache" >/dev/null
  pair seqread --rw=read --bs=1M --size="$SIZE_BYTES" --runtime="$RUNTIME" --invalidate=1
  pair randread --rw=randread "${RAND[@]}" --invalidate=1
  say "randread-fuse (bucketfs only: its cache file in RAM, the mount's pages dropped)"
  find "$SCRATCH/cache/data" -type f -exec cat {} + >/dev/null
  drop_pages "$BFS_FILE"
  printf '    %-9s' bucketfs
  run_job bucketfs randread-fuse "$BFS_FILE" --rw=randread "${RAND[@]}" --invalidate=1
  cat "$LOCAL_FILE" "$BFS_FILE" >/dev/null
  pair randread-warm --rw=randread "${RAND[@]}" --time_based --invalidate=0
  # Random writes run with bucketfs's checkpoints as they come (every 5 s, or 256M dirty).
  pair randwrite --rw=randwrite "${RAND[@]}" --end_fsync=1
}

# ---- machine ---------------------------------------------------------------------------------
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
DISK="$(df -hT "$SCRATCH" | awk 'NR == 2 { printf "%s (%s, %s, %s free)", $1, $2, $3, $5 }')"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$GIT_REV" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  GIT_REV="$GIT_REV (with uncommitted changes)"
fi
CMDLINE="SIZE=$SIZE RUNTIME=$RUNTIME NUMJOBS=$NUMJOBS IOENGINE=$IOENGINE CACHE_SIZE=$CACHE_SIZE"
[ -z "$BUCKETFS_ARGS" ] || CMDLINE="$CMDLINE BUCKETFS_ARGS='$BUCKETFS_ARGS'"
[ -z "$FUSE_READ_AHEAD_KB" ] || CMDLINE="$CMDLINE FUSE_READ_AHEAD_KB=$FUSE_READ_AHEAD_KB"
CMDLINE="$CMDLINE benches/fio_vs_local.sh"
DEV="$(df --output=source "$SCRATCH" | tail -1)"
DEV_NAME="$(basename "$(readlink -f "$DEV" 2>/dev/null || echo "$DEV")")"
LOCAL_RA="$(cat "/sys/class/block/$DEV_NAME/queue/read_ahead_kb" 2>/dev/null || echo '?')"
FUSE_RA=""
MOUNT_CMD="bucketfs mount MNT --cache-dir CACHE --bucket file://BUCKET --cache-size $CACHE_SIZE --metrics-addr 127.0.0.1:$METRICS_PORT${BUCKETFS_ARGS:+ $BUCKETFS_ARGS}"
print_header() {
  echo "command:   $CMDLINE"
  echo "date:      $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine:   $(nproc) CPUs${CPU_MODEL:+ ($CPU_MODEL)}, $MEM RAM, Linux $(uname -r) $(uname -m)"
  echo "disk:      $DISK, under $SCRATCH"
  echo "fio:       $(fio --version), ioengine=$IOENGINE, direct=0, file of $SIZE, runtime at most $RUNTIME s per job, numjobs=$NUMJOBS for random jobs"
  echo "bucketfs:  $("$BUCKETFS" --version), git $GIT_REV, dev profile ($BUCKETFS)"
  echo "mount:     $MOUNT_CMD (cache dir and bucket on the same disk)"
  echo "readahead: local disk $LOCAL_RA KiB ($DEV_NAME), bucketfs mount ${FUSE_RA:-?} KiB (/sys/class/bdi/*/read_ahead_kb)"
}
say "fio on the local disk vs bucketfs"
print_header | sed 's/^/    /'

# ---- run -------------------------------------------------------------------------------------
say "bucketfs: mount $SCRATCH/mnt"
# shellcheck disable=SC2086 # BUCKETFS_ARGS is a list of options
"$BUCKETFS" mount "$SCRATCH/mnt" --cache-dir "$SCRATCH/cache" --bucket "file://$SCRATCH/bucket" \
  --cache-size "$CACHE_SIZE" --metrics-addr "127.0.0.1:$METRICS_PORT" $BUCKETFS_ARGS \
  </dev/null >"$LOGS/bucketfs.log" 2>&1 &
MOUNT_PID=$!
for ((i = 0; ; i++)); do
  kill -0 "$MOUNT_PID" 2>/dev/null || { cat "$LOGS/bucketfs.log" >&2; die "bucketfs exited before mounting"; }
  is_mountpoint "$SCRATCH/mnt" && break
  [ "$i" -lt 300 ] || die "bucketfs did not mount within 30 s"
  sleep 0.1
done
BDI="/sys/class/bdi/$(awk -v m="$SCRATCH/mnt" '$5 == m { print $3 }' /proc/self/mountinfo)/read_ahead_kb"
[ -z "$FUSE_READ_AHEAD_KB" ] || echo "$FUSE_READ_AHEAD_KB" >"$BDI"
FUSE_RA="$(cat "$BDI" 2>/dev/null || true)"
jobs
"$BUCKETFS" status --cache-dir "$SCRATCH/cache" --json >"$LOGS/status.json"
"$BUCKETFS" status --cache-dir "$SCRATCH/cache" | sed 's/^/    /'
say "bucketfs: unmount (SIGTERM)"
t0=$(date +%s.%N)
kill -TERM "$MOUNT_PID"
rc=0
wait "$MOUNT_PID" || rc=$?
MOUNT_PID=""
[ "$rc" -eq 0 ] || die "bucketfs exited with status $rc"
STOP_S="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"

# ---- report ----------------------------------------------------------------------------------
st() { jq -r "$1" "$LOGS/status.json"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
row() { # label job unit(MB/s|IOPS)
  local l b
  if [ "$3" = IOPS ]; then l="${IOPS[local.$2]}"; b="${IOPS[bucketfs.$2]}"; else l="${BW[local.$2]}"; b="${BW[bucketfs.$2]}"; fi
  printf '| %s | %s | %.0f | %.0f | %s |\n' "$1" "$3" "$l" "$b" "$(ratio "$b" "$l")"
}
echo
echo "## fio: local disk vs bucketfs (working set in the cache dir)"
echo
print_header
echo
echo "| job | unit | local disk | bucketfs | bucketfs/local |"
echo "|---|---|---:|---:|---:|"
row "seq write 1M + fsync" seqwrite MB/s
row "seq read 1M, page cache dropped" seqread MB/s
row "rand read 8K, page cache dropped" randread IOPS
row "rand write 8K + fsync" randwrite IOPS
row "rand read 8K, page cache warm" randread-warm IOPS
printf '| %s | IOPS | - | %.0f | vs cold local: %s |\n' "rand read 8K, cache file in RAM, mount's pages dropped" \
  "${IOPS[bucketfs.randread-fuse]}" "$(ratio "${IOPS[bucketfs.randread-fuse]}" "${IOPS[local.randread]}")"
echo
echo "bucketfs over the whole run: $(st .fs.read_hits) read hits, $(st .fs.read_misses) misses," \
  "$(st .fs.fetched_bytes) bytes fetched from the bucket, $(st .fs.evictions) evictions," \
  "$(st .fs.throttled_writes) writes throttled by --max-dirty ($(st '.fs.throttled_micros / 1e6') s);" \
  "$(st .bucket.checkpoints.committed) checkpoints, $(st .bucket.checkpoints.segment_bytes) segment bytes uploaded;" \
  "stop (final checkpoint) $STOP_S s."
