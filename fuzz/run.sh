#!/usr/bin/env bash
# Runs each fuzz target (all, or those named after SECONDS) for SECONDS (default 60) with
# cargo-fuzz and libFuzzer on the nightly toolchain, starting from the committed corpus
# (fuzz/corpus/<target>, which it never writes: new inputs go to a scratch directory), and
# prints a table of executions, speed and findings. Each target's row in bench/results/fuzz.json
# is replaced (with its own date); rows of targets not run are kept.
# FUZZ_RUNS=N stops a target after N executions (whichever of N and SECONDS comes first), so
# `FUZZ_RUNS=10000000 fuzz/run.sh 7200 jwt` runs jwt to 10M executions, up to two hours.
# A finding (crash, hang, OOM) is saved under fuzz/artifacts/<target>/: fix it, then copy the
# input into fuzz/corpus/<target>/ so the stable regression test (crates/fuzz-targets) keeps it.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz/run.sh: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O
rows=()
printf '%-20s %12s %10s %9s\n' target execs exec/s findings
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  log=$(mktemp)
  mkdir -p "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  status=0
  cargo +nightly fuzz run -O "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$secs" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  speed=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
  found=$(( $(find "artifacts/$t" -type f | wc -l) - before ))
  printf '%-20s %12s %10s %9s\n' "$t" "${execs:-?}" "${speed:-?}" "$found"
  if [ "$status" -ne 0 ] && [ "$found" -eq 0 ]; then
    echo "  $t: cargo fuzz exited with $status; its log: $log" >&2
  fi
  secs_used=$(awk '/Done [0-9]+ runs in/ {for (i=1;i<=NF;i++) if ($i=="in") t=$(i+1)} END {print t}' "$log")
  rows+=("{\"target\":\"$t\",\"seconds\":${secs_used:-$secs},\"execs\":${execs:-0},\"execs_per_sec\":${speed:-0},\"findings\":$found,\"exit\":$status,\"date\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}")
  rm -rf "$scratch"
done
mkdir -p ../bench/results
joined=$(IFS=,; echo "${rows[*]}")
# Merge under a lock, so two runners started side by side (one per core) keep each other's rows.
exec 9>>../bench/results/.fuzz.json.lock
flock 9
python3 - "$joined" "$(nproc)" <<'PY'
import json, sys
path = "../bench/results/fuzz.json"
new = json.loads("[" + sys.argv[1] + "]")
try:
    with open(path) as f:
        old = json.load(f)
except (FileNotFoundError, json.JSONDecodeError):
    old = {"rows": []}
ran = {row["target"] for row in new}
rows = [row for row in old.get("rows", []) if row["target"] not in ran] + new
rows.sort(key=lambda row: row["target"])
doc = {"machine": f"{sys.argv[2]} cores", "rows": rows}
with open(path, "w") as f:
    json.dump(doc, f, indent=4)
    f.write("\n")
PY
echo "updated bench/results/fuzz.json"
