//! The pure core of active checking: thresholds, Envoy's interval choice, jitter bounds,
//! payload matching, status verdicts and the gRPC health messages.

use std::time::Duration;

use meshzone_xds::decode::health_checks::{HttpCheckPlan, TcpCheckPlan};
use meshzone_xds::decode::routes::{HeaderAdd, HeaderAppend, HeaderModPlan};
use meshzone_xds::decode::{CheckerPlan, HealthCheckPlan};

use super::probe::{
    grpc_request_frame, grpc_response_status, http_request, payload_matches, status_verdict,
};
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn plan(unhealthy: u32, healthy: u32) -> HealthCheckPlan {
    HealthCheckPlan {
        timeout: ms(1000),
        interval: ms(100),
        interval_jitter: Duration::ZERO,
        interval_jitter_percent: 0,
        initial_jitter: Duration::ZERO,
        no_traffic_interval: ms(60_000),
        no_traffic_healthy_interval: None,
        unhealthy_interval: None,
        unhealthy_edge_interval: None,
        healthy_edge_interval: None,
        unhealthy_threshold: unhealthy,
        healthy_threshold: healthy,
        checker: CheckerPlan::Tcp(TcpCheckPlan {
            send: vec![],
            receive: vec![],
        }),
    }
}

#[test]
fn thresholds_follow_envoy() {
    use Transition::{ChangePending as P, Changed as C, Unchanged as U};
    use Verdict::{Failure as F, NetworkFailure as N, Pass as OK, RetriableFailure as R};
    /// What, thresholds (unhealthy, healthy), verdicts, their transitions, failed at the end.
    type Case<'a> = (&'a str, u32, u32, &'a [Verdict], &'a [Transition], bool);
    let cases: &[Case] = &[
        (
            "passes keep a healthy host",
            2,
            2,
            &[OK, OK],
            &[U, U],
            false,
        ),
        (
            "network failures count to the threshold",
            3,
            1,
            &[N, N, N],
            &[P, P, C],
            true,
        ),
        (
            "a pass resets the count",
            2,
            1,
            &[N, OK, N],
            &[P, U, P],
            false,
        ),
        (
            "a failing answer is unhealthy at once",
            5,
            1,
            &[F],
            &[C],
            true,
        ),
        ("a retriable answer counts", 2, 1, &[R, R], &[P, C], true),
        (
            "more failures change nothing",
            1,
            1,
            &[N, F, N],
            &[C, U, U],
            true,
        ),
        (
            "healthy again after the threshold of passes",
            1,
            3,
            &[N, OK, OK, OK],
            &[C, P, P, C],
            false,
        ),
        (
            "a failure restarts the passes",
            1,
            2,
            &[N, OK, N, OK, OK],
            &[C, P, U, P, C],
            false,
        ),
    ];
    for (what, unhealthy, healthy, verdicts, transitions, failed) in cases {
        let p = plan(*unhealthy, *healthy);
        let mut host = HostCheck::default();
        let got: Vec<Transition> = verdicts.iter().map(|v| host.record(*v, &p)).collect();
        assert_eq!(&got, transitions, "{what}");
        assert_eq!(host.failed, *failed, "{what}");
    }
}

#[test]
fn the_wait_follows_envoys_interval_choice() {
    use Transition::{ChangePending as P, Changed as C, Unchanged as U};
    let mut special = plan(2, 2);
    special.unhealthy_interval = Some(ms(300));
    special.unhealthy_edge_interval = Some(ms(200));
    special.healthy_edge_interval = Some(ms(50));
    special.no_traffic_healthy_interval = Some(ms(90_000));
    let plain = plan(2, 2);
    let cases: &[(&str, &HealthCheckPlan, bool, Transition, bool, u64)] = &[
        ("no traffic yet", &plain, true, U, false, 60_000),
        ("no traffic, failed", &plain, false, C, false, 60_000),
        ("no traffic, passed", &special, true, U, false, 90_000),
        ("no traffic, pass pending", &special, true, P, false, 60_000),
        ("passed", &plain, true, U, true, 100),
        ("failed, defaults to interval", &plain, false, C, true, 100),
        ("failed", &special, false, U, true, 300),
        ("failure pending", &special, false, P, true, 200),
        ("pass pending", &special, true, P, true, 50),
        (
            "pass pending, defaults to interval",
            &plain,
            true,
            P,
            true,
            100,
        ),
    ];
    for (what, p, passed, t, used, want) in cases {
        assert_eq!(next_wait(p, *passed, *t, *used), ms(*want), "{what}");
    }
}

#[test]
fn jitter_is_added_within_its_bounds() {
    let mut p = plan(1, 1);
    assert_eq!(jittered(&p, ms(100), || 0.99), ms(100), "no jitter");
    p.interval_jitter = ms(40);
    p.interval_jitter_percent = 10;
    assert_eq!(jittered(&p, ms(100), || 0.0), ms(100));
    let most = jittered(&p, ms(100), || 0.999_999);
    assert!(most > ms(149) && most < ms(150), "{most:?}");
    for _ in 0..100 {
        let d = jittered(&p, ms(100), fraction);
        assert!(d >= ms(100) && d < ms(150), "{d:?}");
    }
}

