//! MeshLoadBalancingStrategy's Envoy output: balancer types on clusters, locality failover and
//! affinity in load assignments, hash policies on routes, pinned by golden JSON
//! (`testdata/xds/mesh-load-balancing-strategy*.golden.json`, `UPDATE_GOLDEN=1` rewrites them),
//! accepted by Envoy 1.40 (`envoy --mode validate`; load assignments are checked as the
//! `load_assignment` of static copies of their clusters, since validation never runs EDS), and
//! decoded back into kuma-dp's plan.

mod support;

use std::collections::BTreeMap;

use meshzone_model::policy::{PolicyRules, Rule, TagMatcher};
use meshzone_model::specs::{SERVICE_TAG, tags};
use meshzone_model::{Resource, Spec, parse_documents};
use meshzone_xds::decode::routes::{HashKeyPlan, RouteActionPlan};
use meshzone_xds::decode::{ProxyConfig, balancing::BalancerPlan};
use meshzone_xds::envoy_types::pb::envoy::config::cluster::v3::Cluster;
use meshzone_xds::envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType,
};
use meshzone_xds::generate::{EndpointInfo, ProxyInput, Resources, TlsMaterial, base_resources};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::{Value, json};
use support::{assert_envoy_accepts, assert_golden, json_by_name};

fn fixture(name: &str) -> Resource {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/resources")
        .join(name);
    let text = std::fs::read_to_string(path).expect("fixture");
    Resource::from_value(parse_documents(&text).expect("yaml").remove(0)).expect("valid")
}

fn endpoint(address: &str, zone: &str, host: &str, priority: u32) -> EndpointInfo {
    EndpointInfo {
        address: address.into(),
        port: 10001,
        weight: 1,
        zone: Some(zone.into()),
        priority,
        tags: tags(&[
            (SERVICE_TAG, "backend"),
            ("kuma.io/zone", zone),
            ("k8s.io/hostname", host),
        ]),
        via_egress: false,
    }
}

