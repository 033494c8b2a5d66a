//! A single zone as a real mesh: kuma-cp, HTTP echo apps and kuma-dp proxies on loopback.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

#[path = "support/mtls_client.rs"]
mod mtls_client;
use mtls_client::tls_get;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, free_port, http_get, mtls_mesh, ok, stdout, wait_for,
};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn dataplane(
    name: &str,
    service: &str,
    inbound: u16,
    app: u16,
    outbound: Option<(u16, &str)>,
) -> String {
    let mut y = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags:\n        kuma.io/service: {service}\n"
    );
    if let Some((port, target)) = outbound {
        y.push_str(&format!(
            "  outbound:\n    - port: {port}\n      tags:\n        kuma.io/service: {target}\n"
        ));
    }
    y
}

struct Mesh {
    cp: ControlPlane,
    dir: PathBuf,
}

impl Mesh {
    fn start(dir: &Path, cert_expiration: &str, extra_env: &[(&str, &str)]) -> Mesh {
        let cp = ControlPlane::start(dir, extra_env);
        cp.configure_kumactl();
        let mesh = write(dir, "mesh.yaml", &mtls_mesh(cert_expiration));
        ok(&cp.kumactl(&["apply", "-f", &mesh.display().to_string()]));
        Mesh {
            cp,
            dir: dir.to_path_buf(),
        }
    }

    fn token(&self, name: &str, extra: &[&str]) -> PathBuf {
        let mut args = vec!["generate", "dataplane-token", "--name", name];
        args.extend_from_slice(extra);
        let token = ok(&self.cp.kumactl(&args));
        write(&self.dir, &format!("{name}.token"), token.trim())
    }

    fn proxy(&self, name: &str, yaml: &str) -> DataPlane {
        let file = write(&self.dir, &format!("{name}.yaml"), yaml);
        let token = self.token(name, &[]);
        let mut dp = DataPlane::start(&self.cp, &file, Some(&token));
        dp.wait_ready();
        dp
    }
}

