//! The authorization matrix (issue 14) on a real zone control plane and kuma-dp processes:
//! data-plane tokens that are for another mesh, forged, unsigned, signed with an unknown key or
//! revoked are each refused with their reason and register nothing; an mTLS inbound refuses
//! certificates minted by another mesh's CA, whatever identity they claim, and lets its own
//! mesh's through.

#[path = "support/mtls_client.rs"]
mod mtls_client;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, free_port, mtls_mesh, ok, wait_for, write_file,
};
use mtls_client::tls_get;

fn dataplane(mesh: &str, name: &str, inbound: u16, app: u16) -> String {
    format!(
        "type: Dataplane\nmesh: {mesh}\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {inbound}\n      servicePort: {app}\n      tags:\n        kuma.io/service: {name}\n"
    )
}

fn token(cp: &ControlPlane, mesh: &str, name: &str) -> String {
    ok(&cp.kumactl(&[
        "generate",
        "dataplane-token",
        "--mesh",
        mesh,
        "--name",
        name,
    ]))
    .trim()
    .to_string()
}

/// A JWT's three parts, the header and claims decoded.
fn parts(jwt: &str) -> (serde_json::Value, serde_json::Value, String) {
    let mut it = jwt.split('.');
    let json = |part: Option<&str>| -> serde_json::Value {
        let bytes = B64URL.decode(part.expect("jwt part")).expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    };
    let header = json(it.next());
    let claims = json(it.next());
    (header, claims, it.next().expect("signature").to_string())
}

fn encode(header: &serde_json::Value, claims: &serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    )
}

/// The mesh's builtin CA (certificate and key), as an admin reads it from the API.
fn mesh_ca(cp: &ControlPlane, mesh: &str) -> meshzone_pki::CertifiedKey {
    let name = format!("{mesh}.ca-builtin-ca-1");
    let secret: serde_json::Value = serde_json::from_str(&ok(
        &cp.kumactl(&["get", "secret", &name, "--mesh", mesh, "-o", "json"])
    ))
    .expect("secret json");
    let data = B64
        .decode(secret["data"].as_str().expect("data"))
        .expect("base64");
    let stored: serde_json::Value = serde_json::from_slice(&data).expect("stored CA");
    meshzone_pki::CertifiedKey {
        cert_pem: stored["cert"].as_str().expect("cert").to_string(),
        key_pem: stored["key"].as_str().expect("key").to_string(),
    }
}

/// Starts kuma-dp for `yaml` with `token` and returns its log once it has stopped, failing.
fn refused(cp: &ControlPlane, dir: &Path, case: &str, yaml: &Path, token: &str) -> String {
    let file: PathBuf = write_file(dir, &format!("{case}.token"), token);
    let mut dp = DataPlane::start(cp, yaml, Some(&file));
    let (status, log) = dp.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "{case}: kuma-dp was let in: {log}");
    log
}

