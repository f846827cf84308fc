#!/usr/bin/env bash
# The image's first start of a new database, run by `bucketfs run --initdb-command` (the
# Dockerfile's ENTRYPOINT) as the postgres user, and only when the bucket holds no database.
#
# It is the OrioleDB image's own initialisation, the functions of its docker-entrypoint.sh
# called in the order that script's main calls them: initdb with POSTGRES_USER,
# POSTGRES_PASSWORD and POSTGRES_INITDB_ARGS; then a temporary server on a socket only, which
# creates POSTGRES_DB and runs /docker-default-initdb.d and /docker-entrypoint-initdb.d; then
# that server stopped. What differs: the database is made in $PGDATA, which bucketfs sets to a
# directory of its own on the mount and moves into place only once this script has exited 0.
# A stop signal in the middle (bucketfs sends SIGTERM to this script's process group, and ends
# the temporary server after it) makes bucketfs throw that directory away at once; a machine
# lost in the middle leaves it, and the next start removes it before running this again.
# Never a half-made database that later starts would take for a made one, as the
# entrypoint's own first start on the mount did.
#
# The program bucketfs starts afterwards is the image's entrypoint as before: it finds
# PG_VERSION and goes straight to PostgreSQL.
set -Eeo pipefail

# Sourced, the entrypoint defines its functions and runs nothing.
# shellcheck source=/dev/null
source /usr/local/bin/docker-entrypoint.sh

docker_setup_env
if [ -n "$DATABASE_ALREADY_EXISTS" ]; then
	echo "first-start.sh: $PGDATA already holds a database" >&2
	exit 1
fi
if [ -n "$POSTGRES_INITDB_WALDIR" ]; then
	# pg_wal would be a symlink out of the mount: off the bucket, and dangling on any other
	# machine that starts this database.
	echo "first-start.sh: POSTGRES_INITDB_WALDIR is not supported: the WAL must stay on the bucketfs mount" >&2
	exit 1
fi
docker_create_db_directories
docker_verify_minimum_env
# The entrypoint's check that the init scripts can be read, before anything is made.
ls /docker-entrypoint-initdb.d/ /docker-default-initdb.d/ > /dev/null

# Its arguments, `bucketfs run --initdb-arg`s, go to initdb after POSTGRES_INITDB_ARGS.
docker_init_database_dir "$@"
# Not pg_setup_hba_conf: /etc/postgresql/postgresql.conf names its own hba_file, so a line
# appended to the pg_hba.conf in $PGDATA would be read by no server.

# Needed by psql: the temporary server reads /etc/postgresql/pg_hba.conf, whose local
# connections take a SCRAM password.
export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
# The image's configuration, with the data directory and the user name map moved to $PGDATA
# (the configuration names the mountpoint, where no database is yet).
docker_temp_server_start -D /etc/postgresql \
	-c data_directory="$PGDATA" \
	-c ident_file="$PGDATA/pg_ident.conf"
docker_setup_db
docker_process_init_files /docker-default-initdb.d/*
docker_process_init_files /docker-entrypoint-initdb.d/*
docker_temp_server_stop
unset PGPASSWORD

echo
echo 'first-start.sh: PostgreSQL init process complete; bucketfs moves the database into place.'
echo
