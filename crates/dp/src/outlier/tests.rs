use std::time::Duration;

use super::*;

fn plan() -> OutlierPlan {
    OutlierPlan {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 100,
        split_local_origin: true,
        consecutive_5xx: Some(3),
        consecutive_gateway_failure: None,
        consecutive_local_origin_failure: Some(1),
        success_rate: None,
        failure_percentage: None,
    }
}

fn endpoints(n: u8) -> Vec<EndpointPlan> {
    (1..=n)
        .map(|i| EndpointPlan {
            address: SocketAddr::from(([10, 0, 0, i], 80)),
            weight: 1,
            zone: None,
            priority: 0,
            via_zone_egress: false,
            no_active_health_check: false,
        })
        .collect()
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 80))
}

#[test]
fn consecutive_5xx_eject_and_a_success_resets_the_count() {
    let (h, p, eps, t0) = (Health::default(), plan(), endpoints(2), Instant::now());
    let rec = |o, t| h.record(Some(&p), &eps, addr(1), o, t);
    assert!(rec(Outcome::Status(500), t0).is_empty());
    assert!(rec(Outcome::Status(503), t0).is_empty());
    assert!(rec(Outcome::Status(200), t0).is_empty(), "a success resets");
    rec(Outcome::Status(500), t0);
    rec(Outcome::Status(500), t0);
    assert_eq!(
        rec(Outcome::Status(502), t0),
        [(addr(1), Ejection::Consecutive5xx)]
    );
    assert!(h.is_ejected(addr(1), t0 + Duration::from_secs(29)));
    assert!(
        !h.is_ejected(addr(1), t0 + Duration::from_secs(31)),
        "base time"
    );
    assert!(!h.is_ejected(addr(2), t0));
}

#[test]
fn gateway_failures_count_502_to_504_only() {
    let p = OutlierPlan {
        consecutive_5xx: None,
        consecutive_gateway_failure: Some(2),
        ..plan()
    };
    let (h, eps, t0) = (Health::default(), endpoints(2), Instant::now());
    let rec = |o| h.record(Some(&p), &eps, addr(1), o, t0);
    rec(Outcome::Status(504));
    assert!(
        rec(Outcome::Status(500)).is_empty(),
        "a 500 resets the gateway count"
    );
    rec(Outcome::Status(503));
    assert_eq!(
        rec(Outcome::Status(502)),
        [(addr(1), Ejection::ConsecutiveGatewayFailure)]
    );
}

#[test]
fn local_origin_failures_split_or_counted_as_503() {
    let (h, eps, t0) = (Health::default(), endpoints(2), Instant::now());
    let split = plan();
    assert_eq!(
        h.record(Some(&split), &eps, addr(1), Outcome::LocalFailure, t0),
        [(addr(1), Ejection::ConsecutiveLocalOriginFailure)]
    );
    let merged = OutlierPlan {
        split_local_origin: false,
        consecutive_local_origin_failure: None,
        ..plan()
    };
    let h = Health::default();
    let rec = |o| h.record(Some(&merged), &eps, addr(2), o, t0);
    rec(Outcome::LocalFailure);
    rec(Outcome::LocalFailure);
    assert_eq!(
        rec(Outcome::LocalFailure),
        [(addr(2), Ejection::Consecutive5xx)]
    );
}

