//! Global and two zone control planes as real processes on loopback, synced over KDS (TLS).

use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, apply, free_port, host_dirs, line_of, start_global, stderr, stdout, wait_for,
    zone, zone_with_store,
};

#[test]
fn global_and_two_zones_sync_policies_inventory_and_lifecycle() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs = host_dirs(root.path(), &["global", "zone-a", "zone-b"]);
    let kds_port = free_port();
    let global = start_global(&dirs[0], kds_port, &[]);
    let mut zone_a = zone(&dirs[1], "zone-a", &global, kds_port);
    let zone_b = zone(&dirs[2], "zone-b", &global, kds_port);

    // Both zones register and show Online.
    wait_for("both zones online", Duration::from_secs(30), || {
        let t = global.kumactl_ok(&["inspect", "zones"]);
        (line_of(&t, "zone-a").contains("Online") && line_of(&t, "zone-b").contains("Online"))
            .then_some(())
    });
    let insight: serde_json::Value =
        serde_json::from_str(&global.kumactl_ok(&["get", "zone-insight", "zone-a", "-o", "json"]))
            .expect("insight json");
    let sub = &insight["subscriptions"][0];
    assert!(
        sub["status"]["stat"]["Mesh"]["responsesSent"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{insight}"
    );
    assert!(
        sub["globalInstanceId"].is_string() && sub["zoneInstanceId"].is_string(),
        "{insight}"
    );
    let zones = global.kumactl_ok(&["get", "zones"]);
    assert!(
        zones.contains("zone-a") && zones.contains("zone-b"),
        "{zones}"
    );

    // A Mesh applied on global reaches both zones.
    let mesh = "type: Mesh\nname: demo\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n";
    let o = apply(&global, &dirs[0], "mesh.yaml", mesh);
    assert!(o.status.success(), "{}", stderr(&o));
    for z in [&zone_a, &zone_b] {
        wait_for("mesh in zone", Duration::from_secs(20), || {
            z.kumactl_ok(&["get", "meshes"])
                .contains("demo")
                .then_some(())
        });
    }

    // Global created the mesh CA; both zones received the same one (one trust root per mesh).
    let ca_in = |z: &ControlPlane| {
        wait_for("mesh CA in zone", Duration::from_secs(20), || {
            let o = z.kumactl(&[
                "get",
                "secret",
                "demo.ca-builtin-ca-1",
                "--mesh",
                "demo",
                "-o",
                "json",
            ]);
            serde_json::from_str::<serde_json::Value>(&stdout(&o))
                .ok()
                .and_then(|v| v["data"].as_str().map(str::to_string))
        })
    };
    assert_eq!(ca_in(&zone_a), ca_in(&zone_b));

    // Writes in the wrong place are refused with a message saying where to make them.
    let o = apply(&zone_a, &dirs[1], "mesh2.yaml", "type: Mesh\nname: other\n");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("On zone control plane you can only modify zone resources"),
        "{}",
        stderr(&o)
    );
    let dp = "type: Dataplane\nmesh: demo\nname: dp-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 10001\n      tags:\n        kuma.io/service: web\n";
    let o = apply(&global, &dirs[0], "dp.yaml", dp);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("On global control plane you can not modify Dataplane"),
        "{}",
        stderr(&o)
    );
    // Over HTTP both refusals are 405 with Kuma's `{title, details}` body.
    let put = |cp: &ControlPlane, path: &str, body: serde_json::Value| {
        let resp = reqwest::blocking::Client::new()
            .put(format!("{}{path}", cp.api_url()))
            .json(&body)
            .send()
            .expect("PUT");
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().expect("JSON body"))
    };
    let (status, body) = put(
        &zone_a,
        "/meshes/other",
        serde_json::json!({"type": "Mesh", "name": "other"}),
    );
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["title"], "Method not allowed");
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("On zone control plane you can only modify zone resources with 'kumactl apply' or via the HTTP API.")),
        "{body}"
    );
    let (status, body) = put(
        &global,
        "/zoneegresses/egress-1",
        serde_json::json!({"type": "ZoneEgress", "name": "egress-1",
            "networking": {"address": "127.0.0.1", "port": 10002}}),
    );
    assert_eq!(status, 405, "{body}");
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|d| d
                .starts_with("On global control plane you can not modify ZoneEgress resources")),
        "{body}"
    );

    // A Dataplane of zone A shows up on global, renamed and labelled with its zone.
    let o = apply(&zone_a, &dirs[1], "dp.yaml", dp);
    assert!(o.status.success(), "{}", stderr(&o));
    let on_global = wait_for("dataplane on global", Duration::from_secs(20), || {
        let o = global.kumactl(&[
            "get",
            "dataplane",
            "zone-a.dp-1",
            "--mesh",
            "demo",
            "-o",
            "json",
        ]);
        o.status.success().then(|| stdout(&o))
    });
    let v: serde_json::Value = serde_json::from_str(&on_global).expect("json");
    assert_eq!(v["labels"]["kuma.io/zone"], "zone-a");
    assert_eq!(v["labels"]["kuma.io/origin"], "zone");

    // A ZoneIngress of zone B reaches zone A (and never goes back to zone B).
    let ingress = "type: ZoneIngress\nname: ingress-01\nnetworking:\n  address: 127.0.0.1\n  port: 10000\n  advertisedAddress: 10.0.0.2\n  advertisedPort: 10000\n";
    let o = apply(&zone_b, &dirs[2], "ingress.yaml", ingress);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(
        "zone B's ingress in zone A",
        Duration::from_secs(20),
        || {
            zone_a
                .kumactl_ok(&["get", "zone-ingresses"])
                .contains("zone-b.ingress-01")
                .then_some(())
        },
    );
    assert!(
        !zone_b
            .kumactl_ok(&["get", "zone-ingresses"])
            .contains("zone-b.ingress-01")
    );

    // Zone B's ingress offers what zone B runs; zone A learns it (instances, pinned zone) and its
    // DNS resolves the remote service.
    let web = "type: Dataplane\nmesh: demo\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 10002\n      tags:\n        kuma.io/service: web\n";
    let o = apply(&zone_b, &dirs[2], "web.yaml", web);
    assert!(o.status.success(), "{}", stderr(&o));
    let offered = wait_for(
        "zone B's web offered in zone A",
        Duration::from_secs(20),
        || {
            let o = zone_a.kumactl(&["get", "zone-ingress", "zone-b.ingress-01", "-o", "json"]);
            serde_json::from_str::<serde_json::Value>(&stdout(&o))
                .ok()
                .filter(|v| v["availableServices"][0]["tags"]["kuma.io/service"] == "web")
        },
    );
    assert_eq!(offered["availableServices"][0]["instances"], 1);
    assert_eq!(offered["availableServices"][0]["mesh"], "demo");
    assert_eq!(
        offered["availableServices"][0]["tags"]["kuma.io/zone"],
        "zone-b"
    );
    let vip = wait_for("web.mesh in zone A's DNS", Duration::from_secs(10), || {
        let o = std::process::Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &zone_a.dns_port.to_string(),
                "+short",
                "web.mesh",
            ])
            .output()
            .ok()?;
        Some(stdout(&o).trim().to_string()).filter(|s| !s.is_empty())
    });
    assert!(vip.starts_with("240."), "{vip}");

    // Disabling zone B removes its ingress from zone A and shows it Offline.
    let o = apply(
        &global,
        &dirs[0],
        "zone-b.yaml",
        "type: Zone\nname: zone-b\nspec:\n  enabled: false\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(
        "ingress copy gone from zone A",
        Duration::from_secs(20),
        || {
            (!zone_a
                .kumactl_ok(&["get", "zone-ingresses"])
                .contains("zone-b.ingress-01"))
            .then_some(())
        },
    );
    assert!(line_of(&global.kumactl_ok(&["inspect", "zones"]), "zone-b").contains("Offline"));

    // Deleting an online zone is refused with Kuma's exact message.
    let o = global.kumactl(&["delete", "zone", "zone-a"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(
            "zone: unable to delete Zone, Zone CP is still connected, please shut it down first"
        ),
        "{}",
        stderr(&o)
    );
    // Once its CP is gone, the zone goes Offline and deleting it removes what came from it.
    zone_a.kill9();
    wait_for("zone A offline", Duration::from_secs(20), || {
        line_of(&global.kumactl_ok(&["inspect", "zones"]), "zone-a")
            .contains("Offline")
            .then_some(())
    });
    global.kumactl_ok(&["delete", "zone", "zone-a"]);
    let o = global.kumactl(&["get", "dataplane", "zone-a.dp-1", "--mesh", "demo"]);
    assert!(!o.status.success(), "zone A's dataplane outlived its zone");
    let insights = global.kumactl_ok(&["get", "zone-insights"]);
    assert!(!insights.contains("zone-a"), "{insights}");
}

