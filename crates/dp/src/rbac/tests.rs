//! Judging tables, the registry, and the whole inbound path on loopback: configuration
//! generated from permissions by the engine and the generator, decoded, run by `Listeners`,
//! with real mTLS clients whose certificates the PKI issues.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use meshzone_model::policy::{Policy, ProxyDescription, rules_for_proxy};
use meshzone_model::specs::{DataplaneSpec, MeshSpec};
use meshzone_pki::CertifiedKey;
use meshzone_xds::decode::{ListenerPlan, PrincipalPlan};
use meshzone_xds::generate::{ProxyInput, TlsMaterial, generate};
use meshzone_xds::policy::ProxyPolicies;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::proxy::{Drain, Listeners};

fn sans(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn plan(allow: Vec<PrincipalPlan>, shadow_deny: Vec<PrincipalPlan>) -> RbacPlan {
    RbacPlan {
        stat_prefix: "inbound_x.".into(),
        allow,
        shadow_deny,
    }
}

#[test]
fn judging_and_counting_follow_envoy() {
    let orders = || PrincipalPlan::Name("spiffe://default/orders".into());
    let cases = [
        (
            "no plan allows, counts nothing",
            None,
            vec![],
            true,
            false,
            vec![],
        ),
        (
            "allowed",
            Some(plan(vec![orders()], vec![])),
            sans(&["spiffe://default/orders"]),
            true,
            false,
            vec!["inbound_x.rbac.allowed: 1"],
        ),
        (
            "denied",
            Some(plan(vec![orders()], vec![])),
            sans(&["spiffe://default/shop"]),
            false,
            false,
            vec!["inbound_x.rbac.denied: 1"],
        ),
        (
            "shadow-denied is allowed and counted twice",
            Some(plan(vec![orders()], vec![orders()])),
            sans(&["spiffe://default/orders"]),
            true,
            true,
            vec![
                "inbound_x.rbac.allowed: 1",
                "inbound_x.rbac.shadow_denied: 1",
            ],
        ),
        (
            "a plaintext peer",
            Some(plan(vec![orders()], vec![])),
            vec![],
            false,
            false,
            vec!["inbound_x.rbac.denied: 1"],
        ),
    ];
    for (what, plan, peer, allowed, shadow_denied, counters) in cases {
        let verdict = judge(plan.as_ref(), &peer);
        assert_eq!(
            verdict,
            Verdict {
                allowed,
                shadow_denied
            },
            "{what}"
        );
        let stats = Stats::default();
        count(&stats, plan.as_ref(), verdict);
        assert_eq!(stats.text().lines().collect::<Vec<_>>(), counters, "{what}");
    }
}

fn runtime_with(listener: &str, rbac: Option<RbacPlan>) -> Arc<Runtime> {
    let mut rt = Runtime::empty();
    rt.config.listeners.insert(
        listener.into(),
        ListenerPlan {
            name: listener.into(),
            address: "127.0.0.1:1".parse().expect("addr"),
            cluster: "app".into(),
            rbac,
            ..Default::default()
        },
    );
    Arc::new(rt)
}

#[tokio::test]
async fn the_registry_closes_connections_an_update_denies() {
    let a = || PrincipalPlan::Name("spiffe://default/a".into());
    let b = || PrincipalPlan::Name("spiffe://default/b".into());
    let (tx, rx) = watch::channel(runtime_with("in", Some(plan(vec![a(), b()], vec![]))));
    let registry = Arc::new(Registry::default());
    let started = plan(vec![a(), b()], vec![]);
    let (conn_a, verdict, _) =
        registry.admit("in", sans(&["spiffe://default/a"]), Some(&started), &rx);
    assert!(verdict.allowed);
    let (conn_b, _, _) = registry.admit("in", sans(&["spiffe://default/b"]), Some(&started), &rx);
    assert_eq!(registry.len(), 2);

    // An update that drops b: b's connection is closed, a's lives on.
    tx.send_replace(runtime_with("in", Some(plan(vec![a()], vec![]))));
    let stats = Stats::default();
    assert_eq!(registry.reevaluate(&rx.borrow().config, &stats), 1);
    tokio::time::timeout(Duration::from_secs(5), conn_b.closed())
        .await
        .expect("b is told to close");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), conn_a.closed())
            .await
            .is_err(),
        "a is still allowed"
    );
    assert_eq!(stats.text(), "listener.in.rbac.closed_on_update: 1\n");

    // An update removing the listener keeps judging by the plan the connection started with.
    tx.send_replace(Arc::new(Runtime::empty()));
    assert_eq!(registry.reevaluate(&rx.borrow().config, &stats), 0);

    // A connection admitted after an update is judged by it, though it started with the old plan.
    tx.send_replace(runtime_with("in", Some(plan(vec![], vec![]))));
    let (_late, verdict, current) =
        registry.admit("in", sans(&["spiffe://default/a"]), Some(&started), &rx);
    assert!(!verdict.allowed);
    assert_eq!(current, Some(plan(vec![], vec![])));

    drop((conn_a, conn_b));
    assert_eq!(registry.len(), 1, "dropping a registration removes it");
}

