//! Active checks with real sockets on loopback: an HTTP endpoint whose health path fails stops
//! receiving the traffic of kuma-dp's HTTP path and gets it back when it heals; TCP send and
//! receive; a black hole fails by timeout after the threshold; gRPC's health service over
//! HTTP/2; probes over the cluster's mTLS with its SNI; fail_traffic_on_panic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshzone_xds::decode::health_checks::{GrpcCheckPlan, HttpCheckPlan, TcpCheckPlan};
use meshzone_xds::decode::routes::HeaderModPlan;
use meshzone_xds::decode::{
    CheckerPlan, ClusterPlan, EndpointPlan, HealthCheckPlan, ProxyConfig, SanMatch, SecretPlan,
    TlsPlan,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::rbac::tests::{Pki, eventually};
use crate::runtime::Runtime;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A check every 30 ms, timeout 300 ms, with these thresholds and checker.
fn check(unhealthy: u32, healthy: u32, checker: CheckerPlan) -> HealthCheckPlan {
    HealthCheckPlan {
        timeout: ms(300),
        interval: ms(30),
        no_traffic_interval: ms(30),
        unhealthy_threshold: unhealthy,
        healthy_threshold: healthy,
        checker,
        ..super::tests::plan(1, 1)
    }
}

fn http_check(path: &str) -> CheckerPlan {
    CheckerPlan::Http(HttpCheckPlan {
        host: None,
        path: path.into(),
        method: "GET".into(),
        expected_statuses: vec![(200, 201)],
        retriable_statuses: vec![],
        headers: HeaderModPlan::default(),
        http2: false,
    })
}

/// An HTTP/1 app: `/health` answers the status in the cell, anything else 200 with `name`,
/// counted.
async fn app(name: &'static str) -> (SocketAddr, Arc<AtomicU16>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let health = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let (h, n) = (health.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (h, n) = (h.clone(), n.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let status = if req.uri().path() == "/health" {
                        h.load(Ordering::SeqCst)
                    } else {
                        n.fetch_add(1, Ordering::SeqCst);
                        200
                    };
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from(name)));
                        *r.status_mut() = StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    (addr, health, hits)
}

fn config_of(cluster: ClusterPlan, endpoints: &[SocketAddr]) -> ProxyConfig {
    let mut config = ProxyConfig::default();
    let name = cluster.name.clone();
    config.clusters.insert(name.clone(), cluster);
    config.endpoints.insert(
        name,
        endpoints
            .iter()
            .map(|a| EndpointPlan {
                address: *a,
                weight: 1,
                zone: None,
                priority: 0,
                via_zone_egress: false,
                no_active_health_check: false,
            })
            .collect(),
    );
    config
}

fn cluster(check: HealthCheckPlan) -> ClusterPlan {
    ClusterPlan {
        name: "backend".into(),
        health_check: Some(check),
        ..Default::default()
    }
}

fn built(config: ProxyConfig) -> Arc<Runtime> {
    let (rt, problems) = Runtime::build(config, &Runtime::empty());
    assert!(problems.is_empty(), "{problems:?}");
    Arc::new(rt)
}

fn failed(rt: &Runtime, a: SocketAddr) -> bool {
    rt.clusters["backend"].health.active.is_failed(a)
}

fn counter(rt: &Runtime, stat: &str) -> u64 {
    rt.clusters["backend"]
        .health_check_stats()
        .into_iter()
        .find(|(k, _)| k == &format!("cluster.backend.health_check.{stat}"))
        .map_or(0, |(_, v)| v)
}

fn with_listener(mut config: ProxyConfig) -> ProxyConfig {
    config
        .listeners
        .insert("out".into(), crate::http::loopback::listener_to("backend"));
    config
}

