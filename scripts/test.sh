#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit tests, golden files, and the
# integration tests that start the real binaries on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests run the binaries as processes, so build them first.
cargo build --workspace --bins
cargo test --workspace