// ---------------------------------------------------------------------------------------------
// The inbound path on loopback

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An echo application counting its connections.
pub(crate) async fn echo_app() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (port, accepted)
}

/// An HTTP application answering `ok` to every request, keeping connections open.
async fn http_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    port
}

pub(crate) struct Pki {
    pub(crate) ca: CertifiedKey,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let ca = meshzone_pki::generate_ca("default", Duration::from_secs(3600), SystemTime::now())
            .expect("ca");
        Pki { ca }
    }

    /// A workload certificate of `service` with these inbound tags, as the DP server issues it.
    pub(crate) fn workload(&self, service: &str, tags: &[(&str, &str)]) -> CertifiedKey {
        let mut uris = vec![meshzone_pki::spiffe_id("default", service)];
        uris.push(meshzone_pki::tag_uri("kuma.io/service", service));
        uris.extend(tags.iter().map(|(k, v)| meshzone_pki::tag_uri(k, v)));
        meshzone_pki::issue_workload_cert(
            &self.ca,
            &uris,
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .expect("workload cert")
    }

    /// A client TLS config presenting `cert`, accepting only the backend's SPIFFE ID.
    fn client(&self, cert: &CertifiedKey) -> tokio_rustls::TlsConnector {
        let id = crate::tls::identity("client", &cert.cert_pem, &cert.key_pem).expect("identity");
        let roots = crate::tls::roots("ca", &self.ca.cert_pem).expect("roots");
        let expected = vec![meshzone_xds::decode::SanMatch::Exact(
            "spiffe://default/backend".into(),
        )];
        tokio_rustls::TlsConnector::from(
            crate::tls::client_config(&id, roots, expected).expect("client config"),
        )
    }
}