/// `n` requests through the front; each must be answered 200.
async fn requests(front: SocketAddr, n: usize) {
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..n {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = format!("http://{front}/work").parse().expect("uri");
        let resp = client.request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_path_moves_traffic_to_the_other_endpoint_until_it_heals() {
    let (a, a_health, a_hits) = app("a").await;
    let (b, _, b_hits) = app("b").await;
    let rt = built(with_listener(config_of(
        cluster(check(3, 2, http_check("/health"))),
        &[a, b],
    )));
    let (front, _) = crate::http::loopback::serve_listener(rt.clone(), "out").await;
    requests(front, 10).await;
    assert!(a_hits.load(Ordering::SeqCst) > 0 && b_hits.load(Ordering::SeqCst) > 0);

    a_health.store(503, Ordering::SeqCst);
    eventually("a marked unhealthy", || failed(&rt, a)).await;
    assert_eq!(counter(&rt, "healthy"), 1);
    let before = a_hits.load(Ordering::SeqCst);
    requests(front, 20).await;
    assert_eq!(a_hits.load(Ordering::SeqCst), before, "no traffic to a");

    a_health.store(200, Ordering::SeqCst);
    eventually("a healthy again", || !failed(&rt, a)).await;
    assert_eq!(counter(&rt, "healthy"), 2);
    requests(front, 10).await;
    assert!(
        a_hits.load(Ordering::SeqCst) > before,
        "a gets traffic again"
    );
    assert!(counter(&rt, "failure") >= 1 && counter(&rt, "success") >= 2);
}

/// The zone's egress (Kuma #8297): an endpoint whose `health_check_config` disables active
/// checks is never probed, so a failing health path behind it does not take it out; the other
/// endpoint is still checked and ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_without_active_checks_is_not_probed() {
    let (egress, egress_health, egress_hits) = app("egress").await;
    let (local, local_health, _) = app("local").await;
    egress_health.store(503, Ordering::SeqCst);
    local_health.store(503, Ordering::SeqCst);
    let mut config = config_of(
        cluster(check(1, 1, http_check("/health"))),
        &[egress, local],
    );
    if let Some(eps) = config.endpoints.get_mut("backend") {
        eps[0].no_active_health_check = true;
    }
    let rt = built(with_listener(config));
    eventually("local marked unhealthy", || failed(&rt, local)).await;
    assert!(!failed(&rt, egress), "the unprobed endpoint stays in");
    let (front, _) = crate::http::loopback::serve_listener(rt.clone(), "out").await;
    requests(front, 10).await;
    // 503 on /health would have failed it: every request went to it, none was a probe.
    assert_eq!(egress_hits.load(Ordering::SeqCst), 10);
}

/// A TCP server answering `reply` to whatever arrives.
async fn tcp_server(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = conn.read(&mut buf).await
                    && n > 0
                {
                    let _ = conn.write_all(reply).await;
                }
                // Keep the connection open: a wrong reply must fail on the timeout, not EOF.
                let _ = conn.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_sends_and_expects_its_payloads() {
    let good = tcp_server(b"..PO..NG").await;
    let bad = tcp_server(b"NOPE").await;
    let tcp = CheckerPlan::Tcp(TcpCheckPlan {
        send: b"PING".to_vec(),
        receive: vec![b"PO".to_vec(), b"NG".to_vec()],
    });
    let rt = built(config_of(cluster(check(2, 1, tcp)), &[good, bad]));
    eventually("the wrong answer fails", || failed(&rt, bad)).await;
    eventually("the right one passed twice", || {
        counter(&rt, "success") >= 2
    })
    .await;
    assert!(!failed(&rt, good));
    for _ in 0..4 {
        assert_eq!(rt.clusters["backend"].pick()[0], good);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_fails_by_timeout_after_the_threshold() {
    // Accepts connections and never reads or answers, like a path cut without a FIN.
    let hole = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = hole.accept().await {
            keep.lock().expect("lock").push(conn);
        }
    });
    let (ok, _, _) = app("ok").await;
    let rt = built(config_of(
        cluster(check(2, 1, http_check("/health"))),
        &[hole_addr, ok],
    ));
    eventually("the black hole marked unhealthy", || failed(&rt, hole_addr)).await;
    assert!(
        counter(&rt, "network_failure") >= 2,
        "two timeouts before it is unhealthy"
    );
    assert!(!held.lock().expect("lock").is_empty(), "probes connected");
    assert!(!failed(&rt, ok));
}

/// A gRPC health server over HTTP/2: SERVING for service `api` when `serving`, else
/// NOT_SERVING; records the `:authority` of the last call.
async fn grpc_server(serving: bool) -> (SocketAddr, Arc<Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(String::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        *record.lock().expect("lock") = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        let path_ok = req.uri().path() == "/grpc.health.v1.Health/Check";
                        let body = req.into_body().collect().await.expect("body").to_bytes();
                        let asks_api = body.ends_with(b"\x0a\x03api");
                        let status: u8 = if serving && path_ok && asks_api { 1 } else { 2 };
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().expect("value"));
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                            Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let mut r = Response::new(StreamBody::new(tokio_stream::iter(frames)));
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().expect("ct"));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_check_asks_the_health_service() {
    let (serving, seen) = grpc_server(true).await;
    let (not_serving, _) = grpc_server(false).await;
    let grpc = CheckerPlan::Grpc(GrpcCheckPlan {
        service_name: "api".into(),
        authority: Some("grpc-api.mesh".into()),
        metadata: HeaderModPlan::default(),
    });
    let rt = built(config_of(
        cluster(check(3, 1, grpc)),
        &[serving, not_serving],
    ));
    eventually("NOT_SERVING marked unhealthy", || failed(&rt, not_serving)).await;
    eventually("SERVING passed twice", || counter(&rt, "success") >= 2).await;
    assert!(!failed(&rt, serving));
    assert_eq!(*seen.lock().expect("lock"), "grpc-api.mesh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_use_the_clusters_mtls_and_sni() {
    let pki = Pki::new();
    let server_cert = pki.workload("backend", &[]);
    let id = crate::tls::identity("backend", &server_cert.cert_pem, &server_cert.key_pem)
        .expect("identity");
    let roots = crate::tls::roots("ca", &pki.ca.cert_pem).expect("roots");
    let acceptor = tokio_rustls::TlsAcceptor::from(
        crate::tls::server_config(&id, roots).expect("server config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sni = Arc::new(Mutex::new(Vec::new()));
    let record = sni.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (acceptor, record) = (acceptor.clone(), record.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(conn).await else {
                    return;
                };
                record
                    .lock()
                    .expect("lock")
                    .push(tls.get_ref().1.server_name().map(str::to_string));
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let client_cert = pki.workload("web", &[]);
    let mut config = config_of(
        ClusterPlan {
            tls: Some(TlsPlan {
                identity_secret: "id".into(),
                ca_secret: "ca".into(),
                peer: vec![SanMatch::Exact("spiffe://default/backend".into())],
                sni: Some("backend.default.mesh".into()),
            }),
            ..cluster(check(1, 1, http_check("/health")))
        },
        &[addr],
    );
    config.secrets.insert(
        "id".into(),
        SecretPlan::Identity {
            cert_pem: client_cert.cert_pem,
            key_pem: client_cert.key_pem,
        },
    );
    config.secrets.insert(
        "ca".into(),
        SecretPlan::TrustedCa {
            ca_pem: pki.ca.cert_pem.clone(),
        },
    );
    let rt = built(config);
    eventually("two probes passed over mTLS", || {
        counter(&rt, "success") >= 2
    })
    .await;
    assert_eq!(counter(&rt, "failure"), 0);
    let seen = sni.lock().expect("lock").clone();
    assert!(
        !seen.is_empty()
            && seen
                .iter()
                .all(|s| s.as_deref() == Some("backend.default.mesh")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_failing_fail_traffic_on_panic_picks_nothing() {
    let (a, a_health, _) = app("a").await;
    let (b, b_health, _) = app("b").await;
    a_health.store(500, Ordering::SeqCst);
    b_health.store(500, Ordering::SeqCst);
    let plan = |fail_traffic_on_panic| ClusterPlan {
        fail_traffic_on_panic,
        ..cluster(check(1, 1, http_check("/health")))
    };
    let failing = built(config_of(plan(true), &[a, b]));
    eventually("both unhealthy", || {
        failed(&failing, a) && failed(&failing, b)
    })
    .await;
    assert!(failing.clusters["backend"].pick().is_empty());
    // Without it, panic routing uses every endpoint, as Envoy does.
    let panicking = built(config_of(plan(false), &[a, b]));
    eventually("both unhealthy", || {
        failed(&panicking, a) && failed(&panicking, b)
    })
    .await;
    assert_eq!(panicking.clusters["backend"].pick().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_cluster_keeps_the_verdicts_and_checks_new_endpoints() {
    let (a, a_health, _) = app("a").await;
    let (b, _, _) = app("b").await;
    a_health.store(500, Ordering::SeqCst);
    let plan = cluster(check(1, 1, http_check("/health")));
    let first = built(config_of(plan.clone(), &[a]));
    eventually("a unhealthy", || failed(&first, a)).await;
    let (second, _) = Runtime::build(config_of(plan, &[a, b]), &first);
    drop(first);
    assert!(failed(&second, a), "the verdict is carried over");
    let attempts = counter(&second, "attempt");
    eventually("the new checker probes", || {
        counter(&second, "attempt") >= attempts + 4
    })
    .await;
    assert!(failed(&second, a) && !failed(&second, b));
    assert_eq!(second.clusters["backend"].pick()[0], b);
}
