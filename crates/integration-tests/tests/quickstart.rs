//! The README's main command, `scripts/quickstart.sh`, run as a user runs it (on this build's
//! binaries): it must bring up global and two zones with an ingress each, carry cross-zone
//! requests, print zones and services, wait, and clean up on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meshzone_integration_tests::binary;

#[test]
fn quickstart_brings_up_two_zones_with_cross_zone_traffic_and_cleans_up() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/quickstart.sh");
    let bin_dir = binary("kuma-cp").parent().expect("bin dir").to_path_buf();
    let mut child = Command::new("bash")
        .arg(&script)
        .env("MESHZONE_QUICKSTART_BIN_DIR", &bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run quickstart.sh");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut output = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !output.contains("Press Ctrl-C") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the quickstart did not come up:\n{output}");
            }
        }
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");

    assert_eq!(
        output.matches("hello from echo-server in zone-1").count(),
        3,
        "three cross-zone answers:\n{output}"
    );
    let online = output
        .lines()
        .filter(|l| (l.starts_with("zone-1 ") || l.starts_with("zone-2 ")) && l.contains("Online"))
        .count();
    assert!(
        online >= 4,
        "both zones Online in get zones and inspect zones:\n{output}"
    );
    assert!(
        output
            .lines()
            .any(|l| l.starts_with("echo-server_echo-example_svc_1010") && l.contains("Online")),
        "inspect services shows the echo service:\n{output}"
    );
    assert!(
        output
            .lines()
            .any(|l| l.starts_with("zone-1.ingress-01") && l.contains(" Online ")),
        "inspect zoneingresses shows zone-1's ingress:\n{output}"
    );
    assert!(status.success(), "Ctrl-C ends it cleanly: {status}");
    // Everything it started is gone: the global API port is free again.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 5681)).is_err(),
        "global is still running after Ctrl-C"
    );
}
