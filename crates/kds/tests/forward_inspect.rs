//! `KdsSync.ForwardInspect` between global instances refuses what it must: an instance without
//! a shared store takes no forwarded requests, and one that takes them wants the instances'
//! token; with it, a request about a zone this instance has no stream of says so. Global's real
//! KDS service on a loopback socket, called by tonic's client.

use std::sync::Arc;

use meshzone_kds::KdsMetrics;
use meshzone_kds::global::GlobalKds;
use meshzone_kds::inspect::InspectHub;
use meshzone_kds::proto::kds_sync_client::KdsSyncClient;
use meshzone_kds::proto::{ForwardedInspect, InspectRequest};
use meshzone_lifecycle::Shutdown;
use meshzone_store::{AnyBackend, MemoryBackend, Store};
use tonic::Code;

async fn serve(token: Option<&str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut service = GlobalKds::new(
        Store::new(AnyBackend::Memory(MemoryBackend::new())),
        "global-1".into(),
        Arc::new(|_: &[u8]| None),
        false,
        InspectHub::default(),
        Shutdown::new(),
        KdsMetrics::register(&meshzone_metrics::Registry::new()),
    );
    if let Some(t) = token {
        service = service.taking_forwarded_requests(t.to_string());
    }
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

async fn forward(url: &str, token: Option<&str>) -> tonic::Status {
    let mut client = KdsSyncClient::connect(url.to_string())
        .await
        .expect("connect");
    let mut call = tonic::Request::new(ForwardedInspect {
        zone: "zone-1".into(),
        request: Some(InspectRequest {
            what: "config-dump".into(),
            ..Default::default()
        }),
    });
    if let Some(t) = token {
        call.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    client
        .forward_inspect(call)
        .await
        .expect_err("no zone-1 stream here: never an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_need_a_shared_store_and_the_instances_token() {
    let alone = serve(None).await;
    let s = forward(&alone, Some("anything")).await;
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    assert!(s.message().contains("shares no Postgres store"), "{s:?}");

    let shared = serve(Some("the-token")).await;
    for wrong in [None, Some("not-the-token"), Some("the-toke")] {
        let s = forward(&shared, wrong).await;
        assert_eq!(s.code(), Code::Unauthenticated, "{wrong:?}: {s:?}");
    }
    // The right token gets through, to the honest answer that zone-1 is not connected here.
    let s = forward(&shared, Some("the-token")).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("zone-1"), "{s:?}");
}
