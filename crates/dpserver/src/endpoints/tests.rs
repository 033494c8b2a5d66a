use super::*;
use meshzone_model::parse_documents;

fn resource(yaml: &str) -> Resource {
    let value = parse_documents(yaml)
        .expect("yaml")
        .into_iter()
        .next()
        .expect("one document");
    Resource::from_value(value).expect("valid resource")
}

fn mesh(extra: &str) -> MeshSpec {
    let r = resource(&format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n{extra}"
    ));
    let Spec::Mesh(m) = r.spec else {
        panic!("mesh")
    };
    m
}

fn plain_mesh() -> MeshSpec {
    MeshSpec::default()
}

fn local(name: &str, address: &str) -> Resource {
    resource(&format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n  - port: 10001\n    tags:\n      kuma.io/service: echo\n      kuma.io/zone: zone-2\n"
    ))
}

fn ingress(zone: &str, address: &str, instances: u32) -> RemoteIngress {
    RemoteIngress {
        zone: zone.into(),
        address: address.into(),
        port: 10000,
        available: vec![AvailableService {
            tags: [(SERVICE_TAG.to_string(), "echo".to_string())].into(),
            instances,
            mesh: "default".into(),
            external_service: false,
        }],
    }
}

fn weights(eps: &[EndpointInfo]) -> Vec<(String, u32, u32)> {
    eps.iter()
        .map(|e| (e.address.clone(), e.weight, e.priority))
        .collect()
}

#[test]
fn a_remote_zone_weighs_its_instance_count() {
    let out = mesh_endpoints(
        "default",
        &mesh(""),
        &[local("a", "10.0.2.1")],
        &[ingress("zone-1", "10.0.1.100", 2)],
        &[],
    );
    assert_eq!(
        weights(&out["echo"]),
        vec![("10.0.2.1".into(), 1, 0), ("10.0.1.100".into(), 2, 0)]
    );
    assert_eq!(out["echo"][1].zone.as_deref(), Some("zone-1"));
}

#[test]
fn several_ingresses_of_a_zone_share_its_weight_and_locals_scale_up() {
    let out = mesh_endpoints(
        "default",
        &mesh(""),
        &[local("a", "10.0.2.1")],
        &[
            ingress("zone-1", "10.0.1.100", 2),
            ingress("zone-1", "10.0.1.101", 2),
            ingress("zone-3", "10.0.3.100", 3),
        ],
        &[],
    );
    // Scale 2: local 2; zone-1 (2 instances) → 2 + 2; zone-3 (3 instances) → 6.
    assert_eq!(
        weights(&out["echo"]),
        vec![
            ("10.0.2.1".into(), 2, 0),
            ("10.0.1.100".into(), 2, 0),
            ("10.0.1.101".into(), 2, 0),
            ("10.0.3.100".into(), 6, 0),
        ]
    );
}

#[test]
fn locality_aware_puts_remote_zones_behind_local_ones() {
    let out = mesh_endpoints(
        "default",
        &mesh("routing:\n  localityAwareLoadBalancing: true\n"),
        &[local("a", "10.0.2.1")],
        &[ingress("zone-1", "10.0.1.100", 2)],
        &[],
    );
    assert_eq!(
        weights(&out["echo"]),
        vec![("10.0.2.1".into(), 1, 0), ("10.0.1.100".into(), 2, 1)]
    );
}

#[test]
fn without_mtls_there_are_no_remote_endpoints() {
    let out = mesh_endpoints(
        "default",
        &plain_mesh(),
        &[],
        &[ingress("zone-1", "10.0.1.100", 2)],
        &[],
    );
    assert!(!out.contains_key("echo"));
}

#[test]
fn zone_egress_carries_the_remote_share() {
    let egress = LocalEgress {
        address: "10.0.2.50".into(),
        port: 10002,
    };
    let out = mesh_endpoints(
        "default",
        &mesh("routing:\n  zoneEgress: true\n"),
        &[local("a", "10.0.2.1")],
        &[ingress("zone-1", "10.0.1.100", 2)],
        std::slice::from_ref(&egress),
    );
    assert_eq!(
        weights(&out["echo"]),
        vec![("10.0.2.1".into(), 1, 0), ("10.0.2.50".into(), 2, 0)]
    );
    // Without an egress in the zone, traffic goes straight to the ingress.
    let direct = mesh_endpoints(
        "default",
        &mesh("routing:\n  zoneEgress: true\n"),
        &[],
        &[ingress("zone-1", "10.0.1.100", 2)],
        &[],
    );
    assert_eq!(weights(&direct["echo"]), vec![("10.0.1.100".into(), 2, 0)]);
}