#[test]
fn mtls_traffic_identity_refusals_cp_outage_and_load_balancing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::start(
        dir.path(),
        "24h",
        &[("KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY", "60s")],
    );
    let echo1 = EchoServer::start("server-1");
    let client_app = EchoServer::start("client-app");
    let (in1, in_c, out) = (free_port(), free_port(), free_port());
    let server1 = mesh.proxy(
        "server-1",
        &dataplane("server-1", "echo", in1, echo1.port, None),
    );
    let client = mesh.proxy(
        "client-1",
        &dataplane(
            "client-1",
            "client",
            in_c,
            client_app.port,
            Some((out, "echo")),
        ),
    );

    // curl, a real client, through the client's outbound listener.
    let body = wait_for("echo through two proxies", Duration::from_secs(20), || {
        let o = std::process::Command::new("curl")
            .args(["-s", "-m", "5", &format!("http://127.0.0.1:{out}/")])
            .output()
            .expect("curl");
        o.status
            .success()
            .then(|| stdout(&o))
            .filter(|b| !b.is_empty())
    });
    assert_eq!(body.trim(), "server-1");
    let stats = server1.admin("/stats").expect("stats");
    assert!(
        stats.contains(&format!(
            "listener.inbound:127.0.0.1:{in1}.peer.spiffe://default/client.cx_total"
        )),
        "server proxy should have seen the client's SPIFFE ID: {stats}"
    );

    eprintln!("step: Plain TCP to the inbound port");
    // Plain TCP to the inbound port does not reach the application.
    let served = echo1.served();
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", in1)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("server-1"),
        "plaintext reached the app"
    );

    eprintln!("step: A certificate from another CA");
    // A certificate from another CA, even with the right SPIFFE ID, is refused.
    let now = SystemTime::now();
    let rogue_ca =
        meshzone_pki::generate_ca("default", Duration::from_secs(3600), now).expect("ca");
    let rogue = meshzone_pki::issue_workload_cert(
        &rogue_ca,
        &["spiffe://default/client".to_string()],
        Duration::from_secs(3600),
        now,
    )
    .expect("cert");
    assert!(
        tls_get(in1, &rogue).is_err(),
        "a foreign CA's certificate was accepted"
    );
    assert_eq!(
        echo1.served(),
        served,
        "refused connections must not reach the app"
    );

    eprintln!("step: Tokens: wrong name");
    // Tokens: wrong name, missing, expired — each refused with its reason.
    let intruder = write(
        &mesh.dir,
        "intruder.yaml",
        &dataplane("intruder", "echo", free_port(), echo1.port, None),
    );
    let wrong = mesh.dir.join("server-1.token");
    let mut dp = DataPlane::start(&mesh.cp, &intruder, Some(&wrong));
    let (status, log) = dp.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "{status}: {log}");
    assert!(
        log.contains("token is for data plane \"server-1\""),
        "{log}"
    );
    let mut dp = DataPlane::start(&mesh.cp, &intruder, None);
    let (status, log) = dp.wait_exit(Duration::from_secs(20));
    assert!(
        !status.success() && log.contains("no token was provided"),
        "{log}"
    );
    let short = mesh.token("intruder", &["--valid-for", "1s"]);
    let issued = SystemTime::now();
    wait_for("the short token to expire", Duration::from_secs(5), || {
        (SystemTime::now() > issued + Duration::from_millis(1500)).then_some(())
    });
    let mut dp = DataPlane::start(&mesh.cp, &intruder, Some(&short));
    let (status, log) = dp.wait_exit(Duration::from_secs(20));
    assert!(!status.success() && log.contains("token expired"), "{log}");

    eprintln!("step: The control plane dies");
    // The control plane dies: traffic keeps flowing on the proxies' last configuration.
    let mut cp = mesh.cp;
    cp.kill9();
    let failures = (0..50).filter(|_| http_get(out).is_err()).count();
    assert_eq!(failures, 0, "requests failed while the CP was down");

    eprintln!("step: It comes back");
    // It comes back: the proxies reconnect, and a new instance becomes reachable and shares load.
    cp.restart();
    let echo2 = EchoServer::start("server-2");
    let mesh = Mesh { cp, dir: mesh.dir };
    let server2 = mesh.proxy(
        "server-2",
        &dataplane("server-2", "echo", free_port(), echo2.port, None),
    );
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Ok(b) = http_get(out) {
            seen.insert(b.trim().to_string());
        }
    }
    assert_eq!(seen.len(), 2, "only {seen:?} answered");
    let (before1, before2) = (echo1.served(), echo2.served());
    for _ in 0..40 {
        http_get(out).expect("request");
    }
    let (d1, d2) = (echo1.served() - before1, echo2.served() - before2);
    assert_eq!(d1 + d2, 40);
    assert!(d1 >= 10 && d2 >= 10, "traffic not spread: {d1} vs {d2}");

    eprintln!("step: A proxy that stops");
    // A proxy that stops is shown offline; the others stay online.
    server2.terminate();
    wait_for("server-2 offline", Duration::from_secs(20), || {
        let out = stdout(&mesh.cp.kumactl(&["inspect", "dataplanes"]));
        out.lines()
            .any(|l| l.contains("server-2") && l.contains("Offline"))
            .then_some(())
    });
    let table = stdout(&mesh.cp.kumactl(&["inspect", "dataplanes"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains("client-1") && l.contains("Online")),
        "{table}"
    );
    drop(client);
}

