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

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use meshzone_integration_tests::{ControlPlane, kumactl, ok, stderr, wait_for, write_file};
use serde_json::Value;

/// `curl` to the CP's API: status code and body.
fn curl(
    cp: &ControlPlane,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("{}{path}", cp.api_url());
    let mut args = vec![
        "-sS".to_string(),
        "-X".into(),
        method.into(),
        "-w".into(),
        "\n%{http_code}".into(),
        url,
    ];
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
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A kumactl config file for `cp` authenticating with `token`.
fn kumactl_as(cp: &ControlPlane, dir: &Path, who: &str, token: &str) -> std::path::PathBuf {
    let config = dir.join(format!("kumactl-{who}.yaml"));
    ok(&kumactl(
        &config,
        &[
            "config",
            "control-planes",
            "add",
            "--name",
            who,
            "--address",
            &cp.api_url(),
            "--auth-type=tokens",
            "--auth-conf",
            &format!("token={token}"),
        ],
        None,
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
