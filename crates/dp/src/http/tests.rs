//! kuma-dp's HTTP path with real sockets on loopback: two small HTTP backends (plus a mirror
//! target), a route table in front of them, and a plain HTTP client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use hyper_util::client::legacy::connect::HttpConnector;
use meshzone_xds::decode::routes::{
    HeaderAdd, HeaderAppend, HeaderMatchPlan, MirrorPlan, PathMatch, RedirectPlan, ValueMatch,
};
use meshzone_xds::decode::{ClusterPlan, EndpointPlan, ListenerPlan, ProxyConfig};
use tokio::net::TcpListener;

use super::*;
use crate::routes::tests::fixtures::{forward, route};

/// Requests one backend saw: (path, `x-via` header, body).
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// An HTTP backend answering `<name>` and recording what it got.
async fn backend(name: &'static str) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let via = req
                        .headers()
                        .get("x-via")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let path = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default();
                    let record = record.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
                        record
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((path, via, body));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

pub(super) fn cluster(config: &mut ProxyConfig, name: &str, addr: SocketAddr) {
    config.clusters.insert(
        name.into(),
        ClusterPlan {
            name: name.into(),
            static_endpoints: None,
            tls: None,
            http2: false,
            original_dst: false,
            ..Default::default()
        },
    );
    config.endpoints.insert(
        name.into(),
        vec![EndpointPlan {
            address: addr,
            weight: 1,
            zone: None,
            priority: 0,
            via_zone_egress: false,
            no_active_health_check: false,
        }],
    );
}

/// Polls a condition with a deadline.
pub(super) async fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_split_filtered_redirected_and_mirrored() {
    let (v1, seen_v1) = backend("v1").await;
    let (v2, seen_v2) = backend("v2").await;
    let (shadow, seen_shadow) = backend("shadow").await;
    let mut config = ProxyConfig::default();
    cluster(&mut config, "backend_v1", v1);
    cluster(&mut config, "backend_v2", v2);
    cluster(&mut config, "shadow", shadow);

    let mut canary = route(
        "canary",
        PathMatch::Prefix("/".into()),
        forward(&[("backend_v2", 1)], vec![]),
    );
    canary.matches.headers = vec![HeaderMatchPlan {
        name: "x-canary".into(),
        matcher: ValueMatch::Exact {
            value: "1".into(),
            ignore_case: false,
        },
        invert: false,
    }];
    let redirect = route(
        "moved",
        PathMatch::Prefix("/old".into()),
        RouteActionPlan::Redirect(RedirectPlan {
            scheme: Some("https".into()),
            host: Some("new.example".into()),
            port: None,
            path: None,
            prefix_rewrite: Some("/new".into()),
            status: 301,
            strip_query: false,
        }),
    );
    let mut split = route(
        "split",
        PathMatch::Prefix("/".into()),
        forward(
            &[("backend_v1", 90), ("backend_v2", 10)],
            vec![MirrorPlan {
                cluster: "shadow".into(),
                per_million: 100_000,
            }],
        ),
    );
    split.request_headers.add = vec![HeaderAdd {
        name: "x-via".into(),
        value: "mesh".into(),
        append: HeaderAppend::Overwrite,
    }];
    split.response_headers.add = vec![HeaderAdd {
        name: "x-routed".into(),
        value: "split".into(),
        append: HeaderAppend::Append,
    }];
    config.listeners.insert(
        "out".into(),
        ListenerPlan {
            name: "out".into(),
            address: "127.0.0.1:1".parse().expect("addr"),
            cluster: "backend_v1".into(),
            http: true,
            routes: vec![canary, redirect, split],
            ..Default::default()
        },
    );
    let (rt, problems) = Runtime::build(config, &Runtime::empty());
    assert!(problems.is_empty(), "{problems:?}");
    let rt = Arc::new(rt);
    let stats = Arc::new(Stats::default());
    // No permissions on this listener: every request is admitted.
    let (_latest_tx, latest) = tokio::sync::watch::channel(rt.clone());
    let guard = crate::rbac::RequestGuard {
        listener: "out".into(),
        sans: Arc::from(Vec::<String>::new()),
        started: None,
        latest,
        peer: None,
        downstream: Default::default(),
    };

    // kuma-dp's HTTP path on a loopback listener.
    let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let front_addr = front.local_addr().expect("addr");
    let (serve_rt, serve_stats) = (rt.clone(), stats.clone());
    tokio::spawn(async move {
        while let Ok((conn, _)) = front.accept().await {
            tokio::spawn(serve(
                conn,
                "out".into(),
                serve_rt.clone(),
                serve_stats.clone(),
                guard.clone(),
            ));
        }
    });
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let get = |path: &str, canary: bool| {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = format!("http://{front_addr}{path}").parse().expect("uri");
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("backend.mesh"));
        if canary {
            req.headers_mut()
                .insert("x-canary", HeaderValue::from_static("1"));
        }
        let client = client.clone();
        async move {
            let resp = client.request(req).await.expect("response");
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, headers, String::from_utf8_lossy(&body).into_owned())
        }
    };

    // The split: exactly 90/10 over 1000 requests, filters applied both ways.
    let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..1000 {
        let (status, headers, body) = get(&format!("/items/{i}"), false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get("x-routed").and_then(|v| v.to_str().ok()),
            Some("split")
        );
        *by_backend.entry(body).or_default() += 1;
    }
    assert_eq!(by_backend.get("v1"), Some(&900), "{by_backend:?}");
    assert_eq!(by_backend.get("v2"), Some(&100), "{by_backend:?}");
    let via_mesh = |seen: &Seen| {
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(|(_, via, _)| via == "mesh")
    };
    assert!(via_mesh(&seen_v1) && via_mesh(&seen_v2));

    // 10 % of the split's requests were mirrored, answers dropped.
    poll("100 mirrored requests", || {
        seen_shadow.lock().unwrap_or_else(|p| p.into_inner()).len() == 100
    })
    .await;

    // A mirrored request carries its body: the 10th of the next 10 POSTs is copied.
    for i in 0..10 {
        let mut req = Request::new(Full::new(Bytes::from(format!("order {i}"))));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = format!("http://{front_addr}/orders").parse().expect("uri");
        let resp = client.request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
    }
    poll("the mirrored POST", || {
        seen_shadow.lock().unwrap_or_else(|p| p.into_inner()).len() == 101
    })
    .await;
    let last = seen_shadow
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last()
        .cloned();
    assert_eq!(
        last.map(|(path, _, body)| (path, body)),
        Some(("/orders".to_string(), "order 9".to_string()))
    );

    // The header match sends every canary request to v2, without the split's filter.
    let before = seen_v2.lock().unwrap_or_else(|p| p.into_inner()).len();
    for _ in 0..20 {
        let (status, headers, body) = get("/items", true).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "v2"));
        assert!(headers.get("x-routed").is_none());
    }
    let seen = seen_v2.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(seen.len(), before + 20);
    assert!(seen[before..].iter().all(|(_, via, _)| via.is_empty()));

    // A redirect is answered by kuma-dp itself.
    let (status, headers, _) = get("/old/page?x=1", false).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        headers.get(LOCATION).and_then(|v| v.to_str().ok()),
        Some("https://new.example/new/page?x=1")
    );
    assert!(
        stats.text().contains("http.out.downstream_rq_3xx: 1"),
        "{}",
        stats.text()
    );
}
