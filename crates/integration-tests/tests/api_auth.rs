//! The REST API's authentication and authorization (issue 14), with a real kuma-cp, curl and
//! kumactl. The first start stores an admin user token; it is read from the CP's own host
//! (where requests are the admin by default). The CP then restarts on the same store with
//! `KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN=false`, so that the test's loopback requests are
//! whoever their token says, and every refusal is checked to change nothing:
//! - without a token: reads pass, writes get 401 with a JSON body saying what to do;
//! - the admin's token (kumactl `--auth-type=tokens --auth-conf token=…`) writes and issues a
//!   user token;
//! - that user (not an admin) reads, but its writes, token requests and secret reads get 403;
//! - a token with a broken signature, `alg: none`, an expired one and a revoked one get 401;
//! - with `KUMA_API_SERVER_AUTHN_UNAUTHENTICATED_READ=false`, reads without a token get 401.
//!
//! The HTTPS API (port 5682) with certificates made by the `openssl` CLI: a client presenting
//! an admin client certificate (`KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR`) is the admin, with
//! curl and kumactl; without a certificate or with an unknown one it is whoever its token says;
//! `KUMA_API_SERVER_HTTPS_REQUIRE_CLIENT_CERT=true` refuses a client without one at the
//! handshake; bad certificate settings stop the start naming the setting and the file.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use meshzone_integration_tests::{ControlPlane, binary, kumactl, ok, stderr, wait_for, write_file};
use meshzone_tls_client::fixtures::{self, CertFiles, KeyKind};
use serde_json::Value;

/// `curl` to the CP's API: status code and body.
fn curl(
    cp: &ControlPlane,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    curl_to(&format!("{}{path}", cp.api_url()), method, token, body, &[])
}