#[test]
fn repeated_ejections_last_longer_up_to_the_cap_and_decay_while_healthy() {
    let p = OutlierPlan {
        base_ejection_time: Duration::from_secs(10),
        max_ejection_time: Duration::from_secs(25),
        interval: Duration::from_secs(1),
        ..plan()
    };
    let (h, eps) = (Health::default(), endpoints(2));
    let mut t = Instant::now();
    let mut lasted = Vec::new();
    for _ in 0..3 {
        h.record(Some(&p), &eps, addr(1), Outcome::LocalFailure, t);
        let mut s = 0;
        while h.is_ejected(addr(1), t + Duration::from_secs(s)) {
            s += 1;
        }
        lasted.push(s);
        t += Duration::from_secs(s);
        h.sweep(&p, &eps, t); // the ejection ends at the sweep
    }
    assert_eq!(lasted, [10, 20, 25], "base × ejections, capped");
    // Healthy intervals take the count down again: 3 → 0 after 3 sweeps.
    for _ in 0..4 {
        t += Duration::from_secs(1);
        h.sweep(&p, &eps, t);
    }
    h.record(Some(&p), &eps, addr(1), Outcome::LocalFailure, t);
    assert!(h.is_ejected(addr(1), t + Duration::from_secs(9)));
    assert!(
        !h.is_ejected(addr(1), t + Duration::from_secs(11)),
        "back to the base time"
    );
}

#[test]
fn max_ejection_percent_keeps_endpoints_in() {
    let p = OutlierPlan {
        max_ejection_percent: 50,
        ..plan()
    };
    let (h, eps, t0) = (Health::default(), endpoints(2), Instant::now());
    assert_eq!(
        h.record(Some(&p), &eps, addr(1), Outcome::LocalFailure, t0)
            .len(),
        1
    );
    assert!(
        h.record(Some(&p), &eps, addr(2), Outcome::LocalFailure, t0)
            .is_empty(),
        "ejecting the second would exceed 50 %"
    );
    assert!(!h.is_ejected(addr(2), t0));
}

#[test]
fn a_working_connection_lifts_an_ejection() {
    let (h, p, eps, t0) = (Health::default(), plan(), endpoints(2), Instant::now());
    h.record(Some(&p), &eps, addr(1), Outcome::LocalFailure, t0);
    assert!(h.is_ejected(addr(1), t0));
    h.record(
        Some(&p),
        &eps,
        addr(1),
        Outcome::Connected { last: false },
        t0,
    );
    assert!(!h.is_ejected(addr(1), t0));
    // Without outlier detection too (an ejection made by an active check, say).
    h.eject_until(addr(2), t0 + Duration::from_secs(5));
    h.record(None, &eps, addr(2), Outcome::Connected { last: true }, t0);
    assert!(!h.is_ejected(addr(2), t0));
}

#[test]
fn rate_detectors_judge_each_interval() {
    let sample = |bad: &[u32]| -> Vec<(SocketAddr, (u32, u32))> {
        bad.iter()
            .enumerate()
            .map(|(i, b)| (addr(i as u8 + 1), (100 - b, *b)))
            .collect()
    };
    let rate = RatePlan {
        minimum_hosts: 3,
        request_volume: 50,
        threshold: 1900,
    };
    assert_eq!(success_rate(&rate, &sample(&[0, 1, 0, 2, 60])), [addr(5)]);
    assert!(
        success_rate(&rate, &sample(&[0, 60])).is_empty(),
        "too few hosts"
    );
    let pct = RatePlan {
        minimum_hosts: 2,
        request_volume: 50,
        threshold: 50,
    };
    assert_eq!(failure_percentage(&pct, &sample(&[10, 50, 49])), [addr(2)]);

    // Through the sweep: an interval of traffic, then the verdict at the interval's end.
    let p = OutlierPlan {
        consecutive_5xx: None,
        failure_percentage: Some(RatePlan {
            minimum_hosts: 2,
            request_volume: 10,
            threshold: 50,
        }),
        ..plan()
    };
    let (h, eps, t0) = (Health::default(), endpoints(2), Instant::now());
    h.sweep(&p, &eps, t0);
    for i in 0..10 {
        h.record(Some(&p), &eps, addr(1), Outcome::Status(200), t0);
        let code = if i < 6 { 500 } else { 200 };
        h.record(Some(&p), &eps, addr(2), Outcome::Status(code), t0);
    }
    assert!(!h.is_ejected(addr(2), t0), "judged at the interval's end");
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(
        h.sweep(&p, &eps, t1),
        [(addr(2), Ejection::FailurePercentage)]
    );
    assert!(h.is_ejected(addr(2), t1));
}