#[test]
fn payloads_match_in_order_not_necessarily_contiguous() {
    let segs = |s: &[&str]| s.iter().map(|x| x.as_bytes().to_vec()).collect::<Vec<_>>();
    let cases: &[(&[&str], &str, bool)] = &[
        (&[], "", true),
        (&["PONG"], "xxPONGyy", true),
        (&["PO", "NG"], "PO..NG", true),
        (&["NG", "PO"], "PO..NG", false),
        (&["PONG"], "PON", false),
        (&["A", "A"], "A", false),
        (&["", "B"], "B", true),
    ];
    for (segments, buf, want) in cases {
        assert_eq!(
            payload_matches(&segs(segments), buf.as_bytes()),
            *want,
            "{segments:?} in {buf:?}"
        );
    }
}

fn http_plan() -> HttpCheckPlan {
    HttpCheckPlan {
        host: None,
        path: "/health".into(),
        method: "GET".into(),
        expected_statuses: vec![(200, 201), (204, 205)],
        retriable_statuses: vec![(503, 504)],
        headers: HeaderModPlan {
            add: vec![HeaderAdd {
                name: "x-probe".into(),
                value: "kuma".into(),
                append: HeaderAppend::Overwrite,
            }],
            remove: vec!["user-agent".into()],
        },
        http2: false,
    }
}

#[test]
fn statuses_give_envoys_verdicts() {
    let p = http_plan();
    for (status, want) in [
        (200, Verdict::Pass),
        (204, Verdict::Pass),
        (201, Verdict::Failure),
        (503, Verdict::RetriableFailure),
        (500, Verdict::Failure),
    ] {
        assert_eq!(status_verdict(&p, status), want, "{status}");
    }
}

#[test]
fn the_http_probe_request_carries_host_path_and_headers() {
    let mut p = http_plan();
    let r = http_request(&p, "backend").expect("request");
    assert_eq!(
        (r.method().as_str(), r.uri().to_string()),
        ("GET", "/health".into())
    );
    assert_eq!(
        r.headers()["host"],
        "backend",
        "the cluster's name by default"
    );
    assert_eq!(r.headers()["x-probe"], "kuma");
    assert_eq!(r.headers()["connection"], "close");
    assert!(!r.headers().contains_key("user-agent"), "removed");
    p.http2 = true;
    p.host = Some("backend.mesh".into());
    p.method = "HEAD".into();
    let r = http_request(&p, "backend").expect("request");
    assert_eq!(r.uri().to_string(), "http://backend.mesh/health");
    assert_eq!(r.method().as_str(), "HEAD");
    assert!(!r.headers().contains_key("host") && !r.headers().contains_key("connection"));
}

#[test]
fn grpc_health_messages_are_encoded_and_read() {
    assert_eq!(grpc_request_frame(""), vec![0, 0, 0, 0, 0]);
    assert_eq!(
        grpc_request_frame("api"),
        vec![0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'i']
    );
    let frame = |msg: &[u8]| {
        let mut f = vec![0];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    };
    let cases: &[(&str, Vec<u8>, Option<u64>)] = &[
        ("SERVING", frame(&[0x08, 1]), Some(1)),
        ("NOT_SERVING", frame(&[0x08, 2]), Some(2)),
        ("unset is UNKNOWN", frame(&[]), Some(0)),
        (
            "unknown fields are skipped",
            frame(&[0x12, 2, b'x', b'y', 0x08, 1, 0x18, 0x96, 0x01]),
            Some(1),
        ),
        ("compressed", vec![1, 0, 0, 0, 0], None),
        ("short", vec![0, 0, 0, 0, 9, 0x08], None),
        ("no frame", vec![], None),
    ];
    for (what, body, want) in cases {
        assert_eq!(grpc_response_status(body), *want, "{what}");
    }
}

#[test]
fn active_state_counts_failed_endpoints_and_forgets_removed_ones() {
    let a: SocketAddr = "127.0.0.1:1".parse().expect("a");
    let b: SocketAddr = "127.0.0.1:2".parse().expect("b");
    let p = plan(1, 1);
    let active = ActiveHealth::default();
    assert!(!active.is_failed(a));
    active.record(a, Verdict::NetworkFailure, &p);
    active.record(b, Verdict::Pass, &p);
    assert!(active.is_failed(a) && !active.is_failed(b));
    assert_eq!(active.healthy_count(&[a, b]), 1);
    let c = &active.counters;
    assert_eq!(
        [&c.attempt, &c.success, &c.failure, &c.network_failure].map(|x| x.load(Ordering::Relaxed)),
        [2, 1, 1, 1]
    );
    active.retain(&[b]);
    assert!(!active.is_failed(a), "a removed endpoint's state is gone");
    assert_eq!(
        active.failed.load(Ordering::Relaxed),
        0,
        "the fast path is back"
    );
}
