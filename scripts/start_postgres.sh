#!/usr/bin/env bash
# Start a PostgreSQL server on loopback for the scale-out tests (Debian's packages), and make
# the role they use. Prints the URL to export as FMNIST_TEST_PG. Reuses a running server.
set -euo pipefail
# Everything but the URL goes to stderr: pg_ctl says things like "Removed stale pid file." on stdout.
exec 3>&1 1>&2
ROLE=fmnist PASS=fmnist PORT="${PGPORT:-5432}"
URL="postgresql://$ROLE:$PASS@127.0.0.1:$PORT/postgres"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$*"; else sudo -u postgres sh -c "$*"; fi; }

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "[postgres] installing Debian's postgresql" >&2
  { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } >/dev/null
fi
VERSION="$(ls /usr/lib/postgresql | sort -V | tail -1)"
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$VERSION main"; then
  as_root pg_createcluster "$VERSION" main >/dev/null
fi
if ! pg_lsclusters -h | grep "^$VERSION main" | grep -q online; then
  as_root pg_ctlcluster "$VERSION" main start 3>&-  # the server must not hold the URL pipe open
fi
for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p "$PORT" -q && break; sleep 1; done
as_postgres "psql -p $PORT -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='$ROLE'\"" | grep -q 1 \
  || as_postgres "psql -p $PORT -qc \"CREATE ROLE $ROLE LOGIN PASSWORD '$PASS' CREATEDB\""
echo "$URL" >&3
