#!/bin/sh
# The standby's entrypoint: on its first start, a base backup of the primary
# that keeps following it (streaming replication through its own slot, so the
# primary keeps the WAL it has not received); then PostgreSQL as a hot standby.
# Arguments are passed on to postgres.
set -eu
: "${PRIMARY_HOST:?set PRIMARY_HOST}" "${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT"; do sleep 1; done
    PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U replicator \
        -D "$PGDATA" --write-recovery-conf --wal-method=stream \
        --create-slot --slot="${REPLICATION_SLOT:-standby1}" --checkpoint=fast
    chmod 700 "$PGDATA"
fi
exec postgres -D "$PGDATA" "$@"
