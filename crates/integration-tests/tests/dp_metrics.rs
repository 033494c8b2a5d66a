//! kuma-dp's `/stats/prometheus` under Envoy's names and labels, after real HTTP traffic through
//! a client sidecar to a server sidecar on loopback, and the dotted `/stats` beside it.

use std::time::Duration;

use meshzone_integration_tests::scrape::{scrape, value};
use meshzone_integration_tests::{ControlPlane, HttpPair, http_get, wait_for};

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