#[test]
fn ingress_and_egress_route_by_the_mesh_sni() {
    let meshes = vec![resource(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
    )];
    let routes = ingress_routes(
        &meshes,
        &[local("a", "10.0.2.1"), local("b", "10.0.2.2")],
        &[],
        &[],
    );
    assert_eq!(routes.keys().collect::<Vec<_>>(), vec!["echo.default.mesh"]);
    assert_eq!(routes["echo.default.mesh"].len(), 2);
    let routes = egress_routes(
        &meshes,
        &[
            ingress("zone-1", "10.0.1.100", 2),
            ingress("zone-3", "10.0.3.100", 1),
        ],
        &[],
        &[],
    )
    .routes;
    assert_eq!(
        weights(&routes["echo.default.mesh"]),
        vec![("10.0.1.100".into(), 2, 0), ("10.0.3.100".into(), 1, 0)]
    );
    assert!(
        ingress_routes(
            &[resource("type: Mesh\nname: plain\n")],
            &[local("a", "10.0.2.1")],
            &[],
            &[]
        )
        .is_empty()
    );
}

fn versioned(name: &str, address: &str, version: &str) -> Resource {
    resource(&format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n  - port: 10001\n    tags:\n      kuma.io/service: echo\n      kuma.io/zone: zone-2\n      version: {version}\n"
    ))
}

/// An ingress of `zone` offering echo instances per version.
fn versioned_ingress(zone: &str, address: &str, versions: &[(&str, u32)]) -> RemoteIngress {
    RemoteIngress {
        zone: zone.into(),
        address: address.into(),
        port: 10000,
        available: versions
            .iter()
            .map(|(v, n)| AvailableService {
                tags: [
                    (SERVICE_TAG.to_string(), "echo".to_string()),
                    ("version".to_string(), v.to_string()),
                ]
                .into(),
                instances: *n,
                mesh: "default".into(),
                external_service: false,
            })
            .collect(),
    }
}

/// A MeshHTTPRoute of mesh `default` sending to these echo subsets.
fn route_to(subsets: &[serde_json::Value]) -> Policy {
    use meshzone_model::policy::{PolicySpec, RouteRule, TargetRef, ToItem};
    let refs: Vec<serde_json::Value> = subsets
        .iter()
        .map(|tags| serde_json::json!({"kind": "MeshServiceSubset", "name": "echo", "tags": tags}))
        .collect();
    Policy::new(
        "split",
        "default",
        PolicySpec {
            to: vec![ToItem {
                target_ref: serde_json::from_value::<TargetRef>(
                    serde_json::json!({"kind": "MeshService", "name": "echo"}),
                )
                .expect("targetRef"),
                default: None,
                rules: Some(vec![RouteRule {
                    matches: None,
                    default: serde_json::json!({ "backendRefs": refs }),
                }]),
            }],
            ..Default::default()
        },
    )
}

#[test]
fn remote_ingresses_come_once_per_tag_set_with_its_instances() {
    let out = mesh_endpoints(
        "default",
        &mesh(""),
        &[versioned("a", "10.0.2.1", "v1")],
        &[versioned_ingress(
            "zone-1",
            "10.0.1.100",
            &[("v1", 2), ("v2", 1)],
        )],
        &[],
    );
    let echo = &out["echo"];
    assert_eq!(
        weights(echo),
        vec![
            ("10.0.2.1".into(), 1, 0),
            ("10.0.1.100".into(), 2, 0),
            ("10.0.1.100".into(), 1, 0)
        ]
    );
    assert_eq!(echo[0].tags.get("version").map(String::as_str), Some("v1"));
    assert_eq!(echo[2].tags.get("version").map(String::as_str), Some("v2"));
    assert_eq!(
        echo[2].tags.get(ZONE_TAG).map(String::as_str),
        Some("zone-1"),
        "the ingress's zone is one of the tags"
    );
    // Through an egress: one egress endpoint per remote tag set, same shares.
    let via_egress = mesh_endpoints(
        "default",
        &mesh("routing:\n  zoneEgress: true\n"),
        &[versioned("a", "10.0.2.1", "v1")],
        &[versioned_ingress(
            "zone-1",
            "10.0.1.100",
            &[("v1", 2), ("v2", 1)],
        )],
        &[LocalEgress {
            address: "10.0.2.50".into(),
            port: 10002,
        }],
    );
    let egress: Vec<(String, u32, Option<String>)> = via_egress["echo"]
        .iter()
        .filter(|e| e.address == "10.0.2.50")
        .map(|e| (e.address.clone(), e.weight, e.tags.get("version").cloned()))
        .collect();
    assert_eq!(
        egress,
        vec![
            ("10.0.2.50".into(), 2, Some("v1".into())),
            ("10.0.2.50".into(), 1, Some("v2".into()))
        ]
    );
}

