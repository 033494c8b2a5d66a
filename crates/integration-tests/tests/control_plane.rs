//! The real `kuma-cp` process on loopback, driven by the real `kumactl`.

use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, apply_ok, free_port, kumactl, ok, start_loopback_sidecar, stderr, stdout,
    wait_for,
};
use meshzone_model::testdata::invalid_documents;
use serde_json::Value;

const RESOURCES: &str = r#"
type: Mesh
name: demo
mtls:
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: builtin
---
type: Dataplane
mesh: demo
name: dp-1
networking:
  address: 127.0.0.1
  inbound:
    - port: 10001
      servicePort: 9001
      tags:
        kuma.io/service: echo-server_echo-example_svc_1010
---
type: Dataplane
mesh: demo
name: dp-2
networking:
  address: 127.0.0.1
  inbound:
    - port: 10002
      servicePort: 9002
      tags:
        kuma.io/service: echo-server_echo-example_svc_1010
---
type: Dataplane
mesh: demo
name: dp-3
networking:
  address: 127.0.0.1
  inbound:
    - port: 10003
      tags:
        kuma.io/service: client
  outbound:
    - port: 20012
      tags:
        kuma.io/service: echo-server_echo-example_svc_1010
"#;

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_str(&ok(o)).expect("kumactl -o json prints JSON")
}

#[test]
fn apply_list_survive_kill9_delete_and_conflicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path(), &[]);
    let url = cp.api_url();
    cp.configure_kumactl();

    let file = dir.path().join("resources.yaml");
    std::fs::write(&file, RESOURCES).expect("write");
    ok(&cp.kumactl(&["apply", "-f", &file.display().to_string()]));

    let table = ok(&cp.kumactl(&["get", "dataplanes", "--mesh", "demo"]));
    assert!(table.starts_with("MESH"), "{table}");
    for name in ["dp-1", "dp-2", "dp-3"] {
        assert!(table.contains(name), "{table}");
    }
    let list = json_of(&cp.kumactl(&["get", "dataplanes", "--mesh", "demo", "-o", "json"]));
    assert_eq!(list["total"], 3);
    let yaml = ok(&cp.kumactl(&["get", "dataplanes", "--mesh", "demo", "-o", "yaml"]));
    assert!(yaml.contains("name: dp-2"), "{yaml}");
    let one = json_of(&cp.kumactl(&["get", "dataplane", "dp-1", "--mesh", "demo", "-o", "json"]));
    assert_eq!(one["networking"]["inbound"][0]["port"], 10001);
    let meshes = ok(&cp.kumactl(&["get", "meshes"]));
    assert!(
        meshes.contains("demo") && meshes.contains("builtin/ca-1") && meshes.contains("default"),
        "{meshes}"
    );

    let services = ok(&cp.kumactl(&["inspect", "services", "--mesh", "demo"]));
    let header = services.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["SERVICE", "STATUS", "DATAPLANES"]
    );
    assert!(
        services
            .lines()
            .any(|l| l.starts_with("echo-server_echo-example_svc_1010")
                && l.contains("Offline")
                && l.ends_with("0/2")),
        "{services}"
    );
    let dps = ok(&cp.kumactl(&["inspect", "dataplanes", "--mesh", "demo"]));
    assert_eq!(
        dps.lines().filter(|l| l.contains("Offline")).count(),
        3,
        "{dps}"
    );

    // Every acknowledged write is on disk: SIGKILL and restart from the SQLite store.
    cp.restart();
    let after = json_of(&cp.kumactl(&["get", "dataplanes", "--mesh", "demo", "-o", "json"]));
    assert_eq!(after["total"], 3);
    assert_eq!(
        after["items"], list["items"],
        "resources changed across a restart"
    );

    let out = ok(&cp.kumactl(&["delete", "dataplane", "dp-2", "--mesh", "demo"]));
    assert_eq!(out.trim(), "deleted Dataplane \"dp-2\"");
    let gone = cp.kumactl(&["get", "dataplane", "dp-2", "--mesh", "demo"]);
    assert!(!gone.status.success());
    assert!(stderr(&gone).contains("dp-2"), "{}", stderr(&gone));
    assert_eq!(
        json_of(&cp.kumactl(&["get", "dataplanes", "--mesh", "demo", "-o", "json"]))["total"],
        2
    );

    // Concurrent conditional writes from the same version: exactly one wins, the rest get 409.
    let client = reqwest::blocking::Client::new();
    let item = format!("{url}/meshes/demo/dataplanes/dp-1");
    let etag = client.get(&item).send().expect("get").headers()["etag"]
        .to_str()
        .expect("etag")
        .to_string();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (client, item, etag, mut body) = (&client, &item, &etag, one.clone());
                s.spawn(move || {
                    body["networking"]["inbound"][0]["servicePort"] = Value::from(9100 + i);
                    body.as_object_mut().map(|o| o.remove("creationTime"));
                    client
                        .put(item)
                        .header("if-match", etag)
                        .json(&body)
                        .send()
                        .expect("put")
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        5,
        "{statuses:?}"
    );
}

