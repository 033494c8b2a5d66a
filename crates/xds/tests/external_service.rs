//! ExternalServices reached directly from a sidecar: the service's cluster originates TLS with
//! the user's CA, client certificate and SNI inline (not the mesh's mTLS, even in a mesh with
//! mTLS), or plain TCP; a transparent proxy listens on the service's `VIP:80` and
//! `VIP:<port>` and on the address host's own VIP; MeshTimeout and MeshRetry to the service
//! apply. Pinned by golden JSON (`testdata/xds/external-service.golden.json`;
//! `UPDATE_GOLDEN=1` rewrites it), accepted by Envoy 1.40 (`envoy --mode validate`), and
//! decoded back by kuma-dp into its origination plan.

mod support;

use std::collections::BTreeMap;

use meshzone_model::policies::MeshPolicies;
use meshzone_model::specs::{SERVICE_TAG, tags};
use meshzone_model::testdata::resource_fixture as fixture;
use meshzone_model::{Resource, ResourceType, Spec};
use meshzone_xds::decode::routes::RouteActionPlan;
use meshzone_xds::decode::{OriginationPlan, ProxyConfig};
use meshzone_xds::generate::{
    EgressExternal, EndpointInfo, ExternalUpstream, HostEntry, OriginatedTls, ProxyInput,
    Resources, SniRouterInput, TlsMaterial, Transparent, base_resources, generate_sni_router,
};
use meshzone_xds::names::TypeUrl;
use meshzone_xds::policy::{ProxyPolicies, configure};
use serde_json::json;
use support::{assert_envoy_accepts, assert_golden, json_by_name};

fn certificate(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/xds/external-service")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn resource(v: serde_json::Value) -> Resource {
    let r = Resource::from_value(v).expect("parses");
    meshzone_model::validate(&r).expect("valid");
    r
}

/// A MeshTimeout and a MeshRetry towards the external `httpbin`.
fn policies(dp: &Resource) -> ProxyPolicies {
    let resources = [
        resource(
            json!({"type": "MeshTimeout", "mesh": "default", "name": "httpbin-timeout",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "httpbin"},
                "default": {"connectionTimeout": "2s", "http": {"requestTimeout": "3s"}}}]}}),
        ),
        resource(
            json!({"type": "MeshRetry", "mesh": "default", "name": "httpbin-retry",
            "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "MeshService", "name": "httpbin"},
                "default": {"http": {"numRetries": 2, "retryOn": ["5xx"]}}}]}}),
        ),
    ];
    let mesh = MeshPolicies::from_resources(&resources);
    let mut rules = mesh.dataplane_rules(dp, Some("zone-1")).expect("rules");
    let mut take = |rt| rules.remove(&rt).unwrap_or_default();
    ProxyPolicies {
        timeout: take(ResourceType::MeshTimeout),
        retry: take(ResourceType::MeshRetry),
        ..Default::default()
    }
}

fn endpoint(address: &str, port: u32, service: &str) -> EndpointInfo {
    EndpointInfo {
        address: address.into(),
        port,
        weight: 1,
        zone: None,
        priority: 0,
        tags: tags(&[(SERVICE_TAG, service)]),
        via_egress: false,
    }
}