#[test]
fn zones_and_global_converge_after_crashes() {
    let root = tempfile::tempdir().expect("tempdir");
    let [gdir, zdir]: [std::path::PathBuf; 2] = host_dirs(root.path(), &["global", "zone"])
        .try_into()
        .expect("two dirs");
    let kds_port = free_port();
    // Durable stores on both sides (the default SQLite).
    let mut global = start_global(&gdir, kds_port, &[("KUMA_STORE_TYPE", "sqlite")]);
    let mut zone = zone_with_store(&zdir, "zone-a", &global, kds_port, "sqlite");
    for m in ["keep", "doomed"] {
        let o = apply(
            &global,
            &gdir,
            &format!("{m}.yaml"),
            &format!("type: Mesh\nname: {m}\n"),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    wait_for("meshes in the zone", Duration::from_secs(20), || {
        let m = zone.kumactl_ok(&["get", "meshes"]);
        (m.contains("keep") && m.contains("doomed")).then_some(())
    });

    // Global crashes; the zone keeps working; its new Dataplane reaches global after restart.
    global.kill9();
    let dp = "type: Dataplane\nmesh: keep\nname: dp-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 10001\n      tags:\n        kuma.io/service: web\n";
    let o = apply(&zone, &zdir, "dp.yaml", dp);
    assert!(
        o.status.success(),
        "the zone must accept its own changes while global is down: {}",
        stderr(&o)
    );
    global.restart();
    wait_for(
        "dataplane on global after its restart",
        Duration::from_secs(60),
        || {
            global
                .kumactl(&["get", "dataplane", "zone-a.dp-1", "--mesh", "keep"])
                .status
                .success()
                .then_some(())
        },
    );

    // The zone crashes; a Mesh is deleted on global meanwhile; the restarted zone drops its copy.
    zone.kill9();
    global.kumactl_ok(&["delete", "mesh", "doomed"]);
    zone.restart();
    wait_for(
        "stale mesh removed from the zone",
        Duration::from_secs(60),
        || {
            let m = zone.kumactl_ok(&["get", "meshes"]);
            (!m.contains("doomed") && m.contains("keep")).then_some(())
        },
    );
}

#[test]
fn global_can_require_zone_tokens_from_zone_control_planes() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs = host_dirs(root.path(), &["global", "good", "bad"]);
    let kds_port = free_port();
    let global = start_global(
        &dirs[0],
        kds_port,
        &[("KUMA_MULTIZONE_GLOBAL_KDS_AUTH_TYPE", "zoneToken")],
    );
    let token = global.kumactl_ok(&[
        "generate",
        "zone-token",
        "--zone=zone-good",
        "--scope",
        "cp",
    ]);
    let token_file = dirs[1].join("zone.token");
    std::fs::write(&token_file, token.trim()).expect("token");
    let ca = global
        .work_dir
        .join("kuma")
        .join("kuma-cp.crt")
        .display()
        .to_string();
    let address = format!("grpcs://127.0.0.1:{kds_port}");
    let start = |dir: &Path, name: &str, token: Option<&Path>| {
        let token = token.map(|t| t.display().to_string()).unwrap_or_default();
        ControlPlane::start(
            dir,
            &[
                ("KUMA_MODE", "zone"),
                ("KUMA_STORE_TYPE", "memory"),
                ("KUMA_MULTIZONE_ZONE_NAME", name),
                ("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", &address),
                ("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE", &ca),
                ("KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE", &token),
            ],
        )
    };
    // Refused: no token; zone-good's token presented by another zone; a token of zone-good's
    // own that is only for ingresses; an expired one; one with a tampered signature.
    let token_for = |zone: &str, scope: &str, extra: &[&str]| -> String {
        let mut args = vec!["generate", "zone-token", "--zone", zone, "--scope", scope];
        args.extend_from_slice(extra);
        global.kumactl_ok(&args).trim().to_string()
    };
    let ingress_only = token_for("zone-scoped", "ingress", &[]);
    let expired = token_for("zone-expired", "cp", &["--valid-for", "1s"]);
    let issued = std::time::SystemTime::now();
    let mut forged = token_for("zone-forged", "cp", &[]);
    let at = forged.len() - 10;
    let flipped = if forged.as_bytes()[at] == b'A' {
        "B"
    } else {
        "A"
    };
    forged.replace_range(at..at + 1, flipped);
    wait_for("the short token to expire", Duration::from_secs(5), || {
        (std::time::SystemTime::now() > issued + Duration::from_millis(1500)).then_some(())
    });
    let refused_dirs = host_dirs(root.path(), &["thief", "scoped", "expired", "forged"]);
    let mut refused = vec![start(&dirs[2], "zone-bad", None)];
    for (dir, zone, token) in [
        (&refused_dirs[0], "zone-thief", token.trim().to_string()),
        (&refused_dirs[1], "zone-scoped", ingress_only),
        (&refused_dirs[2], "zone-expired", expired),
        (&refused_dirs[3], "zone-forged", forged),
    ] {
        let file = dir.join("zone.token");
        std::fs::write(&file, token).expect("token");
        refused.push(start(dir, zone, Some(&file)));
    }
    let _good = start(&dirs[1], "zone-good", Some(&token_file));
    wait_for(
        "the zone with a token online",
        Duration::from_secs(30),
        || {
            line_of(&global.kumactl_ok(&["inspect", "zones"]), "zone-good")
                .contains("Online")
                .then_some(())
        },
    );
    // The refused zones started earlier and were turned away each time: no Zone of theirs
    // exists, and each zone CP was told why.
    let zones = global.kumactl_ok(&["get", "zones"]);
    for (cp, zone, reason) in [
        (&refused[0], "zone-bad", "no token was provided"),
        (&refused[1], "zone-thief", "token is for zone"),
        (&refused[2], "zone-scoped", "does not include"),
        (&refused[3], "zone-expired", "token expired"),
        (&refused[4], "zone-forged", "token signature is not valid"),
    ] {
        assert!(!zones.contains(zone), "{zone} was let in: {zones}");
        wait_for(
            &format!("{zone} told {reason:?}"),
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(&cp.log)
                    .ok()
                    .filter(|log| log.contains(reason))
            },
        );
    }
    let zones = global.kumactl_ok(&["get", "zones"]);
    assert!(
        !zones.contains("zone-thief") && !zones.contains("zone-forged"),
        "{zones}"
    );
}

