//! ExternalService in network namespaces: global, zone-1's CP, a client host with a transparent
//! proxy (`kumactl install transparent-proxy --redirect-dns`) and an explicit outbound, a host
//! with an Envoy 1.40 sidecar, and an "external" host outside the mesh with HTTPS servers
//! (certificate made by the openssl CLI, its CA given to the mesh as a Secret) and a plain HTTP
//! server.
//!
//! 1. Direct (Mesh without `routing.zoneEgress`): `dig` gives the service's VIP and the address
//!    host's own (kuma-dp's resolver and the zone CP agree); `curl` by every name and port gets
//!    the external answer, TLS originated by the sidecar (kuma-dp's and Envoy's); a wrong CA
//!    makes it fail before the server sees a request. A federated zone refuses to write them.
//! 2. `routing.zoneEgress`: without an egress nothing goes around it; with zone-1's egress, and
//!    the external host now refusing the clients' hosts, traffic goes sidecar → egress (mTLS
//!    terminated, MeshTrafficPermission) → host; a deny on the service stops it there.
//! 3. `kuma.io/zone: zone-2`: an HTTPS server reachable only from zone-2's egress host, reached
//!    from zone-1 through zone-1's egress, zone-2's ingress and zone-2's egress.

use std::time::Duration;

use base64::Engine;
use meshzone_integration_tests::lab::{Lab, mtls_mesh as mesh, wait_for_or};
use meshzone_integration_tests::{ok, wait_for};
use meshzone_tls_client::fixtures::{KeyKind, ca_and_leaf};

/// The uid kuma-dp runs as on the transparent-proxy host (Kuma's convention).
const KUMA_DP_UID: &str = "5678";
const EXTERNAL_IP: &str = "198.18.9.2";
const EXTERNAL_NAME: &str = "api.external.test";

/// An HTTPS server answering `external-tls\n` to every GET, counting requests in a file.
const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
count = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global count
        count += 1
        open(sys.argv[5], "w").write(str(count))
        body = b"external-tls\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