fn generated() -> Resources {
    let mesh = fixture("mesh.yaml");
    let dp = fixture("dataplane.yaml");
    let (Spec::Mesh(mesh_spec), Spec::Dataplane(dp_spec)) = (&mesh.spec, &dp.spec) else {
        panic!("fixtures");
    };
    // backend is a mesh service; httpbin (HTTPS) and db (TCP, the Dataplane's explicit
    // outbound 127.0.0.2:20013) are ExternalServices.
    let endpoints = BTreeMap::from([
        (
            "backend".to_string(),
            vec![endpoint("10.0.0.5", 10001, "backend")],
        ),
        (
            "httpbin".to_string(),
            vec![endpoint("198.18.9.2", 443, "httpbin")],
        ),
        ("db".to_string(), vec![endpoint("198.18.9.3", 5432, "db")]),
    ]);
    let protocols = BTreeMap::from([
        ("backend".to_string(), "http".to_string()),
        ("httpbin".to_string(), "http".to_string()),
        ("db".to_string(), "tcp".to_string()),
    ]);
    let vips = BTreeMap::from([
        ("backend".to_string(), "240.0.0.1".to_string()),
        ("httpbin".to_string(), "240.0.0.5".to_string()),
        ("db".to_string(), "240.0.0.6".to_string()),
    ]);
    let external = BTreeMap::from([
        (
            "httpbin".to_string(),
            ExternalUpstream {
                port: 443,
                tls: Some(OriginatedTls {
                    sni: Some("httpbin.org".into()),
                    ca_pem: Some(certificate("ca.crt")),
                    client_cert_pem: Some(certificate("client.crt")),
                    client_key_pem: Some(certificate("client.key")),
                    verify_name: Some("httpbin.org".into()),
                    allow_renegotiation: false,
                }),
                host_entry: Some(HostEntry {
                    hostname: "httpbin.org".into(),
                    vip: "240.0.0.7".into(),
                }),
                through_egress: false,
            },
        ),
        (
            "db".to_string(),
            ExternalUpstream {
                port: 5432,
                tls: None,
                host_entry: None,
                through_egress: false,
            },
        ),
    ]);
    let material = TlsMaterial {
        identity_cert_pem: "IDENTITY CERT".into(),
        identity_key_pem: "IDENTITY KEY".into(),
        ca_cert_pem: "CA CERT".into(),
    };
    let policies = policies(&dp);
    let input = ProxyInput {
        transparent: Some(Transparent {
            redirect_port_outbound: 15001,
            redirect_port_inbound: None,
            vips: &vips,
            virtual_outbounds: &[],
        }),
        mesh: "default",
        mesh_spec,
        dataplane: dp_spec,
        endpoints: &endpoints,
        tls: Some(&material),
        protocols: &protocols,
        proxyless: false,
        policies: &policies,
        external_services: &external,
    };
    let mut resources = base_resources(&input);
    configure(&input, &mut resources);
    resources
}

