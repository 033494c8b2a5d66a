//! Replays every committed input of `fuzz/corpus/<target>/` through its target. With
//! `MESHZONE_WRITE_FUZZ_SEEDS=1` it first (re)writes the seeds, made by the real encoders.

use std::path::PathBuf;

use super::*;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

const DOCUMENTS: &[&str] = &[
    "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\nrouting:\n  zoneEgress: true\n",
    "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 10.0.0.1\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags:\n      kuma.io/service: web\n      kuma.io/protocol: http\n  outbound:\n  - port: 20001\n    tags:\n      kuma.io/service: backend\n",
    "type: MeshTrafficPermission\nname: allow\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: backend}\n  from:\n  - targetRef: {kind: MeshSubset, tags: {kuma.io/zone: zone-1}}\n    default: {action: Allow}\n",
    "type: MeshHTTPRoute\nname: split\nmesh: default\nspec:\n  targetRef: {kind: MeshService, name: web}\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    rules:\n    - matches: [{path: {type: PathPrefix, value: /v2}}]\n      default:\n        backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 90}]\n",
    "type: MeshRetry\nname: retry\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: Mesh}\n    default:\n      http: {numRetries: 3, perTryTimeout: 500ms, retryOn: [5xx]}\n---\ntype: MeshHealthCheck\nname: hc\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: backend}\n    default: {interval: 1s, timeout: 500ms, http: {path: /health}}\n",
    "type: ExternalService\nmesh: default\nname: httpbin\nnetworking:\n  address: httpbin.org:443\n  tls: {enabled: true}\ntags:\n  kuma.io/service: httpbin\n",
    "{\"type\": \"Zone\", \"name\": \"zone-1\", \"enabled\": false}",
];

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let resources: Vec<Resource> = DOCUMENTS
        .iter()
        .flat_map(|d| meshzone_model::parse_documents(d).expect("a seed document parses"))
        .map(|v| Resource::from_value(v).expect("a seed resource"))
        .collect();
    let changes = |zone: &str| {
        Changes {
            nonce: "1".into(),
            initial: true,
            types: resources
                .iter()
                .map(|r| r.resource_type().name().to_string())
                .collect(),
            upserted: resources.iter().map(wire::to_wire).collect(),
            removed: resources
                .iter()
                .map(|r| wire::key_to_wire(&r.key()))
                .collect(),
            protocol_version: wire::PROTOCOL_VERSION.into(),
            zone: zone.into(),
            instance_id: "seed".into(),
        }
        .encode_to_vec()
    };
    vec![
        (
            "resource_document",
            DOCUMENTS.iter().map(|d| d.as_bytes().to_vec()).collect(),
        ),
        ("kds_from_zone", vec![changes("zone-1")]),
        ("kds_from_global", vec![changes("")]),
        ("xds_response", xds_seeds()),
        (
            "client_hello",
            vec![meshzone_tls_client::fixtures::client_hello(
                "echo.default.mesh",
            )],
        ),
        (
            "dns_query",
            vec![dns_seed("echo.mesh."), dns_seed("nope.mesh.")],
        ),
        ("jwt", vec![seed_token().into_bytes()]),
    ]
}

/// A zone egress's configuration from the generator, one DiscoveryResponse per type.
fn xds_seeds() -> Vec<Vec<u8>> {
    use meshzone_xds::discovery::DiscoveryResponse;
    use meshzone_xds::generate::{EndpointInfo, SniRouterInput, generate_sni_router};
    use meshzone_xds::names::TypeUrl;
    let endpoint = |address: &str, zone: &str| EndpointInfo {
        address: address.into(),
        port: 10000,
        weight: 1,
        zone: Some(zone.into()),
        priority: 0,
        tags: Default::default(),
        via_egress: false,
    };
    let routes = BTreeMap::from([(
        "echo.default.mesh".to_string(),
        vec![
            endpoint("10.0.1.2", "zone-1"),
            endpoint("10.0.3.2", "zone-3"),
        ],
    )]);
    let snapshot = generate_sni_router(&SniRouterInput {
        listener_name: "inbound:10.0.2.3:10002",
        address: "10.0.2.3",
        port: 10002,
        routes: &routes,
        external: &[],
        tls: &BTreeMap::new(),
        route_rules: &BTreeMap::new(),
    });
    TypeUrl::ALL
        .iter()
        .filter_map(|t| snapshot.get(*t).map(|s| (t, s)))
        .map(|(t, s)| {
            DiscoveryResponse {
                version_info: "1".into(),
                type_url: t.as_str().to_string(),
                resources: s.resources.iter().map(|r| r.resource.clone()).collect(),
                nonce: "1".into(),
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect()
}

fn dns_seed(name: &str) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a name"),
        RecordType::A,
    ));
    m.to_vec().expect("encodes")
}

#[test]
fn every_corpus_input_runs_through_its_target() {
    if std::env::var("MESHZONE_WRITE_FUZZ_SEEDS").is_ok_and(|v| v == "1") {
        for (target, inputs) in seeds() {
            let dir = corpus(target);
            std::fs::create_dir_all(&dir).expect("corpus dir");
            for (i, input) in inputs.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), input).expect("seed");
            }
        }
    }
    for (target, run) in TARGETS {
        let dir = corpus(target);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (MESHZONE_WRITE_FUZZ_SEEDS=1 writes the seeds)",
                    dir.display()
                )
            })
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        inputs.sort();
        assert!(
            !inputs.is_empty(),
            "{target}: no corpus in {}",
            dir.display()
        );
        for input in inputs {
            let data = std::fs::read(&input).expect("readable");
            run(&data);
        }
    }
}

#[test]
fn seeds_reach_the_deep_paths() {
    // The seeds are real inputs, so the targets get past the first parse: a fuzzer starts deep.
    for (target, inputs) in seeds() {
        assert!(!inputs.is_empty(), "{target}");
    }
    let hello = meshzone_tls_client::fixtures::client_hello("echo.default.mesh");
    let mut reader = meshzone_tls_client::client_hello::ClientHelloReader::default();
    assert_eq!(
        reader.push(&hello),
        Ok(meshzone_tls_client::client_hello::Hello::Complete(Some(
            "echo.default.mesh".into()
        )))
    );
    let q = hickory_proto::op::Message::from_vec(&dns_seed("echo.mesh.")).expect("parses");
    let a = meshzone_dns::answer::answer(&q, vip_table(), "mesh");
    assert_eq!(a.answers.len(), 1);
    let token = seed_token();
    assert!(
        meshzone_pki::verify_token::<meshzone_identity::UserClaims>(
            &token,
            &key().1,
            SystemTime::now()
        )
        .is_ok()
    );
}
