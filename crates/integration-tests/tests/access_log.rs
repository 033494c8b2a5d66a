//! MeshAccessLog end to end with real processes on loopback.
//!
//! 1. Created on global, it reaches zone-1, whose kuma-dp sidecars (mTLS) then log every HTTP
//!    request and TCP connection in both directions to a file (JSON) and to a TCP collector the
//!    test runs (plain text): Kuma's placeholders resolved per direction, the response codes
//!    and the byte counts the test itself sent and read.
//! 2. The same policy given to a real Envoy 1.40 client sidecar and a kuma-dp client sidecar of
//!    the same service: for the same request both write a JSON file line with the same fields.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, Envoy, apply_ok, envoy_binary, free_port,
    global_and_one_zone, start_sidecar, wait_for,
};
use serde_json::{Value, json};

const PROPAGATION: Duration = Duration::from_secs(30);

const MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";

/// The JSON keys every line carries (values: Envoy's operators and Kuma's placeholders).
const JSON_FIELDS: &[(&str, &str)] = &[
    ("direction", "%KUMA_TRAFFIC_DIRECTION%"),
    ("mesh", "%KUMA_MESH%"),
    ("src", "%KUMA_SOURCE_SERVICE%"),
    ("dst", "%KUMA_DESTINATION_SERVICE%"),
    ("src_addr", "%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%"),
    ("code", "%RESPONSE_CODE%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("sent", "%BYTES_SENT%"),
    ("received", "%BYTES_RECEIVED%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("agent", "%REQ(USER-AGENT)%"),
    ("protocol", "%PROTOCOL%"),
    ("upstream", "%UPSTREAM_HOST%"),
    ("start", "%START_TIME%"),
    ("duration", "%DURATION%"),
];

fn json_format() -> String {
    JSON_FIELDS
        .iter()
        .map(|(k, v)| format!("{{key: {k}, value: '{v}'}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every proxy of the mesh: outbounds and inbounds to `file` (JSON) and, when given, to the
/// collector (plain).
fn policy(file: &Path, collector: Option<u16>) -> String {
    let tcp = collector.map_or(String::new(), |port| {
        format!(
            "\n          - type: Tcp\n            tcp:\n              address: 127.0.0.1:{port}\n              format: {{type: Plain, plain: '%KUMA_TRAFFIC_DIRECTION% %KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE% %RESPONSE_CODE% sent=%BYTES_SENT% received=%BYTES_RECEIVED%'}}"
        )
    });
    let backends = format!(
        "\n          - type: File\n            file:\n              path: {}\n              format: {{type: Json, json: [{}]}}{tcp}",
        file.display(),
        json_format()
    );
    format!(
        "type: MeshAccessLog\nname: everything\nmesh: default\nspec:\n  targetRef: {{kind: Mesh}}\n  to:\n    - targetRef: {{kind: Mesh}}\n      default:\n        backends:{backends}\n  from:\n    - targetRef: {{kind: Mesh}}\n      default:\n        backends:{backends}\n"
    )
}

/// The JSON lines of `file` so far.
fn json_lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The first line of `file` with these key/values.
fn find_line(file: &Path, want: &[(&str, Value)]) -> Value {
    wait_for(
        &format!("a line with {want:?} in {}", file.display()),
        PROPAGATION,
        || {
            json_lines(file)
                .into_iter()
                .find(|l| want.iter().all(|(k, v)| &l[*k] == v))
        },
    )
}

/// A TCP collector: every line it receives, from any number of connections.
struct Collector {
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind collector");
        let port = listener.local_addr().expect("addr").port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = lines.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let out = out.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(conn).lines() {
                        let Ok(line) = line else { return };
                        out.lock().expect("lines").push(line);
                    }
                });
            }
        });
        Collector { port, lines }
    }

    fn wait_line(&self, want: &str) {
        wait_for(&format!("{want:?} at the collector"), PROPAGATION, || {
            self.lines
                .lock()
                .expect("lines")
                .iter()
                .any(|l| l == want)
                .then_some(())
        });
    }
}

/// One HTTP/1.1 request over raw TCP: the bytes sent and the whole answer read back.
fn raw_exchange(port: u16, path: &str) -> (usize, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: alog-test\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    (req.len(), out)
}

/// An HTTP/1.1 app that reads each request's body (Content-Length) and answers `got <n>\n`.
fn body_reading_app() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind app");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let Ok(mut writer) = conn.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(conn);
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = format!("got {length}\n");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if writer.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A POST with `body` over a new connection: the answer.
fn post(port: u16, path: &str, body: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: alog-test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn dataplane(
    name: &str,
    service: &str,
    protocol: &str,
    app: u16,
    outbounds: &[(u16, &str)],
) -> String {
    let mut yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {app}\n    tags:\n      kuma.io/service: {service}\n      kuma.io/protocol: {protocol}\n",
        free_port()
    );
    if !outbounds.is_empty() {
        yaml.push_str("  outbound:\n");
        for (port, service) in outbounds {
            yaml.push_str(&format!(
                "  - port: {port}\n    tags:\n      kuma.io/service: {service}\n"
            ));
        }
    }
    yaml
}