/// Kuma's `dataplaneCleanupAge`: a proxy whose control plane was killed (so nobody deregistered
/// it) is deleted once it has been offline that long, while a connected proxy and a Dataplane
/// applied by hand, never connected, stay.
#[test]
fn proxies_left_by_a_killed_control_plane_are_deleted_after_the_cleanup_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let mut cp = ControlPlane::start(
        dir,
        &[
            ("KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY", "1h"),
            ("KUMA_RUNTIME_UNIVERSAL_DATAPLANE_CLEANUP_AGE", "4s"),
        ],
    );
    cp.configure_kumactl();
    let inbound = || {
        format!(
            "  inbound:\n    - port: {}\n      servicePort: {}\n      tags:\n        kuma.io/service: web\n",
            free_port(),
            free_port()
        )
    };
    let left = start_loopback_sidecar(&cp, dir, "left-behind", &inbound());
    cp.kill9();
    drop(left); // kill -9 of its kuma-dp too: it never comes back
    cp.start_again();
    let names = |cp: &ControlPlane| -> Vec<String> {
        json_of(&cp.kumactl(&["get", "dataplanes", "-o", "json"]))["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let listed = names(&cp);
    assert!(
        listed.contains(&"left-behind".to_string()),
        "the killed CP left it: {listed:?}"
    );
    let _connected = start_loopback_sidecar(&cp, dir, "connected", &inbound());
    apply_ok(
        &cp,
        dir,
        "by-hand.yaml",
        &format!(
            "type: Dataplane\nmesh: default\nname: by-hand\nnetworking:\n  address: 127.0.0.1\n{}",
            inbound()
        ),
    );
    wait_for(
        "the offline proxy to be deleted",
        Duration::from_secs(30),
        || (!names(&cp).contains(&"left-behind".to_string())).then_some(()),
    );
    let mut kept = names(&cp);
    kept.sort();
    assert_eq!(kept, ["by-hand", "connected"]);
}

#[test]
fn invalid_documents_are_refused_by_kumactl_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(dir.path(), &[("KUMA_STORE_TYPE", "memory")]);
    cp.configure_kumactl();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/invalid");
    let docs = invalid_documents(&corpus).expect("corpus");
    assert!(docs.len() >= 20);
    for doc in docs {
        let out = cp.kumactl(&["apply", "-f", &doc.path.display().to_string()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{} accepted", doc.path.display());
        assert!(
            err.contains(&format!("{}: {}", doc.field, doc.message))
                || (err.contains(&doc.field) && err.contains(&doc.message)),
            "{}: expected {}: {}, got {err}",
            doc.path.display(),
            doc.field,
            doc.message
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one-line error expected: {err}"
        );
    }
    let list = json_of(&cp.kumactl(&["get", "dataplanes", "-o", "json"]));
    assert_eq!(list["total"], 0, "nothing may be stored");
}

#[test]
fn clear_errors_for_unreachable_cp_busy_port_and_bad_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kumactl.yaml");
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let out = kumactl(
        &config,
        &[
            "config",
            "control-planes",
            "add",
            "--name",
            "x",
            "--address",
            &address,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&address), "{}", stderr(&out));

    let cp = ControlPlane::start(dir.path(), &[("KUMA_STORE_TYPE", "memory")]);
    let busy = std::process::Command::new(meshzone_integration_tests::binary("kuma-cp"))
        .arg("run")
        .env("KUMA_STORE_TYPE", "memory")
        .env("HOME", dir.path())
        .env("KUMA_API_SERVER_HTTP_PORT", cp.api_port.to_string())
        .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
        .output()
        .expect("second cp");
    assert!(!busy.status.success());
    let msg = stderr(&busy);
    assert!(
        msg.contains(&format!("port {} is already in use", cp.api_port))
            && msg.contains("KUMA_API_SERVER_HTTP_PORT"),
        "{msg}"
    );

    let bad = std::process::Command::new(meshzone_integration_tests::binary("kuma-cp"))
        .arg("run")
        .env("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", "http://global:5685")
        .env("KUMA_MULTIZONE_ZONE_NAME", "zone-1")
        .output()
        .expect("bad cp");
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS"),
        "{}",
        stderr(&bad)
    );

    // A zone token file no gRPC header can carry stops the zone CP at the start, naming it.
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("zone.token");
    std::fs::write(&token, "abc\u{1}def").expect("token file");
    let mut zone = std::process::Command::new(meshzone_integration_tests::binary("kuma-cp"));
    zone.arg("run")
        .env("HOME", dir.path())
        .env("KUMA_GENERAL_WORK_DIR", dir.path().join("kuma"))
        .env("KUMA_STORE_TYPE", "memory")
        .env("KUMA_MULTIZONE_ZONE_NAME", "zone-1")
        .env(
            "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
            format!("grpcs://127.0.0.1:{}", free_port()),
        )
        .env("KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE", &token);
    for var in [
        "KUMA_API_SERVER_HTTP_PORT",
        "KUMA_API_SERVER_HTTPS_PORT",
        "KUMA_DP_SERVER_PORT",
        "KUMA_DIAGNOSTICS_SERVER_PORT",
        "KUMA_DNS_SERVER_PORT",
    ] {
        zone.env(var, free_port().to_string());
    }
    let log = dir.path().join("zone-cp.log");
    let mut child = zone
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("zone cp");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the zone CP started with a token file no header can carry");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let msg = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE {}",
            token.display()
        )) && msg.contains("a gRPC header cannot carry"),
        "{msg}"
    );

    // Graceful stop on SIGTERM.
    let pid = cp.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut cp = cp;
    let code = wait_for(
        "kuma-cp to exit after SIGTERM",
        Duration::from_secs(10),
        || cp.child.try_wait().ok().flatten(),
    );
    assert!(code.success(), "exit status {code}");
}

