//! Zone cut: runs the zone-cut test (`crates/integration-tests/tests/zone_cut.rs`: zone-2's
//! kuma-dp and Envoy clients under steady load while zone-2 is cut from zone-1's ingress, first
//! without resilience policies, then with health checks, circuit breaker and load balancing, then
//! with retries too), prints a table scenario × client × failed × time to re-route × time to
//! recover, and writes `bench/results/zone_cut.json`. Then runs the egress variant
//! (`tests/egress_zone_cut.rs`: one of two remote zones behind zone-2's egress is cut, Kuma
//! #8297) and writes `bench/results/egress_zone_cut.json`. Needs root (network namespaces) and
//! iptables. The tests are built and run by cargo in the debug profile, like CI runs them.

use std::path::Path;

use meshzone_bench::{machine, run_reporting_test};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let started = chrono::Utc::now();
    let (test, passed) = run_reporting_test("zone_cut", "MESHZONE_ZONE_CUT_REPORT", &[])?;
    let rows = test["rows"].as_array().cloned().unwrap_or_default();
    println!(
        "zone cut {} — {} ms cut, {} req/s per client, health-check interval {} ms, machine: {}",
        started.format("%Y-%m-%d"),
        test["cut_ms"],
        test["rate_per_client"],
        test["health_interval_ms"],
        machine()
    );
    println!(
        "{:<56} {:<8} {:>8} {:>7} {:>11} {:>11}  promise",
        "scenario", "client", "requests", "failed", "reroute ms", "recover ms"
    );
    for r in &rows {
        let recover = r["recover_ms"]
            .as_u64()
            .map_or("never".to_string(), |v| v.to_string());
        let promise = match r["max_failed"].as_u64() {
            None => "reported".to_string(),
            Some(max) if r["failed"].as_u64().unwrap_or(u64::MAX) <= max => {
                format!("≤ {max} failed: held")
            }
            Some(max) => format!("≤ {max} failed: BROKEN"),
        };
        println!(
            "{:<56} {:<8} {:>8} {:>7} {:>11} {:>11}  {promise}",
            r["scenario"].as_str().unwrap_or(""),
            r["client"].as_str().unwrap_or(""),
            r["requests"].as_u64().unwrap_or(0),
            r["failed"].as_u64().unwrap_or(0),
            r["reroute_ms"].as_u64().unwrap_or(0),
            recover,
        );
    }
    let results = json!({
        "date": started.to_rfc3339(),
        "machine": machine(),
        "test_passed": passed,
        "rate_per_client": test["rate_per_client"],
        "cut_ms": test["cut_ms"],
        "health_interval_ms": test["health_interval_ms"],
        "rows": rows,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/zone_cut.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!("wrote {}", path.display());
    egress_cut()
}

/// The egress variant: failures, and whether zone-3 kept the egress's share during the cut.
fn egress_cut() -> anyhow::Result<()> {
    let started = chrono::Utc::now();
    let (test, passed) = run_reporting_test("egress_zone_cut", "MESHZONE_EGRESS_CUT_REPORT", &[])?;
    let rows = test["rows"].as_array().cloned().unwrap_or_default();
    println!(
        "egress zone cut {} — zone-1 cut from zone-2's egress for {} ms, {} req/s per client, machine: {}",
        started.format("%Y-%m-%d"),
        test["cut_ms"],
        test["rate_per_client"],
        machine()
    );
    println!(
        "{:<56} {:<8} {:>7} {:>13} {:>13} {:>11}",
        "scenario", "client", "failed", "egress before", "zone-3 during", "recover ms"
    );
    for r in &rows {
        println!(
            "{:<56} {:<8} {:>7} {:>13.2} {:>13.2} {:>11}",
            r["scenario"].as_str().unwrap_or(""),
            r["client"].as_str().unwrap_or(""),
            r["failed"].as_u64().unwrap_or(0),
            r["egress_share_before"].as_f64().unwrap_or(0.0),
            r["zone_3_share_during"].as_f64().unwrap_or(0.0),
            r["recover_ms"]
                .as_u64()
                .map_or("never".to_string(), |v| v.to_string()),
        );
    }
    let results = json!({
        "date": started.to_rfc3339(),
        "machine": machine(),
        "test_passed": passed,
        "rate_per_client": test["rate_per_client"],
        "cut_ms": test["cut_ms"],
        "rows": rows,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/egress_zone_cut.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