#[test]
fn external_services_golden_envoy_json_that_envoy_accepts_and_kuma_dp_decodes() {
    let resources = generated();
    let snapshot = resources.clone().into_snapshot();
    let json = json!({
        "listeners": json_by_name(&snapshot, TypeUrl::Listener),
        "clusters": json_by_name(&snapshot, TypeUrl::Cluster),
        "endpoints": json_by_name(&snapshot, TypeUrl::ClusterLoadAssignment),
    });
    assert_golden("external-service.golden.json", &json);

    // TLS originated with the user's material, not the mesh's SDS secrets.
    let httpbin = &json["clusters"]["httpbin"]["transportSocket"]["typedConfig"];
    assert_eq!(httpbin["sni"], json!("httpbin.org"));
    let common = &httpbin["commonTlsContext"];
    assert!(
        common.get("tlsCertificateSdsSecretConfigs").is_none(),
        "{common}"
    );
    assert_eq!(
        common["validationContext"]["matchTypedSubjectAltNames"][0]["matcher"]["exact"],
        json!("httpbin.org")
    );
    // Plain TCP to db; the mesh's mTLS to backend.
    assert!(json["clusters"]["db"].get("transportSocket").is_none());
    assert!(
        json["clusters"]["backend"]["transportSocket"]["typedConfig"]["commonTlsContext"]
            ["tlsCertificateSdsSecretConfigs"]
            .is_array()
    );
    // MeshTimeout applies to the external service's cluster.
    assert_eq!(json["clusters"]["httpbin"]["connectTimeout"], json!("2s"));
    assert_eq!(
        json["endpoints"]["httpbin"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
            ["portValue"],
        json!(443)
    );

    assert_envoy_accepts("external-service", &resources);

    let (config, errors) = ProxyConfig::from_snapshot(&snapshot);
    assert!(errors.is_empty(), "{errors:?}");
    let c = &config.clusters["httpbin"];
    assert_eq!(c.tls, None);
    assert_eq!(
        c.origination,
        Some(OriginationPlan {
            sni: Some("httpbin.org".into()),
            trusted_ca_pem: Some(certificate("ca.crt")),
            dns_sans: vec!["httpbin.org".into()],
            client_cert_pem: Some(certificate("client.crt")),
            client_key_pem: Some(certificate("client.key")),
        })
    );
    assert_eq!(config.clusters["db"].origination, None);
    assert_eq!(config.clusters["db"].tls, None);
    assert!(config.clusters["backend"].tls.is_some());
    // A retry policy on the external service's route.
    let route = &config.listeners["outbound:240.0.0.5:80"].routes[0];
    let RouteActionPlan::Forward(forward) = &route.action else {
        panic!("httpbin's route forwards: {route:?}");
    };
    assert_eq!(forward.retry.as_ref().map(|r| r.num_retries), Some(2));
    // The names the resolver answers: the service on its VIP (80 and 443), the host on its own.
    let names: BTreeMap<&str, (Vec<String>, bool)> = config
        .listeners
        .iter()
        .filter(|(n, _)| n.starts_with("outbound:240.0.0.5") || n.starts_with("outbound:240.0.0.7"))
        .map(|(n, l)| (n.as_str(), (l.dns_names.clone(), l.bind)))
        .collect();
    assert_eq!(
        names,
        BTreeMap::from([
            (
                "outbound:240.0.0.5:443",
                (vec!["httpbin.mesh".to_string()], false)
            ),
            ("outbound:240.0.0.5:80", (vec![], false)),
            (
                "outbound:240.0.0.7:443",
                (vec!["httpbin.org".to_string()], false)
            ),
            (
                "outbound:240.0.0.7:80",
                (vec!["httpbin.org".to_string()], false)
            ),
        ])
    );
    // db's own VIP listens on its port too; its explicit outbound stays bound.
    assert!(config.listeners.contains_key("outbound:240.0.0.6:5432"));
    assert!(config.listeners["outbound:127.0.0.2:20013"].bind);
}

/// The MeshTrafficPermission rules of `service` as the DP server computes them for a zone
/// egress: those of a Dataplane whose inbound carries the service's tags.
fn permission_of(service: &str, policies: &[Resource]) -> Vec<meshzone_model::policy::Rule> {
    let stand_in = resource(json!({"type": "Dataplane", "mesh": "default",
        "name": format!("zone-egress.{service}"), "networking": {"address": "127.0.0.1",
        "inbound": [{"port": 1, "tags": {"kuma.io/service": service}}]}}));
    let mut rules = MeshPolicies::from_resources(policies)
        .dataplane_rules(&stand_in, Some("zone-1"))
        .expect("rules");
    let permission = rules
        .remove(&ResourceType::MeshTrafficPermission)
        .unwrap_or_default();
    permission
        .from_rules
        .into_iter()
        .next()
        .map(|f| f.rules)
        .unwrap_or_default()
}

#[test]
fn a_zone_egress_terminates_mtls_per_external_service_and_originates_its_tls() {
    let only_web = resource(json!({"type": "MeshTrafficPermission", "mesh": "default",
        "name": "httpbin-from-web", "spec": {"targetRef": {"kind": "MeshService", "name": "httpbin"},
        "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Allow"}}]}}));
    let external = [EgressExternal {
        mesh: "default".into(),
        service: "httpbin".into(),
        endpoint: endpoint("198.18.9.2", 443, "httpbin"),
        tls: Some(OriginatedTls {
            sni: Some("httpbin.org".into()),
            ca_pem: Some(certificate("ca.crt")),
            verify_name: Some("httpbin.org".into()),
            ..Default::default()
        }),
        permission: permission_of("httpbin", &[only_web]),
    }];
    let tls = BTreeMap::from([(
        "default".to_string(),
        TlsMaterial {
            identity_cert_pem: "EGRESS CERT".into(),
            identity_key_pem: "EGRESS KEY".into(),
            ca_cert_pem: "CA CERT".into(),
        },
    )]);
    // A cross-zone route passes through beside it, TLS untouched.
    let routes = BTreeMap::from([(
        "backend.default.mesh".to_string(),
        vec![endpoint("198.18.2.2", 10000, "backend")],
    )]);
    // Its cluster takes the top-level Mesh policies' health check (as a TCP connect check of
    // each remote ingress) and connect timeout (Kuma #8297: health kept per remote zone).
    let route_rules = BTreeMap::from([(
        "backend.default.mesh".to_string(),
        meshzone_xds::policy::zone_egress::EgressRouteRules {
            health_check: Some(
                json!({"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 1,
                "http": {"path": "/health"}}),
            ),
            timeout: Some(json!({"connectionTimeout": "500ms"})),
        },
    )]);
    let input = SniRouterInput {
        listener_name: "inbound:198.18.1.3:10002",
        address: "198.18.1.3",
        port: 10002,
        routes: &routes,
        external: &external,
        tls: &tls,
        route_rules: &route_rules,
    };
    let snapshot = generate_sni_router(&input);
    let json = json!({
        "listeners": json_by_name(&snapshot, TypeUrl::Listener),
        "clusters": json_by_name(&snapshot, TypeUrl::Cluster),
        "endpoints": json_by_name(&snapshot, TypeUrl::ClusterLoadAssignment),
        "secrets": json_by_name(&snapshot, TypeUrl::Secret).as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
    });
    assert_golden("external-service-egress.golden.json", &json);
    let chains = &json["listeners"]["inbound:198.18.1.3:10002"]["filterChains"];
    let chain = chains
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["filterChainMatch"]["serverNames"][0] == json!("httpbin.default.mesh"))
        })
        .expect("a chain for httpbin");
    assert_eq!(
        chain["transportSocket"]["typedConfig"]["requireClientCertificate"],
        json!(true)
    );
    assert_eq!(
        chain["filters"][0]["name"],
        json!("envoy.filters.network.rbac")
    );
    assert_eq!(
        json["clusters"]["external:default:httpbin"]["transportSocket"]["typedConfig"]["sni"],
        json!("httpbin.org")
    );
    assert_eq!(
        json["secrets"],
        json!(["identity_cert:secret:default", "mesh_ca:secret:default"])
    );
    let backend = &json["clusters"]["backend.default.mesh"];
    assert_eq!(backend["connectTimeout"], json!("0.500s"));
    assert_eq!(backend["healthChecks"][0]["tcpHealthCheck"], json!({}));

    // Envoy accepts it (the listener and clusters as a bootstrap).
    let mut resources = Resources::default();
    for (url, out) in [(TypeUrl::Listener, 0), (TypeUrl::Cluster, 1)] {
        for r in &snapshot.get(url).expect("type").resources {
            use prost::Message;
            if out == 0 {
                resources
                    .listeners
                    .push(meshzone_xds::generate::GeneratedListener {
                        origin: meshzone_xds::generate::ListenerOrigin::SniRouter,
                        listener: Message::decode(r.resource.value.as_slice()).expect("listener"),
                    });
            } else {
                resources
                    .clusters
                    .push(Message::decode(r.resource.value.as_slice()).expect("cluster"));
            }
        }
    }
    assert_envoy_accepts("external-service-egress", &resources);

    // kuma-dp: the passthrough route and the terminating chain with its TLS and RBAC.
    let (config, errors) = ProxyConfig::from_snapshot(&snapshot);
    assert!(errors.is_empty(), "{errors:?}");
    let l = &config.listeners["inbound:198.18.1.3:10002"];
    assert_eq!(
        l.sni_routes.get("backend.default.mesh").map(String::as_str),
        Some("backend.default.mesh")
    );
    let chain = &l.sni_terminated["httpbin.default.mesh"];
    assert_eq!(chain.name, "inbound:198.18.1.3:10002/httpbin.default.mesh");
    assert_eq!(chain.cluster, "external:default:httpbin");
    assert!(!chain.bind);
    let tls = chain.tls.as_ref().expect("terminates mTLS");
    assert_eq!(tls.identity_secret, "identity_cert:secret:default");
    assert!(chain.rbac.is_some());
    assert_eq!(
        config.clusters["external:default:httpbin"]
            .origination
            .as_ref()
            .and_then(|o| o.sni.as_deref()),
        Some("httpbin.org")
    );

    // The same SNI offered by another zone: one passthrough chain, no terminating one.
    let mut offered = routes.clone();
    offered.insert(
        "httpbin.default.mesh".into(),
        vec![endpoint("198.18.2.2", 10000, "httpbin")],
    );
    let both = generate_sni_router(&SniRouterInput {
        routes: &offered,
        ..input
    });
    let (config, errors) = ProxyConfig::from_snapshot(&both);
    assert!(errors.is_empty(), "{errors:?}");
    let l = &config.listeners["inbound:198.18.1.3:10002"];
    assert!(l.sni_routes.contains_key("httpbin.default.mesh"));
    assert!(l.sni_terminated.is_empty());
}
