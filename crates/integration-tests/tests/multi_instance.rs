//! Two zone CP instances on one Postgres database, connected to global: exactly one leads (and
//! alone syncs with global), kill -9 moves the lead within the lease, a starting instance leaves
//! the live one's proxies Online, and the leader closes what a dead instance left open.
//! Needs MESHZONE_TEST_POSTGRES_URL (scripts/test.sh sets it).

use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, apply_ok, free_port, host_dirs, start_global, start_loopback_sidecar,
    wait_for,
};
use meshzone_store::postgres::testing::TestDatabase;
use serde_json::Value;

#[path = "support/postgres.rs"]
mod postgres;
use postgres::{block_on, store_env};

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

/// The zone instance holding zone-1's stream to global, as global's ZoneInsight records it.
fn connected_zone_instance(global: &ControlPlane) -> Option<String> {
    let overview = get_json(&format!("{}/zones/zone-1/_overview", global.api_url()))?;
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
        (connected_zone_instance(&global).as_deref() == Some(leader_id.as_str())).then_some(())
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

    // kill -9 the leader (and its host's proxy): the follower takes the lead and the stream.
    instances[leader].kill9();
    drop(on_leader);
    wait_for("the follower leads", FAILOVER, || {
        (leader_gauge(&instances[follower]) == Some(1)).then_some(())
    });
    let new_id = instance_id(&instances[follower]);
    wait_for("zone-1 synced by the new leader", FAILOVER, || {
        (connected_zone_instance(&global).as_deref() == Some(new_id.as_str())).then_some(())
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
        connected_zone_instance(&global).as_deref(),
        Some(new_id.as_str())
    );
    drop(instances);
    block_on(db.drop_now());
}
