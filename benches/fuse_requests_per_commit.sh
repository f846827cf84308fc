#!/usr/bin/env bash
# fuse_requests_per_commit.sh: what one pgbench transaction costs bucketfs, in syscalls.
#
# Mounts bucketfs (no bucket), runs pgbench TPC-B (scale $SCALE, 4 clients) on it for 25 s and,
# from second 8 to 18, counts bucketfs's system calls with `strace -c -f`: reads of /dev/fuse
# are FUSE requests, pwrite64 are cache-file writes, fdatasync the syncs, write the RocksDB WAL.
# As root, after `make build`. Needs strace (apt-get install strace).
set -euo pipefail
SCALE="${SCALE:-20}"
BUCKETFS="${BUCKETFS:-${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}/debug/bucketfs}"
PG="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
command -v strace >/dev/null || { echo "strace is not installed: apt-get install strace" >&2; exit 1; }
[ -x "$BUCKETFS" ] || { echo "bucketfs binary not found at $BUCKETFS: run make build" >&2; exit 1; }
W="$(mktemp -d /var/tmp/fuse-requests.XXXXXX)"
chmod 755 "$W"; mkdir -p "$W/mnt" "$W/run"; chown postgres "$W/run"
cleanup() {
  runuser -u postgres -- "$PG/pg_ctl" -D "$W/mnt" -m immediate stop >/dev/null 2>&1 || true
  [ -n "${BPID:-}" ] && kill "$BPID" 2>/dev/null && wait "$BPID" 2>/dev/null || true
  umount -l "$W/mnt" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
"$BUCKETFS" mount "$W/mnt" --cache-dir "$W/cache" --allow-other --uid postgres --gid postgres 2>"$W/bucketfs.log" &
BPID=$!
for _ in $(seq 100); do grep -q " $W/mnt " /proc/self/mountinfo && break; sleep 0.1; done
runuser -u postgres -- "$PG/initdb" -D "$W/mnt" --auth=trust -U postgres --no-locale >/dev/null
runuser -u postgres -- "$PG/pg_ctl" -D "$W/mnt" -l "$W/run/pg.log" -w start \
  -o "-k $W/run -c listen_addresses= -c shared_buffers=128MB" >/dev/null
runuser -u postgres -- "$PG/pgbench" -h "$W/run" -i -s "$SCALE" -q postgres 2>/dev/null
runuser -u postgres -- "$PG/psql" -h "$W/run" -qc checkpoint postgres
runuser -u postgres -- "$PG/pgbench" -h "$W/run" -c 4 -j 2 -T 25 postgres >"$W/pgbench.out" 2>&1 &
sleep 8
timeout 10 strace -c -f -p "$BPID" -o "$W/strace.txt" 2>/dev/null || true
wait %2 || true
grep "tps =" "$W/pgbench.out"
head -12 "$W/strace.txt"
