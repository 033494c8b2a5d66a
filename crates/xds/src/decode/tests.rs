//! Generated configuration, decoded back by the proxy side, pinned by a golden file.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p meshzone-xds`.

use std::collections::BTreeMap;

use meshzone_model::Spec;

use super::*;
use crate::generate::{EndpointInfo, ProxyInput, TlsMaterial, generate};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};

use meshzone_model::testdata::resource_fixture as fixture;

fn decoded(tls: bool) -> (ProxyConfig, Vec<DecodeError>) {
    decoded_with(tls, None)
}

fn decoded_with(tls: bool, mode: Option<&str>) -> (ProxyConfig, Vec<DecodeError>) {
    let mut mesh = fixture("mesh.yaml");
    if let (Some(mode), Spec::Mesh(m)) = (mode, &mut mesh.spec) {
        for b in &mut m.mtls.as_mut().expect("mtls").backends {
            b.mode = Some(mode.to_string());
        }
    }
    let dp = fixture("dataplane.yaml");
    let (Spec::Mesh(mesh_spec), Spec::Dataplane(dp_spec)) = (&mesh.spec, &dp.spec) else {
        panic!("fixtures");
    };
    let endpoints = BTreeMap::from([(
        "backend".to_string(),
        vec![
            EndpointInfo {
                address: "10.0.0.5".into(),
                port: 10001,
                weight: 1,
                zone: None,
                priority: 0,
                tags: Default::default(),
                via_egress: false,
            },
            EndpointInfo {
                address: "10.0.0.6".into(),
                port: 10001,
                weight: 2,
                zone: Some("zone-2".into()),
                priority: 1,
                tags: Default::default(),
                via_egress: false,
            },
        ],
    )]);
    let material = TlsMaterial {
        identity_cert_pem: "IDENTITY CERT".into(),
        identity_key_pem: "IDENTITY KEY".into(),
        ca_cert_pem: "CA CERT".into(),
    };
    let snapshot = generate(&ProxyInput {
        transparent: None,
        mesh: "default",
        mesh_spec,
        dataplane: dp_spec,
        endpoints: &endpoints,
        tls: tls.then_some(&material),
        protocols: &BTreeMap::new(),
        proxyless: false,
        policies: &Default::default(),
        external_services: &Default::default(),
    });
    ProxyConfig::from_snapshot(&snapshot)
}

#[test]
fn generated_config_decodes_to_the_golden_plan() {
    let (config, errors) = decoded(true);
    assert!(errors.is_empty(), "{errors:?}");
    let json = serde_json::to_string_pretty(&config).expect("json") + "\n";
    assert!(
        !json.contains("IDENTITY KEY"),
        "config dump must not show private keys"
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/xds/dataplane-mtls.golden.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &json).expect("write");
    }
    assert_eq!(
        json,
        std::fs::read_to_string(&path).expect("golden; run with UPDATE_GOLDEN=1")
    );
    assert_eq!(config.cluster_endpoints("backend").len(), 2);
    assert_eq!(config.cluster_endpoints("localhost:1010").len(), 1);
}

#[test]
fn without_mtls_there_is_no_tls_and_no_secret() {
    let (config, errors) = decoded(false);
    assert!(errors.is_empty());
    assert!(config.secrets.is_empty());
    assert!(config.listeners.values().all(|l| l.tls.is_none()));
    assert!(config.clusters.values().all(|c| c.tls.is_none()));
}

#[test]
fn bad_resources_are_rejected_one_by_one() {
    let good = envoy_types::util::pack_any(crate::generate::clusters::eds_cluster("ok"));
    let bad = envoy_types::util::pack_any(envoy_types::pb::envoy::config::cluster::v3::Cluster {
        name: "logical".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32)),
        ..Default::default()
    });
    let wrong_type = Any {
        type_url: "type.googleapis.com/x.Y".into(),
        value: vec![],
    };
    let mut config = ProxyConfig::default();
    let errors = config.apply(TypeUrl::Cluster, &[good, bad, wrong_type]);
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].name, "logical");
    assert!(config.clusters.contains_key("ok"));
}

#[test]
fn permissive_mode_adds_a_plaintext_chain() {
    let (strict, errors) = decoded_with(true, Some("STRICT"));
    assert!(errors.is_empty());
    assert!(strict.listeners.values().all(|l| !l.permissive));
    let (permissive, errors) = decoded_with(true, Some("PERMISSIVE"));
    assert!(errors.is_empty(), "{errors:?}");
    let inbound = permissive
        .listeners
        .values()
        .find(|l| l.name.starts_with("inbound:"))
        .expect("inbound");
    assert!(inbound.permissive && inbound.tls.is_some());
    assert!(
        permissive
            .listeners
            .values()
            .filter(|l| l.name.starts_with("outbound:"))
            .all(|l| !l.permissive)
    );
}

#[test]
fn a_zone_proxy_listener_decodes_to_sni_routes() {
    use crate::generate::{SniRouterInput, generate_sni_router};
    let endpoint = |address: &str, zone: &str| EndpointInfo {
        address: address.into(),
        port: 10000,
        weight: 2,
        zone: Some(zone.into()),
        priority: 0,
        tags: Default::default(),
        via_egress: false,
    };
    let routes = BTreeMap::from([
        (
            "echo.default.mesh".to_string(),
            vec![
                endpoint("10.0.1.100", "zone-1"),
                endpoint("10.0.3.100", "zone-3"),
            ],
        ),
        (
            "web.default.mesh".to_string(),
            vec![endpoint("10.0.1.100", "zone-1")],
        ),
    ]);
    let snapshot = generate_sni_router(&SniRouterInput {
        listener_name: "inbound:10.0.2.50:10002",
        address: "10.0.2.50",
        port: 10002,
        routes: &routes,
        external: &[],
        tls: &Default::default(),
        route_rules: &BTreeMap::new(),
    });
    let (config, errors) = ProxyConfig::from_snapshot(&snapshot);
    assert!(errors.is_empty(), "{errors:?}");
    let listener = &config.listeners["inbound:10.0.2.50:10002"];
    assert_eq!(
        listener.sni_routes,
        BTreeMap::from([
            (
                "echo.default.mesh".to_string(),
                "echo.default.mesh".to_string()
            ),
            (
                "web.default.mesh".to_string(),
                "web.default.mesh".to_string()
            ),
        ])
    );
    assert!(listener.tls.is_none(), "TLS passes through");
    assert_eq!(config.cluster_endpoints("echo.default.mesh").len(), 2);
    assert!(config.clusters["echo.default.mesh"].tls.is_none());

    let empty = generate_sni_router(&SniRouterInput {
        listener_name: "inbound:10.0.2.50:10002",
        address: "10.0.2.50",
        port: 10002,
        routes: &BTreeMap::new(),
        external: &[],
        tls: &Default::default(),
        route_rules: &BTreeMap::new(),
    });
    assert!(
        empty
            .get(TypeUrl::Listener)
            .expect("lds")
            .resources
            .is_empty(),
        "no routes, no listener"
    );
}
