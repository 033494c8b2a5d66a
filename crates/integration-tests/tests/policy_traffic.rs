//! Policies created on global and enforced in every zone, with real processes on loopback: a
//! global CP, two zone CPs with a zone ingress each, `backend` v1 in zone-1, v2 and another v1 in zone-2
//! (HTTP), `tcp-backend` in zone-1 (TCP), and a client sidecar in each zone.
//!
//! - a zone refuses a policy write (HTTP 405, Kuma's message; kumactl exits non-zero);
//! - MeshTrafficPermission: a Deny `from` `kuma.io/zone: zone-2` makes zone-2's calls fail
//!   (HTTP 403; TCP closed before any byte reaches the application) while zone-1's succeed, and
//!   an Allow restores them;
//! - MeshHTTPRoute: a 90/10 split between v1 (zone-1) and v2 (zone-2) holds within ±3 % over
//!   1000 requests; a header match sends `x-canary: 1` only to v2;
//! - deleting a policy on global removes it from the zones and its effect from the proxies.
//!
//! Envoy 1.40 takes part as kuma-dp does: backend v1's sidecar is Envoy (the server side of the
//! permission checks), and an Envoy client in each zone runs the same checks as the kuma-dp
//! clients; every Envoy must ACK every update.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, Envoy, apply, apply_ok, free_port, global_and_two_zones,
    http_request, ok, start_sidecar, stderr, wait_for, write_file, zone_token_file,
};

const PROPAGATION: Duration = Duration::from_secs(30);

/// A sidecar for an echo instance with these inbound tags.
fn instance(cp: &ControlPlane, dir: &Path, name: &str, echo: &EchoServer, tags: &str) -> DataPlane {
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n{tags}",
        free_port(),
        echo.port
    );
    start_sidecar(cp, dir, name, &yaml)
}

fn zone_ingress(global: &ControlPlane, cp: &ControlPlane, dir: &Path, zone: &str) -> DataPlane {
    let port = free_port();
    let name = format!("ingress-{zone}");
    let file = write_file(
        dir,
        &format!("{name}.yaml"),
        &format!(
            "type: ZoneIngress\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  port: {port}\n  advertisedAddress: 127.0.0.1\n  advertisedPort: {port}\n"
        ),
    );
    let token = zone_token_file(global, dir, zone, "ingress");
    let mut dp = DataPlane::start_zone_proxy(cp, "ingress", &file, &token);
    dp.wait_ready();
    dp
}

/// A client sidecar with outbounds to `backend` (HTTP) and `tcp-backend` (TCP).
struct Client {
    _proxy: DataPlane,
    http: u16,
    tcp: u16,
}

fn client(cp: &ControlPlane, dir: &Path, name: &str) -> Client {
    let (http, tcp) = (free_port(), free_port());
    let yaml = format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: {name}\n  outbound:\n  - port: {http}\n    tags:\n      kuma.io/service: backend\n  - port: {tcp}\n    tags:\n      kuma.io/service: tcp-backend\n",
        free_port(),
        free_port()
    );
    Client {
        _proxy: start_sidecar(cp, dir, name, &yaml),
        http,
        tcp,
    }
}

/// An Envoy 1.40 client sidecar with an outbound to `backend`; its outbound port.
fn envoy_client(cp: &ControlPlane, dir: &Path, name: &str) -> (Envoy, u16) {
    let http = free_port();
    let dp = serde_json::json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": "127.0.0.1",
            "inbound": [{"port": free_port(), "servicePort": free_port(), "tags": {"kuma.io/service": name}}],
            "outbound": [{"port": http, "tags": {"kuma.io/service": "backend"}}]},
    });
    let token = cp.kumactl_ok(&["generate", "dataplane-token", "--name", name]);
    let mut envoy = Envoy::start(cp, dir, name, &dp, token.trim());
    envoy.wait_ready();
    (envoy, http)
}

/// Every Envoy ACKed every configuration it was sent.
fn envoys_accepted_everything(envoys: &[&Envoy]) {
    for e in envoys {
        let (rejected, accepted) = e.rejected_and_accepted();
        assert!(
            rejected.is_empty(),
            "Envoy rejected an update: {rejected:?}"
        );
        assert!(accepted > 0, "Envoy accepted nothing");
    }
}