/// One `to` rule per service, as the engine gives them.
fn rules(confs: &[(&str, Value)]) -> ProxyPolicies {
    ProxyPolicies {
        load_balancing: PolicyRules {
            to_rules: confs
                .iter()
                .map(|(service, conf)| Rule {
                    matchers: vec![TagMatcher {
                        key: SERVICE_TAG.into(),
                        value: (*service).into(),
                        not: false,
                    }],
                    conf: conf.clone(),
                    origin: vec![],
                })
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The fixture sidecar, in zone-1 on host node-a, with outbounds `backend` (http: two local
/// instances on two hosts, ingresses of zones 2, 3 and 4) and `db` (tcp, local).
fn generated(policies: &ProxyPolicies) -> Resources {
    let mesh = fixture("mesh.yaml");
    let dp = fixture("dataplane.yaml");
    let (Spec::Mesh(mesh_spec), Spec::Dataplane(dp_spec)) = (&mesh.spec, &dp.spec) else {
        panic!("fixtures");
    };
    let mut dp_spec = dp_spec.clone();
    let own = &mut dp_spec.networking.inbound[0].tags;
    own.insert("kuma.io/zone".into(), "zone-1".into());
    own.insert("k8s.io/hostname".into(), "node-a".into());
    let endpoints = BTreeMap::from([
        (
            "backend".to_string(),
            vec![
                endpoint("10.0.0.5", "zone-1", "node-a", 0),
                endpoint("10.0.0.6", "zone-1", "node-b", 0),
                endpoint("10.0.2.100", "zone-2", "-", 1),
                endpoint("10.0.3.100", "zone-3", "-", 1),
                endpoint("10.0.4.100", "zone-4", "-", 1),
            ],
        ),
        (
            "db".to_string(),
            vec![EndpointInfo {
                address: "10.0.0.7".into(),
                port: 5432,
                weight: 1,
                zone: Some("zone-1".into()),
                priority: 0,
                tags: tags(&[(SERVICE_TAG, "db")]),
                via_egress: false,
            }],
        ),
    ]);
    let protocols = BTreeMap::from([("backend".to_string(), "http".to_string())]);
    let material = TlsMaterial {
        identity_cert_pem: "IDENTITY CERT".into(),
        identity_key_pem: "IDENTITY KEY".into(),
        ca_cert_pem: "CA CERT".into(),
    };
    let input = ProxyInput {
        transparent: None,
        mesh: "default",
        mesh_spec,
        dataplane: &dp_spec,
        endpoints: &endpoints,
        tls: Some(&material),
        protocols: &protocols,
        proxyless: false,
        policies,
        external_services: &Default::default(),
    };
    let mut resources = base_resources(&input);
    configure(&input, &mut resources);
    resources
}

fn envoy_json(resources: &Resources) -> Value {
    let snapshot = resources.clone().into_snapshot();
    json!({
        "listeners": json_by_name(&snapshot, TypeUrl::Listener),
        "clusters": json_by_name(&snapshot, TypeUrl::Cluster),
        "endpoints": json_by_name(&snapshot, TypeUrl::ClusterLoadAssignment),
    })
}

/// Envoy validates clusters and listeners; each load assignment goes in as the static
/// `load_assignment` of a copy of its cluster, so Envoy checks it with the cluster's balancer.
/// The copies go without the mTLS socket: Envoy 1.40's validate mode crashes on a STATIC
/// cluster whose SDS secrets never arrive (the EDS originals keep theirs and are checked).
fn assert_envoy_accepts_with_assignments(name: &str, resources: &Resources) {
    let mut all = resources.clone();
    for cla in &resources.assignments {
        let Some(c) = resources
            .clusters
            .iter()
            .find(|c| c.name == cla.cluster_name)
        else {
            continue;
        };
        let mut copy: Cluster = c.clone();
        copy.name = format!("{}-static", c.name);
        copy.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        copy.eds_cluster_config = None;
        copy.transport_socket = None;
        let mut cla = cla.clone();
        cla.cluster_name = copy.name.clone();
        copy.load_assignment = Some(cla);
        all.clusters.push(copy);
    }
    assert_envoy_accepts(name, &all);
}

fn decoded(resources: &Resources) -> ProxyConfig {
    let (config, errors) = ProxyConfig::from_snapshot(&resources.clone().into_snapshot());
    assert!(
        errors.is_empty(),
        "the proxy refuses our own output: {errors:?}"
    );
    config
}

fn failover() -> ProxyPolicies {
    rules(&[
        (
            "backend",
            json!({
                "localityAwareness": {"crossZone": {
                    "failover": [
                        {"from": {"zones": ["zone-9"]}, "to": {"type": "Any"}},
                        {"from": {"zones": ["zone-1"]}, "to": {"type": "Only", "zones": ["zone-2"]}},
                        {"to": {"type": "AnyExcept", "zones": ["zone-2", "zone-3"]}}],
                    "failoverThreshold": {"percentage": 25}}},
                "loadBalancer": {"type": "RingHash", "ringHash": {"hashFunction": "MurmurHash2", "minRingSize": 64, "maxRingSize": 1024}},
                "hashPolicies": [
                    {"type": "Header", "header": {"name": "x-user"}, "terminal": true},
                    {"type": "Cookie", "cookie": {"name": "sid", "ttl": "1h", "path": "/"}},
                    {"type": "QueryParameter", "queryParameter": {"name": "u"}},
                    {"type": "Connection", "connection": {"sourceIP": true}}]
            }),
        ),
        (
            "db",
            json!({"loadBalancer": {"type": "Maglev", "maglev": {"tableSize": 65537, "hashPolicies": [{"type": "SourceIP"}]}}}),
        ),
    ])
}

/// (priority, zone) of each locality of a load assignment, as kuma-dp decodes it.
fn priorities(config: &ProxyConfig, cluster: &str) -> Vec<(u32, Option<String>)> {
    let mut v: Vec<(u32, Option<String>)> = config.endpoints[cluster]
        .iter()
        .map(|e| (e.priority, e.zone.clone()))
        .collect();
    v.dedup();
    v
}

#[test]
fn failover_ring_hash_and_maglev_golden_that_envoy_accepts_and_kuma_dp_decodes() {
    let resources = generated(&failover());
    assert_golden(
        "mesh-load-balancing-strategy.golden.json",
        &envoy_json(&resources),
    );
    assert_envoy_accepts_with_assignments("mlbs-failover", &resources);

    // kuma-dp decodes every hash policy, the source-IP ones of the route and of db's TCP
    // proxy included.
    let config = decoded(&resources);
    let db = config
        .listeners
        .values()
        .find(|l| l.cluster == "db")
        .expect("the db outbound");
    assert!(db.hash_source_ip, "db's tcp_proxy hashes by source IP");
    // zone-9's rule does not apply to zone-1; zone-2 is rule 1's; zone-4 is rule 2's; zone-3
    // no rule covers, so it is gone. Priorities are renumbered densely.
    assert_eq!(
        priorities(&config, "backend"),
        vec![
            (0, Some("zone-1".into())),
            (1, Some("zone-2".into())),
            (2, Some("zone-4".into())),
        ]
    );
    let backend = config.balancing("backend");
    assert_eq!(backend.overprovisioning_factor, Some(400));
    assert_eq!(
        backend.balancer,
        BalancerPlan::RingHash {
            min_ring_size: 64,
            max_ring_size: 1024,
            murmur: true
        }
    );
    let f = config
        .listeners
        .values()
        .flat_map(|l| &l.routes)
        .find_map(|r| match &r.action {
            RouteActionPlan::Forward(f) if f.clusters.iter().any(|c| c.cluster == "backend") => {
                Some(f)
            }
            _ => None,
        })
        .expect("the backend outbound's route");
    assert_eq!(f.hash_policy.len(), 4);
    assert!(f.hash_policy[0].terminal);
    assert_eq!(f.hash_policy[3].key, HashKeyPlan::SourceIp);
    // The hash policies reached the outbound's route and the TCP proxy.
    let out = envoy_json(&resources);
    let listeners = out["listeners"].as_object().expect("listeners");
    let text = serde_json::to_string(listeners).expect("json");
    assert!(text.contains("\"hashPolicy\""), "{text}");
    assert!(text.contains("\"sourceIp\""), "{text}");
}

#[test]
fn least_request_affinity_and_disabled_locality() {
    let policies = rules(&[
        (
            "backend",
            json!({
                "localityAwareness": {"localZone": {"affinityTags": [{"key": "k8s.io/hostname"}]}},
                "loadBalancer": {"type": "LeastRequest", "leastRequest": {"choiceCount": 3, "activeRequestBias": "0.5"}}
            }),
        ),
        (
            "db",
            json!({"localityAwareness": {"disabled": true}, "loadBalancer": {"type": "Random"}}),
        ),
    ]);
    let resources = generated(&policies);
    assert_golden(
        "mesh-load-balancing-strategy-affinity.golden.json",
        &envoy_json(&resources),
    );
    assert_envoy_accepts_with_assignments("mlbs-affinity", &resources);
    let config = decoded(&resources);
    let backend = config.balancing("backend");
    assert!(backend.locality_weighted);
    assert_eq!(
        backend.overprovisioning_factor,
        Some(200),
        "localZone set: Kuma's default 200"
    );
    // Same host: weight 9 (one tag: 9·10⁰); the other local host 1; remote zones at priority 1.
    let local: Vec<(u32, u32)> = backend
        .localities
        .iter()
        .filter(|l| l.priority == 0)
        .map(|l| (l.weight, l.endpoints.len() as u32))
        .collect();
    assert_eq!(local, vec![(9, 1), (1, 1)]);
    assert!(matches!(
        backend.balancer,
        BalancerPlan::LeastRequest {
            choice_count: 3,
            ..
        }
    ));
    assert_eq!(config.balancing("db").balancer, BalancerPlan::Random);
    assert!(
        config.endpoints["db"].iter().all(|e| e.priority == 0),
        "disabled: every locality at priority 0"
    );
}

#[test]
fn without_a_policy_nothing_changes() {
    let plain = generated(&ProxyPolicies::default());
    let with_other = generated(&rules(&[(
        "other",
        json!({"loadBalancer": {"type": "Random"}}),
    )]));
    assert_eq!(envoy_json(&plain), envoy_json(&with_other));
    let config = decoded(&plain);
    assert_eq!(
        config.balancing("backend").balancer,
        BalancerPlan::RoundRobin
    );
    assert_eq!(config.balancing("backend").overprovisioning_factor, None);
    // The mesh's localityAwareLoadBalancing puts the other zones at priority 1.
    assert_eq!(
        priorities(&config, "backend")[0],
        (0, Some("zone-1".into()))
    );
}
