//! kuma-dp's `/stats/prometheus` under Envoy's names and labels, after real HTTP traffic through
//! a client sidecar to a server sidecar on loopback, and the dotted `/stats` beside it.

use std::collections::BTreeSet;
use std::time::Duration;

use meshzone_integration_tests::scrape::{scrape, series, value};
use meshzone_integration_tests::{
    ControlPlane, Envoy, HttpPair, envoy_binary, free_port, http_get, wait_for,
};

const REQUESTS: usize = 12;

#[test]
fn stats_prometheus_pins_envoys_names_after_real_traffic() {
    let root = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(root.path(), &[("KUMA_STORE_TYPE", "memory")]);
    cp.configure_kumactl();
    let HttpPair {
        app,
        server,
        client,
        out,
    } = HttpPair::start(&cp, root.path());
    for i in 0..REQUESTS {
        let body = http_get(out).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(body.trim(), "backend-app");
    }
    let n = (REQUESTS + 1) as f64;
    assert_eq!(
        app.served(),
        REQUESTS + 1,
        "every request reached the app once"
    );

    let (prom, content_type) =
        scrape(client.admin_port, "/stats/prometheus").expect("client /stats/prometheus");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let listener = format!("outbound:127.0.0.1:{out}");
    let cluster = [("envoy_cluster_name", "backend")];
    let ok_class = ("envoy_response_code_class", "2");
    assert_eq!(
        value(&prom, "envoy_cluster_upstream_rq_total", &cluster),
        Some(n),
        "{prom}"
    );
    assert_eq!(
        value(
            &prom,
            "envoy_cluster_upstream_rq_xx",
            &[cluster[0], ok_class]
        ),
        Some(n)
    );
    assert_eq!(
        value(&prom, "envoy_cluster_upstream_rq_time_count", &cluster),
        Some(n)
    );
    assert_eq!(
        value(
            &prom,
            "envoy_cluster_upstream_rq_time_bucket",
            &[cluster[0], ("le", "+Inf")]
        ),
        Some(n)
    );
    // Envoy's bucket bounds, from 0.5 ms to an hour.
    for le in ["0.5", "1", "5", "10", "25", "1000", "3600000"] {
        assert!(
            value(
                &prom,
                "envoy_cluster_upstream_rq_time_bucket",
                &[cluster[0], ("le", le)]
            )
            .is_some(),
            "bucket le={le}: {prom}"
        );
    }
    // The pooled upstream connections of the HTTP path are counted too.
    let at_least_one = |name: &str| value(&prom, name, &cluster).is_some_and(|v| v >= 1.0);
    for name in [
        "envoy_cluster_upstream_cx_total",
        "envoy_cluster_upstream_cx_connect_ms_count",
        "envoy_cluster_upstream_cx_tx_bytes_total",
        "envoy_cluster_upstream_cx_rx_bytes_total",
    ] {
        assert!(at_least_one(name), "{name}: {prom}");
    }
    assert!(
        value(&prom, "envoy_cluster_upstream_cx_active", &cluster).is_some_and(|v| v >= 0.0),
        "{prom}"
    );
    let hcm = [("envoy_http_conn_manager_prefix", listener.as_str())];
    assert_eq!(
        value(&prom, "envoy_http_downstream_rq_total", &hcm),
        Some(n)
    );
    assert_eq!(
        value(&prom, "envoy_http_downstream_rq_xx", &[hcm[0], ok_class]),
        Some(n)
    );
    assert_eq!(
        value(&prom, "envoy_http_downstream_rq_time_count", &hcm),
        Some(n)
    );
    let on_listener = [("envoy_listener_address", listener.as_str())];
    assert_eq!(
        value(&prom, "envoy_listener_downstream_cx_total", &on_listener),
        Some(n)
    );
    for line in [
        "# TYPE envoy_cluster_upstream_rq_total counter\n",
        "# TYPE envoy_cluster_upstream_rq_xx counter\n",
        "# TYPE envoy_cluster_upstream_rq_time histogram\n",
        "# TYPE envoy_cluster_upstream_cx_active gauge\n",
        "# TYPE envoy_listener_downstream_cx_active gauge\n",
        "# TYPE envoy_http_downstream_rq_xx counter\n",
    ] {
        assert!(prom.contains(line), "{line} missing: {prom}");
    }
    assert!(!prom.contains("envoy_cluster_upstream_rq_xx_total"));
    // Proxy health, as Envoy names it.
    assert_eq!(value(&prom, "envoy_server_live", &[]), Some(1.0));
    assert_eq!(
        value(&prom, "envoy_control_plane_connected_state", &[]),
        Some(1.0)
    );
    for line in [
        "# TYPE envoy_server_live gauge\n",
        "# TYPE envoy_server_uptime gauge\n",
        "# TYPE envoy_control_plane_connected_state gauge\n",
    ] {
        assert!(prom.contains(line), "{line} missing: {prom}");
    }

    // The server sidecar answered every request on its inbound.
    let server_prom = wait_for("the server's counts", Duration::from_secs(10), || {
        let (p, _) = scrape(server.admin_port, "/stats/prometheus").ok()?;
        (value(&p, "envoy_http_downstream_rq_xx", &[ok_class]) == Some(n)).then_some(p)
    });
    assert!(value(&server_prom, "envoy_http_downstream_rq_time_count", &[]) == Some(n));

    // The dotted form keeps Envoy's names too.
    let stats = client.admin("/stats").unwrap_or_default();
    for line in [
        format!("cluster.backend.upstream_rq_total: {}", REQUESTS + 1),
        format!("cluster.backend.upstream_rq_2xx: {}", REQUESTS + 1),
        format!("http.{listener}.downstream_rq_2xx: {}", REQUESTS + 1),
        format!("listener.{listener}.downstream_cx_total: {}", REQUESTS + 1),
    ] {
        assert!(
            stats.contains(&format!("{line}\n")),
            "{line} missing: {stats}"
        );
    }
}

