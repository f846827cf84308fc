# Shell helpers shared by the benchmark scripts (sourced, not run).

# Mount points at or below $1, deepest first (to unmount in that order).
mounts_under() {
  awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Whether $1 is a mount point.
is_mountpoint() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# Waits up to $2 seconds for process $1 to exit; fails if it has not.
wait_pid_gone() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# bench_args "$@": a benchmark takes no arguments but `--help`, which prints the script's
# header comment (up to `set -euo`); anything else is an error, reported as $BENCH.
bench_args() {
  case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "$BENCH: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
}

# The start every benchmark shares: `--help` prints the script's header comment, `die` and `say`
# report as $BENCH, and the checks for root, the postgres user and the bucketfs binary. Sets
# PGBIN to the newest PostgreSQL's bin directory. Call as `bench_start NAME "$@"` after
# setting BUCKETFS.
bench_start() {
  BENCH="$1"
  shift
  bench_args "$@"
  [ "$(id -u)" -eq 0 ] || die "run as root (FUSE, and PostgreSQL as the postgres user)"
  id postgres >/dev/null 2>&1 || die "no postgres user: install Debian's postgresql package (make setup)"
  [ -x "$BUCKETFS" ] || die "no bucketfs binary at $BUCKETFS: run \`make build\`"
  PGBIN=""
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4,4n); do
    [ -x "$d/postgres" ] && PGBIN="$d"
  done
  [ -n "$PGBIN" ] || die "no PostgreSQL under /usr/lib/postgresql/*/bin (make setup)"
}
die() { echo "${BENCH:-bench}: error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# The scratch dir of a benchmark that runs PostgreSQL, under $BENCH_DIR and named $1.XXXXXX:
# sets SCRATCH (its real path, traversable by the postgres user), SOCK (the Unix socket dir)
# and LOGS (both the postgres user's), and makes it the working directory, so that commands run
# as postgres never start in a directory that user cannot read.
pg_scratch() {
  SCRATCH="$(mktemp -d "$BENCH_DIR/$1.XXXXXX")"
  SCRATCH="$(cd "$SCRATCH" && pwd -P)"
  chmod 755 "$SCRATCH"
  [[ "$SCRATCH" =~ ^[A-Za-z0-9/._-]+$ ]] || { rmdir "$SCRATCH"; die "scratch dir path '$SCRATCH' has unusual characters; pick another BENCH_DIR"; }
  SOCK="$SCRATCH/sock"
  LOGS="$SCRATCH/logs"
  mkdir -p "$SOCK" "$LOGS"
  chown postgres:postgres "$SOCK" "$LOGS"
  chmod 700 "$SOCK"
  runuser -u postgres -- test -x "$SCRATCH" ||
    { rm -rf "$SCRATCH"; die "the postgres user cannot traverse $SCRATCH (check the modes of $BENCH_DIR and its parents)"; }
  cd "$SCRATCH"
}

# ---- a memory cgroup for PostgreSQL ----------------------------------------------------------
# With far more RAM than the database, the kernel's page cache holds all of it and reads never
# reach the filesystem under test. So Postgres (its processes and the page cache of the files
# it reads) runs in a memory cgroup of its own, a child of this shell's (v1 memory controller)
# or of the root (v2). The filesystem's daemon is not in it.
#
# cg_make NAME: creates it (sets CG); in_cg CMD...: runs CMD in it (CMD alone without one);
# cg_set_limit BYTES: caps it and restarts its peak; cg_peak: its peak in bytes; cg_remove:
# moves anything left back out and removes it (for the cleanup).
CG=""
CG_LIMIT_FILE=""
CG_PEAK_FILE=""
cg_make() {
  local parent
  if [ -d /sys/fs/cgroup/memory ]; then
    parent="/sys/fs/cgroup/memory$(awk -F: '$2 == "memory" { print $3 }' /proc/self/cgroup)"
    CG_LIMIT_FILE=memory.limit_in_bytes
    CG_PEAK_FILE=memory.max_usage_in_bytes
  elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    parent=/sys/fs/cgroup # v2: children of the root may use every controller
    grep -qw memory /sys/fs/cgroup/cgroup.subtree_control || echo +memory >/sys/fs/cgroup/cgroup.subtree_control
    CG_LIMIT_FILE=memory.max
    CG_PEAK_FILE=memory.peak
  else
    die "no memory cgroup controller found: without one the kernel's page cache holds the database and reads hardly reach the filesystems"
  fi
  CG="${parent%/}/bucketfs-bench-$1-$$"
  mkdir "$CG" || die "cannot create the memory cgroup $CG"
}
in_cg() {
  if [ -n "$CG" ]; then
    sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" "$@"
  else
    "$@"
  fi
}
cg_set_limit() {
  [ -n "$CG" ] || return 0
  echo "$1" >"$CG/$CG_LIMIT_FILE"
  # Start each target's measurement from zero where the kernel allows it.
  echo 0 >"$CG/$CG_PEAK_FILE" 2>/dev/null || true
}
cg_peak() { [ -n "$CG" ] && cat "$CG/$CG_PEAK_FILE" 2>/dev/null || echo 0; }
cg_remove() {
  [ -n "$CG" ] && [ -d "$CG" ] || return 0
  local pid i
  for pid in $(cat "$CG/cgroup.procs" 2>/dev/null); do echo "$pid" >"$(dirname "$CG")/cgroup.procs" 2>/dev/null; done
  # A process killed just before may still be on its way out (it leaves the cgroup busy).
  for ((i = 0; i < 100; i++)); do
    rmdir "$CG" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "${BENCH:-bench}: cleanup: could not remove the cgroup $CG" >&2
}

# s3_start MS: the S3 server of benches/s3_server.rs (s3s-fs on 127.0.0.1) on $SCRATCH/s3,
# adding MS to every request, its stdin a fifo the script holds open on fd 8 (it serves until
# that closes, or until the script's cleanup kills $S3_PID). The binary is $S3_SERVER, or built
# here (cargo bench --no-run). Needs SCRATCH, LOGS, REPO and CARGO_TARGET_DIR; sets S3_PID,
# S3_ENDPOINT, S3_BUCKET and the key and secret, and exports what a bucketfs mount reads.
s3_start() {
  local bin="$S3_SERVER" i
  if [ -z "$bin" ]; then
    say "building the S3 server (benches/s3_server.rs)"
    (cd "$REPO" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR" cargo bench --locked --profile dev --bench s3_server --no-run) >>"$LOGS/s3.log" 2>&1 ||
      die "building benches/s3_server.rs failed; see $LOGS/s3.log"
    bin="$(find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -executable -name 's3_server-*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)"
    [ -n "$bin" ] || die "no s3_server binary under $CARGO_TARGET_DIR/debug/deps"
  fi
  [ -x "$bin" ] || die "S3_SERVER=$bin is not an executable"
  mkdir -p "$SCRATCH/s3"
  mkfifo "$SCRATCH/s3.in"
  # (Appended to, so that the file can be emptied of the secret below while it runs.)
  "$bin" "$SCRATCH/s3" "$1" <"$SCRATCH/s3.in" >>"$SCRATCH/s3.out" 2>>"$LOGS/s3.log" &
  S3_PID=$!
  exec 8>"$SCRATCH/s3.in"
  for ((i = 0; i < 600; i++)); do
    grep -q '^secret_key=' "$SCRATCH/s3.out" 2>/dev/null && break
    kill -0 "$S3_PID" 2>/dev/null || die "the S3 server exited; see $LOGS/s3.log"
    sleep 0.05
  done
  grep -q '^secret_key=' "$SCRATCH/s3.out" || die "the S3 server did not start; see $LOGS/s3.log"
  S3_ENDPOINT="$(sed -n 's/^endpoint=//p' "$SCRATCH/s3.out")"
  S3_BUCKET="$(sed -n 's/^bucket=//p' "$SCRATCH/s3.out")"
  S3_KEY="$(sed -n 's/^access_key=//p' "$SCRATCH/s3.out")"
  S3_SECRET="$(sed -n 's/^secret_key=//p' "$SCRATCH/s3.out")"
  : >"$SCRATCH/s3.out"
  # What a bucketfs mount reads to reach it, as `fly storage create` would set it.
  export AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" \
    AWS_ENDPOINT_URL_S3="$S3_ENDPOINT" AWS_REGION=auto BUCKETFS_S3_PATH_STYLE=1
}

# s3_stats: the counters so far of the S3 server `s3_start` started, as "gets get_bytes".
s3_stats() {
  local n i
  n="$(grep -c '^stats ' "$SCRATCH/s3.out" || true)"
  echo stats >&8
  for ((i = 0; ; i++)); do
    [ "$(grep -c '^stats ' "$SCRATCH/s3.out" || true)" -gt "$n" ] && break
    [ "$i" -lt 200 ] || die "the S3 server did not answer stats within 10 s; see $LOGS/s3.log"
    sleep 0.05
  done
  grep '^stats ' "$SCRATCH/s3.out" | tail -1 |
    sed -n 's/.* gets=\([0-9]*\) get_bytes=\([0-9]*\).*/\1 \2/p' | grep . ||
    die "the S3 server did not answer stats; see $LOGS/s3.log"
}

# gc_bench_start NAME "$@": the start of a benchmark of a `bucketfs mount --durability
# remote`'s commits and `bucketfs gc` or `verify` on their bucket (gc_memory.sh,
# gc_first_pass.sh, verify.sh):
# `--help` prints the script's header comment; BENCH_DIR, KEEP_LOGS, S3_SERVER,
# CARGO_TARGET_DIR and BUCKETFS from the environment or their defaults; the checks; the
# scratch dir (SCRATCH, with LOGS, mnt/, cache/ and the S3 server's s3/pgdata/ in it;
# BUCKET_DIR, the bucket's prefix there); and the cleanup on exit, which stops the mount
# (MOUNT_PID) and the S3 server (S3_PID) first, copies the logs to KEEP_LOGS and removes the
# scratch dir.
gc_bench_start() {
  BENCH="$1"
  shift
  bench_args "$@"
  BENCH_DIR="${BENCH_DIR:-/var/tmp}"
  KEEP_LOGS="${KEEP_LOGS:-}"
  S3_SERVER="${S3_SERVER:-}"
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
  BUCKETFS="${BUCKETFS:-$CARGO_TARGET_DIR/debug/bucketfs}"
  [ "$(id -u)" -eq 0 ] || die "run as root (FUSE mounts)"
  [ -x "$BUCKETFS" ] || die "no bucketfs binary at $BUCKETFS: run \`make build\`"
  [ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"
  [ -d "$BENCH_DIR" ] || die "BENCH_DIR=$BENCH_DIR is not a directory"
  command -v python3 >/dev/null || die "python3 is not installed"

  SCRATCH="$(mktemp -d "$BENCH_DIR/$BENCH.XXXXXX")"
  LOGS="$SCRATCH/logs"
  mkdir -p "$LOGS" "$SCRATCH/mnt" "$SCRATCH/cache" "$SCRATCH/s3/pgdata"
  MOUNT_PID=""
  S3_PID=""
  cleanup() {
    local rc=$?
    set +e # clean up whatever fails
    if [ -n "$MOUNT_PID" ] && kill -0 "$MOUNT_PID" 2>/dev/null; then
      kill -TERM "$MOUNT_PID" 2>/dev/null || true
      wait_pid_gone "$MOUNT_PID" 120 || kill -KILL "$MOUNT_PID" 2>/dev/null || true
    fi
    is_mountpoint "$SCRATCH/mnt" && umount -l "$SCRATCH/mnt" 2>/dev/null || true
    if [ -n "$S3_PID" ]; then kill "$S3_PID" 2>/dev/null; wait "$S3_PID" 2>/dev/null; fi
    if [ -n "$KEEP_LOGS" ]; then
      mkdir -p "$KEEP_LOGS" && cp -r "$LOGS"/. "$KEEP_LOGS"/ || true
    fi
    rm -rf "$SCRATCH"
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  BUCKET_DIR="$SCRATCH/s3/pgdata/p"
}

# gc_bench_manifests DEFAULT LEAST [WHY]: MANIFESTS from the environment (DEFAULT if unset), a
# whole number of at least LEAST, or the script ends saying so (and WHY LEAST).
gc_bench_manifests() {
  MANIFESTS="${MANIFESTS:-$1}"
  [[ "$MANIFESTS" =~ ^[1-9][0-9]*$ ]] && [ "$MANIFESTS" -ge "$2" ] ||
    die "MANIFESTS must be a whole number of at least $2${3:+ ($3)}, got '$MANIFESTS'"
}

# gc_bench_latency: S3_LATENCY_MS from the environment (20 if unset), a whole number, or the
# script ends saying so.
gc_bench_latency() {
  S3_LATENCY_MS="${S3_LATENCY_MS:-20}"
  [[ "$S3_LATENCY_MS" =~ ^[0-9]+$ ]] || die "S3_LATENCY_MS must be a whole number, got '$S3_LATENCY_MS'"
}

# remote_commits N [PAGES]: N group commits into the bucket file://$BUCKET_DIR: a `bucketfs
# mount --durability remote --gc-interval off` on the cache dir $SCRATCH/cache, one writer's
# pwrite and fsync of an 8 KiB page (one of PAGES, 64 unless given, in turn) N times, and the
# mount's clean stop (SIGTERM). The more pages, the larger the view each base restates.
# Needs BUCKETFS, BUCKET_DIR, SCRATCH (with mnt/ in it) and LOGS; sets MOUNT_PID while it runs.
remote_commits() {
  local n="$1" pages="${2:-64}" i
  "$BUCKETFS" mount --bucket "file://$BUCKET_DIR" --cache-dir "$SCRATCH/cache" \
    --durability remote --gc-interval off "$SCRATCH/mnt" >>"$LOGS/mount.log" 2>&1 &
  MOUNT_PID=$!
  for ((i = 0; i < 600; i++)); do
    is_mountpoint "$SCRATCH/mnt" && break
    kill -0 "$MOUNT_PID" 2>/dev/null || die "bucketfs mount exited; see $LOGS/mount.log"
    sleep 0.1
  done
  is_mountpoint "$SCRATCH/mnt" || die "the mount did not come up; see $LOGS/mount.log"
  python3 - "$SCRATCH/mnt/f" "$n" "$pages" <<'EOF'
import os, sys, time
path, n, pages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
page = bytearray(os.urandom(8192))
start = time.monotonic()
for i in range(n):
    page[:8] = i.to_bytes(8, "little")
    os.pwrite(fd, page, (i % pages) * 8192)
    os.fsync(fd)
    if (i + 1) % 10000 == 0:
        print(f"    {i + 1} commits, {time.monotonic() - start:.0f} s", file=sys.stderr)
os.close(fd)
EOF
  kill -TERM "$MOUNT_PID"
  wait_pid_gone "$MOUNT_PID" 300 || die "the mount did not stop within 300 s"
  MOUNT_PID=""
}

# timed_bucketfs OUT LOG ARG...: prints "peak_kib seconds" of `bucketfs ARG...` (its peak
# resident memory, getrusage's for the child), its stdout in OUT and its stderr in LOG; fails
# if it does. Needs BUCKETFS.
timed_bucketfs() {
  python3 - "$BUCKETFS" "$@" <<'EOF'
import resource, subprocess, sys, time
binary, out, log = sys.argv[1:4]
start = time.monotonic()
with open(out, "w") as o, open(log, "w") as e:
    rc = subprocess.run([binary, *sys.argv[4:]], stdout=o, stderr=e).returncode
took = time.monotonic() - start
if rc != 0:
    sys.exit(f"bucketfs {sys.argv[4]} exited {rc}; see {log}")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, f"{took:.1f}")
EOF
}

# bench_compare: COMPARE from the environment (other bucketfs binaries, paths without spaces,
# separated by spaces; none if unset), each an executable, or the script ends saying so.
bench_compare() {
  local binary
  COMPARE="${COMPARE:-}"
  for binary in $COMPARE; do
    [ -x "$binary" ] || die "COMPARE names $binary, which is not an executable"
  done
}

# timed_gets NAME BINARY ARG...: timed_bucketfs of `BINARY ARG...` (its stdout in
# $LOGS/NAME.out, its stderr in $LOGS/NAME.log), with the GET requests the S3 server answered
# meanwhile: sets KIB (peak resident memory), SECS and GETS. Needs LOGS and the S3 server.
timed_gets() {
  local name="$1" binary="$2" stats0 stats1 gets0 gets1 out
  shift 2
  stats0="$(s3_stats)"
  out="$(BUCKETFS="$binary" timed_bucketfs "$LOGS/$name.out" "$LOGS/$name.log" "$@")" ||
    die "bucketfs $1 failed; see $LOGS/$name.out and $LOGS/$name.log"
  stats1="$(s3_stats)"
  read -r gets0 _ <<<"$stats0"
  read -r gets1 _ <<<"$stats1"
  read -r KIB SECS <<<"$out"
  GETS=$((gets1 - gets0))
}

# gc_pass BUCKET NAME [OPTION...]: timed_bucketfs of `bucketfs gc --json OPTION...` on BUCKET,
# its report in $LOGS/gc-NAME.json and its log in $LOGS/gc-NAME.log. Needs BUCKETFS and LOGS.
gc_pass() {
  timed_bucketfs "$LOGS/gc-$2.json" "$LOGS/gc-$2.log" gc "${@:3}" --json --bucket "$1"
}

# json_field FILE KEY: the top-level field KEY of the JSON object in FILE.
json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# gc_bench_header SETTINGS: the lines above a GC benchmark's table: the binary, the time, the
# machine, the checkout (and whether it has uncommitted changes) and SETTINGS.
gc_bench_header() {
  local rev
  echo
  echo "bucketfs $("$BUCKETFS" --version | cut -d' ' -f2) ($BUCKETFS), $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "$(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr);"
  rev="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [ "$rev" != unknown ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    rev="$rev (with uncommitted changes)"
  fi
  echo "checkout $rev (the binary may be another's), $1"
  echo
}
