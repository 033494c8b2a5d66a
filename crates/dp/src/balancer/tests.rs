//! The balancer's choices, without sockets (the loopback tests are in `http/tests.rs`).

use std::collections::HashMap;

use meshzone_xds::decode::balancing::LocalityPlan;

use super::*;

fn ep(port: u16, priority: u32, weight: u32) -> EndpointPlan {
    EndpointPlan {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        weight,
        zone: None,
        priority,
        via_zone_egress: false,
        no_active_health_check: false,
    }
}

fn plan(balancer: BalancerPlan, factor: Option<u32>) -> BalancingPlan {
    BalancingPlan {
        balancer,
        overprovisioning_factor: factor,
        ..Default::default()
    }
}

fn counts(b: &Balancer, eps: &[EndpointPlan], down: &[u16], n: usize) -> HashMap<u16, usize> {
    let healthy = |a: SocketAddr| !down.contains(&a.port());
    let mut out = HashMap::new();
    for i in 0..n {
        let key = b.hashes().then_some(fnv64(&(i as u64).to_le_bytes()));
        let a = b.choose(eps, &healthy, key).expect("an endpoint");
        *out.entry(a.port()).or_default() += 1;
    }
    out
}

#[test]
fn priority_loads_follow_envoys_formula() {
    // 100 % healthy at factor 140: P0 keeps everything.
    assert_eq!(priority_loads(&[100.0, 100.0]), vec![100.0, 0.0]);
    // Half healthy at 200: still 100 %; at 140: 70 % and 30 % to P1.
    assert_eq!(
        priority_loads(&[100.0_f64.min(200.0 * 0.5), 100.0]),
        vec![100.0, 0.0]
    );
    let l = priority_loads(&[70.0, 100.0]);
    assert!(
        (l[0] - 70.0).abs() < 1e-9 && (l[1] - 30.0).abs() < 1e-9,
        "{l:?}"
    );
    // Health adds up to less than 100: normalised.
    let l = priority_loads(&[20.0, 20.0]);
    assert!(
        (l[0] - 50.0).abs() < 1e-9 && (l[1] - 50.0).abs() < 1e-9,
        "{l:?}"
    );
    assert_eq!(priority_loads(&[0.0, 0.0]), vec![0.0, 0.0]);
}

#[test]
fn spill_over_keeps_the_healthy_share_and_sends_the_rest_on() {
    // P0: 4 endpoints, 1 up (25 %); factor 200 → P0 keeps 50 %, P1 takes 50 %.
    let eps = vec![
        ep(1, 0, 1),
        ep(2, 0, 1),
        ep(3, 0, 1),
        ep(4, 0, 1),
        ep(10, 1, 1),
    ];
    let b = Balancer::new(plan(BalancerPlan::RoundRobin, Some(200)), &eps);
    let c = counts(&b, &eps, &[2, 3, 4], 4000);
    let p1 = c[&10] as f64 / 4000.0;
    assert!((0.45..0.55).contains(&p1), "{c:?}");
    // Without a factor (no policy): P1 only when P0 has nothing healthy.
    let b = Balancer::new(plan(BalancerPlan::RoundRobin, None), &eps);
    assert_eq!(counts(&b, &eps, &[2, 3, 4], 100).get(&10), None);
    assert_eq!(counts(&b, &eps, &[1, 2, 3, 4], 100)[&10], 100);
    // Everything down: panic, the lowest priority.
    let c = counts(&b, &eps, &[1, 2, 3, 4, 10], 100);
    assert!(c.keys().all(|p| *p < 10), "{c:?}");
}

#[test]
fn locality_weights_split_a_priority() {
    let eps = vec![ep(1, 0, 1), ep(2, 0, 1), ep(10, 1, 1)];
    let mut p = plan(BalancerPlan::RoundRobin, Some(200));
    p.locality_weighted = true;
    p.localities = vec![
        LocalityPlan {
            priority: 0,
            weight: 9,
            endpoints: vec![eps[0].address],
        },
        LocalityPlan {
            priority: 0,
            weight: 1,
            endpoints: vec![eps[1].address],
        },
        LocalityPlan {
            priority: 1,
            weight: 1,
            endpoints: vec![eps[2].address],
        },
    ];
    let b = Balancer::new(p, &eps);
    let c = counts(&b, &eps, &[], 5000);
    let near = c[&1] as f64 / 5000.0;
    assert!((0.87..0.93).contains(&near), "{c:?}");
    assert_eq!(c.get(&10), None);
}

