//! The Grafana dashboards in `dashboards/` query only what the binaries export: every metric
//! name in every `expr` is in a real scrape of kuma-cp's `/metrics` or kuma-dp's
//! `/stats/prometheus` (after one request, so the per-cluster families exist).

use std::collections::BTreeSet;
use std::path::Path;

use meshzone_integration_tests::scrape::{promql_metric_names, scrape};
use meshzone_integration_tests::{ControlPlane, HttpPair, http_get};

/// Every `expr` of a dashboard's panels (rows included).
fn exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dashboards")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// The names each query reads that `exported` lacks, as `expr → names`.
fn missing(dashboard: &serde_json::Value, exported: &BTreeSet<String>) -> Vec<String> {
    let all = exprs(dashboard);
    assert!(all.len() >= 10, "too few queries found: {all:?}");
    all.iter()
        .filter_map(|e| {
            let absent: Vec<String> = promql_metric_names(e)
                .into_iter()
                .filter(|n| !exported.contains(n))
                .collect();
            (!absent.is_empty()).then(|| format!("{absent:?} in {e}"))
        })
        .collect()
}

#[test]
fn every_metric_a_dashboard_queries_is_exported() {
    let root = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(root.path(), &[("KUMA_STORE_TYPE", "memory")]);
    cp.configure_kumactl();
    let pair = HttpPair::start(&cp, root.path());
    http_get(pair.out).expect("one request through the mesh");

    let (cp_text, _) = scrape(cp.diagnostics_port, "/metrics").expect("cp /metrics");
    let cp_names = meshzone_metrics::exported_names(&cp_text);
    let cp_dashboard = dashboard("mesh-control-plane.json");
    assert_eq!(missing(&cp_dashboard, &cp_names), Vec::<String>::new());

    let mut dp_names = BTreeSet::new();
    for dp in [&pair.client, &pair.server] {
        let (text, _) = scrape(dp.admin_port, "/stats/prometheus").expect("dp /stats/prometheus");
        dp_names.extend(meshzone_metrics::exported_names(&text));
    }
    let dp_dashboard = dashboard("mesh-data-plane.json");
    assert_eq!(missing(&dp_dashboard, &dp_names), Vec::<String>::new());

    // The check can fail: a name nobody exports is reported.
    let bogus = serde_json::json!({"panels": (0..10).map(|_| serde_json::json!({"targets": [{"expr": "sum(rate(xds_requests_received_total[5m]))"}]})).collect::<Vec<_>>()});
    assert_eq!(missing(&bogus, &cp_names).len(), 10);
}
