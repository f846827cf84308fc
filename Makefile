# The cargo target dir lives outside the checkout so RocksDB's C++ is built once per machine.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/bucketfs-target
BIN := $(CARGO_TARGET_DIR)/debug/bucketfs

.PHONY: setup build test lint fmt bench-pgbench

setup:            ## install system packages and build (fresh Debian)
	scripts/setup.sh

build:
	cargo build --locked

test:             ## every test: unit, reference model, real mounts, Postgres end to end (root)
	cargo test --locked -- --test-threads=4

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench-pgbench:    ## pgbench TPC-B on the local disk vs bucketfs (vs bindfs), one run
	cargo build --locked
	benches/pgbench_vs_local.sh