#[test]
fn routed_subsets_get_their_own_sni_on_ingresses_and_egresses() {
    use meshzone_xds::policy::backend_refs::subset_sni;
    let meshes = vec![resource(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
    )];
    let v2 = serde_json::json!({"version": "v2"});
    let zone2 = serde_json::json!({"kuma.io/zone": "zone-2"});
    let zone3 = serde_json::json!({"kuma.io/zone": "zone-3"});
    let policies = [route_to(&[v2.clone(), zone2.clone(), zone3.clone()])];
    let tags = |v: &serde_json::Value| -> Tags { serde_json::from_value(v.clone()).expect("tags") };
    let sni_of = |v: &serde_json::Value| subset_sni("echo", &tags(v), "default");

    let routes = ingress_routes(
        &meshes,
        &[
            versioned("a", "10.0.2.1", "v1"),
            versioned("b", "10.0.2.2", "v2"),
        ],
        &policies,
        &[],
    );
    let addresses =
        |eps: &[EndpointInfo]| -> Vec<String> { eps.iter().map(|e| e.address.clone()).collect() };
    assert_eq!(
        addresses(&routes["echo.default.mesh"]),
        ["10.0.2.1", "10.0.2.2"]
    );
    assert_eq!(addresses(&routes[&sni_of(&v2)]), ["10.0.2.2"]);
    assert_eq!(
        addresses(&routes[&sni_of(&zone2)]),
        ["10.0.2.1", "10.0.2.2"]
    );
    assert!(
        !routes.contains_key(&sni_of(&zone3)),
        "no local instance of zone-3: no chain"
    );
    assert_eq!(routes.len(), 3);

    let routes = egress_routes(
        &meshes,
        &[
            versioned_ingress("zone-1", "10.0.1.100", &[("v1", 2), ("v2", 1)]),
            versioned_ingress("zone-3", "10.0.3.100", &[("v2", 3)]),
        ],
        &policies,
        &[],
    )
    .routes;
    assert_eq!(
        weights(&routes["echo.default.mesh"]),
        vec![("10.0.1.100".into(), 3, 0), ("10.0.3.100".into(), 3, 0)]
    );
    assert_eq!(
        weights(&routes[&sni_of(&v2)]),
        vec![("10.0.1.100".into(), 1, 0), ("10.0.3.100".into(), 3, 0)]
    );
    assert_eq!(
        weights(&routes[&sni_of(&zone3)]),
        vec![("10.0.3.100".into(), 3, 0)]
    );
    assert!(!routes.contains_key(&sni_of(&zone2)));
    // Another mesh's routes add nothing.
    let elsewhere = Policy {
        mesh: "other".into(),
        ..route_to(std::slice::from_ref(&v2))
    };
    assert_eq!(
        ingress_routes(
            &meshes,
            &[versioned("b", "10.0.2.2", "v2")],
            &[elsewhere],
            &[]
        )
        .len(),
        1
    );

    // A VirtualOutbound per version asks for the same subsets as a route would.
    let by_version = resource(
        "type: VirtualOutbound\nmesh: default\nname: by-version\nselectors:\n- match:\n    kuma.io/service: '*'\nconf:\n  host: '{{.v}}.{{.s}}.mesh'\n  port: '80'\n  parameters:\n  - name: s\n    tagKey: kuma.io/service\n  - name: v\n    tagKey: version\n",
    );
    let routes = ingress_routes(
        &meshes,
        &[
            versioned("a", "10.0.2.1", "v1"),
            versioned("b", "10.0.2.2", "v2"),
        ],
        &[],
        std::slice::from_ref(&by_version),
    );
    assert_eq!(addresses(&routes[&sni_of(&v2)]), ["10.0.2.2"]);
    let routes = egress_routes(
        &meshes,
        &[versioned_ingress(
            "zone-1",
            "10.0.1.100",
            &[("v1", 2), ("v2", 1)],
        )],
        &[],
        &[by_version],
    )
    .routes;
    assert_eq!(
        weights(&routes[&sni_of(&v2)]),
        vec![("10.0.1.100".into(), 1, 0)]
    );
}
