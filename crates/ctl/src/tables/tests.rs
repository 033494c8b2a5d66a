//! Golden files for table output (`testdata/kumactl/*.txt`).
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p kumactl`.

use chrono::{TimeZone, Utc};
use meshzone_model::{Resource, ResourceType, parse_documents};
use serde_json::{Value, json};

use super::*;

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/kumactl")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "{name} differs");
}

fn fixture(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/resources")
        .join(file);
    let text = std::fs::read_to_string(path).expect("fixture");
    let mut v = Resource::from_value(parse_documents(&text).expect("yaml").remove(0))
        .expect("valid")
        .to_value();
    v["creationTime"] = json!("2026-11-24T04:00:00Z");
    v
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 6, 30, 0)
        .single()
        .expect("time")
}

#[test]
fn get_tables() {
    let cases = [
        (ResourceType::Mesh, "mesh.yaml", "get-meshes.txt"),
        (
            ResourceType::Dataplane,
            "dataplane.yaml",
            "get-dataplanes.txt",
        ),
        (
            ResourceType::ZoneIngress,
            "zone-ingress.yaml",
            "get-zone-ingresses.txt",
        ),
        (
            ResourceType::ZoneEgress,
            "zone-egress.yaml",
            "get-zoneegresses.txt",
        ),
        (ResourceType::Zone, "zone.yaml", "get-zones.txt"),
        (ResourceType::Secret, "secret.yaml", "get-secrets.txt"),
        (
            ResourceType::GlobalSecret,
            "global-secret.yaml",
            "get-global-secrets.txt",
        ),
        (
            ResourceType::MeshTrafficPermission,
            "mesh-traffic-permission.yaml",
            "get-meshtrafficpermissions.txt",
        ),
        (
            ResourceType::MeshHTTPRoute,
            "mesh-http-route.yaml",
            "get-meshhttproutes.txt",
        ),
        (
            ResourceType::MeshTCPRoute,
            "mesh-tcp-route.yaml",
            "get-meshtcproutes.txt",
        ),
        (
            ResourceType::MeshLoadBalancingStrategy,
            "mesh-load-balancing-strategy.yaml",
            "get-meshloadbalancingstrategies.txt",
        ),
        (
            ResourceType::ExternalService,
            "external-service.yaml",
            "get-external-services.txt",
        ),
    ];
    for (rt, input, out) in cases {
        let mut second = fixture(input);
        second["name"] = json!(format!("{}-2", second["name"].as_str().unwrap_or("x")));
        second["creationTime"] = json!("2026-11-20T06:29:50Z");
        golden(out, &get_table(rt, &[fixture(input), second], now()));
    }
}

#[test]
fn inspect_tables() {
    let dp = fixture("dataplane.yaml");
    let insight = fixture("dataplane-insight.yaml");
    let overview = json!({
        "type": "DataplaneOverview", "mesh": "default", "name": "echo-server-1",
        "dataplane": {"networking": dp["networking"]},
        "dataplaneInsight": {"subscriptions": insight["subscriptions"], "mTLS": insight["mTLS"]},
    });
    let offline = json!({
        "type": "DataplaneOverview", "mesh": "default", "name": "client-1",
        "dataplane": {"networking": {"address": "10.0.0.3", "inbound": [{"port": 1, "tags": {"kuma.io/service": "client"}}]}},
        "dataplaneInsight": {},
    });
    golden(
        "inspect-dataplanes.txt",
        &inspect_dataplanes(&[overview, offline], now()),
    );
    let services = [
        json!({"name": "echo-service_echo-example_svc_1010", "status": "online", "dataplanes": {"online": 1, "total": 1}}),
        json!({"name": "client", "status": "partially_degraded", "dataplanes": {"online": 1, "total": 2}}),
        json!({"name": "web", "status": "online", "dataplanes": {"online": 2, "total": 2}, "zones": ["zone-1", "zone-2"],
            "crossZone": "unavailable: mesh \"plain\" has no mTLS, and zone ingresses route by the TLS SNI; each zone reaches only its own instances"}),
    ];
    golden("inspect-services.txt", &inspect_services(&services));
    let zones = [
        json!({"type": "Zone", "name": "zone-1", "creationTime": "2026-11-24T04:00:00Z"}),
        json!({"type": "Zone", "name": "zone-2", "enabled": false, "creationTime": "2026-11-24T04:00:00Z"}),
        json!({"type": "Zone", "name": "zone-3", "creationTime": "2026-11-24T04:00:00Z"}),
    ];
    let open = json!({"name": "zone-1", "subscriptions": [{"id": "a", "connectTime": "2026-11-24T06:00:00Z"}]});
    let closed = json!({"name": "zone-3", "subscriptions": [{"id": "b", "connectTime": "2026-11-24T06:00:00Z", "disconnectTime": "2026-11-24T06:10:00Z"}]});
    golden(
        "get-zones-status.txt",
        &get_zones(&zones, &[open, closed], now()),
    );

    let ingress = fixture("zone-ingress.yaml");
    let mut hidden = ingress.clone();
    hidden["name"] = json!("ingress-hidden");
    hidden["networking"]
        .as_object_mut()
        .expect("networking")
        .retain(|k, _| k == "address" || k == "port");
    let insight = fixture("zone-ingress-insight.yaml");
    golden(
        "inspect-zone-ingresses.txt",
        &inspect_zone_proxies(
            ResourceType::ZoneIngress,
            &[ingress, hidden],
            &[insight],
            now(),
        ),
    );
    golden(
        "inspect-zone-egresses.txt",
        &inspect_zone_proxies(
            ResourceType::ZoneEgress,
            &[fixture("zone-egress.yaml")],
            &[fixture("zone-egress-insight.yaml")],
            now(),
        ),
    );
}

#[test]
fn ago_units() {
    let n = now();
    assert_eq!(ago(None, n), "never");
    assert_eq!(ago(Some(n - chrono::Duration::seconds(5)), n), "5s");
    assert_eq!(ago(Some(n - chrono::Duration::minutes(3)), n), "3m");
    assert_eq!(ago(Some(n - chrono::Duration::hours(2)), n), "2h");
    assert_eq!(ago(Some(n - chrono::Duration::days(4)), n), "4d");
}

#[test]
fn inspect_policy_rules_and_selected_dataplanes() {
    let rules = json!({
        "resource": {"type": "Dataplane", "mesh": "default", "name": "backend-1"},
        "rules": [
            {"type": "MeshTrafficPermission", "toRules": [], "inboundRules": [],
             "warnings": ["Mesh is not Mtls enabled this policy will have no effect"],
             "fromRules": [{"inbound": {"port": 8080, "tags": {"kuma.io/service": "backend", "kuma.io/zone": "zone-1"}},
                "rules": [
                    {"matchers": [{"key": "kuma.io/zone", "value": "zone-2"}], "conf": {"action": "Deny"},
                     "origin": [{"resourceMeta": {"name": "allow-all-default", "mesh": "default"}, "ruleIndex": 0},
                                {"resourceMeta": {"name": "deny-zone-2", "mesh": "default"}, "ruleIndex": 0}]},
                    {"matchers": [{"key": "kuma.io/zone", "value": "zone-2", "not": true}], "conf": {"action": "Allow"},
                     "origin": [{"resourceMeta": {"name": "allow-all-default", "mesh": "default"}, "ruleIndex": 0}]}]}]},
            {"type": "MeshHTTPRoute", "fromRules": [], "inboundRules": [], "warnings": [],
             "toRules": [{"matchers": [{"key": "kuma.io/service", "value": "web"}],
                "conf": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "default": {"backendRefs": [{"kind": "MeshService", "name": "web-v2"}]}}]},
                "origin": [{"resourceMeta": {"name": "web-v2", "mesh": "default"}, "ruleIndex": 0}]}]}
        ],
        "httpMatches": []
    });
    golden("inspect-dataplane-policies.txt", &inspect_rules(&rules));
    assert_eq!(
        inspect_rules(&json!({"rules": []})),
        "no policy selects this proxy\n"
    );
    let items = [
        json!({"type": "Dataplane", "mesh": "default", "name": "backend-1"}),
        json!({"type": "Dataplane", "mesh": "default", "name": "zone-a.backend-2"}),
    ];
    golden(
        "inspect-policy-dataplanes.txt",
        &inspect_policy_dataplanes(&items),
    );
}
