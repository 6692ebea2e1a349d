#!/usr/bin/env bash
# Run a command with a throw-away PostgreSQL 15 on loopback (for the tests that use it).
#   scripts/postgres.sh COMMAND...   → COMMAND runs with WARDGATE_TEST_PG_DSN set; the server is
#                                       stopped and its folder removed afterwards.
# Installs Debian's postgresql-15 if no PostgreSQL server binaries are present (root only).
set -euo pipefail

find_bin() {
  for dir in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && { echo "$dir"; return 0; }
  done
  return 1
}

if ! PGBIN="$(find_bin)"; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing postgresql-15 from Debian ..." >&2
    (apt-get install -y -q postgresql-15 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql-15 >/dev/null; })
    PGBIN="$(find_bin)"
  else
    echo "error: PostgreSQL 15 server binaries not found; install postgresql-15" >&2
    exit 1
  fi
fi

data="$(mktemp -d /tmp/wardgate-pg.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
as_pg=()
if [[ "$(id -u)" == 0 ]]; then
  # PostgreSQL refuses to run as root; Debian's package provides the postgres user.
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
  chown postgres "$data"
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$data/db" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT

"${as_pg[@]}" "$PGBIN/initdb" -D "$data/db" -U wardgate --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$PGBIN/pg_ctl" -D "$data/db" -l "$data/log" -w -t 60 \
  -o "-h 127.0.0.1 -p $port -k $data -c fsync=off -c max_connections=200" start >/dev/null
"${as_pg[@]}" "$PGBIN/createdb" -h 127.0.0.1 -p "$port" -U wardgate wardgate_test

export WARDGATE_TEST_PG_DSN="postgresql://wardgate@127.0.0.1:$port/wardgate_test"
"$@"
