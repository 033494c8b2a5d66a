//! MeshTimeout and MeshRetry in kuma-dp's HTTP path, on real loopback sockets: backends that
//! sleep or fail, a route with a timeout and a retry policy in front of them, a plain client.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use hyper_util::client::legacy::connect::HttpConnector;
use meshzone_xds::decode::routes::{PathMatch, RouteActionPlan};
use meshzone_xds::decode::{EndpointPlan, ListenerPlan, ProxyConfig, RetryOn};
use tokio::net::TcpListener;

use super::tests::{cluster, poll};
use super::*;
use crate::routes::tests::fixtures::{forward, route};

/// How a scripted backend answers: its status, how long it waits first, and its headers.
#[derive(Clone, Copy)]
struct Script {
    status: u16,
    delay: Duration,
    /// Headers of every answer.
    headers: &'static [(&'static str, &'static str)],
}

/// A backend answering `name` with the script, counting requests and the bodies it got.
async fn scripted(
    name: &'static str,
    script: Script,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let bodies: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (c, b) = (count.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (c, b) = (c.clone(), b.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (c, b) = (c.clone(), b.clone());
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        b.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(String::from_utf8_lossy(&body.unwrap_or_default()).into_owned());
                        tokio::time::sleep(script.delay).await;
                        let mut resp = Response::new(Full::new(Bytes::from(name)));
                        *resp.status_mut() = StatusCode::from_u16(script.status).expect("status");
                        for (k, v) in script.headers {
                            resp.headers_mut().insert(*k, HeaderValue::from_static(v));
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    (addr, count, bodies)
}

const OK: Script = Script {
    status: 200,
    delay: Duration::ZERO,
    headers: &[],
};

/// kuma-dp's HTTP listener routing everything to cluster `backend` (the given endpoints, in
/// order) with these timeouts and retries; its address and stats.
async fn start_front(
    endpoints: &[SocketAddr],
    timeouts: RouteTimeouts,
    retry: Option<RetryPlan>,
) -> (SocketAddr, Arc<Stats>) {
    let mut config = ProxyConfig::default();
    cluster(&mut config, "backend", endpoints[0]);
    if let Some(eps) = config.endpoints.get_mut("backend") {
        let first = eps[0].clone();
        *eps = endpoints
            .iter()
            .map(|a| EndpointPlan {
                address: *a,
                ..first.clone()
            })
            .collect();
    }
    let mut action = forward(&[("backend", 1)], vec![]);
    if let RouteActionPlan::Forward(f) = &mut action {
        f.timeouts = timeouts;
        f.retry = retry;
    }
    config.listeners.insert(
        "out".into(),
        ListenerPlan {
            name: "out".into(),
            address: "127.0.0.1:1".parse().expect("addr"),
            cluster: "backend".into(),
            http: true,
            routes: vec![route("all", PathMatch::Prefix("/".into()), action)],
            ..Default::default()
        },
    );
    let (rt, problems) = Runtime::build(config, &Runtime::empty());
    assert!(problems.is_empty(), "{problems:?}");
    let rt = Arc::new(rt);
    let stats = Arc::new(Stats::default());
    let (keep, latest) = tokio::sync::watch::channel(rt.clone());
    let guard = crate::rbac::RequestGuard {
        listener: "out".into(),
        sans: Arc::from(Vec::<String>::new()),
        started: None,
        latest,
        peer: None,
        downstream: Default::default(),
    };
    // The runtime never changes in these tests: the sender may live as long as the process.
    std::mem::forget(keep);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let s = stats.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(
                conn,
                "out".into(),
                rt.clone(),
                s.clone(),
                guard.clone(),
            ));
        }
    });
    (addr, stats)
}

