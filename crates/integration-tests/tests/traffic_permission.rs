//! MeshTrafficPermission on a standalone zone with real processes on loopback: kuma-cp, kuma-dp
//! client sidecars, echo apps, and a server proxy that is kuma-dp or Envoy 1.40 (configured
//! only by our control plane). The mesh's `allow-all-default` lets everyone in; permissions for
//! `payments` (TCP) and `ledger` (HTTP) that allow only `orders` refuse `shop`'s new TCP
//! connections before the app sees them, answer its HTTP requests with Envoy's 403, count like
//! Envoy, and leave `orders` untouched; deleting them lets `shop` back in. kuma-dp also closes
//! `shop`'s live TCP connection; Envoy keeps it (envoy#14504).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use meshzone_integration_tests::{
    ControlPlane, DataPlane, EchoServer, Envoy, apply_ok, envoy_binary, free_port, start_sidecar,
    stat_value, wait_for,
};
use serde_json::json;

const MESH: &str = "type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: builtin
";

/// Only orders may call `SERVICE`. It targets the service, so it outranks the mesh-wide
/// `allow-all-default` (a top-level MeshService is more specific than Mesh).
const ONLY_ORDERS: &str = "type: MeshTrafficPermission
name: only-orders-SERVICE
mesh: default
spec:
  targetRef: {kind: MeshService, name: SERVICE}
  from:
    - targetRef: {kind: Mesh}
      default: {action: Deny}
    - targetRef: {kind: MeshSubset, tags: {kuma.io/service: orders}}
      default: {action: Allow}
";

/// The server: one inbound for payments (TCP) and one for ledger (HTTP).
fn server(name: &str, payments: (u16, u16), ledger: (u16, u16)) -> serde_json::Value {
    let inbound = |(port, app): (u16, u16), service: &str, protocol: &str| {
        json!({"port": port, "servicePort": app,
               "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol}})
    };
    json!({
        "type": "Dataplane", "mesh": "default", "name": name,
        "networking": {"address": "127.0.0.1", "inbound": [
            inbound(payments, "payments", "tcp"),
            inbound(ledger, "ledger", "http")
        ]}
    })
}

/// A client sidecar with outbounds to payments (TCP) and ledger (HTTP).
fn client(name: &str, service: &str, inbound: u16, payments: u16, ledger: u16) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n    - port: {inbound}\n      servicePort: 1\n      tags:\n        kuma.io/service: {service}\n  outbound:\n    - port: {payments}\n      tags:\n        kuma.io/service: payments\n    - port: {ledger}\n      tags:\n        kuma.io/service: ledger\n"
    )
}

