//! Certificates a user made with the `openssl` CLI (made here, at test time): OpenSSL 3's
//! `req -x509` marks a self-signed certificate CA:TRUE, which webpki refuses as an end entity;
//! like Kuma (Go), a certificate that is itself one of the configured roots is pinned. Global's
//! KDS server and the zone CP's DP server are given these certificates; zones and kuma-dp
//! verify them with the settings a user would set.

use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, free_port, host_dirs, line_of, ok, start_global, wait_for,
    zone_trusting,
};
use meshzone_tls_client::fixtures::{self, CertFiles, KeyKind};

fn global_with(dir: &Path, kds_port: u16, cert: &CertFiles) -> ControlPlane {
    let (cert, key) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    start_global(
        dir,
        kds_port,
        &[
            ("KUMA_MULTIZONE_GLOBAL_KDS_TLS_CERT_FILE", cert.as_str()),
            ("KUMA_MULTIZONE_GLOBAL_KDS_TLS_KEY_FILE", key.as_str()),
        ],
    )
}

fn wait_online(global: &ControlPlane, zone: &str) {
    wait_for(&format!("{zone} Online"), Duration::from_secs(30), || {
        line_of(&global.kumactl_ok(&["inspect", "zones"]), zone)
            .contains("Online")
            .then_some(())
    });
    let insight: serde_json::Value =
        serde_json::from_str(&global.kumactl_ok(&["get", "zone-insight", zone, "-o", "json"]))
            .expect("insight json");
    assert!(
        insight["subscriptions"][0]["zoneInstanceId"].is_string(),
        "{insight}"
    );
}

/// Global serves KDS with an openssl certificate; a zone trusting it (the self-signed
/// certificate itself, or the CA of a leaf) connects and shows Online.
#[test]
fn zones_connect_to_a_global_with_openssl_certificates() {
    let root_dir = tempfile::tempdir().expect("tempdir");
    let certs = root_dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("dir");
    let san = "IP:127.0.0.1";
    let rsa = fixtures::self_signed(&certs, "rsa", KeyKind::Rsa2048, san).expect("openssl");
    let ecdsa = fixtures::self_signed(&certs, "ecdsa", KeyKind::EcdsaP256, san).expect("openssl");
    let (ca, leaf) = fixtures::ca_and_leaf(&certs, "leaf", KeyKind::Rsa2048, san).expect("openssl");
    for (zone, served, root) in [
        ("zone-rsa-self-signed", &rsa, &rsa.cert),
        ("zone-ecdsa-self-signed", &ecdsa, &ecdsa.cert),
        ("zone-ca-and-leaf", &leaf, &ca.cert),
    ] {
        let dirs = host_dirs(&root_dir.path().join(zone), &["global", "zone"]);
        let kds_port = free_port();
        let global = global_with(&dirs[0], kds_port, served);
        let _zone = zone_trusting(&dirs[1], zone, kds_port, "memory", root);
        wait_online(&global, zone);
    }
}

/// A zone given an unrelated certificate as root is refused, says which setting to fix, and
/// never appears on global; a zone with the right root, started next to it, does.
#[test]
fn zone_with_an_unrelated_root_stays_out() {
    let root_dir = tempfile::tempdir().expect("tempdir");
    let dirs = host_dirs(root_dir.path(), &["global", "good", "bad", "certs"]);
    let kds = fixtures::self_signed(&dirs[3], "global", KeyKind::EcdsaP256, "IP:127.0.0.1")
        .expect("openssl");
    let unrelated = fixtures::self_signed(&dirs[3], "other", KeyKind::EcdsaP256, "IP:127.0.0.1")
        .expect("openssl");
    let kds_port = free_port();
    let global = global_with(&dirs[0], kds_port, &kds);
    let bad = zone_trusting(&dirs[2], "zone-bad", kds_port, "memory", &unrelated.cert);
    let _good = zone_trusting(&dirs[1], "zone-good", kds_port, "memory", &kds.cert);
    wait_online(&global, "zone-good");
    // The bad zone has tried at least once and was refused with the setting to fix.
    let refusal = wait_for("zone-bad's refusal", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&bad.log).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("invalid peer certificate"))
            .map(str::to_string)
    });
    assert!(
        refusal.contains("KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE"),
        "{refusal}"
    );
    let zones = global.kumactl_ok(&["get", "zones"]);
    assert!(
        zones.contains("zone-good") && !zones.contains("zone-bad"),
        "{zones}"
    );
    // The zone itself keeps serving its API from its own store.
    bad.kumactl_ok(&["get", "meshes"]);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// A zone CP serving xDS with an openssl self-signed certificate: kuma-dp given that
/// certificate as `--ca-cert-file` connects and gets ready; given another one, it does not.
#[test]
fn kuma_dp_pins_the_zone_cps_openssl_self_signed_certificate() {
    let root_dir = tempfile::tempdir().expect("tempdir");
    let dirs = host_dirs(root_dir.path(), &["cp", "certs"]);
    let served = fixtures::self_signed(&dirs[1], "zone-cp", KeyKind::Rsa2048, "IP:127.0.0.1")
        .expect("openssl");
    let unrelated = fixtures::self_signed(&dirs[1], "other", KeyKind::Rsa2048, "IP:127.0.0.1")
        .expect("openssl");
    let (cert, key) = (
        served.cert.display().to_string(),
        served.key.display().to_string(),
    );
    let cp = ControlPlane::start(
        &dirs[0],
        &[
            ("KUMA_DP_SERVER_TLS_CERT_FILE", cert.as_str()),
            ("KUMA_DP_SERVER_TLS_KEY_FILE", key.as_str()),
        ],
    );
    cp.configure_kumactl();
    let start = |name: &str, ca: &Path| {
        let yaml = format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {}\n      servicePort: {}\n      tags:\n        kuma.io/service: {name}\n",
            free_port(),
            free_port()
        );
        let file = write(&dirs[0], &format!("{name}.yaml"), &yaml);
        let token = ok(&cp.kumactl(&["generate", "dataplane-token", "--name", name]));
        let token = write(&dirs[0], &format!("{name}.token"), token.trim());
        DataPlane::start_with_ca(&cp, &file, Some(&token), ca, &[])
    };
    let mut pinned = start("pinned", &served.cert);
    pinned.wait_ready();
    wait_for("the Dataplane online", Duration::from_secs(30), || {
        cp.kumactl_ok(&["inspect", "dataplanes"])
            .lines()
            .any(|l| l.contains("pinned") && l.contains("Online"))
            .then_some(())
    });

    let refused = start("refused", &unrelated.cert);
    let line = wait_for("kuma-dp's refusal", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&refused.log).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("invalid peer certificate"))
            .map(str::to_string)
    });
    assert!(line.contains("--ca-cert-file"), "{line}");
    wait_for("kuma-dp's admin", Duration::from_secs(10), || {
        refused.admin("/stats")
    });
    assert!(refused.admin("/ready").is_none(), "ready without a CP");
}