/// How many requests the external HTTPS server answered.
fn served_count(counter: &str) -> u64 {
    std::fs::read_to_string(counter)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn external_services_reached_directly_with_tls_origination_dns_and_vips() {
    let mut lab = Lab::new();
    for (host, ip) in [
        ("global", "198.18.0.1"),
        ("z1-cp", "198.18.1.1"),
        ("z1-client", "198.18.1.20"),
        ("z1-envoy", "198.18.1.21"),
        ("z1-egress", "198.18.1.3"),
        ("z2-cp", "198.18.2.1"),
        ("z2-ingress", "198.18.2.2"),
        ("z2-egress", "198.18.2.3"),
        ("external", EXTERNAL_IP),
    ] {
        lab.host(host, ip);
    }
    // The zone CP resolves the ExternalService's host name (its hosts file, as a data center's
    // DNS would).
    std::fs::create_dir_all(format!("/etc/netns/{}", lab.ns("z1-cp"))).expect("netns etc");
    std::fs::write(
        format!("/etc/netns/{}/hosts", lab.ns("z1-cp")),
        format!("127.0.0.1 localhost\n{EXTERNAL_IP} {EXTERNAL_NAME}\n"),
    )
    .expect("hosts");

    lab.global_cp();
    lab.zone_cp("1", "198.18.0.1", &[]);
    for host in ["global", "z1-cp"] {
        lab.configure_kumactl(host);
    }
    wait_for("zone-1 online", Duration::from_secs(30), || {
        let zones =
            String::from_utf8_lossy(&lab.kumactl("global", &["get", "zones"]).stdout).into_owned();
        zones
            .lines()
            .any(|l| l.contains("zone-1") && l.contains("Online"))
            .then_some(())
    });
    let mesh_file = lab.file("global", "mesh.yaml", &mesh(""));
    ok(&lab.kumactl("global", &["apply", "-f", &mesh_file]));

    // The external host: HTTPS on 8443 with a certificate for its name, plain HTTP on 8080.
    let certs = lab.home("external");
    let (ca, leaf) = ca_and_leaf(
        &certs,
        "api",
        KeyKind::EcdsaP256,
        &format!("DNS:{EXTERNAL_NAME}"),
    )
    .expect("openssl");
    let (other_ca, _) =
        ca_and_leaf(&certs, "other", KeyKind::EcdsaP256, "DNS:other.test").expect("openssl");
    let script = lab.file("external", "https.py", HTTPS_SERVER);
    let counter = certs.join("https.count").display().to_string();
    let (cert, key) = (
        leaf.cert.display().to_string(),
        leaf.key.display().to_string(),
    );
    lab.spawn(
        "external",
        "external-https",
        "python3",
        &[&script, EXTERNAL_IP, "8443", &cert, &key, &counter],
        &[],
    );
    lab.echo_app("external", EXTERNAL_IP, "external-plain");

    // On global: the CA as a Secret, and the two ExternalServices.
    let secret = |ca_pem: &str| {
        format!(
            "type: Secret\nmesh: default\nname: api-ca\ndata: {}\n",
            b64(ca_pem)
        )
    };
    let secret_file = lab.file("global", "secret.yaml", &secret(&ca.cert_pem()));
    ok(&lab.kumactl("global", &["apply", "-f", &secret_file]));
    let services = format!(
        "type: ExternalService\nmesh: default\nname: api\ntags:\n  kuma.io/service: api\n  kuma.io/protocol: http\nnetworking:\n  address: {EXTERNAL_NAME}:8443\n  tls:\n    enabled: true\n    caCert:\n      secret: api-ca\n---\ntype: ExternalService\nmesh: default\nname: plain\ntags:\n  kuma.io/service: plain\nnetworking:\n  address: {EXTERNAL_IP}:8080\n"
    );
    let es_file = lab.file("global", "external.yaml", &services);
    ok(&lab.kumactl("global", &["apply", "-f", &es_file]));
    // A federated zone takes them from global only.
    let zone_file = lab.file("z1-cp", "external.yaml", &services);
    let refused = lab.kumactl("z1-cp", &["apply", "-f", &zone_file]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("On zone control plane"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    wait_for("the zone's copies", Duration::from_secs(30), || {
        let got = String::from_utf8_lossy(
            &lab.kumactl("z1-cp", &["get", "external-services", "-o", "yaml"])
                .stdout,
        )
        .into_owned();
        (got.contains(EXTERNAL_NAME) && got.contains("kuma.io/origin: global")).then_some(())
    });

    // The client: transparent proxy with DNS, and an explicit outbound to `plain`.
    std::fs::create_dir_all(format!("/etc/netns/{}", lab.ns("z1-client"))).expect("netns etc");
    std::fs::write(
        format!("/etc/netns/{}/resolv.conf", lab.ns("z1-client")),
        "nameserver 198.18.1.1\n",
    )
    .expect("resolv.conf");
    ok(&lab.exec(
        "z1-client",
        "kumactl",
        &[
            "install",
            "transparent-proxy",
            "--kuma-dp-user",
            KUMA_DP_UID,
            "--redirect-dns",
        ],
    ));
    let client_dp = "type: Dataplane\nmesh: default\nname: client\nnetworking:\n  address: 198.18.1.20\n  inbound:\n  - port: 10021\n    servicePort: 8081\n    tags:\n      kuma.io/service: client\n  outbound:\n  - port: 20001\n    tags:\n      kuma.io/service: plain\n  transparentProxying:\n    redirectPortInbound: 15006\n    redirectPortOutbound: 15001\n";
    lab.sidecar(
        "z1-client",
        "1",
        "client",
        client_dp,
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

    // An Envoy 1.40 sidecar with an explicit outbound to api: Envoy originates the TLS.
    let envoy_dp = serde_json::json!({"type": "Dataplane", "mesh": "default", "name": "envoy-client",
        "networking": {"address": "198.18.1.21",
            "inbound": [{"port": 10031, "servicePort": 8082, "tags": {"kuma.io/service": "envoy-client"}}],
            "outbound": [{"port": 20002, "tags": {"kuma.io/service": "api"}}]}});
    lab.envoy_sidecar("z1-envoy", "1", &envoy_dp, 9901);
    let envoy_url = "http://127.0.0.1:20002/";
    let last = std::cell::RefCell::new(String::new());
    let body = wait_for_or("curl api through the Envoy sidecar", &last, || {
        lab.curl("z1-envoy", &[envoy_url])
            .map_err(|e| *last.borrow_mut() = format!("{e}\n{}", lab.log("envoy-client-envoy")))
            .ok()
    });
    assert_eq!(body, "external-tls\n");

    // dig: the service's VIP and the host's own, from kuma-dp's resolver and the zone CP.
    let mut vips = Vec::new();
    for name in ["api.mesh", EXTERNAL_NAME, "plain.mesh"] {
        let last = std::cell::RefCell::new(String::new());
        let vip = wait_for_or(&format!("dig {name} (kuma-dp's resolver)"), &last, || {
            let o = lab.exec("z1-client", "dig", &["+short", "+time=1", "+tries=1", name]);
            let vip = String::from_utf8_lossy(&o.stdout).trim().to_string();
            *last.borrow_mut() = vip.clone();
            vip.starts_with("240.").then_some(vip)
        });
        let cp = lab.exec(
            "z1-client",
            "dig",
            &["@198.18.1.1", "-p", "5653", "+short", name],
        );
        assert_eq!(
            String::from_utf8_lossy(&cp.stdout).trim(),
            vip,
            "{name}: kuma-dp and the zone CP agree"
        );
        vips.push(vip);
    }
    assert_ne!(vips[0], vips[1], "the host has a VIP of its own");

    // curl: TLS originated by the sidecar, by every name and port; plain TCP by both ways.
    for url in [
        "http://api.mesh/".to_string(),
        "http://api.mesh:8443/".to_string(),
        format!("http://{EXTERNAL_NAME}:8443/"),
        format!("http://{EXTERNAL_NAME}/"),
    ] {
        let last = std::cell::RefCell::new(String::new());
        let body = wait_for_or(&format!("curl {url}"), &last, || {
            lab.curl("z1-client", &[&url])
                .map_err(|e| *last.borrow_mut() = format!("{e}\n{}", lab.log("client-dp")))
                .ok()
        });
        assert_eq!(body, "external-tls\n", "{url}");
    }
    let served = served_count(&counter);
    assert!(served >= 4, "the external server saw {served} requests");
    for url in [
        "http://127.0.0.1:20001/",
        "http://plain.mesh/",
        "http://plain.mesh:8080/",
    ] {
        let last = std::cell::RefCell::new(String::new());
        let body = wait_for_or(&format!("curl {url}"), &last, || {
            lab.curl("z1-client", &[url])
                .map_err(|e| *last.borrow_mut() = e)
                .ok()
        });
        assert_eq!(body, "external-plain\n", "{url}");
    }

    // A CA that did not sign the server's certificate: the handshake fails.
    let secret_file = lab.file("global", "secret.yaml", &secret(&other_ca.cert_pem()));
    ok(&lab.kumactl("global", &["apply", "-f", &secret_file]));
    wait_for("the wrong CA is refused", Duration::from_secs(30), || {
        lab.curl("z1-client", &["http://api.mesh/"])
            .is_err()
            .then_some(())
    });
    // The server sees none of the refused requests: the sidecar stops at the handshake.
    let before = served_count(&counter);
    for _ in 0..3 {
        assert!(lab.curl("z1-client", &["http://api.mesh/"]).is_err());
    }
    assert_eq!(served_count(&counter), before);
    let secret_file = lab.file("global", "secret.yaml", &secret(&ca.cert_pem()));
    ok(&lab.kumactl("global", &["apply", "-f", &secret_file]));
    wait_for("the right CA again", Duration::from_secs(30), || {
        lab.curl("z1-client", &["http://api.mesh/"]).ok()
    });

    // routing.zoneEgress without an egress in the zone: nothing goes around it.
    let mesh_file = lab.file(
        "global",
        "mesh.yaml",
        &mesh("routing:\n  zoneEgress: true\n"),
    );
    ok(&lab.kumactl("global", &["apply", "-f", &mesh_file]));
    wait_for(
        "no direct route with zoneEgress",
        Duration::from_secs(30),
        || {
            lab.curl("z1-client", &["http://127.0.0.1:20001/"])
                .is_err()
                .then_some(())
        },
    );

    // From now on the external host answers the egress's host only.
    lab.iptables(
        "external",
        &["-A", "INPUT", "-s", "198.18.1.20", "-j", "DROP"],
    );
    lab.iptables(
        "external",
        &["-A", "INPUT", "-s", "198.18.1.21", "-j", "DROP"],
    );
    assert!(
        lab.curl("z1-client", &["http://198.18.9.2:8080/"]).is_err(),
        "the client cannot reach the external host itself"
    );
    // Zone-1's egress: mTLS from the sidecar, TLS (or TCP) from the egress to the host.
    let token = ok(&lab.kumactl(
        "global",
        &[
            "generate",
            "zone-token",
            "--zone=zone-1",
            "--scope",
            "egress",
        ],
    ));
    lab.zone_proxy(
        "z1-egress",
        "egress-1",
        "egress",
        "1",
        token.trim(),
        "type: ZoneEgress\nname: zoneegress-1\nnetworking:\n  address: 198.18.1.3\n  port: 10002\n",
        &[],
    );
    let before = served_count(&counter);
    for url in [
        "http://api.mesh/",
        "http://127.0.0.1:20001/",
        "http://plain.mesh/",
    ] {
        let last = std::cell::RefCell::new(String::new());
        let body = wait_for_or(&format!("curl {url} through the egress"), &last, || {
            lab.curl("z1-client", &[url])
                .map_err(|e| {
                    *last.borrow_mut() =
                        format!("{e}\n{}\n{}", lab.log("client-dp"), lab.log("egress-1"))
                })
                .ok()
        });
        let want = if url.contains("api") {
            "external-tls\n"
        } else {
            "external-plain\n"
        };
        assert_eq!(body, want, "{url}");
    }
    // Envoy's sidecar goes through kuma-dp's egress as well.
    let last = std::cell::RefCell::new(String::new());
    let body = wait_for_or("curl api from Envoy through the egress", &last, || {
        lab.curl("z1-envoy", &[envoy_url])
            .map_err(|e| *last.borrow_mut() = format!("{e}\n{}", lab.log("envoy-client-envoy")))
            .ok()
    });
    assert_eq!(body, "external-tls\n");
    assert!(served_count(&counter) > before);
    let through = "cluster.external:default:api.upstream_cx_total";
    assert!(lab.stat("z1-egress", 9901, through) >= 1, "{through}");

    // A MeshTrafficPermission denying everyone on the external service: the egress refuses.
    let deny = lab.file(
        "global",
        "deny.yaml",
        "type: MeshTrafficPermission\nmesh: default\nname: no-api\nspec:\n  targetRef:\n    kind: MeshService\n    name: api\n  from:\n  - targetRef:\n      kind: Mesh\n    default:\n      action: Deny\n",
    );
    ok(&lab.kumactl("global", &["apply", "-f", &deny]));
    wait_for("the egress denies api", Duration::from_secs(30), || {
        lab.curl("z1-client", &["http://api.mesh/"])
            .is_err()
            .then_some(())
    });
    let denied = served_count(&counter);
    for _ in 0..3 {
        assert!(lab.curl("z1-client", &["http://api.mesh/"]).is_err());
    }
    assert_eq!(
        served_count(&counter),
        denied,
        "no denied request reaches the host"
    );
    // plain has no such policy: it still goes through.
    assert_eq!(
        lab.curl("z1-client", &["http://plain.mesh/"]).as_deref(),
        Ok("external-plain\n")
    );

    // `kuma.io/zone: zone-2`: reachable only from zone-2's egress host; zone-1 goes
    // egress(zone-1) → ingress(zone-2) → egress(zone-2) → the host.
    let far_counter = certs.join("far.count").display().to_string();
    lab.spawn(
        "external",
        "external-far",
        "python3",
        &[&script, EXTERNAL_IP, "9443", &cert, &key, &far_counter],
        &[],
    );
    lab.iptables(
        "external",
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "9443",
            "-s",
            "198.18.1.3",
            "-j",
            "DROP",
        ],
    );
    lab.zone_cp("2", "198.18.0.1", &[]);
    lab.configure_kumactl("z2-cp");
    let token = ok(&lab.kumactl(
        "global",
        &[
            "generate",
            "zone-token",
            "--zone=zone-2",
            "--scope",
            "egress",
            "--scope",
            "ingress",
        ],
    ));
    lab.zone_proxy(
        "z2-ingress",
        "ingress-2",
        "ingress",
        "2",
        token.trim(),
        "type: ZoneIngress\nname: ingress-2\nnetworking:\n  address: 198.18.2.2\n  port: 10000\n  advertisedAddress: 198.18.2.2\n  advertisedPort: 10000\n",
        &[],
    );
    lab.zone_proxy(
        "z2-egress",
        "egress-2",
        "egress",
        "2",
        token.trim(),
        "type: ZoneEgress\nname: zoneegress-2\nnetworking:\n  address: 198.18.2.3\n  port: 10002\n",
        &[],
    );
    let far = lab.file(
        "global",
        "far.yaml",
        &format!("type: ExternalService\nmesh: default\nname: far\ntags:\n  kuma.io/service: far\n  kuma.io/protocol: http\n  kuma.io/zone: zone-2\nnetworking:\n  address: {EXTERNAL_IP}:9443\n  tls:\n    enabled: true\n    serverName: {EXTERNAL_NAME}\n    caCert:\n      secret: api-ca\n"),
    );
    ok(&lab.kumactl("global", &["apply", "-f", &far]));
    let last = std::cell::RefCell::new(String::new());
    let body = wait_for_or("curl http://far.mesh/ across zones", &last, || {
        lab.curl("z1-client", &["http://far.mesh/"])
            .map_err(|e| {
                *last.borrow_mut() = format!(
                    "{e}\n{}\n{}\n{}",
                    lab.log("egress-1"),
                    lab.log("ingress-2"),
                    lab.log("egress-2")
                )
            })
            .ok()
    });
    assert_eq!(body, "external-tls\n");
    assert!(served_count(&far_counter) >= 1);
    assert!(
        lab.stat(
            "z2-egress",
            9901,
            "cluster.external:default:far.upstream_cx_total"
        ) >= 1
    );
    assert!(
        lab.stat(
            "z1-egress",
            9901,
            "cluster.far.default.mesh.upstream_cx_total"
        ) >= 1
    );
}