async fn send(front: SocketAddr, body: &str) -> (StatusCode, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::new(Full::new(Bytes::from(body.to_string())));
    if !body.is_empty() {
        *req.method_mut() = Method::POST;
    }
    *req.uri_mut() = format!("http://{front}/x").parse().expect("uri");
    let resp = client.request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn retry_plan(on: RetryOn, num_retries: u32, per_try: Option<Duration>) -> RetryPlan {
    RetryPlan {
        on,
        num_retries,
        per_try_timeout: per_try,
        base_interval: Duration::from_millis(5),
        max_interval: Duration::from_millis(20),
        retriable_status_codes: vec![],
        retriable_request_headers: vec![],
        omit_previous_hosts: true,
        rate_limited: None,
    }
}

fn retries(stats: &Stats) -> usize {
    stats
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("cluster.backend.upstream_rq_retry: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_request_timeout_answers_504_long_before_the_backend() {
    let slow = Script {
        status: 200,
        delay: Duration::from_secs(30),
        headers: &[],
    };
    let (addr, _, _) = scripted("slow", slow).await;
    let timeouts = RouteTimeouts {
        request: Some(Duration::from_secs(1)),
        stream_idle: None,
    };
    let (front, _) = start_front(&[addr], timeouts, None).await;
    let started = Instant::now();
    let (status, body) = send(front, "").await;
    let took = started.elapsed();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
    );
    assert!(took >= Duration::from_millis(900), "fired early: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the 30 s backend was waited for: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_retries_on_the_second_healthy_endpoint() {
    let slow = Script {
        status: 200,
        delay: Duration::from_secs(30),
        headers: &[],
    };
    let (slow_addr, slow_count, _) = scripted("slow", slow).await;
    let (fast_addr, _, _) = scripted("fast", OK).await;
    let on = RetryOn {
        gateway_error: true,
        ..Default::default()
    };
    let plan = retry_plan(on, 2, Some(Duration::from_millis(300)));
    let (front, stats) = start_front(
        &[slow_addr, fast_addr],
        RouteTimeouts::default(),
        Some(plan),
    )
    .await;
    let started = Instant::now();
    for _ in 0..4 {
        assert_eq!(send(front, "").await, (StatusCode::OK, "fast".to_string()));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Round robin sent two of the four first tries to the slow endpoint; each was retried once.
    assert_eq!(slow_count.load(Ordering::SeqCst), 2);
    assert_eq!(retries(&stats), 2, "{}", stats.text());
    assert!(
        stats
            .text()
            .contains("cluster.backend.upstream_rq_per_try_timeout: 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_on_the_next_endpoint_with_its_body() {
    let failing = Script {
        status: 503,
        delay: Duration::ZERO,
        headers: &[],
    };
    let (bad, bad_count, _) = scripted("bad", failing).await;
    let (good, _, good_bodies) = scripted("good", OK).await;
    let on = RetryOn {
        status_5xx: true,
        ..Default::default()
    };
    let (front, stats) = start_front(
        &[bad, good],
        RouteTimeouts::default(),
        Some(retry_plan(on, 1, None)),
    )
    .await;
    // The first pick is the failing instance: the client still sees 200, after one retry.
    assert_eq!(
        send(front, "order 1").await,
        (StatusCode::OK, "good".to_string())
    );
    assert_eq!(bad_count.load(Ordering::SeqCst), 1);
    assert_eq!(retries(&stats), 1, "{}", stats.text());
    assert_eq!(
        good_bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_slice(),
        ["order 1"],
        "the retry carries the body"
    );
    // Without retries left, the 503 reaches the client.
    let (front, _) = start_front(
        &[bad],
        RouteTimeouts::default(),
        Some(retry_plan(
            RetryOn {
                status_5xx: true,
                ..Default::default()
            },
            2,
            None,
        )),
    )
    .await;
    assert_eq!(send(front, "").await.0, StatusCode::SERVICE_UNAVAILABLE);
    poll("three tries of the only endpoint", || {
        bad_count.load(Ordering::SeqCst) == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_retry_condition_the_answer_is_returned_as_is() {
    let failing = Script {
        status: 503,
        delay: Duration::ZERO,
        headers: &[],
    };
    let (bad, bad_count, _) = scripted("bad", failing).await;
    let (good, _, _) = scripted("good", OK).await;
    let on = RetryOn {
        connect_failure: true,
        ..Default::default()
    };
    let (front, stats) = start_front(
        &[bad, good],
        RouteTimeouts::default(),
        Some(retry_plan(on, 3, None)),
    )
    .await;
    assert_eq!(
        send(front, "").await,
        (StatusCode::SERVICE_UNAVAILABLE, "bad".to_string())
    );
    assert_eq!(bad_count.load(Ordering::SeqCst), 1);
    assert_eq!(retries(&stats), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_answer_sets_the_pause_before_the_retry() {
    let limited = Script {
        status: 429,
        delay: Duration::ZERO,
        headers: &[("retry-after", "1")],
    };
    let (busy, busy_count, _) = scripted("busy", limited).await;
    let (good, _, _) = scripted("good", OK).await;
    let mut plan = retry_plan(
        RetryOn {
            retriable_status_codes: true,
            ..Default::default()
        },
        1,
        None,
    );
    plan.retriable_status_codes = vec![429];
    plan.rate_limited = Some(Box::new(meshzone_xds::decode::RateLimitedBackOffPlan {
        reset_headers: vec![(
            "retry-after".into(),
            meshzone_xds::decode::ResetFormat::Seconds,
        )],
        max_interval: Duration::from_secs(5),
    }));
    let (front, stats) = start_front(&[busy, good], RouteTimeouts::default(), Some(plan)).await;
    let started = std::time::Instant::now();
    assert_eq!(send(front, "").await, (StatusCode::OK, "good".to_string()));
    assert_eq!(busy_count.load(Ordering::SeqCst), 1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry waited for Retry-After ({:?})",
        started.elapsed()
    );
    assert!(
        stats
            .text()
            .contains("cluster.backend.upstream_rq_retry_backoff_ratelimited: 1"),
        "{}",
        stats.text()
    );
}
