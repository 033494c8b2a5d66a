//! A zone may push over KDS only what it owns (issue 14's matrix): global's real KDS service on
//! a loopback socket, and a zone client that pushes a Mesh, a policy, a Dataplane named like
//! another zone's copy, and removals of global's and another zone's resources. The Mesh and the
//! policy are refused in the ACK; nothing of global's or of the other zone changes; the zone's
//! own Dataplane is stored under its own name.

use std::sync::Arc;
use std::time::Duration;

use meshzone_kds::KdsMetrics;
use meshzone_kds::global::GlobalKds;
use meshzone_kds::inspect::InspectHub;
use meshzone_kds::proto::Changes;
use meshzone_kds::proto::kds_sync_client::KdsSyncClient;
use meshzone_kds::proto::kds_sync_server::KdsSyncServer;
use meshzone_kds::{sync, wire};
use meshzone_lifecycle::Shutdown;
use meshzone_model::{Resource, ResourceKey, ResourceType};
use meshzone_store::{AnyBackend, MemoryBackend, Store};
use serde_json::json;

fn resource(v: serde_json::Value) -> Resource {
    let r = Resource::from_value(v).expect("parses");
    meshzone_model::validate(&r).expect("valid");
    r
}

fn dataplane(name: &str, address: &str) -> Resource {
    resource(json!({"type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": address, "inbound": [{"port": 8080, "tags": {"kuma.io/service": "echo"}}]}}))
}

async fn serve(store: Store) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = GlobalKds::new(
        store,
        "global-1".into(),
        Arc::new(|_: &[u8]| None),
        false,
        InspectHub::default(),
        Shutdown::new(),
        KdsMetrics::register(&meshzone_metrics::Registry::new()),
    );
    let server: KdsSyncServer<GlobalKds> = service.into_server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_cannot_push_what_it_does_not_own() {
    let store = Store::new(AnyBackend::Memory(MemoryBackend::new()));
    store
        .create(resource(json!({"type": "Mesh", "name": "default"})))
        .await
        .expect("mesh");
    let allow = resource(
        json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all-default",
        "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}}),
    );
    store.create(allow.clone()).await.expect("policy");
    // Zone-2's Dataplane, as global stores it (owned by its Zone).
    store
        .create(sync::zone_resource("zone-2"))
        .await
        .expect("zone-2");
    let theirs = sync::map_from_zone("zone-2", dataplane("dp-1", "10.0.2.1"));
    store.create(theirs.clone()).await.expect("zone-2's copy");

    let url = serve(store.clone()).await;
    let mut client = KdsSyncClient::connect(url).await.expect("connects");
    let pushed = [
        resource(json!({"type": "Mesh", "name": "evil"})),
        resource(
            json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "sneaky",
            "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]}}),
        ),
        // Named like zone-2's copy, with another address.
        dataplane(&theirs.meta.name, "10.6.6.6"),
        dataplane("dp-1", "10.0.1.1"),
    ];
    let removed = [
        theirs.key(),
        allow.key(),
        ResourceKey::global(ResourceType::Mesh, "default"),
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(Changes {
        nonce: "1".into(),
        initial: true,
        types: ResourceType::sent_to_global()
            .iter()
            .map(|t| t.name().to_string())
            .collect(),
        upserted: pushed.iter().map(wire::to_wire).collect(),
        removed: removed.iter().map(wire::key_to_wire).collect(),
        protocol_version: wire::PROTOCOL_VERSION.into(),
        zone: "zone-1".into(),
        instance_id: "zone-1-cp".into(),
    })
    .await
    .expect("queued");
    let mut acks = client
        .zone_to_global(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let ack = tokio::time::timeout(Duration::from_secs(10), acks.message())
        .await
        .expect("an ACK in time")
        .expect("no error")
        .expect("an ACK");
    let refused: Vec<(String, String)> = ack
        .rejections
        .iter()
        .map(|r| {
            (
                r.key.as_ref().map(|k| k.name.clone()).unwrap_or_default(),
                r.reason.clone(),
            )
        })
        .collect();
    for name in ["evil", "sneaky"] {
        assert!(
            refused
                .iter()
                .any(|(n, why)| n == name && why.contains("global does not accept")),
            "{name} refused: {refused:?}"
        );
    }

    // Nothing of global's or zone-2's changed.
    assert!(
        store
            .find(&ResourceKey::global(ResourceType::Mesh, "evil"))
            .await
            .expect("find")
            .is_none()
    );
    assert!(
        store
            .find(&ResourceKey::global(ResourceType::Mesh, "default"))
            .await
            .expect("find")
            .is_some()
    );
    let policies = store
        .list(ResourceType::MeshTrafficPermission, Some("default"))
        .await
        .expect("list");
    let names: Vec<&str> = policies.iter().map(|p| p.meta.name.as_str()).collect();
    assert_eq!(names, ["allow-all-default"]);
    let kept = store
        .find(&theirs.key())
        .await
        .expect("find")
        .expect("zone-2's Dataplane is still there");
    assert_eq!(kept.spec, theirs.spec, "zone-2's Dataplane unchanged");
    // Zone-1's own Dataplane went in under zone-1's name.
    let ours = sync::map_from_zone("zone-1", dataplane("dp-1", "10.0.1.1"));
    assert!(
        store.find(&ours.key()).await.expect("find").is_some(),
        "zone-1's Dataplane stored as {}",
        ours.meta.name
    );
}
