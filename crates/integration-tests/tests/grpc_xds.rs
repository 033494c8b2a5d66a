//! gRPC's own xDS client (Python `grpcio`, `xds:///` target) reads our ADS and calls a gRPC
//! service registered in the mesh: proof that our xDS is valid for a client we did not write.
//!
//! gRPC proxyless clients get their data-plane TLS from certificate providers, not SDS, so this
//! mesh runs without mTLS; the xDS stream itself is TLS-verified against the CP's certificate.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use meshzone_integration_tests::{ControlPlane, DataPlane, free_port, stderr, stdout};
use serde_json::json;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run scripts/test.sh (it installs grpcio into .venv)",
        p.display()
    );
    p
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn grpc_proxyless_client_calls_a_mesh_service_through_our_xds() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc_xds.py");
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(
        dir.path(),
        &[
            ("KUMA_STORE_TYPE", "memory"),
            ("KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE", "none"),
        ],
    );
    cp.configure_kumactl();

    // A real gRPC server behind a kuma-dp sidecar.
    let app_port = free_port();
    let mut server = Killed(
        Command::new(python())
            .arg(&script)
            .args(["serve", &app_port.to_string(), "grpc-server"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python server"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert_eq!(line.trim(), "ready");
    let inbound = free_port();
    let sidecar = dir.path().join("grpc-server.yaml");
    std::fs::write(
        &sidecar,
        format!("type: Dataplane\nmesh: default\nname: grpc-server\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {inbound}\n      servicePort: {app_port}\n      tags:\n        kuma.io/service: echo-grpc\n        kuma.io/protocol: grpc\n"),
    )
    .expect("write");
    let mut dp = DataPlane::start(&cp, &sidecar, None);
    dp.wait_ready();

    // The proxyless client: registered through its bootstrap's node metadata, like a sidecar.
    let client_dp = json!({
        "type": "Dataplane", "mesh": "default", "name": "grpc-client",
        "networking": {"address": "127.0.0.1",
            "inbound": [{"port": free_port(), "tags": {"kuma.io/service": "grpc-client"}}],
            "outbound": [{"port": free_port(), "tags": {"kuma.io/service": "echo-grpc"}}]}
    });
    let bootstrap = json!({
        "xds_servers": [{
            "server_uri": format!("127.0.0.1:{}", cp.dp_port),
            "channel_creds": [{"type": "tls", "config": {
                "ca_certificate_file": cp.work_dir.join("kuma").join("kuma-cp.crt").display().to_string()
            }}],
            "server_features": ["xds_v3"]
        }],
        "node": {"id": "default.grpc-client", "metadata": {"dataplane.resource": client_dp.to_string()}}
    });
    let bootstrap_file = dir.path().join("grpc-bootstrap.json");
    std::fs::write(&bootstrap_file, bootstrap.to_string()).expect("bootstrap");

    let out = Command::new("timeout")
        .args([
            "60",
            &python().display().to_string(),
            &script.display().to_string(),
            "call",
            "xds:///echo-grpc",
            "5",
        ])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap_file)
        .output()
        .expect("python client");
    assert!(
        out.status.success(),
        "gRPC client failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let answers: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(answers, vec!["grpc-server:hi".to_string(); 5]);
    let stats = dp.admin("/stats").unwrap_or_default();
    assert!(
        stats.contains(&format!(
            "listener.inbound:127.0.0.1:{inbound}.downstream_cx_total"
        )),
        "{stats}"
    );
    // The CP recorded the gRPC client's ACKs and no NACK.
    let insight = cp.kumactl_ok(&["get", "dataplane-insight", "grpc-client", "-o", "json"]);
    assert!(!insight.contains("\"responsesRejected\": 1"), "{insight}");
    drop(server);
}