#[test]
fn ring_hash_and_maglev_keep_keys_and_move_few_when_an_endpoint_leaves() {
    let eps: Vec<EndpointPlan> = (1..=5).map(|p| ep(p, 0, 1)).collect();
    for balancer in [
        BalancerPlan::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8_388_608,
            murmur: false,
        },
        BalancerPlan::Maglev { table_size: 65537 },
    ] {
        let b = Balancer::new(plan(balancer.clone(), None), &eps);
        let all = |_: SocketAddr| true;
        let without_5 = |a: SocketAddr| a.port() != 5;
        let keys: Vec<u64> = (0..2000u64).map(|i| fnv64(&i.to_le_bytes())).collect();
        let before: Vec<SocketAddr> = keys
            .iter()
            .map(|k| b.choose(&eps, &all, Some(*k)).expect("ep"))
            .collect();
        // Stable: the same key, the same endpoint.
        for (k, a) in keys.iter().zip(&before) {
            assert_eq!(b.choose(&eps, &all, Some(*k)), Some(*a));
        }
        // Spread: every endpoint gets a fair share.
        let mut share: HashMap<SocketAddr, usize> = HashMap::new();
        for a in &before {
            *share.entry(*a).or_default() += 1;
        }
        assert_eq!(share.len(), 5, "{balancer:?}");
        assert!(
            share.values().all(|n| (200..=600).contains(n)),
            "{balancer:?} {share:?}"
        );
        // Endpoint 5 leaves: only its keys move (Maglev may move a few more).
        let after: Vec<SocketAddr> = keys
            .iter()
            .map(|k| b.choose(&eps, &without_5, Some(*k)).expect("ep"))
            .collect();
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        let had_5 = before.iter().filter(|a| a.port() == 5).count();
        assert!(
            moved >= had_5 && moved <= had_5 + had_5 / 2,
            "{balancer:?}: moved {moved}, had {had_5}"
        );
    }
}

#[test]
fn least_request_prefers_the_idle_endpoint_and_random_spreads() {
    let eps = vec![ep(1, 0, 1), ep(2, 0, 1)];
    let b = Balancer::new(
        plan(
            BalancerPlan::LeastRequest {
                choice_count: 2,
                bias_milli: 1000,
            },
            None,
        ),
        &eps,
    );
    let busy: Vec<InFlight> = (0..3).map(|_| b.begin(eps[0].address)).collect();
    assert_eq!(b.active(eps[0].address), 3);
    let c = counts(&b, &eps, &[], 400);
    // Two samples with replacement: both land on the busy one a quarter of the time.
    assert!(c[&2] > 250, "{c:?}");
    drop(busy);
    assert_eq!(b.active(eps[0].address), 0);
    // Unequal weights: weight / (active + 1).
    let eps = vec![ep(1, 0, 3), ep(2, 0, 1)];
    let b = Balancer::new(
        plan(
            BalancerPlan::LeastRequest {
                choice_count: 2,
                bias_milli: 1000,
            },
            None,
        ),
        &eps,
    );
    assert_eq!(counts(&b, &eps, &[], 10)[&1], 10);
    let _busy: Vec<InFlight> = (0..3).map(|_| b.begin(eps[0].address)).collect();
    assert_eq!(counts(&b, &eps, &[], 10)[&2], 10, "3/4 < 1/1");

    let b = Balancer::new(plan(BalancerPlan::Random, None), &eps);
    let c = counts(&b, &eps, &[], 4000);
    let heavy = c[&1] as f64 / 4000.0;
    assert!((0.70..0.80).contains(&heavy), "weighted 3:1 {c:?}");
}
