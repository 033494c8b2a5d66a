//! `ProxyAdmin.Forward` between zone instances refuses what it must: an instance without a
//! shared store takes no forwarded requests, and one that takes them wants the instances' token;
//! with it, a request about a proxy connected elsewhere gets the honest answer that it is not
//! connected here, and an unknown type is named. The zone CP's real proxy admin service on a
//! loopback socket, called by tonic's client; the shared store is a real Postgres database
//! (MESHZONE_TEST_POSTGRES_URL, which scripts/test.sh sets).

use std::time::Duration;

use meshzone_dp_server::{AdsService, DpServerSettings, XdsMetrics};
use meshzone_lifecycle::Shutdown;
use meshzone_store::postgres::PostgresBackend;
use meshzone_store::postgres::testing::TestDatabase;
use meshzone_store::{AnyBackend, MemoryBackend, Store};
use meshzone_xds::proxy_admin::proxy_admin_client::ProxyAdminClient;
use meshzone_xds::proxy_admin::{AdminAnswer, ForwardedRequest};
use tonic::Code;

/// Serves one instance's proxy admin service; `shared`: the database and token it shares.
async fn serve(shared: Option<(PostgresBackend, &str)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ads = AdsService::new(
        Store::new(AnyBackend::Memory(MemoryBackend::new())),
        DpServerSettings {
            instance_id: "zone-a".into(),
            require_token: true,
            deregistration_delay: Duration::from_secs(10),
            zone: Some("zone-1".into()),
            create_ca: false,
        },
        Shutdown::new(),
        XdsMetrics::register(&meshzone_metrics::Registry::new()),
    );
    if let Some((backend, token)) = shared {
        ads.forward_between_instances(backend, "zone-a".into(), token.to_string());
    }
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads.proxy_admin_service().into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

async fn forward(
    url: &str,
    token: Option<&str>,
    resource_type: &str,
) -> Result<AdminAnswer, tonic::Status> {
    let mut client = ProxyAdminClient::connect(url.to_string())
        .await
        .expect("connect");
    let mut call = tonic::Request::new(ForwardedRequest {
        what: "config-dump".into(),
        r#type: resource_type.into(),
        mesh: "default".into(),
        name: "web-1".into(),
    });
    if let Some(t) = token {
        meshzone_tls_client::bearer::present(call.metadata_mut(), t).expect("a header-safe token");
    }
    client.forward(call).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_need_a_shared_store_and_the_instances_token() {
    let alone = serve(None).await;
    let s = forward(&alone, Some("anything"), "Dataplane")
        .await
        .expect_err("no shared store: refused");
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    assert!(s.message().contains("shares no Postgres store"), "{s:?}");

    let db = TestDatabase::migrated().await;
    let backend = PostgresBackend::connect(db.settings.clone())
        .await
        .expect("the test database");
    let shared = serve(Some((backend, "the-token"))).await;
    for wrong in [None, Some("not-the-token"), Some("the-toke")] {
        let s = forward(&shared, wrong, "Dataplane")
            .await
            .expect_err("a wrong token: refused");
        assert_eq!(s.code(), Code::Unauthenticated, "{wrong:?}: {s:?}");
    }
    // The right token gets through: an unknown type is named, and a proxy this instance has no
    // stream of is said to be elsewhere (never forwarded again from here).
    let s = forward(&shared, Some("the-token"), "Gadget")
        .await
        .expect_err("an unknown type: refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("Gadget"), "{s:?}");
    let answer = forward(&shared, Some("the-token"), "Dataplane")
        .await
        .expect("an answer");
    assert!(answer.body.is_empty(), "{answer:?}");
    assert!(
        answer.error.contains("web-1") && answer.error.contains("not connected to this instance"),
        "{answer:?}"
    );
    db.drop_now().await;
}