#[test]
fn a_policy_from_global_makes_a_zones_kuma_dp_log_http_and_tcp_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let (global, zone1) = global_and_one_zone(dir);
    apply_ok(&global, dir, "mesh.yaml", MESH);
    wait_for("the mesh in zone-1", PROPAGATION, || {
        zone1
            .kumactl_ok(&["get", "meshes"])
            .contains("default")
            .then_some(())
    });
    let web = EchoServer::start("backend");
    let db = EchoServer::start("db");
    let (to_backend, to_db) = (free_port(), free_port());
    let _backend = start_sidecar(
        &zone1,
        dir,
        "backend-1",
        &dataplane("backend-1", "backend", "http", web.port, &[]),
    );
    let _db = start_sidecar(
        &zone1,
        dir,
        "db-1",
        &dataplane("db-1", "db", "tcp", db.port, &[]),
    );
    let frontend = start_sidecar(
        &zone1,
        dir,
        "frontend-1",
        &dataplane(
            "frontend-1",
            "frontend",
            "tcp",
            1,
            &[(to_backend, "backend"), (to_db, "db")],
        ),
    );
    wait_for("backend through the frontend sidecar", PROPAGATION, || {
        raw_exchange(to_backend, "/")
            .1
            .starts_with("HTTP/1.1 200")
            .then_some(())
    });

    let collector = Collector::start();
    let file = dir.join("access.log");
    apply_ok(
        &global,
        dir,
        "access-log.yaml",
        &policy(&file, Some(collector.port)),
    );

    // HTTP: logged by the client's outbound and the server's inbound.
    let http = wait_for("an HTTP request logged", PROPAGATION, || {
        let (_, answer) = raw_exchange(to_backend, "/hello?x=1");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        json_lines(&file)
            .into_iter()
            .find(|l| l["direction"] == "OUTBOUND" && l["dst"] == "backend")
    });
    let body = "backend\n".len();
    for (k, v) in [
        ("mesh", json!("default")),
        ("src", json!("frontend")),
        ("src_addr", json!("127.0.0.1")),
        ("code", json!(200)),
        ("sent", json!(body)),
        ("received", json!(0)),
        ("method", json!("GET")),
        ("path", json!("/hello?x=1")),
        ("agent", json!("alog-test")),
        ("protocol", json!("HTTP/1.1")),
    ] {
        assert_eq!(http[k], v, "{k} in {http}");
    }
    assert!(
        http["upstream"]
            .as_str()
            .is_some_and(|u| u.starts_with("127.0.0.1:")),
        "{http}"
    );
    assert_eq!(http["flags"], "-", "no flag, as Envoy writes it: {http}");
    let inbound = find_line(
        &file,
        &[("direction", json!("INBOUND")), ("dst", json!("backend"))],
    );
    assert_eq!(
        inbound["src"], "unknown",
        "Kuma's inbound source: {inbound}"
    );
    assert_eq!(
        (&inbound["code"], &inbound["sent"]),
        (&json!(200), &json!(body))
    );
    assert_eq!(inbound["path"], "/hello?x=1");

    // TCP: the bytes this test sent and read, both ways; no HTTP fields.
    let (request_len, answer) = raw_exchange(to_db, "/tcp");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let want = [
        ("direction", json!("OUTBOUND")),
        ("dst", json!("db")),
        ("received", json!(request_len)),
    ];
    let tcp = find_line(&file, &want);
    assert_eq!(tcp["src"], "frontend");
    assert_eq!(tcp["code"], 0, "TCP has no response code: {tcp}");
    assert_eq!(tcp["sent"], json!(answer.len()));
    assert!(
        tcp["method"].is_null() && tcp["protocol"].is_null(),
        "{tcp}"
    );
    let tcp_in = find_line(
        &file,
        &[
            ("direction", json!("INBOUND")),
            ("dst", json!("db")),
            ("received", json!(request_len)),
        ],
    );
    assert_eq!(tcp_in["sent"], json!(answer.len()));

    // The same requests at the collector, in the plain format.
    collector.wait_line(&format!(
        "OUTBOUND frontend->backend 200 sent={body} received=0"
    ));
    collector.wait_line(&format!(
        "INBOUND unknown->backend 200 sent={body} received=0"
    ));
    collector.wait_line(&format!(
        "OUTBOUND frontend->db 0 sent={} received={request_len}",
        answer.len()
    ));
    collector.wait_line(&format!(
        "INBOUND unknown->db 0 sent={} received={request_len}",
        answer.len()
    ));

    // An operator kuma-dp does not fill: the update is refused (NACK), the last accepted
    // configuration keeps logging.
    let rejected = frontend.stat("control_plane.lds.update_rejected");
    let refused = policy(&file, Some(collector.port)).replace(
        "%KUMA_TRAFFIC_DIRECTION% %KUMA_SOURCE_SERVICE%",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON% %KUMA_SOURCE_SERVICE%",
    );
    apply_ok(&global, dir, "access-log.yaml", &refused);
    wait_for("the frontend's NACK", PROPAGATION, || {
        (frontend.stat("control_plane.lds.update_rejected") > rejected).then_some(())
    });
    let (_, answer) = raw_exchange(to_backend, "/after-nack");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let kept = find_line(
        &file,
        &[
            ("direction", json!("OUTBOUND")),
            ("path", json!("/after-nack")),
        ],
    );
    assert_eq!(kept["dst"], "backend");
}