/// One keep-alive HTTP/1.1 connection, so a test can tell a closed connection from a new one.
struct KeepAlive {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(port: u16) -> Result<KeepAlive, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        Ok(KeepAlive { writer: s, reader })
    }

    /// One request on this connection: (status, body), or why there is none.
    fn get(&mut self) -> Result<(u16, String), String> {
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut status = String::new();
        match self.reader.read_line(&mut status) {
            Ok(0) => return Err("closed".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let code = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {status:?}"))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .map_err(|e| format!("headers: {e}"))?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().map_err(|_| format!("length {v:?}"))?;
            }
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A request on a new connection.
fn get_once(port: u16) -> Result<(u16, String), String> {
    KeepAlive::open(port)?.get()
}

fn start_cp(dir: &Path) -> ControlPlane {
    let cp = ControlPlane::start(dir, &[]);
    cp.configure_kumactl();
    apply_ok(&cp, dir, "mesh.yaml", MESH);
    cp
}

/// The proxy in front of payments and ledger.
enum Server {
    KumaDp(DataPlane),
    Envoy(Envoy),
}

impl Server {
    fn stat(&self, name: &str) -> u64 {
        let stats = match self {
            Server::KumaDp(dp) => dp.admin("/stats"),
            Server::Envoy(e) => e.admin("/stats"),
        };
        stat_value(&stats.unwrap_or_default(), name)
    }
}

/// The whole scenario, with kuma-dp or Envoy as the server proxy.
fn permissions_are_enforced(envoy: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let cp = start_cp(dir);
    let payments_app = EchoServer::start("payments");
    let ledger_app = EchoServer::start("ledger");
    let (pay_in, ledger_in) = (free_port(), free_port());
    let dataplane = server(
        "server-1",
        (pay_in, payments_app.port),
        (ledger_in, ledger_app.port),
    );
    let server = if envoy {
        let token = cp.kumactl_ok(&["generate", "dataplane-token", "--name", "server-1"]);
        let mut e = Envoy::start(&cp, dir, "server-1", &dataplane, token.trim());
        e.wait_ready();
        Server::Envoy(e)
    } else {
        Server::KumaDp(start_sidecar(&cp, dir, "server-1", &dataplane.to_string()))
    };
    let (orders_pay, orders_ledger, shop_pay, shop_ledger) =
        (free_port(), free_port(), free_port(), free_port());
    let _orders: DataPlane = start_sidecar(
        &cp,
        dir,
        "orders-1",
        &client("orders-1", "orders", free_port(), orders_pay, orders_ledger),
    );
    let _shop: DataPlane = start_sidecar(
        &cp,
        dir,
        "shop-1",
        &client("shop-1", "shop", free_port(), shop_pay, shop_ledger),
    );

    // allow-all-default: both clients reach both services; each keeps a live TCP connection.
    let live = |port: u16, who: &str| {
        wait_for(who, Duration::from_secs(30), || {
            let mut c = KeepAlive::open(port).ok()?;
            (c.get().ok()? == (200, "payments\n".into())).then_some(c)
        })
    };
    let mut orders_live = live(orders_pay, "orders reaches payments");
    let mut shop_live = live(shop_pay, "shop reaches payments");
    for port in [orders_ledger, shop_ledger] {
        wait_for("ledger answers", Duration::from_secs(30), || {
            (get_once(port).ok()? == (200, "ledger\n".into())).then_some(())
        });
    }

    let mtp = [
        ONLY_ORDERS.replace("SERVICE", "payments"),
        ONLY_ORDERS.replace("SERVICE", "ledger"),
    ]
    .join("---\n");
    apply_ok(&cp, dir, "only-orders.yaml", &mtp);
    // shop's new TCP connections are closed before payments sees them. Refused by the
    // permission, counted as such: a connection cut while the server's listener is rebuilt
    // fails too, before the deny is in force.
    let tcp = format!("inbound_127_0_0_1_{pay_in}.rbac.");
    wait_for("shop refused by payments", Duration::from_secs(30), || {
        (get_once(shop_pay).is_err() && server.stat(&format!("{tcp}denied")) >= 1).then_some(())
    });
    let served = payments_app.served();
    assert!(
        get_once(shop_pay).is_err(),
        "shop gets through after the deny"
    );
    assert_eq!(payments_app.served(), served, "payments saw shop's request");
    // orders' live connection goes on, and so do its new ones.
    assert_eq!(orders_live.get(), Ok((200, "payments\n".into())));
    assert_eq!(get_once(orders_pay), Ok((200, "payments\n".into())));
    // HTTP: Envoy's 403 for shop, the application's answer for orders.
    wait_for(
        "shop's ledger requests refused",
        Duration::from_secs(30),
        || (get_once(shop_ledger).ok()? == (403, "RBAC: access denied".into())).then_some(()),
    );
    assert_eq!(get_once(orders_ledger), Ok((200, "ledger\n".into())));
    // Counted under Envoy's names, by both proxies.
    let http = format!("http.inbound:127.0.0.1:{ledger_in}.rbac.");
    for counter in [
        format!("{tcp}allowed"),
        format!("{tcp}denied"),
        format!("{http}allowed"),
        format!("{http}denied"),
    ] {
        assert!(server.stat(&counter) >= 1, "{counter} not counted");
    }

    match &server {
        Server::KumaDp(_) => {
            // Better than Envoy: shop's live connection was closed by the update.
            assert!(
                shop_live.get().is_err(),
                "kuma-dp kept shop's live connection"
            );
            let closed = server.stat(&format!(
                "listener.inbound:127.0.0.1:{pay_in}.rbac.closed_on_update"
            ));
            assert!(closed >= 1, "counted: {closed}");
        }
        Server::Envoy(e) => {
            // envoy#14504: network RBAC decided once, on the connection's first bytes.
            assert_eq!(shop_live.get(), Ok((200, "payments\n".into())));
            let (rejected, accepted) = e.rejected_and_accepted();
            assert!(rejected.is_empty(), "Envoy rejected: {rejected:?}");
            assert!(accepted > 0);
        }
    }

    // Deleting the permissions lets shop back in.
    for service in ["payments", "ledger"] {
        let name = format!("only-orders-{service}");
        let o = cp.kumactl(&["delete", "meshtrafficpermission", &name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    wait_for("shop back on payments", Duration::from_secs(30), || {
        (get_once(shop_pay).ok()? == (200, "payments\n".into())).then_some(())
    });
    wait_for("shop back on ledger", Duration::from_secs(30), || {
        (get_once(shop_ledger).ok()? == (200, "ledger\n".into())).then_some(())
    });
}

#[test]
fn kuma_dp_enforces_permissions_and_closes_denied_live_connections() {
    permissions_are_enforced(false);
}

#[test]
fn envoy_acks_the_permissions_and_enforces_them_like_kuma_dp() {
    envoy_binary();
    permissions_are_enforced(true);
}
