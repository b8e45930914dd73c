#!/bin/sh
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  initdb -U "$POSTGRES_USER" --pwfile=/tmp/pwfile --auth=scram-sha-256 --encoding=UTF8 \
    --locale=C.UTF-8 -D "$PGDATA" >/dev/null
  rm /tmp/pwfile
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/tmp -p ${PGPORT:-5432}" -w start >/dev/null
  PGPASSWORD="$POSTGRES_PASSWORD" createdb -h /tmp -p "${PGPORT:-5432}" -U "$POSTGRES_USER" "$POSTGRES_DB"
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -p "${PGPORT:-5432}"
