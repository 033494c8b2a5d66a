//! The web GUI in real Chromium: a global and two zone control planes on loopback, a zone
//! ingress per zone, an mTLS mesh with a service that has an instance in each zone and a client
//! in each zone. `gui/gui.test.mjs` (node's test runner, playwright-core, Debian's headless
//! `/usr/bin/chromium`) opens the pages and asserts what they show; it fails this test when a
//! page is wrong. Screenshots land in `<target>/tmp/gui-artifacts/`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, apply_ok, free_port, global_and_two_zones, http_get,
    start_loopback_sidecar, wait_for, wait_for_mtls_mesh, write_file, zone_token_file,
};

const SERVICE: &str = "echo";
const MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";

fn ingress(
    global: &ControlPlane,
    zone: &ControlPlane,
    dir: &Path,
    name: &str,
    z: &str,
) -> DataPlane {
    let port = free_port();
    let file = write_file(
        dir,
        &format!("{name}.yaml"),
        &format!(
            "type: ZoneIngress\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  port: {port}\n  advertisedAddress: localhost\n  advertisedPort: {port}\n"
        ),
    );
    let mut dp = DataPlane::start_zone_proxy(
        zone,
        "ingress",
        &file,
        &zone_token_file(global, dir, z, "ingress"),
    );
    dp.wait_ready();
    dp
}

fn echo_sidecar(cp: &ControlPlane, dir: &Path, name: &str, echo: &EchoServer) -> DataPlane {
    start_loopback_sidecar(
        cp,
        dir,
        name,
        &format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: {SERVICE}\n",
            free_port(),
            echo.port
        ),
    )
}

/// A client sidecar, with the port of its outbound to [`SERVICE`].
fn client_sidecar(cp: &ControlPlane, dir: &Path, name: &str) -> (DataPlane, u16) {
    let outbound = free_port();
    let dp = start_loopback_sidecar(
        cp,
        dir,
        name,
        &format!(
            "  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: client\n  outbound:\n  - port: {outbound}\n    tags:\n      kuma.io/service: {SERVICE}\n",
            free_port(),
            free_port(),
        ),
    );
    (dp, outbound)
}

#[test]
fn gui_pages_in_chromium() {
    let gui_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("gui");
    assert!(
        gui_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in {} (.ci/run does)",
        gui_dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: apt-get install chromium (.ci/run does)"
    );
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path();
    let (global, zone1, zone2) = global_and_two_zones(dir);
    apply_ok(&global, dir, "mesh.yaml", MESH);
    wait_for_mtls_mesh(&[&zone1, &zone2]);
    let _ingress1 = ingress(&global, &zone1, dir, "ingress-1", "zone-1");
    let _ingress2 = ingress(&global, &zone2, dir, "ingress-2", "zone-2");
    let (e1, e2) = (EchoServer::start("zone-1"), EchoServer::start("zone-2"));
    let echo1 = echo_sidecar(&zone1, dir, "echo-1", &e1);
    let _echo2 = echo_sidecar(&zone2, dir, "echo-2", &e2);
    let (_client1, outbound1) = client_sidecar(&zone1, dir, "client-1");
    let _client2 = client_sidecar(&zone2, dir, "client-2");
    // Traffic through client-1 until echo-1 has served some (at most 100 requests), so that the
    // proxy page's traffic table has an inbound row to show.
    let mut sent = 0;
    wait_for("echo-1 served traffic", Duration::from_secs(30), || {
        if sent < 100 {
            sent += 1;
            let _ = http_get(outbound1);
        }
        (echo1.stat_sum("listener.", ".downstream_cx_total") > 0).then_some(())
    });

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gui-artifacts");
    let out = Command::new("node")
        .args(["--test", "--test-reporter=spec", "gui.test.mjs"])
        .current_dir(&gui_dir)
        .env("GLOBAL_URL", global.api_url())
        .env("ZONE1_URL", zone1.api_url())
        .env("SERVICE", SERVICE)
        .env("GUI_ARTIFACTS", &artifacts)
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}\nscreenshots: {}", artifacts.display());
    assert!(out.status.success(), "the GUI test failed:\n{report}");
}
