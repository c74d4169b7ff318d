#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1:55432 for the sweep-storage tests; source this file.
# Exports GEMKR_TEST_POSTGRES_URL and stops the cluster when the calling shell exits.
PGBIN=$(pg_config --bindir 2>/dev/null)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
GEMKR_PGDIR=$(mktemp -d)
chown postgres:postgres "$GEMKR_PGDIR"
su postgres -c "$PGBIN/initdb -D $GEMKR_PGDIR/data -A trust -U postgres" >/dev/null
su postgres -c "$PGBIN/pg_ctl -D $GEMKR_PGDIR/data -o '-p 55432 -k $GEMKR_PGDIR -c listen_addresses=127.0.0.1' -l $GEMKR_PGDIR/log -w start" >/dev/null
trap 'su postgres -c "$PGBIN/pg_ctl -D $GEMKR_PGDIR/data -m fast stop" >/dev/null 2>&1; rm -rf "$GEMKR_PGDIR"' EXIT
psql -q -h 127.0.0.1 -p 55432 -U postgres -c 'create database optuna;'
export GEMKR_TEST_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:55432/optuna
# how the outage test stops and restarts this cluster
export GEMKR_TEST_POSTGRES_CTL="su postgres -c \"$PGBIN/pg_ctl -D $GEMKR_PGDIR/data -o '-p 55432 -k $GEMKR_PGDIR -c listen_addresses=127.0.0.1' -l $GEMKR_PGDIR/log -w %s\""
