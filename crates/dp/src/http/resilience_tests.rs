//! Circuit breakers on kuma-dp's HTTP path with real sockets on loopback: the 5xx detector
//! ejects a failing endpoint and traffic goes to the other, maxEjectionPercent keeps one in,
//! and a request over the connection limits gets Envoy's 503 with `x-envoy-overloaded`. And
//! MeshTimeout's `maxConnectionDuration`: a pooled connection past it is replaced.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use meshzone_xds::decode::{ClusterPlan, EndpointPlan, LimitsPlan, OutlierPlan, ProxyConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::*;

/// An HTTP backend answering `status` with body `name`; with a gate, each request first waits
/// for one permit of it. Counts the requests that arrived.
async fn backend(
    name: &'static str,
    status: u16,
    gate: Option<Arc<Semaphore>>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, arrived, _) = backend_counting(name, status, gate).await;
    (addr, arrived)
}

/// [`backend`], also counting the connections it accepted.
async fn backend_counting(
    name: &'static str,
    status: u16,
    gate: Option<Arc<Semaphore>>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let arrived = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (count, accepted) = (arrived.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (gate, count) = (gate.clone(), count.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let gate = gate.clone();
                    count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if let Some(g) = gate {
                            let _ = g.acquire().await.map(|p| p.forget());
                        }
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
    (addr, arrived, connections)
}

/// One cluster `backend` over `endpoints` with these limits and outlier detection, behind an
/// HTTP listener served on loopback; returns its address, the stats and the runtime.
async fn front(
    endpoints: &[SocketAddr],
    limits: LimitsPlan,
    outlier: Option<OutlierPlan>,
) -> (SocketAddr, Arc<Stats>) {
    let plan = ClusterPlan {
        limits,
        outlier,
        ..Default::default()
    };
    front_with(endpoints, plan).await
}

/// [`front`] with the cluster's whole plan (its name is set to `backend`).
async fn front_with(endpoints: &[SocketAddr], plan: ClusterPlan) -> (SocketAddr, Arc<Stats>) {
    let mut config = ProxyConfig::default();
    config.clusters.insert(
        "backend".into(),
        ClusterPlan {
            name: "backend".into(),
            ..plan
        },
    );
    config.endpoints.insert(
        "backend".into(),
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
        .listeners
        .insert("out".into(), super::loopback::listener_to("backend"));
    let (rt, problems) = Runtime::build(config, &Runtime::empty());
    assert!(problems.is_empty(), "{problems:?}");
    super::loopback::serve_listener(Arc::new(rt), "out").await
}

async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    front: SocketAddr,
) -> (u16, HeaderMap, String) {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = format!("http://{front}/").parse().expect("uri");
    let resp = client.request(req).await.expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn outlier(consecutive_5xx: u32, max_ejection_percent: u32) -> OutlierPlan {
    OutlierPlan {
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent,
        split_local_origin: false,
        consecutive_5xx: Some(consecutive_5xx),
        consecutive_gateway_failure: None,
        consecutive_local_origin_failure: None,
        success_rate: None,
        failure_percentage: None,
    }
}

fn stat(stats: &Stats, name: &str) -> u64 {
    stats
        .text()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_5xx_detector_ejects_the_failing_endpoint_and_traffic_goes_to_the_other() {
    let (bad, _) = backend("bad", 500, None).await;
    let (good, _) = backend("good", 200, None).await;
    let (front, stats) = front(&[bad, good], LimitsPlan::default(), Some(outlier(3, 100))).await;
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..40 {
        let (status, _, body) = get(&client, front).await;
        answers.push((status, body));
    }
    let failures = answers.iter().filter(|(s, _)| *s == 500).count();
    assert_eq!(
        failures, 3,
        "ejected at the third consecutive 5xx: {answers:?}"
    );
    assert!(
        answers[10..].iter().all(|(s, b)| *s == 200 && b == "good"),
        "after the ejection only the good endpoint answers: {answers:?}"
    );
    assert_eq!(
        stat(
            &stats,
            "cluster.backend.outlier_detection.ejections_enforced_consecutive_5xx"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_keeps_at_least_one_endpoint() {
    let (a, _) = backend("a", 503, None).await;
    let (b, _) = backend("b", 503, None).await;
    let (front, stats) = front(&[a, b], LimitsPlan::default(), Some(outlier(2, 50))).await;
    let client = client();
    let mut bodies = Vec::new();
    for _ in 0..30 {
        let (status, _, body) = get(&client, front).await;
        assert_eq!(status, 503, "the backends' own answer");
        bodies.push(body);
    }
    assert_eq!(
        stat(
            &stats,
            "cluster.backend.outlier_detection.ejections_enforced_total"
        ),
        1,
        "ejecting the second would pass 50 %"
    );
    let last = &bodies[10..];
    assert!(
        last.iter().all(|b| b == &last[0]),
        "one endpoint left taking every request: {bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limits_a_request_gets_envoys_overflow_503() {
    let gate = Arc::new(Semaphore::new(0));
    let (slow, arrived) = backend("slow", 200, Some(gate.clone())).await;
    let limits = LimitsPlan {
        max_connections: 1,
        max_pending_requests: 1,
        max_requests: 1024,
        max_retries: 3,
    };
    let (front, stats) = front(&[slow], limits, None).await;
    let client = client();
    // One request holds the only connection, a second waits for it.
    let first = tokio::spawn({
        let client = client.clone();
        async move { get(&client, front).await }
    });
    poll_until(|| arrived.load(Ordering::SeqCst) == 1).await;
    let second = tokio::spawn({
        let client = client.clone();
        async move { get(&client, front).await }
    });
    poll_until(|| stat(&stats, "cluster.backend.upstream_cx_overflow") == 1).await;
    // The third finds the queue full: 503 at once, marked as Envoy marks it.
    let (status, headers, _) = get(&client, front).await;
    assert_eq!(status, 503);
    assert_eq!(
        headers
            .get("x-envoy-overloaded")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(
        stat(&stats, "cluster.backend.upstream_rq_pending_overflow"),
        1
    );
    gate.add_permits(2);
    assert_eq!(first.await.expect("task").0, 200);
    assert_eq!(
        second.await.expect("task").0,
        200,
        "the waiting request ran after the first"
    );
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        2,
        "the overflowing request never left"
    );
}

async fn poll_until(mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_max_duration_is_replaced() {
    use meshzone_xds::decode::ClusterTimeouts;
    // Without a limit, one pooled connection carries every request.
    let (plain, _, plain_connections) = backend_counting("plain", 200, None).await;
    let (front_plain, _) = front_with(&[plain], ClusterPlan::default()).await;
    let client = client();
    for _ in 0..5 {
        assert_eq!(get(&client, front_plain).await.0, 200);
    }
    assert_eq!(plain_connections.load(Ordering::SeqCst), 1);

    // With a 200 ms limit, a request past it is the connection's last: a new one follows.
    let (aged, _, connections) = backend_counting("aged", 200, None).await;
    let plan = ClusterPlan {
        timeouts: ClusterTimeouts {
            max_connection_duration: Some(Duration::from_millis(200)),
            ..Default::default()
        },
        ..Default::default()
    };
    let (front, stats) = front_with(&[aged], plan).await;
    assert_eq!(get(&client, front).await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while connections.load(Ordering::SeqCst) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "connections were not replaced: {} opened, {} retired",
            connections.load(Ordering::SeqCst),
            stat(&stats, "cluster.backend.upstream_cx_max_duration_reached")
        );
        assert_eq!(
            get(&client, front).await.0,
            200,
            "every request is answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stat(&stats, "cluster.backend.upstream_cx_max_duration_reached") >= 2);
}
