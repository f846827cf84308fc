#!/usr/bin/env bash
# `make run`: PostgreSQL on a bucketfs mount, in one command, on a fresh Debian machine.
#
# Installs what is missing, builds bucketfs, and starts PostgreSQL through `bucketfs run
# --initdb` with the embedded local bucket (a directory in the cache dir), then prints how to
# connect. Ctrl-C stops it cleanly: fast shutdown, the final checkpoint, unmount. Run it again
# and the same database comes back.
#
# PG_CONFIG=/path/to/pg_config uses that PostgreSQL build; if it has OrioleDB (orioledb.so in
# its pkglibdir), the server preloads it and the database gets CREATE EXTENSION orioledb.
#
# BUCKETFS_RUN_DIR (default /var/lib/bucketfs-run) holds the mountpoint, the cache dir (and
# so the bucket) and the socket; PGPORT (default 5432) is the port, on localhost only.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/common.sh

echo "run: checking system packages"
install_missing "${build_packages[@]}" "${run_packages[@]}"
# Debian's own cluster would hold port 5432.
stop_packaged_servers postgresql
need_cargo
echo "run: building bucketfs into $CARGO_TARGET_DIR (the first build compiles RocksDB: 10+ minutes on 2 cores)"
cargo build --locked --bin bucketfs
bucketfs="$CARGO_TARGET_DIR/debug/bucketfs"

oriole=""
if [ -n "${PG_CONFIG:-}" ]; then
  bindir="$("$PG_CONFIG" --bindir)"
  if [ -e "$("$PG_CONFIG" --pkglibdir)/orioledb.so" ]; then
    oriole=1
  else
    echo "run: $PG_CONFIG has no orioledb.so: running its plain PostgreSQL"
  fi
else
  bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi
for tool in postgres initdb pg_isready psql; do
  if [ ! -x "$bindir/$tool" ]; then
    echo "run: no $tool in $bindir" >&2
    exit 1
  fi
done

dir="${BUCKETFS_RUN_DIR:-/var/lib/bucketfs-run}"
port="${PGPORT:-5432}"
$sudo mkdir -p "$dir/pgdata" "$dir/socket"
# The postgres user goes through $dir to the mount and the socket.
$sudo chmod 755 "$dir"
$sudo chown postgres: "$dir/socket"

args=(
  run "$dir/pgdata" --cache-dir "$dir/cache"
  --initdb --initdb-arg=--encoding=UTF8 --initdb-arg=--no-locale
  # Peer authentication on the socket (OS user postgres is database user postgres); SCRAM,
  # with no password set yet, over TCP.
  --initdb-arg=--auth-local=peer --initdb-arg=--auth-host=scram-sha-256
  --pg-bin "$bindir"
)
if [ -n "$oriole" ]; then
  args+=(--pg-conf "shared_preload_libraries = 'orioledb'")
fi
args+=(
  -- "$bindir/postgres" -D "$dir/pgdata" -k "$dir/socket" -p "$port"
  -c listen_addresses=localhost
)

psql=("$bindir/psql" -h "$dir/socket" -p "$port" -U postgres)
# Once PostgreSQL answers: the extension, then how to connect. In the background, so that
# bucketfs stays in the foreground and Ctrl-C reaches it (it passes it on to PostgreSQL).
(
  until $sudo runuser -u postgres -- "$bindir/pg_isready" -q -h "$dir/socket" -p "$port"; do
    kill -0 $$ 2>/dev/null || exit 0 # bucketfs stopped before PostgreSQL was up
    sleep 0.5
  done
  if [ -n "$oriole" ]; then
    $sudo runuser -u postgres -- "${psql[@]}" -d postgres -qXc 'CREATE EXTENSION IF NOT EXISTS orioledb'
  fi
  as_root="${sudo:+$sudo }"
  cat <<EOF

run: PostgreSQL is up on bucketfs (data: $dir/pgdata, cache dir and bucket: $dir/cache).
run: connect with
    ${as_root}runuser -u postgres -- ${psql[*]}
run: status: ${as_root}$bucketfs status --cache-dir $dir/cache
run: Ctrl-C stops it cleanly (fast shutdown, final checkpoint, unmount).

EOF
) &

exec $sudo "$bucketfs" "${args[@]}"
