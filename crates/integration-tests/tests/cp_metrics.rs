//! kuma-cp's `/metrics` on the diagnostics port, scraped over HTTP from a real global and zone
//! on loopback: Kuma's exact names (no `_total` added, classic text format) and counters that
//! move with real KDS, xDS, store and API activity.

use std::time::Duration;

use meshzone_integration_tests::scrape::{scrape, value};
use meshzone_integration_tests::{
    ControlPlane, apply, free_port, host_dirs, line_of, start_global, start_loopback_sidecar,
    stderr, wait_for, zone,
};

fn metrics(cp: &ControlPlane) -> String {
    let (body, content_type) = scrape(cp.diagnostics_port, "/metrics").expect("scrape /metrics");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    body
}

/// Polls `/metrics` until `check` holds; returns that scrape.
fn metrics_when(cp: &ControlPlane, what: &str, check: impl Fn(&str) -> bool) -> String {
    wait_for(what, Duration::from_secs(30), || {
        let m = metrics(cp);
        check(&m).then_some(m)
    })
}

fn at_least(m: &str, name: &str, labels: &[(&str, &str)], min: f64) -> bool {
    value(m, name, labels).is_some_and(|v| v >= min)
}

#[test]
fn global_and_zone_export_kumas_metrics_and_they_follow_real_activity() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs = host_dirs(root.path(), &["global", "zone-a"]);
    let kds_port = free_port();
    let global = start_global(&dirs[0], kds_port, &[]);
    let zone_a = zone(&dirs[1], "zone-a", &global, kds_port);
    wait_for("zone online", Duration::from_secs(30), || {
        line_of(&global.kumactl_ok(&["inspect", "zones"]), "zone-a")
            .contains("Online")
            .then_some(())
    });

    // Global: the zone's KDS stream, its generation and its ACKs.
    let g = metrics_when(&global, "global's KDS metrics", |m| {
        value(m, "kds_zone_active_connections", &[("zone_name", "zone-a")]) == Some(1.0)
            && at_least(
                m,
                "kds_delta_requests_received",
                &[("confirmation", "ACK")],
                1.0,
            )
    });
    for name in [
        "cp_info",
        "leader",
        "kds_delta_streams_active",
        "kds_delta_responses_sent",
        "kds_delta_generation_count",
        "kds_delta_generation_bucket",
        "kds_delta_delivery_count",
        "kds_delta_generation_errors",
        "kds_nack_total",
        "xds_requests_received",
        "xds_generation_errors",
        "store_count",
        "resources_count",
        "api_server_http_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(
            g.contains(&format!("\n{name}")) || g.contains(&format!("# TYPE {name} ")),
            "{name} missing from global's /metrics:\n{g}"
        );
    }
    for absent in [
        "xds_requests_received_total",
        "kds_delta_responses_sent_total",
        "# EOF",
    ] {
        assert!(!g.contains(absent), "{absent} in global's /metrics");
    }
    assert_eq!(value(&g, "leader", &[]), Some(1.0));
    assert_eq!(
        value(
            &g,
            "cp_info",
            &[("mode", "global"), ("product", "meshzone")]
        ),
        Some(1.0),
        "{g}"
    );
    assert!(at_least(
        &g,
        "kds_delta_generation_count",
        &[
            ("reason", "resync"),
            ("result", "changed"),
            ("zone_name", "zone-a")
        ],
        1.0
    ));
    assert_eq!(
        value(&g, "resources_count", &[("resource_type", "Zone")]),
        Some(1.0)
    );

    // A Mesh applied on global: a store create, an API request, a KDS batch to the zone.
    let sent_before = value(&g, "kds_delta_responses_sent", &[("type_url", "Mesh")]).unwrap_or(0.0);
    let o = apply(&global, &dirs[0], "mesh.yaml", "type: Mesh\nname: demo\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let g = metrics_when(&global, "the Mesh's batch counted", |m| {
        at_least(
            m,
            "kds_delta_responses_sent",
            &[("type_url", "Mesh")],
            sent_before + 1.0,
        )
    });
    assert!(at_least(
        &g,
        "store_count",
        &[("operation", "create"), ("resource_type", "Mesh")],
        1.0
    ));
    assert!(
        at_least(
            &g,
            "api_server_http_request_duration_seconds_count",
            &[("handler", "/meshes/{name}"), ("method", "PUT")],
            1.0
        ),
        "{g}"
    );
    assert!(at_least(
        &g,
        "kds_delta_generation_count",
        &[
            ("reason", "event"),
            ("result", "changed"),
            ("zone_name", "zone-a")
        ],
        1.0
    ));

    // Zone: its own stream to global, then a proxy's xDS stream.
    let z = metrics_when(&zone_a, "the zone's KDS metrics", |m| {
        at_least(m, "kds_delta_delivery_count", &[], 1.0)
            && at_least(m, "kds_delta_streams_active", &[], 1.0)
    });
    assert_eq!(
        value(&z, "cp_info", &[("mode", "zone"), ("zone", "zone-a")]),
        Some(1.0)
    );
    assert_eq!(value(&z, "xds_streams_active", &[]), Some(0.0));
    let networking = format!(
        "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: web\n",
        free_port(),
        free_port()
    );
    let dp = start_loopback_sidecar(&zone_a, &dirs[1], "web-1", &networking);
    let cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    let z = metrics_when(&zone_a, "the proxy's xDS metrics", |m| {
        value(m, "xds_streams_active", &[]) == Some(1.0)
            && at_least(
                m,
                "xds_requests_received",
                &[("type_url", cluster), ("confirmation", "ACK")],
                1.0,
            )
    });
    assert!(at_least(
        &z,
        "xds_responses_sent",
        &[("type_url", cluster)],
        1.0
    ));
    assert!(at_least(&z, "xds_delivery_count", &[], 1.0));
    assert!(at_least(
        &z,
        "xds_generation_count",
        &[("proxy_type", "dataplane"), ("result", "generated")],
        1.0
    ));
    assert_eq!(
        value(&z, "xds_requests_received", &[("confirmation", "NACK")]),
        None,
        "kuma-dp accepted everything"
    );
    assert_eq!(
        value(&z, "resources_count", &[("resource_type", "Dataplane")]),
        Some(1.0)
    );

    // The proxy goes away: the stream gauge comes back down.
    drop(dp);
    metrics_when(&zone_a, "the stream closed", |m| {
        value(m, "xds_streams_active", &[]) == Some(0.0)
    });
}
