//! MeshFaultInjection and MeshRateLimit on kuma-dp's inbound path on loopback: policies through
//! the engine, the generator and the decoder, run by `Listeners`, called by mTLS clients whose
//! certificates the PKI issues (so the caller header comes from real certificates).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use meshzone_model::policy::{Policy, ProxyDescription, rules_for_proxy};
use meshzone_model::specs::{DataplaneSpec, MeshSpec};
use meshzone_xds::generate::{ProxyInput, TlsMaterial, generate};
use meshzone_xds::policy::ProxyPolicies;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::{Drain, Listeners};
use crate::rbac::tests::{
    HttpSender, Pki, closed_by_peer, connect, echo_app, eventually, free_port, http_client,
};
use crate::runtime::Runtime;
use crate::stats::Stats;

/// Size of the body `GET /big` answers.
const BIG: usize = 96 * 1024;

/// An HTTP application answering `GET /big` with [`BIG`] bytes and anything else with `ok`.
async fn http_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = if req.uri().path() == "/big" {
                            hyper::body::Bytes::from(vec![b'x'; BIG])
                        } else {
                            hyper::body::Bytes::from_static(b"ok")
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    port
}

fn policy(name: &str, spec: serde_json::Value) -> Policy {
    Policy::new(name, "default", serde_json::from_value(spec).expect("spec"))
}

/// A proxy of `backend` with a TCP inbound and an HTTP inbound, every client allowed, and these
/// fault and rate-limit policies, as kuma-dp gets it: engine, generator, decoder.
struct Proxy {
    tcp: u16,
    http: u16,
    stats: Arc<Stats>,
    _listeners: Listeners,
    _tx: watch::Sender<Arc<Runtime>>,
}

async fn proxy(pki: &Pki, faults: &[Policy], limits: &[Policy]) -> Proxy {
    let (tcp_app, _) = echo_app().await;
    let http_app = http_app().await;
    let (tcp, http) = (free_port(), free_port());
    let dp: DataplaneSpec = serde_json::from_value(json!({
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {"port": tcp, "servicePort": tcp_app, "tags": {"kuma.io/service": "backend"}},
                {"port": http, "servicePort": http_app,
                 "tags": {"kuma.io/service": "backend", "kuma.io/protocol": "http"}}
            ]
        }
    }))
    .expect("dataplane");
    let mesh: MeshSpec = serde_json::from_value(json!({
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}
    }))
    .expect("mesh");
    let proxy = ProxyDescription::of_dataplane("default", &dp);
    let rules = |p: &[Policy]| rules_for_proxy(&proxy, p, &BTreeMap::new()).expect("rules");
    let policies = ProxyPolicies {
        traffic_permission: rules(&[policy(
            "allow-all",
            json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]}),
        )]),
        fault_injection: rules(faults),
        rate_limit: rules(limits),
        ..Default::default()
    };
    let identity = pki.workload("backend", &[]);
    let material = TlsMaterial {
        identity_cert_pem: identity.cert_pem,
        identity_key_pem: identity.key_pem,
        ca_cert_pem: pki.ca.cert_pem.clone(),
    };
    let snapshot = generate(&ProxyInput {
        mesh: "default",
        mesh_spec: &mesh,
        dataplane: &dp,
        endpoints: &BTreeMap::new(),
        tls: Some(&material),
        protocols: &BTreeMap::new(),
        proxyless: false,
        transparent: None,
        policies: &policies,
        external_services: &Default::default(),
    });
    let (config, errors) = meshzone_xds::decode::ProxyConfig::from_snapshot(&snapshot);
    assert!(errors.is_empty(), "{errors:?}");
    let (rt, problems) = Runtime::build(config, &Runtime::empty());
    assert!(problems.is_empty(), "{problems:?}");
    let (tx, rx) = watch::channel(Arc::new(rt));
    let stats = Arc::new(Stats::default());
    let mut listeners = Listeners::new(stats.clone(), Arc::new(Drain::default()));
    listeners.reconcile(&rx).await;
    Proxy {
        tcp,
        http,
        stats,
        _listeners: listeners,
        _tx: tx,
    }
}

impl Proxy {
    fn counter(&self, name: &str) -> u64 {
        self.stats
            .text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// One GET on a keep-alive connection, with extra request headers: status, headers, body.
async fn get(
    sender: &mut HttpSender,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, Vec<u8>) {
    let mut req = hyper::Request::builder()
        .uri(path)
        .header("host", "backend");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    // HTTP/1: the previous exchange must be done before the next request goes out.
    sender.ready().await.expect("connection open");
    let resp = sender
        .send_request(req.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answers_once_its_budget_is_spent_and_closes_connections_over_budget() {
    let pki = Pki::new();
    // A minute's budget: nothing refills while the test counts.
    let limits = [policy(
        "backend-limits",
        json!({"targetRef": {"kind": "MeshService", "name": "backend"},
               "from": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {
                   "http": {"requestRate": {"num": 5, "interval": "1m"},
                            "onRateLimit": {"headers": {
                                "add": [{"name": "x-limited", "value": "yes"}],
                                "set": [{"name": "retry-after", "value": "60"}]}}},
                   "tcp": {"connectionRate": {"num": 2, "interval": "1m"}}}}}]}),
    )];
    let p = proxy(&pki, &[], &limits).await;
    let client = pki.workload("frontend", &[]);

    let mut sender = http_client(&pki, &client, p.http).await;
    for i in 0..5 {
        let (status, headers, body) = get(&mut sender, "/", &[]).await;
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "request {i}");
        assert!(headers.get("x-limited").is_none());
    }
    for i in 0..3 {
        let (status, headers, body) = get(&mut sender, "/", &[]).await;
        assert_eq!(status, 429, "request {} is over the budget", 5 + i);
        assert_eq!(body, b"local_rate_limited");
        assert_eq!(
            headers.get("x-limited").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
        assert_eq!(
            headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"60"[..])
        );
    }
    assert_eq!(p.counter("rate_limit.http_local_rate_limit.ok"), 5);
    assert_eq!(
        p.counter("rate_limit.http_local_rate_limit.rate_limited"),
        3
    );
    assert_eq!(p.counter("rate_limit.http_local_rate_limit.enabled"), 8);