/// Label keys of each series named `name`, and the `le` bounds of a histogram's buckets.
fn shape(text: &str, name: &str) -> (BTreeSet<Vec<String>>, BTreeSet<String>) {
    let mut keys = BTreeSet::new();
    let mut bounds = BTreeSet::new();
    for (n, labels, _) in series(text) {
        if n == name {
            // Order does not matter to Prometheus (Envoy puts the response class first).
            let mut k: Vec<String> = labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, _)| k.clone())
                .collect();
            k.sort();
            keys.insert(k);
            bounds.extend(
                labels
                    .into_iter()
                    .filter(|(k, _)| k == "le")
                    .map(|(_, v)| v),
            );
        }
    }
    (keys, bounds)
}

#[test]
fn kuma_dp_and_envoy_export_the_same_names_labels_and_buckets() {
    envoy_binary();
    let root = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(root.path(), &[("KUMA_STORE_TYPE", "memory")]);
    cp.configure_kumactl();
    let pair = HttpPair::start(&cp, root.path());
    let envoy_out = free_port();
    let dataplane = serde_json::json!({
        "type": "Dataplane", "mesh": "default", "name": "envoy-web",
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{ "port": free_port(), "servicePort": free_port(), "tags": { "kuma.io/service": "envoy-web" } }],
            "outbound": [{ "port": envoy_out, "tags": { "kuma.io/service": "backend" } }]
        }
    });
    let token = cp.kumactl_ok(&["generate", "dataplane-token", "--name", "envoy-web"]);
    let mut envoy = Envoy::start(&cp, root.path(), "envoy-web", &dataplane, token.trim());
    envoy.wait_ready();
    wait_for("Envoy's outbound answers", Duration::from_secs(30), || {
        http_get(envoy_out).ok()
    });
    for port in [envoy_out, pair.out] {
        for i in 0..5 {
            http_get(port).unwrap_or_else(|e| panic!("request {i} via {port}: {e}"));
        }
    }
    let (ours, _) = scrape(pair.client.admin_port, "/stats/prometheus").expect("kuma-dp");
    let (theirs, _) = scrape(envoy.admin_port, "/stats/prometheus").expect("Envoy");
    for name in [
        "envoy_cluster_upstream_rq_total",
        "envoy_cluster_upstream_rq_xx",
        "envoy_cluster_upstream_rq_time_bucket",
        "envoy_cluster_upstream_rq_time_sum",
        "envoy_cluster_upstream_rq_time_count",
        "envoy_cluster_upstream_cx_total",
        "envoy_cluster_upstream_cx_active",
        "envoy_cluster_upstream_cx_connect_fail",
        "envoy_cluster_upstream_cx_connect_ms_bucket",
        "envoy_cluster_upstream_cx_tx_bytes_total",
        "envoy_cluster_upstream_cx_rx_bytes_total",
        "envoy_http_downstream_rq_total",
        "envoy_http_downstream_rq_xx",
        "envoy_http_downstream_rq_time_bucket",
        "envoy_listener_downstream_cx_total",
        "envoy_listener_downstream_cx_active",
        "envoy_server_live",
        "envoy_server_uptime",
        "envoy_control_plane_connected_state",
    ] {
        let (our_keys, our_bounds) = shape(&ours, name);
        let (their_keys, their_bounds) = shape(&theirs, name);
        assert!(!their_keys.is_empty(), "Envoy has no {name}");
        assert!(!our_keys.is_empty(), "kuma-dp has no {name}");
        assert!(
            our_keys.is_subset(&their_keys),
            "{name}: kuma-dp labels {our_keys:?}, Envoy's {their_keys:?}"
        );
        assert_eq!(our_bounds, their_bounds, "{name}: bucket bounds");
    }
    // The same cluster name for the same service, from the same control plane.
    let cluster = [("envoy_cluster_name", "backend")];
    assert!(value(&theirs, "envoy_cluster_upstream_rq_total", &cluster).is_some_and(|v| v >= 5.0));
    assert!(value(&ours, "envoy_cluster_upstream_rq_total", &cluster).is_some_and(|v| v >= 5.0));
    // The same kinds.
    let kinds = |t: &str| {
        meshzone_metrics::parse_type_lines(t)
            .into_iter()
            .filter(|(n, _)| {
                n.starts_with("envoy_cluster_upstream_")
                    || n.starts_with("envoy_http_downstream_rq")
                    || n.starts_with("envoy_server_")
                    || n.starts_with("envoy_control_plane_connected_state")
            })
            .collect::<BTreeSet<_>>()
    };
    let (our_kinds, their_kinds) = (kinds(&ours), kinds(&theirs));
    let differ: Vec<_> = our_kinds.difference(&their_kinds).collect();
    assert!(differ.is_empty(), "kinds Envoy does not have: {differ:?}");
}
