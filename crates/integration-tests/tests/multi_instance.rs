//! Several CP instances on Postgres. Two zone instances on one database, connected to global:
//! exactly one leads (and alone syncs with global), kill -9 moves the lead within the lease, a
//! starting instance leaves the live one's proxies Online, and the leader closes what a dead
//! instance left open. Then two globals and two zone instances, each pair behind one address:
//! proxies and the zone move to the survivors, with no failed request.
//! Needs MESHZONE_TEST_POSTGRES_URL (scripts/test.sh sets it).

use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, apply_ok, free_port, host_dirs, http_get, mtls_mesh,
    start_global, start_loopback_sidecar, wait_for, wait_for_mtls_mesh, write_file,
    zone_token_file,
};
use meshzone_store::postgres::testing::TestDatabase;
use meshzone_tls_client::fixtures::{self, KeyKind};
use serde_json::Value;

#[path = "support/postgres.rs"]
mod postgres;
use postgres::{block_on, store_env};

#[path = "support/front.rs"]
mod front;
use front::Front;

/// The lease is 5 s; taking it over, syncing with global and the finalizer's rounds fit in this.
const FAILOVER: Duration = Duration::from_secs(40);

fn get_json(url: &str) -> Option<Value> {
    reqwest::blocking::get(url).ok()?.json().ok()
}

fn instance_id(cp: &ControlPlane) -> String {
    get_json(&cp.api_url()).expect("GET /")["instanceId"]
        .as_str()
        .expect("instanceId")
        .to_string()
}

/// The `leader` gauge on the instance's diagnostics port.
fn leader_gauge(cp: &ControlPlane) -> Option<u8> {
    let text = reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", cp.diagnostics_port))
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("leader "))
        .and_then(|v| v.trim().parse().ok())
}

/// Which of the instances leads, once exactly one does.
fn the_leader(instances: &[&ControlPlane]) -> usize {
    wait_for("exactly one leader", FAILOVER, || {
        let gauges: Vec<Option<u8>> = instances.iter().map(|cp| leader_gauge(cp)).collect();
        let leaders: Vec<usize> = (0..gauges.len())
            .filter(|i| gauges[*i] == Some(1))
            .collect();
        (leaders.len() == 1 && gauges.iter().all(|g| g.is_some())).then(|| leaders[0])
    })
}

/// The zone instance holding `zone`'s stream to global, as global's ZoneInsight records it.
fn connected_zone_instance(global: &ControlPlane, zone: &str) -> Option<String> {
    let overview = get_json(&format!("{}/zones/{zone}/_overview", global.api_url()))?;
    overview["zoneInsight"]["subscriptions"]
        .as_array()?
        .iter()
        .find(|s| s.get("disconnectTime").is_none_or(Value::is_null))
        .and_then(|s| s["zoneInstanceId"].as_str().map(str::to_string))
}

fn proxy_status(cp: &ControlPlane, name: &str) -> Option<String> {
    let overview = get_json(&format!(
        "{}/meshes/default/dataplanes/{name}/_overview",
        cp.api_url()
    ))?;
    overview["status"].as_str().map(str::to_string)
}

/// The A record `dig` gets for `name` from the DNS server on `port` (empty when none).
fn dig_a(port: u16, name: &str) -> String {
    let o = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+tries=2",
            "+time=1",
            name,
            "A",
        ])
        .output()
        .expect("dig (Debian package dnsutils) must be installed");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn sidecar(cp: &ControlPlane, dir: &Path, name: &str) -> DataPlane {
    start_loopback_sidecar(
        cp,
        dir,
        name,
        &format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: {name}\n",
            free_port(),
            free_port()
        ),
    )
}

