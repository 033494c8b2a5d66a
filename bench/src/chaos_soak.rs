//! Chaos soak: runs the chaos test (`crates/integration-tests/tests/chaos.rs`: every failure mode
//! of the seed under steady load, hosts in network namespaces) with long fault windows, then
//! prints a table fault × requests × failed × convergence and writes
//! `bench/results/chaos.json`. Needs root (network namespaces) and iptables.
//!
//! `chaos-soak [--window-secs N]` (default 45). The test is built and run by cargo in the debug
//! profile, like CI runs it; only the window differs. A row whose promise did not hold is
//! marked in the table and listed with its reasons; the soak reports, it does not assert.

use std::path::Path;

use meshzone_bench::{machine, numeric_flag, run_reporting_test};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let window = numeric_flag("--window-secs", 45);
    let started = chrono::Utc::now();
    let (test, passed) = run_reporting_test(
        "chaos",
        "MESHZONE_CHAOS_REPORT",
        &[("MESHZONE_CHAOS_WINDOW_SECS", window.to_string())],
    )?;
    let rows = test["rows"].as_array().cloned().unwrap_or_default();
    println!(
        "chaos soak {} — {window}s windows, {} req/s per client, machine: {}",
        started.format("%Y-%m-%d"),
        test["rate_per_client"],
        machine()
    );
    println!(
        "{:<56} {:>8} {:>7}  {:<5} convergence (ms)",
        "fault", "requests", "failed", "held"
    );
    for r in &rows {
        let convergence: Vec<String> = r["convergence_ms"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "{:<56} {:>8} {:>7}  {:<5} {}",
            r["fault"].as_str().unwrap_or(""),
            r["requests"].as_u64().unwrap_or(0),
            r["failed"].as_u64().unwrap_or(0),
            if r["held"] == true { "yes" } else { "NO" },
            convergence.join(", ")
        );
    }
    for r in rows.iter().filter(|r| r["held"] != true) {
        println!("\n{} did not hold:", r["fault"].as_str().unwrap_or(""));
        for b in r["broken"].as_array().into_iter().flatten() {
            println!("  - {}", b.as_str().unwrap_or(""));
        }
    }
    let results = json!({
        "date": started.to_rfc3339(),
        "machine": machine(),
        "window_secs": window,
        "test_passed": passed,
        "rate_per_client": test["rate_per_client"],
        "timeout_ms": test["timeout_ms"],
        "rows": rows,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/chaos.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
