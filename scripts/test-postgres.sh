#!/usr/bin/env bash
# Starts Debian's PostgreSQL with a test user and database for the Postgres store tests, and
# prints the URL they read from MESHZONE_TEST_POSTGRES_URL. Idempotent: safe to run again.
# Installs the server with apt when it is missing (needs root).
set -euo pipefail
user=meshzone_test
password=meshzone_test
db=meshzone_test
if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q postgresql >&2
fi
read -r version cluster port status _ < <(pg_lsclusters -h | head -n 1)
if [ "$status" != online ]; then
  pg_ctlcluster "$version" "$cluster" start >&2
fi
psql_admin() { su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -qtA $*"; }
# Wait for the server to accept connections (bounded).
for _ in $(seq 1 50); do
  psql_admin "-c 'SELECT 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$user'\"")" != 1 ]; then
  psql_admin "-c \"CREATE ROLE $user LOGIN CREATEDB PASSWORD '$password'\"" >&2
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$db'\"")" != 1 ]; then
  psql_admin "-c \"CREATE DATABASE $db OWNER $user\"" >&2
fi
# Databases left by interrupted test runs (each test makes its own, named meshzone_t_*).
for stale in $(psql_admin "-c \"SELECT datname FROM pg_database WHERE datname LIKE 'meshzone\\_t\\_%'\""); do
  psql_admin "-c 'DROP DATABASE IF EXISTS \"$stale\" WITH (FORCE)'" >&2
done
echo "postgres://$user:$password@127.0.0.1:$port/$db"