#[test]
fn long_lived_connection_survives_certificate_rotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Certificates live 3 s and are renewed at 70 %, i.e. about every 2 s.
    let mesh = Mesh::start(dir.path(), "3s", &[("KUMA_STORE_TYPE", "memory")]);
    let echo = EchoServer::start("server");
    let app = EchoServer::start("client-app");
    let (in1, out) = (free_port(), free_port());
    let _server = mesh.proxy("server", &dataplane("server", "echo", in1, echo.port, None));
    let client = mesh.proxy(
        "client",
        &dataplane(
            "client",
            "client",
            free_port(),
            app.port,
            Some((out, "echo")),
        ),
    );
    wait_for("first request", Duration::from_secs(20), || {
        http_get(out).ok()
    });

    let mut conn = std::net::TcpStream::connect(("127.0.0.1", out)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let regenerations = |dp: &str| -> u64 {
        let o = mesh
            .cp
            .kumactl(&["get", "dataplane-insight", dp, "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&stdout(&o))
            .ok()
            .and_then(|v| v["mTLS"]["certificateRegenerations"].as_u64())
            .unwrap_or(0)
    };
    let start = regenerations("client");
    let mut answers = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while regenerations("client") < start + 2 && Instant::now() < deadline {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write on the long-lived connection");
        let mut buf = [0u8; 256];
        let n = conn
            .read(&mut buf)
            .expect("read on the long-lived connection");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("server"));
        answers += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        regenerations("client") >= start + 2,
        "certificates were not rotated twice"
    );
    assert!(answers > 5);
    // New connections work with the new certificates too.
    assert_eq!(http_get(out).expect("new connection").trim(), "server");
    drop(client);
}

#[test]
fn permissive_mesh_accepts_plaintext_next_to_mtls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::start(dir.path(), "24h", &[("KUMA_STORE_TYPE", "memory")]);
    let echo = EchoServer::start("server");
    let app = EchoServer::start("client-app");
    let (inbound, out) = (free_port(), free_port());
    let server = mesh.proxy(
        "server",
        &dataplane("server", "echo", inbound, echo.port, None),
    );
    let _client = mesh.proxy(
        "client",
        &dataplane(
            "client",
            "client",
            free_port(),
            app.port,
            Some((out, "echo")),
        ),
    );
    wait_for("mTLS request", Duration::from_secs(20), || {
        http_get(out).ok()
    });
    assert!(
        http_get(inbound).is_err(),
        "strict mode must refuse plaintext"
    );

    let permissive = write(
        &mesh.dir,
        "permissive.yaml",
        &mtls_mesh("24h").replace("type: builtin", "type: builtin\n      mode: permissive"),
    );
    ok(&mesh
        .cp
        .kumactl(&["apply", "-f", &permissive.display().to_string()]));
    let body = wait_for("plaintext accepted", Duration::from_secs(20), || {
        http_get(inbound).ok()
    });
    assert_eq!(body.trim(), "server");
    assert_eq!(http_get(out).expect("mTLS still works").trim(), "server");
    let stats = server.admin("/stats").unwrap_or_default();
    assert!(stats.contains("plaintext.cx_total"), "{stats}");
    assert!(
        stats.contains("peer.spiffe://default/client.cx_total"),
        "{stats}"
    );
}

#[test]
fn global_control_plane_turns_data_plane_proxies_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kds = free_port();
    let kds_port = kds.to_string();
    let cp = ControlPlane::start(
        dir.path(),
        &[
            ("KUMA_MODE", "global"),
            ("KUMA_STORE_TYPE", "memory"),
            ("KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT", &kds_port),
        ],
    );
    let file = write(
        dir.path(),
        "dp.yaml",
        &dataplane("dp-1", "web", free_port(), free_port(), None),
    );
    let mut dp = DataPlane::start(&cp, &file, None);
    let (status, log) = dp.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        log.contains("global control plane does not accept data plane proxies; connect to a zone control plane"),
        "{log}"
    );

    // Pointed at global's KDS port, kuma-dp stops and says where to go instead of retrying.
    let ca = cp.work_dir.join("kuma").join("kuma-cp.crt");
    let mut dp = DataPlane::start_on_port(&cp, kds, &file, None, &ca, &[]);
    let (status, log) = dp.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        log.contains("this is the global control plane's KDS port")
            && log.contains("DP server (port 5678 by default)"),
        "{log}"
    );
}

/// A Dataplane of the HTTP service `web`.
fn http(name: &str, port: u16) -> String {
    dataplane(name, "web", free_port(), port, None).replace(
        "kuma.io/service: web\n",
        "kuma.io/service: web\n        kuma.io/protocol: http\n",
    )
}

/// A client proxy with an outbound to `web`, once it knows two instances; and that outbound's port.
fn web_client(mesh: &Mesh, app_port: u16) -> (DataPlane, u16) {
    let out = free_port();
    let client = mesh.proxy(
        "client",
        &dataplane(
            "client",
            "client",
            free_port(),
            app_port,
            Some((out, "web")),
        ),
    );
    wait_for(
        "both instances known to the client",
        Duration::from_secs(20),
        || {
            let dump = client.admin("/config_dump")?;
            (dump.matches("\"weight\"").count() >= 2).then_some(())
        },
    );
    (client, out)
}