#[test]
fn seed_zone_token_command_works_against_global() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(
        dir.path(),
        &[("KUMA_MODE", "global"), ("KUMA_STORE_TYPE", "memory")],
    );
    cp.configure_kumactl();
    // As the seed writes it.
    let token = cp.kumactl_ok(&[
        "generate",
        "zone-token",
        "--zone=zone-1",
        "--scope",
        "egress",
        "--scope",
        "ingress",
    ]);
    assert_eq!(token.trim().split('.').count(), 3, "not a JWT: {token}");
    let bad = cp.kumactl(&[
        "generate",
        "zone-token",
        "--zone=zone-1",
        "--scope",
        "admin",
    ]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("scope: unknown scope \"admin\""),
        "{}",
        stderr(&bad)
    );
}

/// `dig` (a real DNS client) against the zone CP's `.mesh` DNS.
fn dig(port: u16, name: &str) -> (String, String) {
    let o = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+tries=3",
            "+time=2",
            name,
            "A",
        ])
        .output()
        .expect("dig (Debian package dnsutils) must be installed");
    let text = stdout(&o);
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let answer = text
        .lines()
        .filter(|l| !l.starts_with(';'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() == 5 && w[2] == "IN" && w[3] == "A")
        .map(|w| w[4].to_string())
        .unwrap_or_default();
    (status, answer)
}

#[test]
fn mesh_dns_answers_stable_virtual_ips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cp = ControlPlane::start(dir.path(), &[]);
    cp.configure_kumactl();
    let dp = |name: &str, service: &str| {
        format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 10001\n      tags:\n        kuma.io/service: {service}\n"
        )
    };
    let file = dir.path().join("dp.yaml");
    std::fs::write(&file, dp("echo-1", "echo-server_echo-example_svc_1010")).expect("write");
    cp.kumactl_ok(&["apply", "-f", &file.display().to_string()]);
    let (status, vip) = wait_for("a VIP for the service", Duration::from_secs(10), || {
        let r = dig(cp.dns_port, "echo-server_echo-example_svc_1010.mesh");
        (r.0 == "NOERROR" && !r.1.is_empty()).then_some(r)
    });
    assert_eq!(status, "NOERROR");
    let ip: std::net::Ipv4Addr = vip.parse().expect("an IPv4 answer");
    assert_eq!(ip.octets()[0] & 0xf0, 240, "{ip} is not in 240.0.0.0/4");
    // The RFC 1123 variant resolves to the same VIP; unknown names are NXDOMAIN.
    assert_eq!(
        dig(cp.dns_port, "echo-server.echo-example.svc.1010.mesh").1,
        vip
    );
    assert_eq!(dig(cp.dns_port, "nothing-here.mesh").0, "NXDOMAIN");
    // A second service gets another VIP; the first keeps its own, across a restart too.
    std::fs::write(&file, dp("web-1", "web")).expect("write");
    cp.kumactl_ok(&["apply", "-f", &file.display().to_string()]);
    let web = wait_for("a VIP for web", Duration::from_secs(10), || {
        let r = dig(cp.dns_port, "web.mesh");
        (!r.1.is_empty()).then_some(r.1)
    });
    assert_ne!(web, vip);
    cp.restart();
    let after = wait_for("DNS after restart", Duration::from_secs(10), || {
        let r = dig(cp.dns_port, "echo-server_echo-example_svc_1010.mesh");
        (!r.1.is_empty()).then_some(r.1)
    });
    assert_eq!(after, vip, "VIPs must survive a restart");
    assert_eq!(dig(cp.dns_port, "web.mesh").1, web);
}
