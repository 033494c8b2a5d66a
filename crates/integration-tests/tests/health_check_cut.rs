//! The seed's promise that a failing zone "can be quickly severed and traffic re-routed to
//! another zone", by MeshHealthCheck in kuma-dp, across hosts in network namespaces: a client
//! in zone-2 whose `echo` endpoints are its zone's instance and zone-1's ingress probes both
//! (the probe to the ingress carries the cluster's SNI and is routed to the instance behind
//! it). When the path to the ingress is cut (iptables DROP: no FIN, connects hang until the
//! check's timeout), the client marks the ingress unhealthy and serves every request from
//! zone-2 without waiting on the cut path; after the heal it marks it healthy and zone-1
//! answers again. The default circuit breaker (outlier detection) is removed first, so the
//! severing is the health check's doing.

use std::time::{Duration, Instant};

use meshzone_integration_tests::lab::{Lab, mtls_mesh};
use meshzone_integration_tests::{ok, wait_for};

const GLOBAL: &str = "198.18.0.1";
const Z1_INGRESS: &str = "198.18.1.2";
const Z2_APP: &str = "198.18.2.10";
const CONVERGE: Duration = Duration::from_secs(60);
/// kuma-dp's connect timeout (MeshTimeout's default): what one request to the cut ingress would
/// wait before it could be retried elsewhere.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const HEALTH_CHECK: &str = "type: MeshHealthCheck
name: echo-health
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: echo}
      default:
        interval: 1s
        timeout: 1s
        unhealthyThreshold: 2
        healthyThreshold: 1
        noTrafficInterval: 1s
        http: {path: /}
";

fn dataplane(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n  - port: 10011\n    servicePort: 8080\n    tags:\n      kuma.io/service: echo\n      kuma.io/protocol: http\n{extra}"
    )
}

fn apply(lab: &Lab, name: &str, yaml: &str) {
    let file = lab.file("global", name, yaml);
    ok(&lab.kumactl("global", &["apply", "-f", &file]));
}

fn stat(lab: &Lab, cluster: &str, name: &str) -> u64 {
    lab.stat(
        "z2-client",
        9901,
        &format!("cluster.{cluster}.health_check.{name}"),
    )
}

#[test]
fn a_cut_zone_is_severed_by_health_checks_and_rejoins_after_the_heal() {
    let mut lab = Lab::new();
    for (host, ip) in [
        ("global", GLOBAL),
        ("z1-cp", "198.18.1.1"),
        ("z1-ing", Z1_INGRESS),
        ("z1-app", "198.18.1.10"),
        ("z2-cp", "198.18.2.1"),
        ("z2-app", Z2_APP),
        ("z2-client", "198.18.2.20"),
    ] {
        lab.host(host, ip);
    }
    lab.global_cp();
    lab.zone_cp("1", GLOBAL, &[]);
    lab.zone_cp("2", GLOBAL, &[]);
    for host in ["global", "z1-cp", "z2-cp"] {
        lab.configure_kumactl(host);
    }
    wait_for("both zones Online", CONVERGE, || {
        let zones =
            String::from_utf8_lossy(&lab.kumactl("global", &["get", "zones"]).stdout).into_owned();
        (zones.lines().filter(|l| l.contains("Online")).count() == 2).then_some(())
    });
    apply(&lab, "mesh.yaml", &mtls_mesh(""));
    wait_for("the mesh in both zones", CONVERGE, || {
        ["z1-cp", "z2-cp"]
            .iter()
            .all(|h| {
                lab.curl(h, &["-f", "http://127.0.0.1:5681/meshes/default"])
                    .is_ok()
            })
            .then_some(())
    });
    wait_for("the default circuit breaker on global", CONVERGE, || {
        let o = lab.kumactl("global", &["get", "meshcircuitbreakers"]);
        String::from_utf8_lossy(&o.stdout)
            .contains("mesh-circuit-breaker-all-default")
            .then_some(())
    });
    ok(&lab.kumactl(
        "global",
        &[
            "delete",
            "meshcircuitbreaker",
            "mesh-circuit-breaker-all-default",
            "--mesh",
            "default",
        ],
    ));

    let token = ok(&lab.kumactl(
        "global",
        &[
            "generate",
            "zone-token",
            "--zone=zone-1",
            "--scope",
            "ingress",
        ],
    ));
    lab.zone_proxy(
        "z1-ing",
        "ingress-1",
        "ingress",
        "1",
        token.trim(),
        &format!(
            "type: ZoneIngress\nname: ingress-1\nnetworking:\n  address: {Z1_INGRESS}\n  port: 10000\n  advertisedAddress: {Z1_INGRESS}\n  advertisedPort: 10000\n"
        ),
        &[],
    );
    for (host, z, ip, name) in [
        ("z1-app", "1", "198.18.1.10", "z1-a"),
        ("z2-app", "2", Z2_APP, "z2-a"),
    ] {
        lab.echo_app(host, ip, name);
        lab.sidecar(host, z, name, &dataplane(name, ip, ""), &[]);
    }
    lab.sidecar(
        "z2-client",
        "2",
        "client-2",
        "type: Dataplane\nmesh: default\nname: client-2\nnetworking:\n  address: 198.18.2.20\n  inbound:\n  - port: 10021\n    servicePort: 8081\n    tags:\n      kuma.io/service: client-2\n  outbound:\n  - port: 20012\n    tags:\n      kuma.io/service: echo\n",
        &[],
    );
    let url = "http://127.0.0.1:20012/";
    wait_for("answers from both zones", CONVERGE, || {
        let seen = lab.split("z2-client", url, 12);
        (seen.contains_key("z1-a") && seen.contains_key("z2-a")).then_some(())
    });
    // The echo cluster: the one whose endpoints include the local instance.
    let cluster = lab.cluster_with_endpoint("z2-client", &format!("{Z2_APP}:10011"));

    apply(&lab, "health-check.yaml", HEALTH_CHECK);
    wait_for("both endpoints passing their probes", CONVERGE, || {
        (stat(&lab, &cluster, "healthy") == 2 && stat(&lab, &cluster, "success") >= 2).then_some(())
    });

    let rule = ["OUTPUT", "-d", Z1_INGRESS, "-j", "DROP"];
    lab.iptables("z2-client", &[&["-A"][..], &rule].concat());
    let cut = Instant::now();
    wait_for("the ingress marked unhealthy", CONVERGE, || {
        (stat(&lab, &cluster, "healthy") == 1).then_some(())
    });
    eprintln!("severed {:?} after the cut", cut.elapsed());
    assert!(stat(&lab, &cluster, "network_failure") >= 2);
    let started = Instant::now();
    let seen = lab.split("z2-client", url, 20);
    let took = started.elapsed();
    assert_eq!(
        seen.get("z2-a"),
        Some(&20),
        "zone-2 answers everything: {seen:?}"
    );
    assert!(
        took < CONNECT_TIMEOUT,
        "no request waited on the cut path ({took:?} for 20)"
    );

    lab.iptables("z2-client", &[&["-D"][..], &rule].concat());
    let healed = Instant::now();
    wait_for("the ingress healthy again", CONVERGE, || {
        (stat(&lab, &cluster, "healthy") == 2).then_some(())
    });
    eprintln!("rejoined {:?} after the heal", healed.elapsed());
    wait_for("zone-1 answering again", CONVERGE, || {
        lab.split("z2-client", url, 12)
            .contains_key("z1-a")
            .then_some(())
    });
}