    // TCP: two connections a minute are carried; the third is closed before any byte.
    let mut carried = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&pki, &client, p.tcp).await;
        c.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ping");
        carried.push(c);
    }
    let mut over = connect(&pki, &client, p.tcp).await;
    let _ = over.write_all(b"ping").await;
    assert!(
        closed_by_peer(&mut over).await,
        "the third connection is closed"
    );
    eventually("the rate-limited connection is counted", || {
        p.counter("local_ratelimit.tcp_rate_limit.rate_limited") == 1
    })
    .await;
    // The carried connections are untouched.
    let mut buf = [0u8; 4];
    carried[0].write_all(b"pong").await.expect("write");
    carried[0].read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_hit_their_share_of_the_clients_from_selects_and_nobody_else() {
    let pki = Pki::new();
    let faults = [policy(
        "backend-faults",
        json!({"targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [
            {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "frontend"}},
             "default": {"http": [{"abort": {"httpStatus": 503, "percentage": 30}}]}},
            {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "other"}},
             "default": {"http": [{"abort": {"httpStatus": 500, "percentage": 100}}]}}
        ]}),
    )];
    let p = proxy(&pki, &faults, &[]).await;
    let frontend = pki.workload("frontend", &[]);
    let mut sender = http_client(&pki, &frontend, p.http).await;
    // 1000 requests at 30 %: 300 expected, σ = √(1000·0.3·0.7) ≈ 14.5; ±73 is 5σ, so a correct
    // proxy fails this about once in 1.7 million runs. The frontend also claims to be `other`
    // in the caller header: the proxy replaces it with its certificate's SANs.
    let mut aborted = 0;
    for _ in 0..1000 {
        let forged = [("x-meshzone-caller-sans", ",spiffe://default/other,")];
        let (status, _, body) = get(&mut sender, "/", &forged).await;
        match status {
            200 => assert_eq!(body, b"ok"),
            503 => {
                assert_eq!(body, b"fault filter abort");
                aborted += 1;
            }
            other => panic!("status {other}: only frontend's fault may hit frontend"),
        }
    }
    assert!(
        (227..=373).contains(&aborted),
        "{aborted} of 1000 aborted, want 300 ± 73"
    );
    let prefix = format!("http.inbound:127.0.0.1:{}.fault.aborts_injected", p.http);
    assert_eq!(p.counter(&prefix), aborted);

    // A client no `from` item names gets no fault.
    let shop = pki.workload("shop", &[]);
    let mut sender = http_client(&pki, &shop, p.http).await;
    for _ in 0..50 {
        assert_eq!(get(&mut sender, "/", &[]).await.0, 200);
    }
    // `other` gets its own fault, every time.
    let other = pki.workload("other", &[]);
    let mut sender = http_client(&pki, &other, p.http).await;
    for _ in 0..10 {
        assert_eq!(get(&mut sender, "/", &[]).await.0, 500);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_holds_each_request_and_a_bandwidth_limit_throttles_the_body() {
    let pki = Pki::new();
    let faults = [policy(
        "slow-backend",
        json!({"targetRef": {"kind": "MeshService", "name": "backend"},
               "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": [
                   {"delay": {"value": "300ms", "percentage": 100}},
                   {"responseBandwidth": {"limit": "64kbps", "percentage": "100"}}]}}]}),
    )];
    let p = proxy(&pki, &faults, &[]).await;
    let client = pki.workload("frontend", &[]);
    let mut sender = http_client(&pki, &client, p.http).await;
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _, body) = get(&mut sender, "/", &[]).await;
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
    // 96 KiB at 64 KiB/s: at least 1.5 s after the 0.3 s delay.
    let started = Instant::now();
    let (status, _, body) = get(&mut sender, "/big", &[]).await;
    let took = started.elapsed();
    assert_eq!((status, body.len()), (200, BIG));
    assert!(body.iter().all(|b| *b == b'x'), "the body arrives intact");
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    let prefix = format!("http.inbound:127.0.0.1:{}.fault.", p.http);
    assert_eq!(p.counter(&format!("{prefix}delays_injected")), 4);
    assert_eq!(p.counter(&format!("{prefix}response_rl_injected")), 4);
}