/// The proxy's configuration: a TCP inbound and an HTTP inbound of `backend`, with the
/// `from` items given, through the engine, the generator and the decoder.
fn config(
    pki: &Pki,
    ports: (u16, u16, u16, u16),
    from: serde_json::Value,
) -> meshzone_xds::decode::ProxyConfig {
    let (tcp, tcp_app, http, http_app) = ports;
    let dp: DataplaneSpec = serde_json::from_value(json!({
        "networking": {
            "address": "127.0.0.1",
            "inbound": [
                {"port": tcp, "servicePort": tcp_app,
                 "tags": {"kuma.io/service": "backend"}},
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
    let policy = Policy::new(
        "mtp",
        "default",
        serde_json::from_value(json!({"targetRef": {"kind": "Mesh"}, "from": from})).expect("spec"),
    );
    let policies = ProxyPolicies {
        traffic_permission: rules_for_proxy(&proxy, &[policy], &BTreeMap::new()).expect("rules"),
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
    config
}

fn only_orders() -> serde_json::Value {
    json!([
        {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
        {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/service": "orders"}},
         "default": {"action": "Allow"}},
        {"targetRef": {"kind": "MeshSubset", "tags": {"team": "audit"}},
         "default": {"action": "AllowWithShadowDeny"}}
    ])
}

fn nobody() -> serde_json::Value {
    json!([{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}])
}

/// Polls `check` until it holds or 10 s pass.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn connect(
    pki: &Pki,
    cert: &CertifiedKey,
    port: u16,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let tcp = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "connect {port}: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let name = rustls_pki_types::ServerName::try_from("backend").expect("name");
    pki.client(cert)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Reads until EOF or error; true when the peer closed within 10 s.
pub(crate) async fn closed_by_peer(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

pub(crate) type HttpSender =
    hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>;

/// An HTTP/1.1 keep-alive connection over mTLS, presenting `cert`.
pub(crate) async fn http_client(pki: &Pki, cert: &CertifiedKey, port: u16) -> HttpSender {
    let stream = connect(pki, cert, port).await;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("http handshake");
    tokio::spawn(conn);
    sender
}

async fn http_get(sender: &mut HttpSender) -> Result<(u16, String), hyper::Error> {
    use http_body_util::BodyExt;
    let req = hyper::Request::builder()
        .uri("/")
        .header("host", "backend")
        .body(http_body_util::Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn inbound_permissions_are_enforced_on_loopback_and_updates_close_denied_connections() {
    let pki = Pki::new();
    let (tcp_app, tcp_accepted) = echo_app().await;
    let http_app_port = http_app().await;
    let ports = (free_port(), tcp_app, free_port(), http_app_port);
    let (tcp, http) = (ports.0, ports.2);
    let build = |from| Arc::new(Runtime::build(config(&pki, ports, from), &Runtime::empty()).0);
    let (tx, rx) = watch::channel(build(only_orders()));
    let stats = Arc::new(Stats::default());
    let mut listeners = Listeners::new(stats.clone(), Arc::new(Drain::default()));
    listeners.reconcile(&rx).await;

    let orders = pki.workload("orders", &[]);
    let shop = pki.workload("shop", &[]);
    let auditor = pki.workload("reports", &[("team", "audit")]);
    let counter = |name: String| {
        stats
            .text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let tcp_prefix = format!("inbound_127_0_0_1_{tcp}.");
    let http_prefix = format!("http.inbound:127.0.0.1:{http}.");

    // TCP: orders is carried to the application.
    let mut allowed = connect(&pki, &orders, tcp).await;
    allowed.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    allowed.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");
    assert_eq!(tcp_accepted.load(Ordering::SeqCst), 1);

    // TCP: shop is closed before anything reaches the application.
    let mut denied = connect(&pki, &shop, tcp).await;
    let _ = denied.write_all(b"ping").await;
    assert!(
        closed_by_peer(&mut denied).await,
        "a denied connection is closed"
    );
    assert_eq!(
        tcp_accepted.load(Ordering::SeqCst),
        1,
        "the application never saw shop"
    );
    assert_eq!(counter(format!("{tcp_prefix}rbac.allowed")), 1);
    assert_eq!(counter(format!("{tcp_prefix}rbac.denied")), 1);

    // TCP: the auditor is allowed and shadow-denied.
    let mut audit = connect(&pki, &auditor, tcp).await;
    audit.write_all(b"ping").await.expect("write");
    audit.read_exact(&mut buf).await.expect("echo");
    assert_eq!(counter(format!("{tcp_prefix}rbac.shadow_denied")), 1);

    // HTTP: orders gets the application's answer, shop Envoy's 403.
    let mut orders_http = http_client(&pki, &orders, http).await;
    assert_eq!(
        http_get(&mut orders_http).await.expect("get"),
        (200, "ok".into())
    );
    let mut shop_http = http_client(&pki, &shop, http).await;
    assert_eq!(
        http_get(&mut shop_http).await.expect("get"),
        (403, DENIED_BODY.into())
    );
    assert_eq!(counter(format!("{http_prefix}rbac.allowed")), 1);
    assert_eq!(counter(format!("{http_prefix}rbac.denied")), 1);

    // A new configuration is in force before the registry re-judges: a request on orders' old
    // keep-alive connection is judged by it.
    tx.send_replace(build(nobody()));
    assert_eq!(http_get(&mut orders_http).await.expect("get").0, 403);

    // Once the update is applied, orders' live connections (TCP and HTTP) are closed.
    listeners.reconcile(&rx).await;
    assert!(
        closed_by_peer(&mut allowed).await,
        "the allowed TCP connection is closed"
    );
    eventually("orders' HTTP connection to close", || {
        orders_http.is_closed()
    })
    .await;
    assert!(
        counter(format!(
            "listener.inbound:127.0.0.1:{tcp}.rbac.closed_on_update"
        )) >= 1
    );
    listeners.close_all();
}