/// A leader stopped by SIGTERM gives its lease up on the way out (Kuma's pglock lets it lapse):
/// the lease is free, or already the other instance's, the moment the process has exited, well
/// before the 5 s it would take to lapse; the other instance then leads.
#[test]
fn a_leader_stopped_by_sigterm_hands_its_lease_over() {
    let db = block_on(TestDatabase::migrated());
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = host_dirs(dir.path(), &["zone-a", "zone-b"]);
    let mut env: Vec<(&str, String)> = store_env(&db.settings);
    env.push(("KUMA_MODE", "zone".to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut instances = [
        ControlPlane::start(&hosts[0], &env),
        ControlPlane::start(&hosts[1], &env),
    ];
    let leader = the_leader(&[&instances[0], &instances[1]]);
    let follower = 1 - leader;
    let leader_id = instance_id(&instances[leader]);
    assert!(
        !leader_id.contains('\''),
        "an instance id fit for the query: {leader_id}"
    );
    let status = instances[leader].sigterm(Duration::from_secs(30));
    assert!(status.success(), "the leader exited with {status}");
    // Counts the lease row when it is no longer the stopped leader's to hold.
    let handed_over = block_on(db.execute(&format!(
        "UPDATE leases SET holder = holder WHERE name = 'kuma-cp-leader' \
         AND (expires_at <= now() OR holder <> '{leader_id}')"
    )));
    assert_eq!(handed_over, 1, "the stopped leader still holds the lease");
    wait_for("the other instance to lead", FAILOVER, || {
        (leader_gauge(&instances[follower]) == Some(1)).then_some(())
    });
    block_on(db.drop_now());
}

/// A leader whose database stops answering (the network hangs, nothing is closed) stands down
/// before its lease can lapse: the other instance, which takes the lapsed lease, never leads
/// beside it. Once the database answers again, the old leader follows.
#[test]
fn a_leader_cut_off_from_its_database_stands_down_before_another_leads() {
    let db = block_on(TestDatabase::migrated());
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = host_dirs(dir.path(), &["zone-a", "zone-b"]);
    // Instance a reaches the database through a relay that can hang.
    let relay = Front::start(vec![db.settings.port]);
    let env_for = |port: u16| -> Vec<(&'static str, String)> {
        let mut env = store_env(&db.settings);
        env.retain(|(k, _)| *k != "KUMA_STORE_POSTGRES_PORT");
        env.push(("KUMA_STORE_POSTGRES_PORT", port.to_string()));
        env.push(("KUMA_MODE", "zone".to_string()));
        env
    };
    let start = |host: &Path, env: &[(&'static str, String)]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ControlPlane::start(host, &env)
    };
    let a = start(&hosts[0], &env_for(relay.port));
    wait_for("a to lead alone", FAILOVER, || {
        (leader_gauge(&a) == Some(1)).then_some(())
    });
    let b = start(&hosts[1], &env_for(db.settings.port));
    assert_eq!(the_leader(&[&a, &b]), 0, "a, which led first, still leads");

    relay.pause();
    wait_for("b to lead", FAILOVER, || {
        // b first: once b leads, a must have stood down already.
        let b_leads = leader_gauge(&b) == Some(1);
        let a_leads = leader_gauge(&a) == Some(1);
        assert!(!(b_leads && a_leads), "a and b led at once");
        b_leads.then_some(())
    });
    relay.resume();
    assert_eq!(the_leader(&[&a, &b]), 1, "b keeps the lead once a is back");
    drop((a, b));
    block_on(db.drop_now());
}

#[test]
fn zone_instances_on_one_database_share_the_work_and_take_over_from_a_dead_leader() {
    let db = block_on(TestDatabase::migrated());
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = host_dirs(dir.path(), &["global", "zone-1-a", "zone-1-b"]);
    let kds = free_port();
    let global = start_global(&hosts[0], kds, &[]);
    let ca = global.work_dir.join("kuma").join("kuma-cp.crt");
    let mut env: Vec<(&str, String)> = store_env(&db.settings);
    env.extend([
        ("KUMA_MODE", "zone".to_string()),
        ("KUMA_MULTIZONE_ZONE_NAME", "zone-1".to_string()),
        (
            "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
            format!("grpcs://127.0.0.1:{kds}"),
        ),
        (
            "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE",
            ca.display().to_string(),
        ),
        ("KUMA_INTER_CP_CATALOG_INSTANCE_ADDRESS", "127.0.0.1".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = |host: &Path| {
        let cp = ControlPlane::start(host, &env);
        cp.configure_kumactl();
        cp
    };
    let mut instances = [start(&hosts[1]), start(&hosts[2])];

    // One leader; it alone holds zone-1's stream to global.
    let leader = the_leader(&[&instances[0], &instances[1]]);
    let follower = 1 - leader;
    let leader_id = instance_id(&instances[leader]);
    wait_for("zone-1 synced by its leader", FAILOVER, || {
        (connected_zone_instance(&global, "zone-1").as_deref() == Some(leader_id.as_str()))
            .then_some(())
    });
    // The default mesh came down from global; a proxy on each instance.
    wait_for("mesh default in the zone", FAILOVER, || {
        get_json(&format!("{}/meshes/default", instances[follower].api_url()))
            .filter(|m| m["name"] == "default")
    });
    let on_leader = sidecar(&instances[leader], &hosts[1 + leader], "web-a");
    let _on_follower = sidecar(&instances[follower], &hosts[1 + follower], "web-b");
    for name in ["web-a", "web-b"] {
        wait_for("proxies Online", FAILOVER, || {
            (proxy_status(&instances[follower], name).as_deref() == Some("online")).then_some(())
        });
    }
    // `.mesh` DNS: the leader assigns the VIPs, and both instances answer the same ones.
    for name in ["web-a.mesh", "web-b.mesh"] {
        let vip = wait_for("one VIP on both instances", FAILOVER, || {
            let answers: Vec<String> = instances
                .iter()
                .map(|cp| dig_a(cp.dns_port, name))
                .collect();
            (!answers[0].is_empty() && answers[0] == answers[1]).then(|| answers[0].clone())
        });
        assert!(
            vip.starts_with("24"),
            "{name}: {vip} is not from 240.0.0.0/4"
        );
    }

    // Global reaches web-b, connected to the follower, through the leader (which holds zone-1's
    // stream) and then the follower: config dump and stats are forwarded between zone instances.
    let dump = global.kumactl_ok(&[
        "inspect",
        "dataplane",
        "zone-1.web-b",
        "--type",
        "config-dump",
    ]);
    assert!(
        dump.contains("\"ConfigDump\"") && dump.contains("web-b"),
        "{dump}"
    );
    let stats = global.kumactl_ok(&["inspect", "dataplane", "zone-1.web-b", "--type", "stats"]);
    assert!(stats.lines().any(|l| l == "server.live: 1"), "{stats}");
    // And each zone instance answers about the other's proxies.
    let from_leader =
        instances[leader].kumactl_ok(&["inspect", "dataplane", "web-b", "--type", "stats"]);
    assert!(
        from_leader.lines().any(|l| l == "server.live: 1"),
        "{from_leader}"
    );

    // kill -9 the leader (and its host's proxy): the follower takes the lead and the stream.
    instances[leader].kill9();
    drop(on_leader);
    wait_for("the follower leads", FAILOVER, || {
        (leader_gauge(&instances[follower]) == Some(1)).then_some(())
    });
    let new_id = instance_id(&instances[follower]);
    wait_for("zone-1 synced by the new leader", FAILOVER, || {
        (connected_zone_instance(&global, "zone-1").as_deref() == Some(new_id.as_str()))
            .then_some(())
    });
    // A policy created on global after the failover reaches the zone.
    apply_ok(
        &global,
        dir.path(),
        "timeout.yaml",
        "type: MeshTimeout\nmesh: default\nname: after-failover\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      connectionTimeout: 3s\n",
    );
    wait_for("the policy in the zone", FAILOVER, || {
        get_json(&format!(
            "{}/meshes/default/meshtimeouts",
            instances[follower].api_url()
        ))
        .filter(|l| l["total"].as_u64().is_some_and(|n| n >= 1))
    });
    // The dead instance's proxy is closed by the leader's finalizer; the live one's stays.
    wait_for("web-a Offline", FAILOVER, || {
        (proxy_status(&instances[follower], "web-a").as_deref() == Some("offline")).then_some(())
    });
    assert_eq!(
        proxy_status(&instances[follower], "web-b").as_deref(),
        Some("online")
    );

    // The killed instance starts again: it follows, and leaves the leader's proxies Online.
    instances[leader].start_again();
    wait_for("the restarted instance follows", FAILOVER, || {
        (leader_gauge(&instances[leader]) == Some(0)).then_some(())
    });
    assert_eq!(
        leader_gauge(&instances[follower]),
        Some(1),
        "the lead stays put"
    );
    assert_eq!(
        proxy_status(&instances[leader], "web-b").as_deref(),
        Some("online")
    );
    assert_eq!(
        connected_zone_instance(&global, "zone-1").as_deref(),
        Some(new_id.as_str())
    );
    drop(instances);
    block_on(db.drop_now());
}

/// The CP instance holding a proxy's open subscription.
fn proxy_cp_instance(cp: &ControlPlane, name: &str) -> Option<String> {
    let overview = get_json(&format!(
        "{}/meshes/default/dataplanes/{name}/_overview",
        cp.api_url()
    ))?;
    overview["dataplaneInsight"]["subscriptions"]
        .as_array()?
        .iter()
        .find(|s| s.get("disconnectTime").is_none_or(Value::is_null))
        .and_then(|s| s["controlPlaneInstanceId"].as_str().map(str::to_string))
}

/// Two instances of one zone on their own database, behind one address for proxies (a TCP
/// front, as a load balancer) and sharing one openssl DP server certificate, connected to
/// global through `kds_front`.
struct ZonePair {
    instances: [ControlPlane; 2],
    dp_front: Front,
}

fn zone_pair(
    hosts: [&Path; 2],
    zone: &str,
    db: &TestDatabase,
    kds_front: &Front,
    kds_ca: &Path,
    dp_cert: &fixtures::CertFiles,
) -> ZonePair {
    let path = |p: &Path| p.display().to_string();
    let mut env = store_env(&db.settings);
    env.extend([
        ("KUMA_MODE", "zone".to_string()),
        ("KUMA_MULTIZONE_ZONE_NAME", zone.to_string()),
        (
            "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
            format!("grpcs://127.0.0.1:{}", kds_front.port),
        ),
        ("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE", path(kds_ca)),
        ("KUMA_DP_SERVER_TLS_CERT_FILE", path(&dp_cert.cert)),
        ("KUMA_DP_SERVER_TLS_KEY_FILE", path(&dp_cert.key)),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let instances = hosts.map(|host| {
        let cp = ControlPlane::start(host, &env);
        cp.configure_kumactl();
        cp
    });
    let dp_front = Front::start(instances.iter().map(|z| z.dp_port).collect());
    ZonePair {
        instances,
        dp_front,
    }
}

impl ZonePair {
    /// A kuma-dp for `yaml` connected through the front (`args`: more `kuma-dp run` flags).
    fn proxy(
        &self,
        dir: &Path,
        name: &str,
        yaml: &str,
        token: &Path,
        dp_cert: &Path,
        args: &[&str],
    ) -> DataPlane {
        let file = write_file(dir, &format!("{name}.yaml"), yaml);
        let mut dp = DataPlane::start_on_port(
            &self.instances[0],
            self.dp_front.port,
            &file,
            Some(token),
            dp_cert,
            args,
        );
        dp.wait_ready();
        dp
    }

    fn dataplane_token(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        let token = self.instances[0].kumactl_ok(&["generate", "dataplane-token", "--name", name]);
        write_file(dir, &format!("{name}.token"), token.trim())
    }
}

/// Two global instances on one database; two zones, each with two instances on its own
/// database; each pair behind one address, with openssl certificates shared by each pair; an
/// mTLS mesh with an echo service in zone-1 and a client in zone-2 calling it through zone-1's
/// ingress. kill -9 zone-1's leader: its proxies (the echo's and the ingress) move to the other
/// instance while not one cross-zone request fails. The global instance without a zone's stream
/// forwards inspect requests to the one with it; kill -9 that one: both zones move to the other
/// global, which leads, sends a new policy down to both and disables zone-1.
#[test]
fn instances_behind_one_address_take_over_proxies_and_zones_without_failing_requests() {
    let global_db = block_on(TestDatabase::migrated());
    let zone_dbs = [
        block_on(TestDatabase::migrated()),
        block_on(TestDatabase::migrated()),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = host_dirs(
        dir.path(),
        &[
            "global-a", "global-b", "zone-1-a", "zone-1-b", "zone-2-a", "zone-2-b", "proxies",
            "certs",
        ],
    );
    let (proxies, certs) = (&hosts[6], &hosts[7]);
    let kds_cert = fixtures::self_signed(certs, "global", KeyKind::EcdsaP256, "IP:127.0.0.1")
        .expect("openssl");
    let dp_cert = fixtures::self_signed(certs, "zone-cp", KeyKind::EcdsaP256, "IP:127.0.0.1")
        .expect("openssl");
    let path = |p: &Path| p.display().to_string();

    // Globals: one database, one certificate, one address.
    let mut global_env = store_env(&global_db.settings);
    global_env.extend([
        (
            "KUMA_MULTIZONE_GLOBAL_KDS_TLS_CERT_FILE",
            path(&kds_cert.cert),
        ),
        (
            "KUMA_MULTIZONE_GLOBAL_KDS_TLS_KEY_FILE",
            path(&kds_cert.key),
        ),
        ("KUMA_INTER_CP_CATALOG_INSTANCE_ADDRESS", "127.0.0.1".into()),
    ]);
    let global_env: Vec<(&str, &str)> = global_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let kds_ports = [free_port(), free_port()];
    let mut globals = [
        start_global(&hosts[0], kds_ports[0], &global_env),
        start_global(&hosts[1], kds_ports[1], &global_env),
    ];
    let kds_front = Front::start(kds_ports.to_vec());
    let mut zone1 = zone_pair(
        [&hosts[2], &hosts[3]],
        "zone-1",
        &zone_dbs[0],
        &kds_front,
        &kds_cert.cert,
        &dp_cert,
    );
    let zone2 = zone_pair(
        [&hosts[4], &hosts[5]],
        "zone-2",
        &zone_dbs[1],
        &kds_front,
        &kds_cert.cert,
        &dp_cert,
    );
    apply_ok(&globals[0], dir.path(), "mesh.yaml", &mtls_mesh("24h"));
    wait_for_mtls_mesh(&[&zone1.instances[0], &zone2.instances[0]]);

    // Zone ingresses (zone tokens from global), an echo in zone-1, a client in zone-2.
    let ingress = |pair: &ZonePair, zone: &str, name: &str| {
        let port = free_port();
        pair.proxy(
            proxies,
            name,
            &format!("type: ZoneIngress\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  port: {port}\n  advertisedAddress: 127.0.0.1\n  advertisedPort: {port}\n"),
            &zone_token_file(&globals[0], proxies, zone, "ingress"),
            &dp_cert.cert,
            &["--proxy-type=ingress"],
        )
    };
    let _ingress1 = ingress(&zone1, "zone-1", "ingress-1");
    let _ingress2 = ingress(&zone2, "zone-2", "ingress-2");
    let echo = EchoServer::start("zone-1");
    let _echo_dp = zone1.proxy(
        proxies,
        "echo-1",
        &format!(
            "type: Dataplane\nmesh: default\nname: echo-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: echo\n",
            free_port(),
            echo.port
        ),
        &zone1.dataplane_token(proxies, "echo-1"),
        &dp_cert.cert,
        &[],
    );
    let outbound = free_port();
    let _client = zone2.proxy(
        proxies,
        "client-2",
        &format!(
            "type: Dataplane\nmesh: default\nname: client-2\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: client\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: echo\n",
            free_port(),
            free_port()
        ),
        &zone2.dataplane_token(proxies, "client-2"),
        &dp_cert.cert,
        &[],
    );
    wait_for("cross-zone traffic flows", FAILOVER, || {
        http_get(outbound).ok()
    });

    // kill -9 zone-1's leader: every proxy it served moves to the other instance, and not one
    // request fails meanwhile (proxies keep their configuration while they reconnect).
    let zone_leader = the_leader(&[&zone1.instances[0], &zone1.instances[1]]);
    let survivor = 1 - zone_leader;
    let survivor_id = instance_id(&zone1.instances[survivor]);
    zone1.instances[zone_leader].kill9();
    let (mut sent, mut failed) = (0, Vec::new());
    let zone1_live = &zone1.instances[survivor];
    wait_for(
        "zone-1's proxies on its surviving instance",
        FAILOVER,
        || {
            sent += 1;
            if let Err(e) = http_get(outbound) {
                failed.push(e);
            }
            let moved = proxy_cp_instance(zone1_live, "echo-1").as_deref()
                == Some(survivor_id.as_str())
                && proxy_status(zone1_live, "echo-1").as_deref() == Some("online");
            (moved && leader_gauge(zone1_live) == Some(1)).then_some(())
        },
    );
    wait_for("zone-1 synced by its surviving instance", FAILOVER, || {
        sent += 1;
        if let Err(e) = http_get(outbound) {
            failed.push(e);
        }
        (connected_zone_instance(&globals[0], "zone-1").as_deref() == Some(survivor_id.as_str()))
            .then_some(())
    });
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {failed:?}",
        failed.len()
    );
    eprintln!("{sent} cross-zone requests while zone-1's leader was replaced: none failed");

    // Asked on the global instance that does not hold zone-1's streams, a proxy's config dump
    // and stats come through the one that does (forwarded over its KDS port).
    let holding = wait_for("zone-1's global instance", FAILOVER, || {
        let ids = [instance_id(&globals[0]), instance_id(&globals[1])];
        let overview = get_json(&format!("{}/zones/zone-1/_overview", globals[0].api_url()))?;
        overview["zoneInsight"]["subscriptions"]
            .as_array()?
            .iter()
            .filter(|s| s.get("disconnectTime").is_none_or(Value::is_null))
            .find_map(|s| {
                ids.iter()
                    .position(|id| s["globalInstanceId"] == id.as_str())
            })
    });
    let other = 1 - holding;
    let dump = globals[other].kumactl_ok(&[
        "inspect",
        "dataplane",
        "zone-1.echo-1",
        "--type",
        "config-dump",
    ]);
    assert!(dump.contains("\"ConfigDump\""), "{dump}");
    let stats =
        globals[other].kumactl_ok(&["inspect", "dataplane", "zone-1.echo-1", "--type", "stats"]);
    assert!(stats.lines().any(|l| l == "server.live: 1"), "{stats}");

    // kill -9 the global holding zone-1 (the leader or not): both zones end up on the other
    // one through the front, and it leads from then on.
    let other_id = instance_id(&globals[other]);
    globals[holding].kill9();
    wait_for("the surviving global leads", FAILOVER, || {
        (leader_gauge(&globals[other]) == Some(1)).then_some(())
    });
    for zone in ["zone-1", "zone-2"] {
        wait_for("the zone on the surviving global", FAILOVER, || {
            let overview = get_json(&format!(
                "{}/zones/{zone}/_overview",
                globals[other].api_url()
            ))?;
            overview["zoneInsight"]["subscriptions"]
                .as_array()?
                .iter()
                .any(|s| {
                    s.get("disconnectTime").is_none_or(Value::is_null)
                        && s["globalInstanceId"] == other_id.as_str()
                })
                .then_some(())
        });
    }
    // A policy made on the survivor reaches both zones.
    apply_ok(
        &globals[other],
        dir.path(),
        "timeout.yaml",
        "type: MeshTimeout\nmesh: default\nname: after-global-failover\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: Mesh\n    default:\n      connectionTimeout: 3s\n",
    );
    for cp in [&zone1.instances[survivor], &zone2.instances[0]] {
        wait_for("the policy in the zone", FAILOVER, || {
            get_json(&format!("{}/meshes/default/meshtimeouts", cp.api_url()))
                .filter(|l| l["total"].as_u64().is_some_and(|n| n >= 1))
        });
    }
    assert!(http_get(outbound).is_ok(), "cross-zone traffic goes on");
    // Disabling zone-1 on the survivor acts: it shows Offline there.
    apply_ok(
        &globals[other],
        dir.path(),
        "zone.yaml",
        "type: Zone\nname: zone-1\nspec:\n  enabled: false\n",
    );
    wait_for("zone-1 Offline once disabled", FAILOVER, || {
        globals[other]
            .kumactl_ok(&["inspect", "zones"])
            .lines()
            .any(|l| l.starts_with("zone-1 ") && l.contains("Offline"))
            .then_some(())
    });
    drop((zone1, zone2, globals));
    for db in zone_dbs {
        block_on(db.drop_now());
    }
    block_on(global_db.drop_now());
}