/// `curl` with `extra` arguments (TLS files) to `url`: status code (0: no answer, e.g. a
/// refused handshake) and body, or curl's error.
fn curl_to(
    url: &str,
    method: &str,
    token: Option<&str>,
    body: Option<&str>,
    extra: &[&str],
) -> (u16, String) {
    let mut args = vec![
        "-sS".to_string(),
        "-X".into(),
        method.into(),
        "-w".into(),
        "\n%{http_code}".into(),
        url.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    if let Some(t) = token {
        args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        args.extend([
            "-H".into(),
            "content-type: application/json".into(),
            "--data".into(),
            b.into(),
        ]);
    }
    let out = Command::new("curl")
        .args(&args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    if code == 0 {
        return (0, String::from_utf8_lossy(&out.stderr).to_string());
    }
    (code, body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// `kumactl config control-planes add --name <name> --address <address> <extra>` into the
/// kumactl config file `config`.
fn add_control_plane(config: &Path, name: &str, address: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "config",
        "control-planes",
        "add",
        "--name",
        name,
        "--address",
        address,
    ];
    args.extend_from_slice(extra);
    kumactl(config, &args, None)
}

/// A kumactl config file for `cp` authenticating with `token`.
fn kumactl_as(cp: &ControlPlane, dir: &Path, who: &str, token: &str) -> std::path::PathBuf {
    let config = dir.join(format!("kumactl-{who}.yaml"));
    let token = format!("token={token}");
    ok(&add_control_plane(
        &config,
        who,
        &cp.api_url(),
        &["--auth-type=tokens", "--auth-conf", &token],
    ));
    config
}

fn mesh_exists(cp: &ControlPlane, name: &str) -> bool {
    curl(cp, "GET", &format!("/meshes/{name}"), None, None).0 == 200
}

/// The `jti` claim of a token (read without checking it).
fn jti(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    json(&String::from_utf8_lossy(&bytes))["jti"]
        .as_str()
        .expect("jti")
        .to_string()
}

#[test]
fn only_admins_write_and_tokens_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path(), &[]);

    // From the CP's host, without a token, requests are the admin: the admin token is there.
    // As the README says: `kumactl get global-secret admin-user-token -o json`.
    cp.configure_kumactl();
    let body = cp.kumactl_ok(&["get", "global-secret", "admin-user-token", "-o", "json"]);
    let data = json(&body)["data"].as_str().expect("data").to_string();
    let admin = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64"),
    )
    .expect("utf-8");

    // The same store, now without the localhost exemption.
    cp.sigterm(Duration::from_secs(10));
    cp.env.push((
        "KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN".into(),
        "false".into(),
    ));
    cp.start_again();

    // No token: reads pass, writes are refused with a JSON reason, and nothing changes.
    assert_eq!(curl(&cp, "GET", "/meshes", None, None).0, 200);
    let (status, body) = curl(
        &cp,
        "PUT",
        "/meshes/anon",
        None,
        Some(r#"{"type":"Mesh","name":"anon"}"#),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["title"], "Unauthenticated", "{body}");
    assert!(body.contains("--auth-type=tokens"), "{body}");
    assert!(!mesh_exists(&cp, "anon"));
    let (status, body) = curl(&cp, "GET", "/global-secrets", None, None);
    assert_eq!(status, 401, "secrets are for admins: {body}");
    let (status, _) = curl(
        &cp,
        "POST",
        "/tokens/dataplane",
        None,
        Some(r#"{"mesh":"default"}"#),
    );
    assert_eq!(status, 401);

    // The admin's token, through kumactl: writes, and issues a user token.
    let as_admin = kumactl_as(&cp, dir.path(), "admin", admin.trim());
    let mesh = write_file(dir.path(), "m2.yaml", "type: Mesh\nname: m2\n");
    ok(&kumactl(
        &as_admin,
        &["apply", "-f", &mesh.display().to_string()],
        None,
    ));
    assert!(mesh_exists(&cp, "m2"));
    let jane = ok(&kumactl(
        &as_admin,
        &[
            "generate",
            "user-token",
            "--name",
            "jane",
            "--group",
            "team-a",
            "--valid-for",
            "1h",
        ],
        None,
    ))
    .trim()
    .to_string();

    // Jane reads, but is no admin: her writes, token requests and secret reads are refused.
    let as_jane = kumactl_as(&cp, dir.path(), "jane", &jane);
    let meshes = ok(&kumactl(&as_jane, &["get", "meshes"], None));
    assert!(meshes.contains("m2"), "{meshes}");
    let m3 = write_file(dir.path(), "m3.yaml", "type: Mesh\nname: m3\n");
    let refused = kumactl(&as_jane, &["apply", "-f", &m3.display().to_string()], None);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("\"jane\"") && err.contains("mesh-system:admin"),
        "{err}"
    );
    assert!(!mesh_exists(&cp, "m3"));
    let refused = kumactl(
        &as_jane,
        &["generate", "dataplane-token", "--name", "dp-1"],
        None,
    );
    assert!(!refused.status.success(), "{}", stderr(&refused));
    let (status, body) = curl(
        &cp,
        "GET",
        "/global-secrets/admin-user-token",
        Some(&jane),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["title"], "Access Denied", "{body}");
    let (status, _) = curl(&cp, "DELETE", "/meshes/m2", Some(&jane), None);
    assert_eq!(status, 403);
    assert!(mesh_exists(&cp, "m2"));

    // Forged tokens: a broken signature, and alg none with admin claims.
    let mut broken = jane.clone();
    let last = broken.pop().expect("non-empty");
    broken.push(if last == 'A' { 'B' } else { 'A' });
    let (status, body) = curl(
        &cp,
        "PUT",
        "/meshes/forged",
        Some(&broken),
        Some(r#"{"type":"Mesh","name":"forged"}"#),
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not valid"), "{body}");
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT","kid":"1"}"#),
        b64(
            r#"{"jti":"x","name":"mesh-system:admin","groups":["mesh-system:admin"],"iat":0,"exp":99999999999}"#
        )
    );
    let (status, body) = curl(
        &cp,
        "PUT",
        "/meshes/forged",
        Some(&none),
        Some(r#"{"type":"Mesh","name":"forged"}"#),
    );
    assert_eq!(status, 401, "{body}");
    assert!(!mesh_exists(&cp, "forged"));

    // An expired token.
    let short = ok(&kumactl(
        &as_admin,
        &[
            "generate",
            "user-token",
            "--name",
            "brief",
            "--valid-for",
            "1s",
        ],
        None,
    ))
    .trim()
    .to_string();
    let body = wait_for("the 1 s token to expire", Duration::from_secs(15), || {
        let (status, body) = curl(&cp, "GET", "/meshes", Some(&short), None);
        (status == 401).then_some(body)
    });
    assert!(body.contains("expired"), "{body}");

    // A revoked token: the admin lists its id in user-token-revocations.
    let revocations = write_file(
        dir.path(),
        "revocations.yaml",
        &format!(
            "type: GlobalSecret\nname: user-token-revocations\ndata: {}\n",
            base64::engine::general_purpose::STANDARD.encode(jti(&jane))
        ),
    );
    ok(&kumactl(
        &as_admin,
        &["apply", "-f", &revocations.display().to_string()],
        None,
    ));
    let (status, body) = curl(&cp, "GET", "/meshes", Some(&jane), None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");

    // Unauthenticated reads switched off.
    cp.sigterm(Duration::from_secs(10));
    cp.env.push((
        "KUMA_API_SERVER_AUTHN_UNAUTHENTICATED_READ".into(),
        "false".into(),
    ));
    cp.start_again();
    let (status, body) = curl(&cp, "GET", "/meshes", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(ok(&kumactl(&as_admin, &["get", "meshes"], None)).contains("m2"));
}

/// curl's TLS arguments: the CA that verifies the CP, and a client certificate.
fn tls_args<'a>(ca: &'a str, client: Option<&'a (String, String)>) -> Vec<&'a str> {
    let mut args = vec!["--cacert", ca];
    if let Some((cert, key)) = client {
        args.extend(["--cert", cert.as_str(), "--key", key.as_str()]);
    }
    args
}

fn paths(files: &CertFiles) -> (String, String) {
    (
        files.cert.display().to_string(),
        files.key.display().to_string(),
    )
}

#[test]
fn admin_client_certificates_on_the_https_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let admins = dir.path().join("admins");
    std::fs::create_dir_all(&certs).expect("dir");
    std::fs::create_dir_all(&admins).expect("dir");
    // As a user does: a CA, the CP's certificate and an admin's, all signed by it; and a
    // self-made certificate that is in no directory.
    let (ca, server) =
        fixtures::ca_and_leaf(&certs, "cp", KeyKind::Rsa2048, "IP:127.0.0.1,DNS:localhost")
            .expect("openssl");
    let admin = fixtures::leaf(
        &certs,
        "admin",
        &ca,
        KeyKind::EcdsaP256,
        "clientAuth",
        "DNS:admin",
    )
    .expect("openssl");
    let stranger = fixtures::self_signed(&certs, "stranger", KeyKind::EcdsaP256, "DNS:stranger")
        .expect("openssl");
    std::fs::copy(&admin.cert, admins.join("admin.pem")).expect("copy");
    let (server_cert, server_key) = paths(&server);
    let admins_dir = admins.display().to_string();
    let cp = ControlPlane::start(
        dir.path(),
        &[
            ("KUMA_API_SERVER_HTTPS_TLS_CERT_FILE", &server_cert),
            ("KUMA_API_SERVER_HTTPS_TLS_KEY_FILE", &server_key),
            ("KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR", &admins_dir),
            // The test's requests come from loopback: no exemption for them.
            ("KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN", "false"),
        ],
    );
    let ca_file = ca.cert.display().to_string();
    let https = cp.https_url();
    let (admin_files, stranger_files) = (paths(&admin), paths(&stranger));

    // The index over HTTPS, verified with the CA.
    let (status, body) = curl_to(
        &format!("{https}/"),
        "GET",
        None,
        None,
        &tls_args(&ca_file, None),
    );
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["version"].is_string(), "{body}");

    let mesh = |name: &str| format!(r#"{{"type":"Mesh","name":"{name}"}}"#);
    let exists = |name: &str| {
        let (status, _) = curl_to(
            &format!("{https}/meshes/{name}"),
            "GET",
            None,
            None,
            &tls_args(&ca_file, None),
        );
        status == 200
    };

    // With the admin client certificate: the write passes, whatever token comes with it.
    let (status, body) = curl_to(
        &format!("{https}/meshes/by-cert"),
        "PUT",
        None,
        Some(&mesh("by-cert")),
        &tls_args(&ca_file, Some(&admin_files)),
    );
    assert!(status == 201 || status == 200, "{status} {body}");
    assert!(exists("by-cert"));
    let (status, body) = curl_to(
        &format!("{https}/meshes/by-cert-and-junk"),
        "PUT",
        Some("not-a-token"),
        Some(&mesh("by-cert-and-junk")),
        &tls_args(&ca_file, Some(&admin_files)),
    );
    assert!(status == 201 || status == 200, "{status} {body}");

    // Without a certificate and without a token: refused with a JSON reason, nothing stored.
    let (status, body) = curl_to(
        &format!("{https}/meshes/no-cert"),
        "PUT",
        None,
        Some(&mesh("no-cert")),
        &tls_args(&ca_file, None),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["title"], "Unauthenticated", "{body}");
    assert!(!exists("no-cert"));

    // An unknown certificate gives no rights: anonymous without a token.
    let (status, body) = curl_to(
        &format!("{https}/meshes/stranger"),
        "PUT",
        None,
        Some(&mesh("stranger")),
        &tls_args(&ca_file, Some(&stranger_files)),
    );
    assert_eq!(status, 401, "{body}");
    assert!(json(&body)["details"].is_string(), "{body}");
    let (status, body) = curl_to(
        &format!("{https}/global-secrets/admin-user-token"),
        "GET",
        None,
        None,
        &tls_args(&ca_file, Some(&stranger_files)),
    );
    assert_eq!(status, 401, "{body}");
    assert!(!exists("stranger"));
    // The plain HTTP port knows no client certificates.
    let (status, _) = curl(&cp, "PUT", "/meshes/plain", None, Some(&mesh("plain")));
    assert_eq!(status, 401);
    assert!(!exists("plain"));

    // kumactl over https with the CA and the admin certificate applies a resource.
    let config = dir.path().join("kumactl-https.yaml");
    let (admin_cert, admin_key) = &admin_files;
    ok(&add_control_plane(
        &config,
        "https",
        &https,
        &[
            "--ca-cert-file",
            &ca_file,
            "--client-cert-file",
            admin_cert,
            "--client-key-file",
            admin_key,
        ],
    ));
    let file = write_file(
        dir.path(),
        "by-kumactl.yaml",
        "type: Mesh\nname: by-kumactl\n",
    );
    ok(&kumactl(
        &config,
        &["apply", "-f", &file.display().to_string()],
        None,
    ));
    assert!(exists("by-kumactl"));

    // kumactl without the certificate: the same apply is refused, and says why.
    let anon = dir.path().join("kumactl-anon.yaml");
    ok(&add_control_plane(
        &anon,
        "anon",
        &https,
        &["--ca-cert-file", &ca_file],
    ));
    let other = write_file(dir.path(), "anon.yaml", "type: Mesh\nname: by-anon\n");
    let refused = kumactl(&anon, &["apply", "-f", &other.display().to_string()], None);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("needs an admin"),
        "{}",
        stderr(&refused)
    );
    assert!(!exists("by-anon"));

    // A wrong CA: a clear message naming it, and a non-zero exit.
    let wrong = dir.path().join("kumactl-wrong.yaml");
    let wrong_ca = stranger.cert.display().to_string();
    let out = add_control_plane(&wrong, "wrong", &https, &["--ca-cert-file", &wrong_ca]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is not trusted by --ca-cert-file") && err.contains(&wrong_ca),
        "{err}"
    );
    assert!(!wrong.exists(), "nothing saved");

    // A client certificate file that is not PEM: named, non-zero exit.
    let junk = write_file(dir.path(), "junk.pem", "not a certificate");
    let junk_path = junk.display().to_string();
    let out = add_control_plane(
        &wrong,
        "junk",
        &https,
        &[
            "--ca-cert-file",
            &ca_file,
            "--client-cert-file",
            &junk_path,
            "--client-key-file",
            admin_key,
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("--client-cert-file {junk_path}: no certificate")),
        "{err}"
    );
}

#[test]
fn a_required_client_certificate_is_checked_at_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("dir");
    let stranger = fixtures::self_signed(&certs, "stranger", KeyKind::Rsa2048, "DNS:stranger")
        .expect("openssl");
    // No certificate configured: the CP generates one in its work dir, as for the DP server.
    let cp = ControlPlane::start(
        dir.path(),
        &[("KUMA_API_SERVER_HTTPS_REQUIRE_CLIENT_CERT", "true")],
    );
    let generated = dir.path().join("kuma").join("kuma-cp.crt");
    let ca = generated.display().to_string();
    let url = format!("{}/meshes", cp.https_url());
    let (status, err) = curl_to(&url, "GET", None, None, &tls_args(&ca, None));
    assert_eq!(status, 0, "answered without a client certificate: {err}");
    assert!(!err.is_empty(), "curl says why");
    // Any certificate passes the handshake; an unknown one is then anonymous (reads pass).
    let stranger_files = paths(&stranger);
    let (status, body) = curl_to(
        &url,
        "GET",
        None,
        None,
        &tls_args(&ca, Some(&stranger_files)),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl_to(
        &format!("{}/meshes/x", cp.https_url()),
        "PUT",
        None,
        Some(r#"{"type":"Mesh","name":"x"}"#),
        &tls_args(&ca, Some(&stranger_files)),
    );
    // From loopback the admin by default: the CP's host stays admin over HTTPS too.
    assert!(status == 201 || status == 200, "{status} {body}");

    // kumactl: without a certificate the handshake fails, with a clear error and non-zero exit;
    // with one (the generated certificate as CA, or --skip-verify) it works.
    let config = dir.path().join("kumactl-required.yaml");
    let https = cp.https_url();
    let out = add_control_plane(&config, "no-cert", &https, &["--ca-cert-file", &ca]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("requires a client certificate (--client-cert-file"),
        "{}",
        stderr(&out)
    );
    let (cert, key) = &stranger_files;
    for trust in [
        ["--ca-cert-file", ca.as_str()].as_slice(),
        &["--skip-verify"],
    ] {
        let mut args = trust.to_vec();
        args.extend([
            "--client-cert-file",
            cert,
            "--client-key-file",
            key,
            "--overwrite",
        ]);
        ok(&add_control_plane(&config, "with-cert", &https, &args));
        let meshes = ok(&kumactl(&config, &["get", "meshes"], None));
        assert!(meshes.contains('x'), "{meshes}");
    }
}

#[test]
fn bad_https_settings_stop_the_start_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.crt").display().to_string();
    let junk = write_file(dir.path(), "junk.pem", "not a certificate");
    let junk_dir = dir.path().join("admins");
    std::fs::create_dir_all(&junk_dir).expect("dir");
    let junk_in_dir = write_file(&junk_dir, "bad.pem", "-----BEGIN CERTIFICATE-----\n!!\n");
    let junk_path = junk.display().to_string();
    let junk_dir_path = junk_dir.display().to_string();
    // (environment, what the error must say)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("KUMA_API_SERVER_HTTPS_TLS_CERT_FILE", missing.as_str()),
                ("KUMA_API_SERVER_HTTPS_TLS_KEY_FILE", missing.as_str()),
            ],
            vec![
                "KUMA_API_SERVER_HTTPS_TLS_CERT_FILE".into(),
                missing.clone(),
            ],
        ),
        (
            vec![
                ("KUMA_API_SERVER_HTTPS_TLS_CERT_FILE", junk_path.as_str()),
                ("KUMA_API_SERVER_HTTPS_TLS_KEY_FILE", junk_path.as_str()),
            ],
            vec![format!(
                "KUMA_API_SERVER_HTTPS_TLS_CERT_FILE {junk_path}: no certificate"
            )],
        ),
        (
            vec![(
                "KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR",
                junk_dir_path.as_str(),
            )],
            vec![format!(
                "KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR {}",
                junk_in_dir.display()
            )],
        ),
    ];
    let ports: Vec<(&str, String)> = [
        "KUMA_API_SERVER_HTTP_PORT",
        "KUMA_API_SERVER_HTTPS_PORT",
        "KUMA_DIAGNOSTICS_SERVER_PORT",
        "KUMA_DP_SERVER_PORT",
        "KUMA_DNS_SERVER_PORT",
    ]
    .into_iter()
    .map(|var| (var, meshzone_integration_tests::free_port().to_string()))
    .collect();
    for (env, wants) in cases {
        let out = Command::new(binary("kuma-cp"))
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("KUMA_STORE_TYPE", "memory")
            .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
            .env("KUMA_API_SERVER_HTTPS_INTERFACE", "127.0.0.1")
            .envs(ports.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("kuma-cp runs");
        assert!(!out.status.success(), "{env:?} started");
        let err = stderr(&out);
        for want in wants {
            assert!(err.contains(&want), "{env:?}: {want:?} not in {err}");
        }
    }
}
