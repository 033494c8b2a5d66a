//! The seed's Universal walkthrough on several hosts: one network namespace per host, joined by
//! veth pairs to a bridge in a private "switch" namespace, addresses from 198.18.0.0/15. Global,
//! two zone CPs, an ingress per zone, an egress in zone-2, echo instances in both zones and a
//! client in zone-2 with an explicit outbound (`localhost:20012`) and a transparent proxy
//! (`kumactl install transparent-proxy`, `<service>.mesh:80`, DNS), checked with `curl` and `dig`.
//! Nothing is sent from the root namespace; everything is torn down at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use meshzone_integration_tests::lab::{Lab, mtls_mesh as mesh, must, wait_for_or};
use meshzone_integration_tests::{ok, wait_for};

const SERVICE: &str = "echo-server_echo-example_svc_1010";
const SERVICE_RFC1123: &str = "echo-server.echo-example.svc.1010";
/// The uid kuma-dp runs as on the transparent-proxy host (Kuma's convention).
const KUMA_DP_UID: &str = "5678";

#[test]
fn seed_universal_walkthrough_across_hosts() {
    let mut lab = Lab::new();
    for (host, ip) in [
        ("global", "198.18.0.1"),
        ("z1-cp", "198.18.1.1"),
        ("z1-ingress", "198.18.1.2"),
        ("z1-app-a", "198.18.1.10"),
        ("z1-app-b", "198.18.1.11"),
        ("z2-cp", "198.18.2.1"),
        ("z2-ingress", "198.18.2.2"),
        ("z2-egress", "198.18.2.3"),
        ("z2-app", "198.18.2.10"),
        ("z2-client", "198.18.2.20"),
    ] {
        lab.host(host, ip);
    }

    // Global: `KUMA_MODE=global kuma-cp run`.
    lab.global_cp();
    // Zone CPs: `KUMA_MODE=zone KUMA_MULTIZONE_ZONE_NAME=… KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS=…`.
    for z in ["1", "2"] {
        lab.zone_cp(z, "198.18.0.1", &[]);
    }
    for host in ["global", "z1-cp", "z2-cp"] {
        lab.configure_kumactl(host);
    }
    // "Verify control plane connectivity": `kumactl get zones` shows both zones Online.
    wait_for("both zones online", Duration::from_secs(30), || {
        let zones =
            String::from_utf8_lossy(&lab.kumactl("global", &["get", "zones"]).stdout).into_owned();
        (zones
            .lines()
            .filter(|l| l.contains("zone-") && l.contains("Online"))
            .count()
            == 2)
            .then_some(())
    });
    let mesh_file = lab.file("global", "mesh.yaml", &mesh(""));
    ok(&lab.kumactl("global", &["apply", "-f", &mesh_file]));

    // Zone proxy tokens: `kumactl generate zone-token --zone=<zone> --scope egress --scope ingress`.
    let mut zone_tokens = BTreeMap::new();
    for z in ["zone-1", "zone-2"] {
        let token = ok(&lab.kumactl(
            "global",
            &[
                "generate",
                "zone-token",
                &format!("--zone={z}"),
                "--scope",
                "egress",
                "--scope",
                "ingress",
            ],
        ));
        zone_tokens.insert(z, token.trim().to_string());
    }
    // Ingresses (and zone-2's egress), as the seed writes them, on their own hosts:
    // `kuma-dp run --proxy-type=… --cp-address --dataplane-token-file --ca-cert-file
    // --dataplane-file`, the zone CP's certificate copied over (`Lab::zone_proxy`).
    for (z, ip) in [("1", "198.18.1.2"), ("2", "198.18.2.2")] {
        lab.zone_proxy(
            &format!("z{z}-ingress"),
            &format!("ingress-{z}"),
            "ingress",
            z,
            &zone_tokens[format!("zone-{z}").as_str()],
            &format!(
                "type: ZoneIngress\nname: ingress-0{z}\nnetworking:\n  address: {ip}\n  port: 10000\n  advertisedAddress: {ip}\n  advertisedPort: 10000\n"
            ),
            &[],
        );
    }
    lab.zone_proxy(
        "z2-egress",
        "egress-2",
        "egress",
        "2",
        &zone_tokens["zone-2"],
        "type: ZoneEgress\nname: zoneegress-01\nnetworking:\n  address: 198.18.2.3\n  port: 10002\n",
        &[],
    );
    // An ingress token for zone-2 does not register an ingress in zone-1.
    lab.zone_proxy(
        "z1-ingress",
        "stray-ingress",
        "ingress",
        "1",
        &zone_tokens["zone-2"],
        "type: ZoneIngress\nname: stray\nnetworking:\n  address: 198.18.1.2\n  port: 10001\n  advertisedAddress: 198.18.1.2\n  advertisedPort: 10001\n",
        &["--admin-port=9902"],
    );
    let status = lab.wait_exit("stray-ingress");
    assert!(!status.success());
    assert!(
        lab.log("stray-ingress").contains("zone-2"),
        "{}",
        lab.log("stray-ingress")
    );

    // Echo instances behind sidecars: two in zone-1.
    // `transparent`: the host gets `kumactl install transparent-proxy` (inbound redirection
    // included) and its Dataplane's inbound is the application's own port, not bound by kuma-dp.
    let start_echo = |lab: &mut Lab,
                      host: &str,
                      z: &str,
                      ip: &str,
                      name: &str,
                      transparent: bool| {
        lab.echo_app(host, ip, name);
        let (port, extra, wrapper): (u16, &str, &[&str]) = if transparent {
            ok(&lab.exec(
                host,
                "kumactl",
                &[
                    "install",
                    "transparent-proxy",
                    "--kuma-dp-user",
                    KUMA_DP_UID,
                ],
            ));
            (
                8080,
                "  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n",
                &[
                    "setpriv",
                    "--reuid",
                    KUMA_DP_UID,
                    "--regid",
                    KUMA_DP_UID,
                    "--clear-groups",
                    "--",
                ],
            )
        } else {
            (10011, "", &[])
        };
        let dp = format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: {ip}\n  inbound:\n  - port: {port}\n    servicePort: 8080\n    tags:\n      kuma.io/service: {SERVICE}\n      kuma.io/protocol: http\n      instance: {name}\n{extra}"
        );
        lab.sidecar(host, z, name, &dp, wrapper);
    };
    start_echo(&mut lab, "z1-app-a", "1", "198.18.1.10", "zone-1-a", false);
    start_echo(&mut lab, "z1-app-b", "1", "198.18.1.11", "zone-1-b", false);

    // The client in zone-2: the seed's outbound on 20012, and transparent proxying.
    let client_dp = format!(
        "type: Dataplane\nmesh: default\nname: client\nnetworking:\n  address: 198.18.2.20\n  inbound:\n  - port: 10021\n    servicePort: 8081\n    tags:\n      kuma.io/service: client\n  outbound:\n  - port: 20012\n    tags:\n      kuma.io/service: {SERVICE}\n  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n"
    );
    // The client host's resolver; the transparent proxy redirects port 53 to kuma-dp's resolver,
    // which answers `.mesh` itself and relays other names here.
    std::fs::create_dir_all(format!("/etc/netns/{}", lab.ns("z2-client"))).expect("netns etc");
    std::fs::write(
        format!("/etc/netns/{}/resolv.conf", lab.ns("z2-client")),
        "nameserver 198.18.2.1\n",
    )
    .expect("resolv.conf");
    ok(&lab.exec(
        "z2-client",
        "kumactl",
        &[
            "install",
            "transparent-proxy",
            "--kuma-dp-user",
            KUMA_DP_UID,
            "--redirect-dns",
        ],
    ));
    lab.sidecar(
        "z2-client",
        "2",
        "client",
        &client_dp,
        &[
            "setpriv",
            "--reuid",
            KUMA_DP_UID,
            "--regid",
            KUMA_DP_UID,
            "--clear-groups",
            "--",
        ],
    );

    // localhost:20012 reaches zone-1 (no instance in zone-2 yet).
    let explicit = "http://127.0.0.1:20012/";
    let body = wait_for(
        "zone-1 through localhost:20012",
        Duration::from_secs(60),
        || lab.curl("z2-client", &[explicit]).ok(),
    );
    assert!(body.starts_with("zone-1-"), "{body}");
    let zones = ok(&lab.kumactl("global", &["get", "zones"]));
    assert_eq!(
        zones.lines().filter(|l| l.contains("Online")).count(),
        2,
        "{zones}"
    );
    let services = ok(&lab.kumactl("global", &["inspect", "services"]));
    assert!(services.contains(SERVICE), "{services}");

    // DNS and the transparent proxy: both names of the seed, on port 80.
    for name in [SERVICE, SERVICE_RFC1123] {
        // The host's resolver (UDP 53) is redirected to kuma-dp; the zone CP answers on 5653.
        let dig = lab.exec("z2-client", "dig", &["+short", &format!("{name}.mesh")]);
        let vip = String::from_utf8_lossy(&dig.stdout).trim().to_string();
        assert!(vip.starts_with("240."), "dig {name}.mesh: {vip:?}");
        let cp_dig = lab.exec(
            "z2-client",
            "dig",
            &[
                "@198.18.2.1",
                "-p",
                "5653",
                "+short",
                &format!("{name}.mesh"),
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&cp_dig.stdout).trim(),
            vip,
            "kuma-dp and the zone CP agree"
        );
        let url = format!("http://{name}.mesh:80/");
        let last = std::cell::RefCell::new(String::new());
        let body = wait_for_or(&format!("curl {url} (transparent proxy)"), &last, || {
            lab.curl("z2-client", &[&url])
                .map_err(|e| {
                    *last.borrow_mut() = format!(
                        "{e}\n{}\n{}",
                        lab.log("client-dp"),
                        String::from_utf8_lossy(&lab.exec("z2-client", "ss", &["-ltnp"]).stdout)
                    )
                })
                .ok()
        });
        assert!(body.starts_with("zone-1-"), "{body}");
    }
    // VirtualOutbounds, applied on global: another name and port for the service (outside
    // `.mesh`), and one name per instance (a tag subset, reached across zones through zone-1's
    // ingress by the subset's SNI). Each name answers from kuma-dp's resolver and the zone CP,
    // and reaches only what it names.
    for (i, vo) in [
        "type: VirtualOutbound\nmesh: default\nname: cluster-local\nselectors:\n- match:\n    kuma.io/service: '*'\nconf:\n  host: '{{.svc}}.svc.cluster.local'\n  port: '8080'\n  parameters:\n  - name: svc\n    tagKey: kuma.io/service\n",
        "type: VirtualOutbound\nmesh: default\nname: per-instance\nselectors:\n- match:\n    kuma.io/service: '*'\n    instance: '*'\nconf:\n  host: '{{.inst}}.echo.mesh'\n  port: '80'\n  parameters:\n  - name: svc\n    tagKey: kuma.io/service\n  - name: inst\n    tagKey: instance\n",
    ]
    .iter()
    .enumerate()
    {
        let file = lab.file("global", &format!("vo-{i}.yaml"), vo);
        ok(&lab.kumactl("global", &["apply", "-f", &file]));
    }
    let cluster_local = format!("{SERVICE}.svc.cluster.local");
    for (name, port, answers) in [
        (cluster_local.as_str(), 8080, &["zone-1-a", "zone-1-b"][..]),
        ("zone-1-a.echo.mesh", 80, &["zone-1-a"][..]),
        ("zone-1-b.echo.mesh", 80, &["zone-1-b"][..]),
    ] {
        let last = std::cell::RefCell::new(String::new());
        let vip = wait_for_or(&format!("dig {name} (kuma-dp's resolver)"), &last, || {
            let o = lab.exec("z2-client", "dig", &["+short", "+time=1", "+tries=1", name]);
            let vip = String::from_utf8_lossy(&o.stdout).trim().to_string();
            *last.borrow_mut() = vip.clone();
            vip.starts_with("240.").then_some(vip)
        });
        let cp_dig = lab.exec(
            "z2-client",
            "dig",
            &["@198.18.2.1", "-p", "5653", "+short", name],
        );
        assert_eq!(
            String::from_utf8_lossy(&cp_dig.stdout).trim(),
            vip,
            "{name}: kuma-dp and the zone CP agree"
        );
        let url = format!("http://{name}:{port}/");
        let last = std::cell::RefCell::new(String::new());
        let seen = wait_for_or(&format!("curl {url}"), &last, || {
            let seen = lab.split("z2-client", &url, 12);
            *last.borrow_mut() = format!("{seen:?}");
            answers
                .iter()
                .all(|a| seen.contains_key(*a))
                .then_some(seen)
        });
        let unexpected: Vec<&String> = seen
            .keys()
            .filter(|k| !answers.contains(&k.as_str()))
            .collect();
        assert!(unexpected.is_empty(), "{url} answered by {seen:?}");
    }

    let unknown = lab.exec("z2-client", "dig", &["nope.mesh"]);
    assert!(String::from_utf8_lossy(&unknown.stdout).contains("NXDOMAIN"));

    // The ingress refuses plaintext and unknown SNI.
    assert!(
        lab.curl("z2-client", &["http://198.18.1.2:10000/"])
            .is_err()
    );
    assert!(
        lab.curl(
            "z2-client",
            &[
                "-k",
                "--resolve",
                "nope.default.mesh:10000:198.18.1.2",
                "https://nope.default.mesh:10000/"
            ],
        )
        .is_err()
    );
    assert!(
        lab.stat(
            "z1-ingress",
            9901,
            "listener.inbound:198.18.1.2:10000.no_filter_chain_match"
        ) >= 2
    );

    // Weights: one instance in zone-2 → 600 requests split 2:1 (zone-1 : zone-2).
    start_echo(&mut lab, "z2-app", "2", "198.18.2.10", "zone-2-a", true);
    wait_for("zone-2 instance in use", Duration::from_secs(30), || {
        lab.split("z2-client", explicit, 10)
            .contains_key("zone-2-a")
            .then_some(())
    });
    // Inbound redirection: zone-2-a's application port is reachable only through its proxy
    // (mTLS); a plain request from another host is refused.
    assert!(
        lab.curl("z2-egress", &["http://198.18.2.10:8080/"])
            .is_err(),
        "the app behind a transparent proxy must not answer plaintext from outside the mesh"
    );
    let counts = lab.split("z2-client", explicit, 600);
    eprintln!("600 requests from zone-2: {counts:?}");
    let remote = counts.get("zone-1-a").unwrap_or(&0) + counts.get("zone-1-b").unwrap_or(&0);
    assert_eq!(counts.get("FAILED"), None, "{counts:?}");
    assert!(
        (remote as f64 / 600.0 - 2.0 / 3.0).abs() <= 2.0 / 3.0 * 0.1,
        "{counts:?}"
    );

    // Locality-aware: all local while zone-2's instance is healthy; then it dies.
    let mesh_file = lab.file(
        "global",
        "mesh.yaml",
        &mesh("routing:\n  localityAwareLoadBalancing: true\n"),
    );
    ok(&lab.kumactl("global", &["apply", "-f", &mesh_file]));
    wait_for("locality-aware in effect", Duration::from_secs(30), || {
        (lab.split("z2-client", explicit, 20).get("zone-2-a") == Some(&20)).then_some(())
    });
    let local = lab.split("z2-client", explicit, 100);
    assert_eq!(local.get("zone-2-a"), Some(&100), "{local:?}");
    lab.stop("zone-2-a-dp");
    lab.stop("zone-2-a-app");
    let failover = lab.split("z2-client", explicit, 100);
    eprintln!("100 requests right after zone-2's instance died: {failover:?}");
    assert_eq!(failover.get("zone-2-a"), None);
    assert!(
        failover.get("FAILED").copied().unwrap_or(0) <= 2,
        "failover loses at most the requests in flight: {failover:?}"
    );
    let settled = lab.split("z2-client", explicit, 50);
    assert_eq!(settled.get("FAILED"), None, "{settled:?}");

    // Zone egress: cross-zone traffic passes zoneegress-01 and still works.
    let mesh_file = lab.file(
        "global",
        "mesh.yaml",
        &mesh("routing:\n  localityAwareLoadBalancing: true\n  zoneEgress: true\n"),
    );
    ok(&lab.kumactl("global", &["apply", "-f", &mesh_file]));
    let through = format!("cluster.{SERVICE}.default.mesh.upstream_cx_total");
    wait_for(
        "traffic through the egress",
        Duration::from_secs(30),
        || {
            let _ = lab.curl("z2-client", &[explicit]);
            (lab.stat("z2-egress", 9901, &through) > 0).then_some(())
        },
    );
    // The client's only way to zone-1 is now the egress.
    let dump = lab
        .curl("z2-client", &["http://127.0.0.1:9901/config_dump"])
        .unwrap_or_default();
    assert!(
        dump.contains("198.18.2.3:10002") && !dump.contains("198.18.1.2:10000"),
        "{dump}"
    );
    // …marked as the egress, so a failure past it is not held against it (Kuma #8297).
    assert!(dump.contains("\"via_zone_egress\":true"), "{dump}");
    let via_egress = lab.split("z2-client", explicit, 50);
    assert_eq!(via_egress.get("FAILED"), None, "{via_egress:?}");

    // Disable zone-1: zone-2 has no endpoint left; enable it: traffic returns.
    let zone_file = lab.file(
        "global",
        "zone-1.yaml",
        "type: Zone\nname: zone-1\nenabled: false\n",
    );
    ok(&lab.kumactl("global", &["apply", "-f", &zone_file]));
    wait_for("zone-1 endpoints gone", Duration::from_secs(30), || {
        lab.curl("z2-client", &[explicit]).is_err().then_some(())
    });
    let zone_file = lab.file(
        "global",
        "zone-1.yaml",
        "type: Zone\nname: zone-1\nenabled: true\n",
    );
    ok(&lab.kumactl("global", &["apply", "-f", &zone_file]));
    wait_for("zone-1 back", Duration::from_secs(30), || {
        lab.curl("z2-client", &[explicit]).ok()
    });

    // The seed's failure modes. Global offline: local and cross-zone traffic keep flowing.
    lab.stop("global");
    let global_down = lab.split("z2-client", explicit, 50);
    assert_eq!(
        global_down.get("FAILED"),
        None,
        "global offline: {global_down:?}"
    );
    // Zone-1's CP offline too ("freezing" zone-1): cross-zone traffic still works.
    lab.stop("zone-1");
    let zone_down = lab.split("z2-client", explicit, 50);
    assert_eq!(
        zone_down.get("FAILED"),
        None,
        "zone-1 CP offline: {zone_down:?}"
    );
    // Zone-2's CP offline as well: its proxies keep their last configuration.
    lab.stop("zone-2");
    let all_down = lab.split("z2-client", explicit, 50);
    assert_eq!(
        all_down.get("FAILED"),
        None,
        "every CP offline: {all_down:?}"
    );
    // `.mesh` names keep resolving (kuma-dp's own resolver) and the transparent path works.
    let body = lab
        .curl("z2-client", &[&format!("http://{SERVICE}.mesh:80/")])
        .expect("transparent proxying with every CP offline");
    assert!(body.starts_with("zone-1-"), "{body}");
    // Communication between the zones failing: cross-zone requests fail, nothing else breaks.
    must(
        "ip",
        &[
            "netns",
            "exec",
            &lab.ns("z1-ingress"),
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "10000",
            "-j",
            "DROP",
        ],
    );
    assert!(
        lab.curl("z2-client", &["--max-time", "3", explicit])
            .is_err()
    );

    ok(&lab.exec("z2-client", "kumactl", &["uninstall", "transparent-proxy"]));
    let rules = lab.exec("z2-client", "iptables", &["-t", "nat", "-S"]);
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("MESH_"));
}
