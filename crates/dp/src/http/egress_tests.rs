//! Kuma #8297 on kuma-dp's HTTP path, with real sockets on loopback: an endpoint marked as the
//! zone's egress is not ejected for what fails past it (an answer, a TLS handshake that the
//! egress could not complete), since that belongs to one remote zone whose health the egress
//! keeps; not reaching the egress still ejects it. The same failures eject an unmarked endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshzone_xds::decode::{
    ClusterPlan, EndpointPlan, OutlierPlan, ProxyConfig, SanMatch, SecretPlan, TlsPlan,
};
use tokio::net::TcpListener;

use super::loopback::{listener_to, serve_listener};
use crate::rbac::tests::Pki;
use crate::runtime::Runtime;
use crate::stats::Stats;

/// An HTTP app answering every request with `status`.
async fn app(status: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                        let mut r = Response::new(Full::new(Bytes::from("answer")));
                        *r.status_mut() = StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(r)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    addr
}

/// Accepts connections and closes them at once: a TLS handshake through it fails after the TCP
/// connection was made (an egress that could not reach the remote zone).
async fn closing() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            drop(conn);
        }
    });
    addr
}

/// Ejects at the first 5xx or local-origin failure, for a long time.
fn eager_outlier() -> OutlierPlan {
    OutlierPlan {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(60),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 100,
        split_local_origin: true,
        consecutive_5xx: Some(1),
        consecutive_gateway_failure: None,
        consecutive_local_origin_failure: Some(1),
        success_rate: None,
        failure_percentage: None,
    }
}

/// Cluster `backend` over one endpoint (marked as the egress or not), optionally with mTLS.
async fn front(
    endpoint: SocketAddr,
    via_zone_egress: bool,
    tls: bool,
) -> (SocketAddr, Arc<Runtime>, Arc<Stats>) {
    let mut config = ProxyConfig::default();
    let mut plan = ClusterPlan {
        name: "backend".into(),
        outlier: Some(eager_outlier()),
        ..Default::default()
    };
    if tls {
        let pki = Pki::new();
        let client = pki.workload("web", &[]);
        plan.tls = Some(TlsPlan {
            identity_secret: "id".into(),
            ca_secret: "ca".into(),
            peer: vec![SanMatch::Exact("spiffe://default/backend".into())],
            sni: Some("backend{mesh=default}".into()),
        });
        config.secrets.insert(
            "id".into(),
            SecretPlan::Identity {
                cert_pem: client.cert_pem,
                key_pem: client.key_pem,
            },
        );
        config.secrets.insert(
            "ca".into(),
            SecretPlan::TrustedCa {
                ca_pem: pki.ca.cert_pem.clone(),
            },
        );
    }
    config.clusters.insert("backend".into(), plan);
    config.endpoints.insert(
        "backend".into(),
        vec![EndpointPlan {
            address: endpoint,
            weight: 1,
            zone: None,
            priority: 0,
            via_zone_egress,
            no_active_health_check: via_zone_egress,
        }],
    );
    config
        .listeners
        .insert("out".into(), listener_to("backend"));
    let (rt, problems) = Runtime::build(config, &Runtime::empty());
    assert!(problems.is_empty(), "{problems:?}");
    let rt = Arc::new(rt);
    let (addr, stats) = serve_listener(rt.clone(), "out").await;
    (addr, rt, stats)
}

async fn status_of(front: SocketAddr) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = format!("http://{front}/").parse().expect("uri");
    client
        .request(req)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn ejected(rt: &Runtime, endpoint: SocketAddr) -> bool {
    rt.clusters["backend"]
        .health
        .is_ejected(endpoint, std::time::Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_past_the_egress_does_not_eject_it() {
    let failing = app(500).await;
    for via_egress in [false, true] {
        let (front, rt, _) = front(failing, via_egress, false).await;
        for _ in 0..3 {
            assert_eq!(status_of(front).await, 500);
        }
        assert_eq!(
            ejected(&rt, failing),
            !via_egress,
            "via the egress: {via_egress}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_failing_past_the_egress_does_not_eject_it_but_an_unreachable_egress_does() {
    let egress = closing().await;
    for via_egress in [false, true] {
        let (front, rt, _) = front(egress, via_egress, true).await;
        for _ in 0..3 {
            assert_ne!(status_of(front).await, 200);
        }
        assert_eq!(
            ejected(&rt, egress),
            !via_egress,
            "via the egress: {via_egress}"
        );
    }
    // Nothing listens: the egress itself is unreachable, and that counts.
    let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead = gone.local_addr().expect("addr");
    drop(gone);
    let (front, rt, _) = front(dead, true, true).await;
    assert_ne!(status_of(front).await, 200);
    assert!(ejected(&rt, dead), "an egress nobody answers is ejected");
}
