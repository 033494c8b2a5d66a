use super::*;

#[test]
fn handles_show_in_both_forms_and_count_on_across_resolutions() {
    let stats = Stats::default();
    let c = stats.cluster("backend");
    c.upstream_rq_total.inc();
    c.answered(503, std::time::Duration::from_millis(7));
    stats.cluster("backend").upstream_rq_total.inc();
    let h = stats.http("in");
    h.answered(200, std::time::Duration::from_micros(300));
    stats.inc("cluster.backend.upstream_rq_retry");

    let text = stats.text();
    for line in [
        "cluster.backend.upstream_rq_total: 2\n",
        "cluster.backend.upstream_rq_5xx: 1\n",
        "cluster.backend.upstream_rq_retry: 1\n",
        "http.in.downstream_rq_2xx: 1\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }

    let prom = stats.prometheus_with(vec![("cluster.backend.health_check.success".into(), 4)]);
    for line in [
        "# TYPE envoy_cluster_upstream_rq_total counter\n",
        "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 2\n",
        "envoy_cluster_upstream_rq_xx{envoy_cluster_name=\"backend\",envoy_response_code_class=\"5\"} 1\n",
        "# TYPE envoy_cluster_upstream_rq_time histogram\n",
        "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"backend\",le=\"5\"} 0\n",
        "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"backend\",le=\"10\"} 1\n",
        "envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"backend\"} 1\n",
        "envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix=\"in\",envoy_response_code_class=\"2\"} 1\n",
        "envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"0.5\"} 1\n",
        "# TYPE envoy_cluster_upstream_cx_active gauge\n",
        "envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"backend\"} 1\n",
        "envoy_cluster_health_check_success{envoy_cluster_name=\"backend\"} 4\n",
    ] {
        assert!(prom.contains(line), "{line} in {prom}");
    }
    // One `# TYPE` per family even with several series.
    assert_eq!(
        prom.matches("# TYPE envoy_cluster_upstream_rq_xx ").count(),
        1
    );
}

#[test]
fn status_classes() {
    assert_eq!(class(101), Some(0));
    assert_eq!(class(204), Some(1));
    assert_eq!(class(599), Some(4));
    assert_eq!(class(0), None);
    assert_eq!(class(600), None);
}

#[test]
fn stats_of_removed_clusters_and_listeners_are_forgotten() {
    let stats = Stats::default();
    stats.cluster("gone").upstream_rq_total.inc();
    stats.cluster("kept").upstream_rq_total.inc();
    stats
        .listener("outbound:127.0.0.1:1")
        .downstream_cx_total
        .inc();
    stats.inc("cluster.gone.upstream_rq_retry");
    stats.inc("listener.outbound:127.0.0.1:1.rbac.denied");
    stats.inc("control_plane.reconnects");
    stats.retain_configured(["kept"], ["outbound:127.0.0.1:2"]);
    let text = stats.text();
    assert!(text.contains("cluster.kept.upstream_rq_total: 1"), "{text}");
    assert!(text.contains("control_plane.reconnects: 1"), "{text}");
    assert!(!text.contains("gone"), "{text}");
    assert!(!text.contains("127.0.0.1:1"), "{text}");
}
