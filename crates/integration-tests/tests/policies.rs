//! Policies as resources across zones, with real processes on loopback: created on global with
//! kumactl, received by every zone under Kuma's hashed names with `kuma.io/origin: global`,
//! refused on a federated zone with Kuma's 405, and deleted everywhere with global's delete.
//! `_rules` on global is the owning zone's answer, and an error naming the zone once it stopped.

use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, apply, free_port, host_dirs, start_global, stderr, stdout, wait_for, zone,
};
use serde_json::Value;

const MTP: &str = "type: MeshTrafficPermission
name: allow-orders
mesh: default
spec:
  targetRef: {kind: MeshService, name: payments}
  from:
    - targetRef: {kind: MeshSubset, tags: {kuma.io/service: orders}}
      default: {action: Allow}
";

const ROUTE: &str = "type: MeshHTTPRoute
name: canary
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches: [{headers: [{type: Exact, name: x-canary, value: '1'}]}]
          default:
            backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]
";

/// The items of `kumactl get <plural> -o json` on `cp`.
fn items(cp: &ControlPlane, plural: &str) -> Vec<Value> {
    let out = cp.kumactl_ok(&["get", plural, "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{plural}: {e}: {out}"));
    v["items"].as_array().cloned().unwrap_or_default()
}

/// `GET /meshes/default/dataplanes/{name}/_rules` on `cp`: status and JSON body.
fn rules_at(cp: &ControlPlane, name: &str) -> (u16, Value) {
    inspect_at(cp, name, "_rules")
}

/// `GET /meshes/default/dataplanes/{name}/{what}` (`_rules`, `xds`): status and JSON body.
fn inspect_at(cp: &ControlPlane, name: &str, what: &str) -> (u16, Value) {
    let resp = reqwest::blocking::get(format!(
        "{}/meshes/default/dataplanes/{name}/{what}",
        cp.api_url()
    ))
    .expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().expect("JSON body"))
}

/// The copy of global's policy `display` on a zone, when it is there.
fn copy_of(cp: &ControlPlane, plural: &str, display: &str) -> Option<Value> {
    items(cp, plural)
        .into_iter()
        .find(|i| i["labels"]["kuma.io/display-name"] == display)
}