/// Drops every packet to and from a loopback TCP port while alive (iptables), so a connection is
/// cut without FIN or RST. Removes its rules when dropped.
struct Blackhole {
    port: u16,
}

impl Blackhole {
    fn rules(port: u16) -> [Vec<String>; 2] {
        let p = port.to_string();
        [
            [
                "INPUT", "-i", "lo", "-p", "tcp", "--dport", &p, "-j", "DROP",
            ]
            .map(String::from)
            .to_vec(),
            [
                "INPUT", "-i", "lo", "-p", "tcp", "--sport", &p, "-j", "DROP",
            ]
            .map(String::from)
            .to_vec(),
        ]
    }

    fn cut(port: u16) -> Blackhole {
        for rule in Self::rules(port) {
            let status = std::process::Command::new("iptables")
                .arg("-I")
                .args(&rule)
                .status()
                .expect("iptables (Debian package iptables) must be installed; tests run as root");
            assert!(status.success(), "iptables -I {rule:?} failed");
        }
        Blackhole { port }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for rule in Self::rules(self.port) {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(&rule)
                .status();
        }
    }
}

#[test]
fn a_cut_link_without_fin_takes_the_zone_offline() {
    let root = tempfile::tempdir().expect("tempdir");
    let [gdir, zdir]: [std::path::PathBuf; 2] = host_dirs(root.path(), &["global", "zone"])
        .try_into()
        .expect("two dirs");
    let kds_port = free_port();
    let global = start_global(&gdir, kds_port, &[]);
    let _zone = zone(&zdir, "zone-a", &global, kds_port);
    wait_for("zone online", Duration::from_secs(30), || {
        line_of(&global.kumactl_ok(&["inspect", "zones"]), "zone-a")
            .contains("Online")
            .then_some(())
    });
    // No FIN, no RST: only keepalive can notice. Without it the zone would stay Online for hours.
    let cut = Blackhole::cut(kds_port);
    wait_for(
        "zone offline after the cut",
        Duration::from_secs(30),
        || {
            line_of(&global.kumactl_ok(&["inspect", "zones"]), "zone-a")
                .contains("Offline")
                .then_some(())
        },
    );
    // The link comes back: the zone reconnects by itself.
    drop(cut);
    wait_for("zone online again", Duration::from_secs(60), || {
        line_of(&global.kumactl_ok(&["inspect", "zones"]), "zone-a")
            .contains("Online")
            .then_some(())
    });
}