fn dataplane_json(name: &str, app: u16, outbound: u16) -> Value {
    json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": { "address": "127.0.0.1",
            "inbound": [{ "port": free_port(), "servicePort": app,
                "tags": { "kuma.io/service": "frontend" } }],
            "outbound": [{ "port": outbound, "tags": { "kuma.io/service": "backend" } }] }
    })
}

#[test]
fn envoy_and_kuma_dp_write_the_same_fields_for_the_same_request() {
    envoy_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let cp = ControlPlane::start(dir, &[("KUMA_STORE_TYPE", "memory")]);
    cp.configure_kumactl();
    apply_ok(&cp, dir, "mesh.yaml", MESH);
    let app = body_reading_app();
    let _backend = start_sidecar(
        &cp,
        dir,
        "backend-1",
        &dataplane("backend-1", "backend", "http", app, &[]),
    );
    let envoy_file = dir.join("envoy.log");
    let kdp_file = dir.join("kuma-dp.log");
    // One policy per client proxy (each its own file), the same formats.
    for (name, file) in [("envoy-client", &envoy_file), ("kdp-client", &kdp_file)] {
        let doc = policy(file, None)
            .replace("name: everything", &format!("name: {name}"))
            .replace(
                "targetRef: {kind: Mesh}\n  to:",
                &format!("targetRef: {{kind: MeshSubset, tags: {{instance: {name}}}}}\n  to:"),
            );
        apply_ok(&cp, dir, &format!("{name}.yaml"), &doc);
    }
    let (envoy_out, kdp_out) = (free_port(), free_port());
    let mut envoy_dp = dataplane_json("envoy-client", 1, envoy_out);
    envoy_dp["networking"]["inbound"][0]["tags"]["instance"] = json!("envoy-client");
    let token = cp
        .kumactl_ok(&["generate", "dataplane-token", "--name", "envoy-client"])
        .trim()
        .to_string();
    let mut envoy = Envoy::start(&cp, dir, "envoy-client", &envoy_dp, &token);
    envoy.wait_ready();
    let mut kdp_dp = dataplane_json("kdp-client", 1, kdp_out);
    kdp_dp["networking"]["inbound"][0]["tags"]["instance"] = json!("kdp-client");
    let _kdp: DataPlane = start_sidecar(&cp, dir, "kdp-client", &kdp_dp.to_string());

    let mut lines = BTreeMap::new();
    for (port, file) in [(envoy_out, &envoy_file), (kdp_out, &kdp_file)] {
        let line = wait_for(
            &format!("a line in {}", file.display()),
            PROPAGATION,
            || {
                let answer = post(port, "/same?q=1", "twelve bytes");
                if !answer.starts_with("HTTP/1.1 200") {
                    return None;
                }
                json_lines(file)
                    .into_iter()
                    .find(|l| l["direction"] == "OUTBOUND" && l["path"] == "/same?q=1")
            },
        );
        lines.insert(file.display().to_string(), line);
    }
    let (envoy_line, kdp_line) = (
        &lines[&envoy_file.display().to_string()],
        &lines[&kdp_file.display().to_string()],
    );
    for (key, _) in JSON_FIELDS {
        match *key {
            // When, and how long: differ by nature; both present.
            "start" | "duration" => {
                assert!(
                    !envoy_line[key].is_null() && !kdp_line[key].is_null(),
                    "{key}"
                );
            }
            _ => assert_eq!(
                envoy_line[key], kdp_line[key],
                "{key}: Envoy {envoy_line} kuma-dp {kdp_line}"
            ),
        }
    }
    assert_eq!(kdp_line["code"], 200);
    assert_eq!(kdp_line["src"], "frontend");
    assert_eq!(kdp_line["sent"], json!("got 12\n".len()));
    assert_eq!(kdp_line["received"], json!(12));
    assert_eq!(kdp_line["method"], "POST");
    // Envoy's START_TIME and ours have the same shape (2016-04-15T20:17:00.310Z).
    for line in [envoy_line, kdp_line] {
        let start = line["start"].as_str().unwrap_or_default();
        assert!(
            start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
            "{start}"
        );
    }
}
