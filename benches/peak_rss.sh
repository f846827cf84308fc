#!/usr/bin/env bash
# peak_rss.sh: peak resident memory of the bucketfs process with --cache-size 10G while a
# working set of several GiB is written, rewritten, read and then restored from the bucket.
#
# Usage (as root, after `make build`):
#   benches/peak_rss.sh                      # or: make bench-rss
#   DATA_SIZE=512M benches/peak_rss.sh       # a quick smoke run
#
# One `bucketfs mount --bucket file://... --cache-size $CACHE_SIZE` (cache dir and bucket on
# the same local disk), then, with fio (buffered, psync):
#   write      $FILES files of DATA_SIZE/FILES each, written sequentially in 1 MiB blocks by
#              $FILES jobs at once, then fsync
#   randwrite  $RANDWRITE_SIZE of random 8 KiB writes over those files (scattered dirty
#              pages), then fsync
#   checkpoint `bucketfs checkpoint`: everything clean in the bucket
#   read       the page cache dropped, up to $RANDREAD_TIME s of random 8 KiB reads (no block
#              twice), then, dropped again, every file read sequentially
#   stop       SIGTERM (final checkpoint) until the process exits
# and a second mount of the same bucket on an EMPTY cache dir (a restore):
#   restore    the same reads, every byte from the bucket (bucketfs's prewarm of the hot set
#              the first mount recorded at its stop may fetch them first); then SIGTERM.
# A sampler reads VmRSS and VmHWM from /proc/PID/status every 0.2 s; the report gives, per
# phase, the largest VmRSS seen, and the VmHWM (the kernel's own peak, which no sampling can
# miss) of each process at its last sample before exit. Goal: under 256 MiB.
#
# Environment:
#   DATA_SIZE=3G        bytes written (and read) through the mount
#   FILES=3             files (and parallel writers)
#   RANDWRITE_SIZE=256M bytes of random 8 KiB writes
#   RANDREAD_TIME=10    seconds of random reads after each sequential read
#   CACHE_SIZE=10G      bucketfs --cache-size
#   BUCKETFS_ARGS=""    extra options for `bucketfs mount`
#   METRICS_PORT=19303  bucketfs --metrics-addr 127.0.0.1:PORT
#   BENCH_DIR=/var/tmp  where the scratch dir is made
#   KEEP_LOGS=DIR       copy the logs (bucketfs, fio, the samples) there
#   BUCKETFS=...        the binary (default $CARGO_TARGET_DIR/debug/bucketfs, CARGO_TARGET_DIR
#                       defaulting to $HOME/.cache/bucketfs-target)
#
# Everything lives in one scratch dir (mktemp -d under $BENCH_DIR), removed on exit; on any
# exit the mount is stopped first.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "peak_rss: unknown argument: $1 (see --help)" >&2; exit 2 ;;
esac
die() { echo "peak_rss: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# ---- settings --------------------------------------------------------------------------------
DATA_SIZE="${DATA_SIZE:-3G}"
FILES="${FILES:-3}"
RANDWRITE_SIZE="${RANDWRITE_SIZE:-256M}"
RANDREAD_TIME="${RANDREAD_TIME:-10}"
CACHE_SIZE="${CACHE_SIZE:-10G}"
BUCKETFS_ARGS="${BUCKETFS_ARGS:-}"
METRICS_PORT="${METRICS_PORT:-19303}"
BENCH_DIR="${BENCH_DIR:-/var/tmp}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
BUCKETFS="${BUCKETFS:-$CARGO_TARGET_DIR/debug/bucketfs}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"

for v in FILES RANDREAD_TIME METRICS_PORT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
to_bytes() { numfmt --from=iec "${1%B}" 2>/dev/null || die "not a size: '$1' (e.g. 512M, 3G)"; }
DATA_BYTES="$(to_bytes "$DATA_SIZE")"
RANDWRITE_BYTES="$(to_bytes "$RANDWRITE_SIZE")"
to_bytes "$CACHE_SIZE" >/dev/null
PER_FILE=$((DATA_BYTES / FILES / 1048576 * 1048576))
[ "$PER_FILE" -gt 0 ] || die "DATA_SIZE ($DATA_SIZE) is too small for FILES=$FILES"

# ---- preconditions ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (page cache control and FUSE mounts): sudo $0"
command -v fio >/dev/null || die "fio is not installed: apt-get install fio"
[ -x "$BUCKETFS" ] || die "bucketfs binary not found at $BUCKETFS: run \`make build\` first (or set BUCKETFS=)"
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
[ -d "$BENCH_DIR" ] || die "BENCH_DIR=$BENCH_DIR is not a directory"
if (exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT") 2>/dev/null; then
  die "port $METRICS_PORT is in use; set METRICS_PORT"
fi

SCRATCH="$(mktemp -d "$BENCH_DIR/peak-rss.XXXXXX")"
SCRATCH="$(cd "$SCRATCH" && pwd -P)"
LOGS="$SCRATCH/logs"
MNT="$SCRATCH/mnt"
mkdir -p "$LOGS" "$MNT" "$SCRATCH/bucket"
MOUNT_PID=""
SAMPLER_PID=""

# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
cleanup() {
  local rc=$? m
  trap - EXIT INT TERM
  set +e
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null && wait "$SAMPLER_PID" 2>/dev/null
  if [ -n "$MOUNT_PID" ] && kill -0 "$MOUNT_PID" 2>/dev/null; then
    echo "peak_rss: cleanup: stopping bucketfs $MOUNT_PID" >&2
    kill -TERM "$MOUNT_PID"
    wait_pid_gone "$MOUNT_PID" 120 || kill -KILL "$MOUNT_PID"
    wait "$MOUNT_PID" 2>/dev/null
  fi
  for m in $(mounts_under "$SCRATCH"); do
    fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m"
  done
  [ -z "${KEEP_LOGS:-}" ] || { mkdir -p "$KEEP_LOGS" && cp -r "$LOGS"/. "$KEEP_LOGS"/; }
  if [ -n "$(mounts_under "$SCRATCH")" ]; then
    echo "peak_rss: cleanup: still mounted under $SCRATCH; leaving it in place" >&2
  else
    [ "$rc" -eq 0 ] || { echo "peak_rss: last lines of the bucketfs log:" >&2; tail -20 "$LOGS"/bucketfs-*.log 2>/dev/null >&2; }
    rm -rf --one-file-system "$SCRATCH"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "peak_rss: interrupted" >&2; exit 130' INT TERM

# ---- the mount and the sampler ---------------------------------------------------------------
PHASE_FILE="$SCRATCH/phase"
phase() { echo "$1" >"$PHASE_FILE.new" && mv "$PHASE_FILE.new" "$PHASE_FILE"; say "$1"; }
# One line every 0.2 s while pid $1 lives: "unix_ms phase vmrss_kib vmhwm_kib".
sampler() {
  local pid="$1" rss hwm
  while read -r rss hwm < <(awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { if (h) print r, h }' "/proc/$pid/status" 2>/dev/null); do
    echo "$(date +%s%3N) $(cat "$PHASE_FILE") $rss $hwm"
    sleep 0.2
  done
}
mount_bucketfs() { # name cache_dir
  # shellcheck disable=SC2086 # BUCKETFS_ARGS is a list of options
  "$BUCKETFS" mount "$MNT" --cache-dir "$2" --bucket "file://$SCRATCH/bucket" \
    --cache-size "$CACHE_SIZE" --metrics-addr "127.0.0.1:$METRICS_PORT" $BUCKETFS_ARGS \
    </dev/null >"$LOGS/bucketfs-$1.log" 2>&1 &
  MOUNT_PID=$!
  local i
  for ((i = 0; ; i++)); do
    kill -0 "$MOUNT_PID" 2>/dev/null || { cat "$LOGS/bucketfs-$1.log" >&2; die "bucketfs exited before mounting"; }
    is_mountpoint "$MNT" && break
    [ "$i" -lt 600 ] || die "bucketfs did not mount within 60 s"
    sleep 0.1
  done
  sampler "$MOUNT_PID" >>"$LOGS/samples-$1.txt" &
  SAMPLER_PID=$!
}
stop_bucketfs() { # name
  phase "stop-$1"
  kill -TERM "$MOUNT_PID"
  local rc=0
  wait "$MOUNT_PID" || rc=$?
  MOUNT_PID=""
  wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=""
  [ "$rc" -eq 0 ] || die "bucketfs exited with status $rc (log: $LOGS/bucketfs-$1.log)"
}
drop_pages() { # drop the page cache of every file under the given dirs (sync first)
  sync
  find "$@" -type f -exec dd if={} iflag=nocache count=0 status=none \;
}
FIO_FILES=()
for ((i = 0; i < FILES; i++)); do FIO_FILES+=("$MNT/data.$i"); done
FILE_LIST="$(IFS=:; echo "${FIO_FILES[*]}")"
fio_run() { # log-name fio options...
  local name="$1"
  shift
  fio --ioengine=psync --direct=0 "$@" >"$LOGS/fio-$name.log" 2>&1 ||
    { tail -20 "$LOGS/fio-$name.log" >&2; die "fio $name failed"; }
  awk '/(READ|WRITE): bw=/ { sub(/^ +/, ""); print "    " $0 }' "$LOGS/fio-$name.log"
}
# Random 8 KiB reads first (one pass at most: no page is read twice), then every file
# sequentially, each from a dropped page cache, so that the reads reach bucketfs.
read_all() { # name cache_dir
  drop_pages "$MNT" "$2/data"
  fio_run "$1-randread" --name=randread --filename="$FILE_LIST" --rw=randread --bs=8k \
    --size="$((PER_FILE * FILES))" --runtime="$RANDREAD_TIME" --invalidate=1
  drop_pages "$MNT" "$2/data"
  fio_run "$1-seqread" --name=seqread --filename="$FILE_LIST" --rw=read --bs=1M \
    --size="$((PER_FILE * FILES))" --invalidate=1
}

# ---- machine ---------------------------------------------------------------------------------
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
MEM="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$GIT_REV" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  GIT_REV="$GIT_REV (with uncommitted changes)"
fi
CMDLINE="DATA_SIZE=$DATA_SIZE FILES=$FILES RANDWRITE_SIZE=$RANDWRITE_SIZE RANDREAD_TIME=$RANDREAD_TIME CACHE_SIZE=$CACHE_SIZE"
[ -z "$BUCKETFS_ARGS" ] || CMDLINE="$CMDLINE BUCKETFS_ARGS='$BUCKETFS_ARGS'"
CMDLINE="$CMDLINE benches/peak_rss.sh"
print_header() {
  echo "command:   $CMDLINE"
  echo "date:      $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine:   $(nproc) CPUs${CPU_MODEL:+ ($CPU_MODEL)}, $MEM RAM, Linux $(uname -r) $(uname -m)"
  echo "disk:      $(df -hT "$SCRATCH" | awk 'NR == 2 { printf "%s (%s, %s, %s free)", $1, $2, $3, $5 }'), under $SCRATCH"
  echo "bucketfs:  $("$BUCKETFS" --version), git $GIT_REV, dev profile ($BUCKETFS)"
  echo "mount:     bucketfs mount MNT --cache-dir CACHE --bucket file://BUCKET --cache-size $CACHE_SIZE --metrics-addr 127.0.0.1:$METRICS_PORT${BUCKETFS_ARGS:+ $BUCKETFS_ARGS} (the defaults otherwise; they include --max-dirty 1G, --checkpoint-dirty 256M, a 5 s interval, zstd)"
  echo "workload:  fio $(fio --version | sed 's/^fio-//'), psync, buffered: $FILES x $(numfmt --to=iec-i --suffix=B "$PER_FILE") written in 1 MiB blocks; $RANDWRITE_SIZE of 8 KiB random writes; all read back; then restored on an empty cache dir and read again"
}
say "peak RSS of bucketfs"
print_header | sed 's/^/    /'

# ---- run -------------------------------------------------------------------------------------
phase mount-1
mount_bucketfs first "$SCRATCH/cache1"
phase write
fio_run write --name=write --directory="$MNT" --filename_format='data.$jobnum' --numjobs="$FILES" \
  --rw=write --bs=1M --size="$PER_FILE" --end_fsync=1 --group_reporting
phase randwrite
fio_run randwrite --name=randwrite --filename="$FILE_LIST" --rw=randwrite --bs=8k \
  --size="$((PER_FILE * FILES))" --io_size="$RANDWRITE_BYTES" --end_fsync=1
phase checkpoint
"$BUCKETFS" checkpoint --cache-dir "$SCRATCH/cache1" | sed 's/^/    /'
phase read
read_all first "$SCRATCH/cache1"
"$BUCKETFS" status --cache-dir "$SCRATCH/cache1" >"$LOGS/status-first.txt"
grep -E '^(cache|dirty|checkpoints)' "$LOGS/status-first.txt" | sed 's/^/    /'
stop_bucketfs first

phase mount-2
mount_bucketfs restore "$SCRATCH/cache2"
phase restore
read_all restore "$SCRATCH/cache2"
"$BUCKETFS" status --cache-dir "$SCRATCH/cache2" >"$LOGS/status-restore.txt"
grep -E '^(cache|dirty|checkpoints|prewarm)' "$LOGS/status-restore.txt" | sed 's/^/    /'
stop_bucketfs restore

# ---- report ----------------------------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
echo
echo "## Peak RSS of bucketfs, --cache-size $CACHE_SIZE"
echo
print_header
echo
echo "| mount | phase | seconds | largest VmRSS (MiB) | VmHWM at its end (MiB) |"
echo "|---|---|---:|---:|---:|"
for m in first restore; do
  awk -v m="$m" '
    { if (!($2 in t0)) { t0[$2] = $1; order[n++] = $2 } t1[$2] = $1
      if ($3 > r[$2]) r[$2] = $3; h[$2] = $4 }
    END { for (i = 0; i < n; i++) { p = order[i]
            printf "| %s | %s | %.1f | %.0f | %.0f |\n", m, p, (t1[p] - t0[p]) / 1000, r[p] / 1024, h[p] / 1024 } }' \
    "$LOGS/samples-$m.txt"
done
HWM1="$(awk '{ h = $4 } END { print h + 0 }' "$LOGS/samples-first.txt")"
HWM2="$(awk '{ h = $4 } END { print h + 0 }' "$LOGS/samples-restore.txt")"
PEAK=$((HWM1 > HWM2 ? HWM1 : HWM2))
echo
echo "Peak (VmHWM, last sample before exit): $(mib "$HWM1") MiB for the first mount, $(mib "$HWM2") MiB for the restore." \
  "Goal: under 256 MiB: $([ "$PEAK" -lt $((256 * 1024)) ] && echo met || echo "**not met** ($(mib "$PEAK") MiB)")."
echo "Samples every 0.2 s; the final checkpoint's last 0.2 s before exit can escape the VmRSS column, not VmHWM."
