use super::*;

#[test]
fn counters_keep_their_exact_name_without_total() {
    let r = Registry::new();
    let f = r.counter_family(
        "xds_requests_received",
        "requests",
        &["type_url", "confirmation"],
    );
    f.with(&["type.googleapis.com/envoy.config.cluster.v3.Cluster", "ACK"])
        .add(3);
    assert_eq!(
        r.encode(),
        "# HELP xds_requests_received requests\n\
         # TYPE xds_requests_received counter\n\
         xds_requests_received{type_url=\"type.googleapis.com/envoy.config.cluster.v3.Cluster\",confirmation=\"ACK\"} 3\n"
    );
}

#[test]
fn histograms_are_cumulative_with_sum_and_count() {
    let r = Registry::new();
    let h = r.histogram("store", "store ops", &[0.1, 1.0]);
    for v in [0.05, 0.1, 0.5, 7.0] {
        h.observe(v);
    }
    let text = r.encode();
    let lines: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(
        lines,
        [
            "store_bucket{le=\"0.1\"} 2",
            "store_bucket{le=\"1\"} 3",
            "store_bucket{le=\"+Inf\"} 4",
            "store_sum 7.65",
            "store_count 4",
        ]
    );
}

#[test]
fn histogram_labels_come_before_le() {
    let r = Registry::new();
    let f = r.histogram_family("h", "x", &["cluster"], &[1.0]);
    f.with(&["a"]).observe(2.0);
    assert!(r.encode().contains("h_bucket{cluster=\"a\",le=\"1\"} 0\n"));
    assert!(
        r.encode()
            .contains("h_bucket{cluster=\"a\",le=\"+Inf\"} 1\n")
    );
}

#[test]
fn bucket_bounds_are_inclusive() {
    let h = Histogram::new(&[1.0, 2.0]);
    h.observe(1.0);
    h.observe(2.0);
    h.observe(2.0001);
    let s = h.snapshot();
    assert_eq!(
        s.buckets,
        vec![(1.0, 1), (2.0, 2), (f64::INFINITY, 3)],
        "{s:?}"
    );
    assert_eq!(s.count, 3);
}

#[test]
fn label_values_are_escaped() {
    let r = Registry::new();
    r.gauge_family("g", "x", &["v"])
        .with(&["a\"b\\c\nd"])
        .set(-2);
    assert!(
        r.encode().contains("g{v=\"a\\\"b\\\\c\\nd\"} -2\n"),
        "{}",
        r.encode()
    );
}

#[test]
fn a_handle_is_shared_with_the_family() {
    let r = Registry::new();
    let f = r.counter_family("c", "x", &["k"]);
    let a = f.with(&["1"]);
    let b = f.with(&["1"]);
    a.inc();
    b.inc();
    assert_eq!(f.with(&["1"]).get(), 2);
    f.remove(&["1"]);
    assert_eq!(f.with(&["1"]).get(), 0, "a removed child starts again");
}

#[test]
fn info_gauges_carry_constant_labels() {
    let r = Registry::new();
    r.info_gauge(
        "cp_info",
        "info",
        &[("version", "1.2"), ("instance_id", "x")],
    )
    .set(1);
    assert!(
        r.encode()
            .contains("cp_info{version=\"1.2\",instance_id=\"x\"} 1\n")
    );
}

#[test]
fn empty_families_still_list_their_names() {
    let r = Registry::new();
    r.counter_family("xds_generation_errors", "x", &[]);
    r.histogram_family("xds_delivery", "x", &["a"], MILLISECONDS_BUCKETS);
    r.gauge_family("leader", "x", &[]);
    let names = exported_names(&r.encode());
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "leader",
            "xds_delivery_bucket",
            "xds_delivery_count",
            "xds_delivery_sum",
            "xds_generation_errors",
        ]
    );
}

#[test]
fn registering_a_name_again_replaces_it() {
    let r = Registry::new();
    r.counter("c", "old").inc();
    r.counter("c", "new");
    assert_eq!(r.encode(), "# HELP c new\n# TYPE c counter\nc 0\n");
}

#[test]
fn floats_print_as_prometheus_does() {
    assert_eq!(encode::float(0.005), "0.005");
    assert_eq!(encode::float(1.0), "1");
    assert_eq!(encode::float(300000.0), "300000");
    assert_eq!(encode::float(f64::INFINITY), "+Inf");
}