/// Answers of `n` requests, by body (the echo instance's name) or by failure.
fn answers(port: u16, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let key = match http_request(port, "/", headers) {
            Ok((200, body)) => body.trim().to_string(),
            Ok((status, _)) => format!("status {status}"),
            Err(_) => "no answer".to_string(),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

fn count(a: &BTreeMap<String, usize>, key: &str) -> usize {
    a.get(key).copied().unwrap_or(0)
}

/// Polls until `n` requests from `port` all end as `want` says.
fn wait_answers(
    what: &str,
    port: u16,
    headers: &[(&str, &str)],
    want: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    wait_for(what, PROPAGATION, || {
        let a = answers(port, 10, headers);
        want(&a).then_some(a)
    })
}

fn zone_lists(cp: &ControlPlane, args: &[&str], name: &str) -> bool {
    let out = cp.kumactl(args);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(name)
}

const DENY_ZONE_2: &str = "type: MeshTrafficPermission\nname: backend-from-zones\nmesh: default\nspec:\n  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n  - targetRef:\n      kind: Mesh\n    default:\n      action: Allow\n  - targetRef:\n      kind: MeshSubset\n      tags:\n        kuma.io/zone: zone-2\n    default:\n      action: Deny\n";

#[test]
fn policies_created_on_global_are_enforced_in_every_zone() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path();
    let (global, zone1, zone2) = global_and_two_zones(dir);
    apply_ok(
        &global,
        dir,
        "mesh.yaml",
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
    );
    // The mesh's default permission comes with it and reaches both zones.
    for z in [&zone1, &zone2] {
        wait_for("allow-all-default in the zone", PROPAGATION, || {
            zone_lists(z, &["get", "meshtrafficpermissions"], "allow-all-default").then_some(())
        });
    }
    let _ingress1 = zone_ingress(&global, &zone1, dir, "zone-1");
    let _ingress2 = zone_ingress(&global, &zone2, dir, "zone-2");

    let (v1, v2, tcp) = (
        EchoServer::start("v1"),
        EchoServer::start("v2"),
        EchoServer::start("tcp"),
    );
    let http_tags = |version: &str| {
        format!(
            "      kuma.io/service: backend\n      kuma.io/protocol: http\n      version: {version}\n"
        )
    };
    // v1's sidecar is Envoy: the server side of the permission checks.
    let v1_dp = serde_json::json!({
        "type": "Dataplane", "mesh": "default", "name": "backend-v1",
        "networking": {"address": "127.0.0.1",
            "inbound": [{"port": free_port(), "servicePort": v1.port, "tags": {
                "kuma.io/service": "backend", "kuma.io/protocol": "http", "version": "v1"}}]},
    });
    let v1_token = zone1.kumactl_ok(&["generate", "dataplane-token", "--name", "backend-v1"]);
    let mut backend_v1 = Envoy::start(&zone1, dir, "backend-v1", &v1_dp, v1_token.trim());
    backend_v1.wait_ready();
    let _backend_v2 = instance(&zone2, dir, "backend-v2", &v2, &http_tags("v2"));
    // A v1 instance in zone-2 too: zone-2's ingress must route the v2 subset's SNI to v2 only,
    // not to every instance of the service behind it.
    let v1_zone2 = EchoServer::start("v1");
    let _backend_v1_zone2 = instance(
        &zone2,
        dir,
        "backend-v1-zone-2",
        &v1_zone2,
        &http_tags("v1"),
    );
    let _tcp_backend = instance(
        &zone1,
        dir,
        "tcp-backend",
        &tcp,
        "      kuma.io/service: tcp-backend\n",
    );
    let client1 = client(&zone1, dir, "client-1");
    let client2 = client(&zone2, dir, "client-2");
    let (envoy1, envoy1_http) = envoy_client(&zone1, dir, "envoy-client-1");
    let (envoy2, envoy2_http) = envoy_client(&zone2, dir, "envoy-client-2");
    let envoys = [&backend_v1, &envoy1, &envoy2];
    let zone1_http = [client1.http, envoy1_http];
    let zone2_http = [client2.http, envoy2_http];

    // Every client is answered; zone-2's reach both versions. (Zone-1's requests through
    // zone-2's ingress ride one pooled connection, so they may all land on one instance there.)
    for port in zone1_http {
        wait_answers("the backend answers", port, &[], |a| {
            count(a, "v1") + count(a, "v2") == 10
        });
    }
    for port in zone2_http {
        wait_answers("both versions answer", port, &[], |a| {
            count(a, "v1") > 0 && count(a, "v2") > 0 && count(a, "v1") + count(a, "v2") == 10
        });
    }
    for c in [&client1, &client2] {
        wait_answers("the TCP service answers", c.tcp, &[], |a| {
            count(a, "tcp") == 10
        });
    }

    // (d) A zone connected to global refuses policy writes, with Kuma's message.
    let refused = apply(&zone1, dir, "zone-policy.yaml", DENY_ZONE_2);
    assert!(
        !refused.status.success(),
        "a zone must refuse a policy write"
    );
    assert!(
        stderr(&refused).contains("On zone control plane you can only modify"),
        "{}",
        stderr(&refused)
    );
    assert!(!zone_lists(
        &zone1,
        &["get", "meshtrafficpermissions"],
        "backend-from-zones"
    ));

    // (a) Deny clients from zone-2, on global: zone-2's HTTP calls get 403 from both versions
    // (v1 behind Envoy, v2 behind kuma-dp), zone-1's still succeed.
    apply_ok(&global, dir, "deny.yaml", DENY_ZONE_2);
    for port in zone2_http {
        wait_answers("zone-2's calls denied", port, &[], |a| {
            count(a, "status 403") == 10
        });
    }
    for port in zone1_http {
        let a = answers(port, 20, &[]);
        assert_eq!(
            count(&a, "v1") + count(&a, "v2"),
            20,
            "zone-1 still allowed: {a:?}"
        );
    }
    // TCP: deny zone-2 on tcp-backend too; its connections close before the app sees a byte.
    apply_ok(
        &global,
        dir,
        "deny-tcp.yaml",
        &DENY_ZONE_2
            .replace("name: backend-from-zones", "name: tcp-from-zones")
            .replace("name: backend\n", "name: tcp-backend\n"),
    );
    wait_answers("zone-2's TCP connections refused", client2.tcp, &[], |a| {
        count(a, "no answer") == 10
    });
    let served = tcp.served();
    let a = answers(client2.tcp, 10, &[]);
    assert_eq!(count(&a, "no answer"), 10, "{a:?}");
    assert_eq!(
        tcp.served(),
        served,
        "a denied connection reached the application"
    );
    assert_eq!(count(&answers(client1.tcp, 10, &[]), "tcp"), 10);

    // An Allow restores zone-2.
    apply_ok(
        &global,
        dir,
        "allow.yaml",
        &DENY_ZONE_2.replace("action: Deny", "action: Allow"),
    );
    for port in zone2_http {
        wait_answers("zone-2's calls allowed again", port, &[], |a| {
            count(a, "v1") + count(a, "v2") == 10
        });
    }
    ok(&global.kumactl(&[
        "delete",
        "meshtrafficpermission",
        "tcp-from-zones",
        "-m",
        "default",
    ]));
    wait_answers("zone-2's TCP allowed again", client2.tcp, &[], |a| {
        count(a, "tcp") == 10
    });

    // (b) 90/10 between v1 (zone-1) and v2 (zone-2), from zone-1's clients.
    let split = "type: MeshHTTPRoute\nname: backend-split\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n  - targetRef:\n      kind: MeshService\n      name: backend\n    rules:\n    - matches:\n      - path:\n          type: PathPrefix\n          value: /\n      default:\n        backendRefs:\n        - kind: MeshServiceSubset\n          name: backend\n          tags:\n            version: v1\n          weight: 90\n        - kind: MeshServiceSubset\n          name: backend\n          tags:\n            version: v2\n          weight: 10\n";
    let canary = "    - matches:\n      - headers:\n        - type: Exact\n          name: x-canary\n          value: \"1\"\n      default:\n        backendRefs:\n        - kind: MeshServiceSubset\n          name: backend\n          tags:\n            version: v2\n";
    apply_ok(&global, dir, "split.yaml", &format!("{split}{canary}"));
    for port in zone1_http {
        wait_answers("the canary rule applies", port, &[("x-canary", "1")], |a| {
            count(a, "v2") == 10
        });
    }
    for (who, port) in [("kuma-dp", client1.http), ("Envoy", envoy1_http)] {
        let a = answers(port, 1000, &[]);
        eprintln!("{who}: 1000 requests with a 90/10 route: {a:?}");
        assert_eq!(
            count(&a, "v1") + count(&a, "v2"),
            1000,
            "{who}: all answered: {a:?}"
        );
        assert!(
            (870..=930).contains(&count(&a, "v1")),
            "{who}: 90 % ± 3 % to v1: {a:?}"
        );
    }
    // (c) The header match sends requests with `x-canary: 1` only to v2 (from zone-2 too).
    for port in zone1_http.into_iter().chain(zone2_http) {
        let a = answers(port, 50, &[("x-canary", "1")]);
        assert_eq!(count(&a, "v2"), 50, "{a:?}");
    }
    envoys_accepted_everything(&envoys);

    // (e) Deleting the route on global removes it from the zones and from the proxies.
    ok(&global.kumactl(&["delete", "meshhttproute", "backend-split", "-m", "default"]));
    for z in [&zone1, &zone2] {
        wait_for("the route gone from the zone", PROPAGATION, || {
            (!zone_lists(z, &["get", "meshhttproutes"], "backend-split")).then_some(())
        });
    }
    for port in zone1_http {
        wait_answers(
            "the canary header no longer pins v2",
            port,
            &[("x-canary", "1")],
            |a| count(a, "v1") > 0 && count(a, "v1") + count(a, "v2") == 10,
        );
    }
    envoys_accepted_everything(&envoys);
}
