#!/usr/bin/env bash
# flushes.sh: how many flushes of the disk a bucketfs mount makes while pgbench runs, and of
# what: the cache dir's log (RocksDB's WAL), cache files, anything else.
#
# Usage (as root, beside a run that mounts bucketfs and runs a timed pgbench, e.g.
# `TARGETS=bucketfs WORKLOADS=tpcb benches/peers.sh`):
#   benches/flushes.sh [SECONDS] [OUT]
#
# Waits for a `bucketfs... mount` process and then for a `pgbench ... -T` one, lets pgbench
# run 5 s, then traces the mount's fdatasync, fsync and syncfs calls for SECONDS (default 5)
# with `strace -f -y`, which names the file of each call as it is made, and prints their
# count by what that file is. OUT (default a temporary file) keeps strace's output. strace
# stops the mount's threads at every system call, so the mount runs far slower while traced:
# read the counts as flushes per commit, not per second, and quote no TPS from such a run.
set -euo pipefail
SECONDS_TRACED=${1:-5}
OUT=${2:-$(mktemp /tmp/flushes.XXXXXX)}
command -v strace >/dev/null || { echo "flushes.sh: needs strace" >&2; exit 1; }
# The mount itself (its command line starts with the binary), not a wrapper such as runuser.
mount_pid() { pgrep -f '^[^ ]*bucketfs[^ ]*( -[^ ]*( [^-][^ ]*)?)* (mount|run) ' | head -1 || true; }
until [ -n "$(mount_pid)" ]; do sleep 0.5; done
until pgrep -f 'pgbench .*-T' >/dev/null; do sleep 0.5; done
sleep 5
pid=$(mount_pid)
cache=$(tr '\0' '\n' < /proc/"$pid"/cmdline | sed -n 's/^--cache-dir=//p; /^--cache-dir$/{n;p}' | head -1)
[ -n "$cache" ] || cache=$(tr '\0' '\n' < /proc/"$pid"/environ | sed -n 's/^BUCKETFS_CACHE_DIR=//p')
[ -n "$cache" ] || { echo "flushes.sh: no --cache-dir in the command line of pid $pid" >&2; exit 1; }
cache=$(cd /proc/"$pid"/cwd && realpath -m "$cache")
timeout -s INT "$SECONDS_TRACED" strace -f -qq -y -e trace=fdatasync,fsync,syncfs -p "$pid" -o "$OUT" || true
echo "bucketfs pid $pid, cache dir $cache, ${SECONDS_TRACED} s traced (strace output: $OUT)"
if ! grep -qE '(fdatasync|fsync|syncfs)\([0-9]+<' "$OUT"; then
  echo "  none"
  exit 0
fi
# Anything outside the cache dir (a file:// bucket's objects, say) by its directory.
grep -oE '(fdatasync|fsync|syncfs)\([0-9]+<[^>]*>' "$OUT" |
  sed -E 's/^([a-z]+)\([0-9]+<(.*)>$/\1 \2/' |
  while read -r call path; do
    case "$path" in
      "$cache"/meta/*.log) what="cache dir's log" ;;
      "$cache"/meta | "$cache"/meta/*) what="cache dir's metadata (other)" ;;
      "$cache" | "$cache"/*) what="cache files" ;;
      *) what="other: ${path%/*}/" ;;
    esac
    echo "$call|$what"
  done | sort | uniq -c | sort -rn |
  awk -F'|' '{split($1, a, " "); printf "  %7d  %-9s  %s\n", a[1], a[2], $2}'
