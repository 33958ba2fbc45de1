#!/usr/bin/env bash
# Best effort: a local PostgreSQL for tests/services/test_postgres.py. Prints the URL to use on
# stdout; prints nothing (and the PostgreSQL tests skip) when it cannot be set up.
set -uo pipefail
log() { echo "postgres setup: $*" >&2; }
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then log "not root, cannot install PostgreSQL"; exit 0; fi
  log "installing PostgreSQL from Debian's packages"
  timeout 300 apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq postgresql >/dev/null 2>&1 \
    || { log "apt-get install postgresql failed"; exit 0; }
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$version main"; then
  pg_createcluster "$version" main >/dev/null 2>&1 || { log "cannot create a cluster"; exit 0; }
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 1 30); do
  su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='courier'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE USER courier PASSWORD 'courier'\"" >/dev/null
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='courier_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O courier courier_test"
echo "postgresql+psycopg://courier:courier@127.0.0.1/courier_test"