#[test]
fn a_zone_without_globals_ca_connects_only_with_skip_verify() {
    let root = tempfile::tempdir().expect("tmp");
    let dirs = host_dirs(root.path(), &["global", "zone-a", "zone-b"]);
    let kds = free_port();
    let global = start_global(&dirs[0], kds, &[]);
    let address = format!("grpcs://127.0.0.1:{kds}");
    // No KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE: the certificate cannot be verified…
    let strict = ControlPlane::start(
        &dirs[1],
        &[
            ("KUMA_MODE", "zone"),
            ("KUMA_STORE_TYPE", "memory"),
            ("KUMA_MULTIZONE_ZONE_NAME", "zone-a"),
            ("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", &address),
        ],
    );
    // …unless verification is turned off.
    let _trusting = ControlPlane::start(
        &dirs[2],
        &[
            ("KUMA_MODE", "zone"),
            ("KUMA_STORE_TYPE", "memory"),
            ("KUMA_MULTIZONE_ZONE_NAME", "zone-b"),
            ("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", &address),
            ("KUMA_MULTIZONE_ZONE_KDS_TLS_SKIP_VERIFY", "true"),
        ],
    );
    wait_for("zone-b Online", Duration::from_secs(30), || {
        line_of(&global.kumactl_ok(&["get", "zones"]), "zone-b")
            .contains("Online")
            .then_some(())
    });
    let log = wait_for("zone-a's reason", Duration::from_secs(30), || {
        std::fs::read_to_string(&strict.log)
            .ok()
            .filter(|l| l.contains("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE"))
    });
    assert!(log.contains("certificate"), "{log}");
    assert!(
        !global.kumactl_ok(&["get", "zones"]).contains("zone-a"),
        "zone-a never got through"
    );
}
