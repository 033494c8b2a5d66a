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
    let routes = ingress_routes(&meshes, &[local("a", "10.0.2.1"), local("b", "10.0.2.2")]);
    assert_eq!(routes.keys().collect::<Vec<_>>(), vec!["echo.default.mesh"]);
    assert_eq!(routes["echo.default.mesh"].len(), 2);
    let routes = egress_routes(
        &meshes,
        &[
            ingress("zone-1", "10.0.1.100", 2),
            ingress("zone-3", "10.0.3.100", 1),
        ],
    );
    assert_eq!(
        weights(&routes["echo.default.mesh"]),
        vec![("10.0.1.100".into(), 2, 0), ("10.0.3.100".into(), 1, 0)]
    );
    assert!(
        ingress_routes(
            &[resource("type: Mesh\nname: plain\n")],
            &[local("a", "10.0.2.1")]
        )
        .is_empty()
    );
}