#[test]
fn http_services_are_balanced_per_request_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::start(dir.path(), "24h", &[("KUMA_STORE_TYPE", "memory")]);
    let (a, b, app) = (
        EchoServer::start("a"),
        EchoServer::start("b"),
        EchoServer::start("client-app"),
    );
    let _a = mesh.proxy("web-a", &http("web-a", a.port));
    let _b = mesh.proxy("web-b", &http("web-b", b.port));
    let (client, out) = web_client(&mesh, app.port);

    // One keep-alive connection: an HTTP-aware proxy still spreads its requests.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", out)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 512];
        let n = conn.read(&mut buf).expect("read");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body = text
            .rsplit("\r\n\r\n")
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    let stats = client.admin("/stats").unwrap_or_default();
    assert!(
        stats.contains(&format!(
            "http.outbound:127.0.0.1:{out}.downstream_rq_2xx: 20"
        )),
        "{stats}"
    );
}

#[test]
fn a_rejected_configuration_is_counted_in_the_insight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::start(dir.path(), "24h", &[("KUMA_STORE_TYPE", "memory")]);
    let app = EchoServer::start("app");
    // The model accepts a hostname as the address; kuma-dp listens only on IPs, so it NACKs
    // the listener it is given.
    let yaml = dataplane("odd", "odd", free_port(), app.port, None)
        .replace("address: 127.0.0.1", "address: localhost");
    let dp = mesh.proxy("odd", &yaml);
    let stats = wait_for("the proxy's NACK", Duration::from_secs(20), || {
        dp.admin("/stats")
            .filter(|s| s.contains("control_plane.lds.update_rejected"))
    });
    assert!(
        stats.contains("control_plane.lds.update_rejected: 1"),
        "{stats}"
    );
    let insight = wait_for(
        "the NACK in the DataplaneInsight",
        Duration::from_secs(10),
        || {
            let o = mesh
                .cp
                .kumactl(&["get", "dataplane-insight", "odd", "-o", "json"]);
            serde_json::from_str::<serde_json::Value>(&stdout(&o))
                .ok()
                .filter(|i| {
                    i["subscriptions"][0]["status"]["stat"]["lds"]["responsesRejected"].as_u64()
                        >= Some(1)
                })
        },
    );
    assert!(
        insight["subscriptions"][0]["status"]["total"]["responsesRejected"].as_u64() >= Some(1)
    );
    // And in the CP's metrics, under Kuma's name and labels.
    let (metrics, _) =
        meshzone_integration_tests::scrape::scrape(mesh.cp.diagnostics_port, "/metrics")
            .expect("scrape /metrics");
    let nacks = meshzone_integration_tests::scrape::value(
        &metrics,
        "xds_requests_received",
        &[
            (
                "type_url",
                "type.googleapis.com/envoy.config.listener.v3.Listener",
            ),
            ("confirmation", "NACK"),
        ],
    );
    assert!(nacks >= Some(1.0), "{metrics}");
}

#[test]
fn an_instance_whose_application_is_not_up_yet_costs_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = Mesh::start(dir.path(), "24h", &[("KUMA_STORE_TYPE", "memory")]);
    let (up, app) = (EchoServer::start("up"), EchoServer::start("client-app"));
    // Nothing listens on this port yet: the instance joined before its application started.
    let not_yet = free_port();
    let _up = mesh.proxy("web-up", &http("web-up", up.port));
    let starting = mesh.proxy("web-starting", &http("web-starting", not_yet));
    let (_client, out) = web_client(&mesh, app.port);
    for i in 0..20 {
        let body = http_get(out).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(body.trim(), "up");
    }
    // The starting instance was tried and said the request reached no application.
    let stats = starting.admin("/stats").unwrap_or_default();
    assert!(
        stats
            .lines()
            .any(|l| l.contains(".downstream_rq_5xx: ") && !l.ends_with(": 0")),
        "the starting instance was never tried: {stats}"
    );
}