#[test]
fn forged_and_foreign_tokens_and_certificates_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let cp = ControlPlane::start(dir, &[("KUMA_STORE_TYPE", "memory")]);
    cp.configure_kumactl();
    for (file, yaml) in [
        ("default.yaml", mtls_mesh("24h")),
        (
            "other.yaml",
            mtls_mesh("24h").replace("name: default", "name: other"),
        ),
    ] {
        let path = write_file(dir, file, &yaml);
        ok(&cp.kumactl(&["apply", "-f", &path.display().to_string()]));
    }
    let echo = EchoServer::start("server");
    let inbound = free_port();
    let server_yaml = write_file(
        dir,
        "server.yaml",
        &dataplane("default", "server", inbound, echo.port),
    );
    let server_token = write_file(dir, "server.token", &token(&cp, "default", "server"));
    let mut server = DataPlane::start(&cp, &server_yaml, Some(&server_token));
    server.wait_ready();

    eprintln!("step: data-plane tokens");
    let intruder = write_file(
        dir,
        "intruder.yaml",
        &dataplane("default", "intruder", free_port(), echo.port),
    );
    let valid = token(&cp, "default", "intruder");
    let (header, claims, signature) = parts(&valid);
    // Flip one character in the middle of the signature (the last may only carry padding bits).
    let mut forged_signature: Vec<char> = signature.chars().collect();
    let mid = forged_signature.len() / 2;
    forged_signature[mid] = if forged_signature[mid] == 'A' {
        'B'
    } else {
        'A'
    };
    let forged_signature: String = forged_signature.into_iter().collect();
    let mut unsigned_header = header.clone();
    unsigned_header["alg"] = "none".into();
    let mut unknown_key_header = header.clone();
    unknown_key_header["kid"] = "999".into();
    let cases = [
        (
            "other-mesh",
            token(&cp, "other", "intruder"),
            "token is for mesh \"other\"",
        ),
        (
            "forged",
            encode(&header, &claims, &forged_signature),
            "token signature is not valid",
        ),
        (
            "alg-none",
            encode(&unsigned_header, &claims, ""),
            "token is malformed",
        ),
        // Refused by kuma-dp itself at the start, naming the file: no header can carry it.
        (
            "control-character",
            format!("{}\u{1}{}", &valid[..10], &valid[10..]),
            "control-character.token: the token holds characters a gRPC header cannot carry",
        ),
    ];
    for (case, token, reason) in &cases {
        let log = refused(&cp, dir, case, &intruder, token);
        assert!(log.contains(reason), "{case}: expected {reason:?} in {log}");
    }
    // A key this zone does not know may be one global created moments ago, still on its way
    // down: the proxy is told so and keeps retrying, and is never let in meanwhile.
    let unknown_key = write_file(
        dir,
        "unknown-key.token",
        &encode(&unknown_key_header, &claims, &signature),
    );
    let mut retrying = DataPlane::start(&cp, &intruder, Some(&unknown_key));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&retrying.log).unwrap_or_default();
        // The reason is logged as a quoted field: the key id's quotes come escaped.
        if log.contains("token was signed with key \\\"999\\\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal naming the unknown key: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        retrying.child.try_wait().expect("try_wait").is_none(),
        "kuma-dp should keep retrying an unknown key"
    );
    drop(retrying);
    // The valid token works until its id is revoked (Kuma's revocation secret, per mesh).
    let jti = claims["jti"].as_str().expect("jti").to_string();
    let revocations = write_file(
        dir,
        "revocations.yaml",
        &format!(
            "type: Secret\nmesh: default\nname: dataplane-token-revocations\ndata: {}\n",
            B64.encode(&jti)
        ),
    );
    ok(&cp.kumactl(&["apply", "-f", &revocations.display().to_string()]));
    let log = refused(&cp, dir, "revoked", &intruder, &valid);
    assert!(log.contains("token has been revoked"), "{log}");
    // None of the refused proxies registered.
    let listed = ok(&cp.kumactl(&["get", "dataplanes", "--mesh", "default", "-o", "json"]));
    assert!(!listed.contains("intruder"), "{listed}");
    assert!(listed.contains("\"server\""), "{listed}");

    eprintln!("step: certificates of another mesh");
    let now = SystemTime::now();
    let issue = |ca: &meshzone_pki::CertifiedKey, uri: &str| {
        meshzone_pki::issue_workload_cert(ca, &[uri.to_string()], Duration::from_secs(3600), now)
            .expect("issue")
    };
    // A proxy of mesh `other` runs too: its mesh has a CA of its own.
    let other_echo = EchoServer::start("other-server");
    let other_yaml = write_file(
        dir,
        "other-server.yaml",
        &dataplane("other", "other-server", free_port(), other_echo.port),
    );
    let other_token = write_file(
        dir,
        "other-server.token",
        &token(&cp, "other", "other-server"),
    );
    let mut other_server = DataPlane::start(&cp, &other_yaml, Some(&other_token));
    other_server.wait_ready();
    let own = mesh_ca(&cp, "default");
    let other = mesh_ca(&cp, "other");
    assert_ne!(own.cert_pem, other.cert_pem, "each mesh has its own CA");
    // The mesh's own CA gets through: the refusals below are about the CA, not the client.
    let body = wait_for(
        "the inbound answers its mesh",
        Duration::from_secs(20),
        || tls_get(inbound, &issue(&own, "spiffe://default/client")).ok(),
    );
    assert!(body.contains("server"), "{body}");
    let served = echo.served();
    for (what, cert) in [
        (
            "another mesh's identity",
            issue(&other, "spiffe://other/client"),
        ),
        (
            "this mesh's identity, minted by another mesh's CA",
            issue(&other, "spiffe://default/client"),
        ),
    ] {
        assert!(tls_get(inbound, &cert).is_err(), "{what} was accepted");
    }
    assert_eq!(echo.served(), served, "a refused client reached the app");
}
