//! VirtualOutbound listeners on a transparent proxy: a `vip:port` listener (not bound) per
//! hostname, towards the service's cluster when the virtual outbound's tags are only the
//! service and towards a subset cluster otherwise, with the hostname in the listener's
//! metadata. Pinned by golden JSON (`testdata/xds/virtual-outbound.golden.json`;
//! `UPDATE_GOLDEN=1` rewrites it), accepted by Envoy 1.40 (`envoy --mode validate`), and
//! decoded back by kuma-dp into the names its resolver answers.

mod support;

use std::collections::BTreeMap;

use meshzone_model::Spec;
use meshzone_model::specs::{SERVICE_TAG, tags};
use meshzone_xds::decode::ProxyConfig;
use meshzone_xds::generate::{
    EndpointInfo, ListenerOrigin, ProxyInput, Resources, TlsMaterial, Transparent, VirtualListener,
    base_resources,
};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::backend_refs::{subset_cluster, subset_sni};
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;
use support::{assert_envoy_accepts, assert_golden, json_by_name};

use meshzone_model::testdata::resource_fixture as fixture;

fn endpoint(address: &str, version: &str) -> EndpointInfo {
    EndpointInfo {
        address: address.into(),
        port: 10001,
        weight: 1,
        zone: Some("zone-1".into()),
        priority: 0,
        tags: tags(&[(SERVICE_TAG, "backend"), ("version", version)]),
        via_egress: false,
    }
}

fn generated() -> Resources {
    let mesh = fixture("mesh.yaml");
    let dp = fixture("dataplane.yaml");
    let (Spec::Mesh(mesh_spec), Spec::Dataplane(dp_spec)) = (&mesh.spec, &dp.spec) else {
        panic!("fixtures");
    };
    let endpoints = BTreeMap::from([(
        "backend".to_string(),
        vec![endpoint("10.0.0.5", "v1"), endpoint("10.0.0.6", "v2")],
    )]);
    let protocols = BTreeMap::from([("backend".to_string(), "http".to_string())]);
    let vips = BTreeMap::from([("backend".to_string(), "240.0.0.1".to_string())]);
    let virtual_outbounds = [
        VirtualListener {
            hostname: "backend.svc.cluster.local".into(),
            vip: "240.0.0.2".into(),
            port: 8080,
            tags: tags(&[(SERVICE_TAG, "backend")]),
        },
        VirtualListener {
            hostname: "v2.backend.mesh".into(),
            vip: "240.0.0.3".into(),
            port: 80,
            tags: tags(&[(SERVICE_TAG, "backend"), ("version", "v2")]),
        },
        // A service without instances gets no listener.
        VirtualListener {
            hostname: "gone.mesh".into(),
            vip: "240.0.0.4".into(),
            port: 80,
            tags: tags(&[(SERVICE_TAG, "gone")]),
        },
    ];
    let material = TlsMaterial {
        identity_cert_pem: "IDENTITY CERT".into(),
        identity_key_pem: "IDENTITY KEY".into(),
        ca_cert_pem: "CA CERT".into(),
    };
    let policies = ProxyPolicies::default();
    let input = ProxyInput {
        transparent: Some(Transparent {
            redirect_port_outbound: 15001,
            redirect_port_inbound: None,
            vips: &vips,
            virtual_outbounds: &virtual_outbounds,
        }),
        mesh: "default",
        mesh_spec,
        dataplane: dp_spec,
        endpoints: &endpoints,
        tls: Some(&material),
        protocols: &protocols,
        proxyless: false,
        policies: &policies,
        external_services: &Default::default(),
    };
    let mut resources = base_resources(&input);
    configure(&input, &mut resources);
    resources
}

#[test]
fn virtual_outbounds_become_unbound_listeners_named_for_the_resolver() {
    let resources = generated();
    let v2 = tags(&[(SERVICE_TAG, "backend"), ("version", "v2")]);
    let origins: Vec<(&str, &ListenerOrigin)> = resources
        .listeners
        .iter()
        .map(|l| (l.listener.name.as_str(), &l.origin))
        .filter(|(n, _)| n.starts_with("outbound:240.0.0.2") || n.starts_with("outbound:240.0.0.3"))
        .collect();
    assert_eq!(
        origins,
        [
            (
                "outbound:240.0.0.2:8080",
                &ListenerOrigin::Outbound {
                    service: "backend".into()
                }
            ),
            (
                "outbound:240.0.0.3:80",
                &ListenerOrigin::VirtualOutbound {
                    service: "backend".into(),
                    tags: v2.clone()
                }
            ),
        ]
    );
    assert!(
        !resources
            .listeners
            .iter()
            .any(|l| l.listener.name.starts_with("outbound:240.0.0.4")),
        "no listener for a service without instances"
    );

    let snapshot = resources.clone().into_snapshot();
    let json = json!({
        "listeners": json_by_name(&snapshot, TypeUrl::Listener),
        "clusters": json_by_name(&snapshot, TypeUrl::Cluster),
        "endpoints": json_by_name(&snapshot, TypeUrl::ClusterLoadAssignment),
    });
    assert_golden("virtual-outbound.golden.json", &json);
    // The subset cluster sends the subset's SNI and holds only the v2 instance.
    let subset = subset_cluster("backend", &v2);
    assert_eq!(
        json["clusters"][&subset]["transportSocket"]["typedConfig"]["sni"],
        json!(subset_sni("backend", &v2, "default"))
    );
    assert_eq!(
        json["endpoints"][&subset]["endpoints"][0]["lbEndpoints"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_envoy_accepts("virtual-outbound", &resources);

    // kuma-dp decodes the names its resolver answers, and the unbound listeners.
    let (config, errors) = ProxyConfig::from_snapshot(&snapshot);
    assert!(errors.is_empty(), "{errors:?}");
    let l = &config.listeners["outbound:240.0.0.3:80"];
    assert_eq!(l.dns_names, ["v2.backend.mesh"]);
    assert!(!l.bind);
    assert_eq!(
        config.listeners["outbound:240.0.0.2:8080"].dns_names,
        ["backend.svc.cluster.local"]
    );
    assert!(
        config.listeners["outbound:240.0.0.1:80"]
            .dns_names
            .is_empty()
    );
}