#[test]
fn policies_created_on_global_reach_every_zone_and_zones_refuse_policy_writes() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs = host_dirs(root.path(), &["global", "zone-a", "zone-b"]);
    let kds_port = free_port();
    let global = start_global(&dirs[0], kds_port, &[]);
    let mut zone_a = zone(&dirs[1], "zone-a", &global, kds_port);
    let zone_b = zone(&dirs[2], "zone-b", &global, kds_port);
    let zones = [&zone_a, &zone_b];

    for (file, doc) in [("mtp.yaml", MTP), ("route.yaml", ROUTE)] {
        let o = apply(&global, &dirs[0], file, doc);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // Global keeps its own names.
    assert!(
        items(&global, "meshtrafficpermissions")
            .iter()
            .any(|i| i["name"] == "allow-orders")
    );

    for z in zones {
        for (plural, display) in [
            ("meshtrafficpermissions", "allow-orders"),
            ("meshhttproutes", "canary"),
        ] {
            let copy = wait_for("policy copy in zone", Duration::from_secs(30), || {
                copy_of(z, plural, display)
            });
            assert_eq!(copy["labels"]["kuma.io/origin"], "global", "{copy}");
            let name = copy["name"].as_str().unwrap_or_default();
            assert!(
                name.starts_with(&format!("{display}-")) && name.len() == display.len() + 17,
                "hashed name: {copy}"
            );
            assert!(copy["spec"]["targetRef"].is_object(), "{copy}");
        }
    }
    // Global's default mesh came with `allow-all-default`, which the zones receive; a federated
    // zone creates none of its own.
    for z in zones {
        let copy = wait_for("allow-all in zone", Duration::from_secs(30), || {
            copy_of(z, "meshtrafficpermissions", "allow-all-default")
        });
        assert_eq!(copy["labels"]["kuma.io/origin"], "global", "{copy}");
        assert!(
            items(z, "meshtrafficpermissions")
                .iter()
                .all(|i| i["name"] != "allow-all-default"),
            "a federated zone made its own allow-all"
        );
    }
    // Every zone names the copy the same way.
    let name_in = |z: &ControlPlane| {
        copy_of(z, "meshtrafficpermissions", "allow-orders").map(|c| c["name"].clone())
    };
    assert_eq!(name_in(&zone_a), name_in(&zone_b));

    // A zone connected to global refuses policy writes: kumactl exits non-zero with Kuma's text,
    // HTTP answers 405.
    let zone_policy = MTP.replace("name: allow-orders", "name: local-try");
    let o = apply(&zone_a, &dirs[1], "mtp.yaml", &zone_policy);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("On zone control plane you can only modify zone resources"),
        "{}",
        stderr(&o)
    );
    let resp = reqwest::blocking::Client::new()
        .put(format!("{}/meshes/default/meshhttproutes/local-try", zone_a.api_url()))
        .json(&serde_json::json!({"type": "MeshHTTPRoute", "name": "local-try", "mesh": "default",
            "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {}}]}]}}))
        .send()
        .expect("PUT");
    assert_eq!(resp.status().as_u16(), 405);
    let body: Value = resp.json().expect("JSON body");
    assert!(
        body["details"].as_str().is_some_and(
            |d| d.starts_with("On zone control plane you can only modify zone resources")
        ),
        "{body}"
    );
    // Deleting global's copy on a zone is refused the same way.
    let copy_name = name_in(&zone_a)
        .and_then(|n| n.as_str().map(str::to_string))
        .unwrap_or_default();
    let o = zone_a.kumactl(&["delete", "meshtrafficpermission", &copy_name]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("On zone control plane you can only modify zone resources"),
        "{}",
        stderr(&o)
    );

    // Inspection: a zone's Dataplane, asked on the zone and on global (which holds the copy).
    let dp = "type: Dataplane\nmesh: default\nname: payments-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: 10001\n      tags:\n        kuma.io/service: payments\n";
    let o = apply(&zone_a, &dirs[1], "dp.yaml", dp);
    assert!(o.status.success(), "{}", stderr(&o));
    let on_zone = zone_a.kumactl_ok(&["inspect", "dataplane", "payments-1"]);
    assert!(on_zone.contains("MeshTrafficPermission"), "{on_zone}");
    assert!(
        on_zone.contains("allow-orders-"),
        "the copy's name is the origin: {on_zone}"
    );
    assert!(on_zone.contains("kuma.io/service=orders"), "{on_zone}");
    assert!(
        on_zone.contains("Mesh is not Mtls enabled this policy will have no effect"),
        "{on_zone}"
    );
    let rules = wait_for("dataplane rules on global", Duration::from_secs(30), || {
        let o = global.kumactl(&[
            "inspect",
            "dataplane",
            "zone-a.payments-1",
            "--type=policies",
            "-o",
            "json",
        ]);
        o.status
            .success()
            .then(|| serde_json::from_str::<Value>(&stdout(&o)).expect("JSON"))
    });
    let mtp = rules["rules"]
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|e| e["type"] == "MeshTrafficPermission")
                .cloned()
        })
        .unwrap_or_else(|| panic!("{rules}"));
    assert_eq!(
        mtp["fromRules"][0]["inbound"]["tags"]["kuma.io/zone"], "zone-a",
        "{rules}"
    );
    // Global asked zone-a, which owns the proxy: its answer is the zone's own, unchanged.
    let (status, on_zone) = rules_at(&zone_a, "payments-1");
    assert_eq!(status, 200, "{on_zone}");
    assert_eq!(rules_at(&global, "zone-a.payments-1"), (200, on_zone));
    let selected = global.kumactl_ok(&["inspect", "meshtrafficpermission", "allow-orders"]);
    assert!(selected.contains("zone-a.payments-1"), "{selected}");
    let table = zone_b.kumactl_ok(&["get", "meshtrafficpermissions"]);
    assert!(
        table.contains("TARGETREF KIND") && table.contains("MeshService"),
        "{table}"
    );

    // Deleting on global deletes on every zone.
    global.kumactl_ok(&["delete", "meshtrafficpermission", "allow-orders"]);
    global.kumactl_ok(&["delete", "meshhttproute", "canary"]);
    for z in zones {
        wait_for("policies gone from zone", Duration::from_secs(30), || {
            (copy_of(z, "meshtrafficpermissions", "allow-orders").is_none()
                && copy_of(z, "meshhttproutes", "canary").is_none())
            .then_some(())
        });
    }

    // A stopped zone: global says which zone cannot answer, rather than answering from copies.
    zone_a.kill9();
    let (status, body) = wait_for(
        "global's _rules for a stopped zone",
        Duration::from_secs(30),
        || {
            let (status, body) = rules_at(&global, "zone-a.payments-1");
            (status != 200).then_some((status, body))
        },
    );
    // The configuration dump says the same, not that the proxy is unknown (404).
    let (dump_status, dump) = inspect_at(&global, "zone-a.payments-1", "xds");
    for (status, body) in [(status, body), (dump_status, dump)] {
        assert_eq!(status, 503, "{body}");
        assert!(
            body["details"]
                .as_str()
                .is_some_and(|d| d.contains("\"zone-a\"")),
            "{body}"
        );
    }
}
