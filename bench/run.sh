#!/usr/bin/env bash
# Builds in release and runs every benchmark. Prints tables; writes bench/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p kuma-cp -p meshzone-bench
./target/release/store-api-bench "$@"
