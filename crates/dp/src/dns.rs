//! kuma-dp's local resolver for transparent proxying: `kumactl install transparent-proxy
//! --redirect-dns` sends the host's DNS queries (UDP 53) here. `.mesh` names are answered from
//! the proxy's own configuration (each `VIP:80` listener is a service's virtual IP), so names keep
//! resolving while the control plane is away; other names are relayed to the host's resolvers
//! (`/etc/resolv.conf`), which kuma-dp's own traffic reaches without redirection.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;
use meshzone_dns::answer::{answer, in_domain};
use meshzone_dns::vips::names;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

use meshzone_xds::decode::ProxyConfig;

use crate::runtime::Runtime;
use crate::stats::Stats;

/// The DNS domain of the mesh's virtual IPs.
pub const DOMAIN: &str = "mesh";

/// How long a relayed query may wait for the upstream resolver.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Name → VIP from a configuration's unbound listeners: a listener naming its DNS names (a
/// VirtualOutbound's hostname) answers those, a `VIP:80` listener its service's names (its
/// cluster is the service). Built once per configuration, with the runtime.
pub fn table(config: &ProxyConfig) -> BTreeMap<String, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for l in config.listeners.values().filter(|l| !l.bind) {
        if let IpAddr::V4(ip) = l.address.ip() {
            let names = if l.dns_names.is_empty() {
                names(&l.cluster, DOMAIN)
            } else {
                l.dns_names.clone()
            };
            for name in names {
                out.insert(name, ip);
            }
        }
    }
    out
}

/// The `nameserver` lines of a resolv.conf, on port 53.
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Serves until the task is dropped.
pub async fn serve(
    socket: UdpSocket,
    runtime: watch::Receiver<Arc<Runtime>>,
    upstreams: Vec<SocketAddr>,
    stats: Arc<Stats>,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "DNS receive failed");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let Ok(query) = Message::from_vec(&packet) else {
            debug!(%peer, "ignoring a malformed DNS message");
            continue;
        };
        // Answered here: `.mesh` names, and the other names of the configuration (hostnames of
        // VirtualOutbounds); the rest is relayed.
        let reply = {
            let rt = runtime.borrow();
            let names = &rt.dns_names;
            let local = query.queries.iter().all(|q| {
                let name = q.name().to_ascii();
                in_domain(&name, DOMAIN)
                    || names.contains_key(name.trim_end_matches('.').to_ascii_lowercase().as_str())
            });
            local.then(|| answer(&query, names, DOMAIN).to_vec())
        };
        if let Some(reply) = reply {
            stats.inc("dns.mesh_queries");
            if let Ok(bytes) = reply {
                let _ = socket.send_to(&bytes, peer).await;
            }
            continue;
        }
        stats.inc("dns.relayed_queries");
        let (socket, upstreams, stats) = (socket.clone(), upstreams.clone(), stats.clone());
        tokio::spawn(async move {
            match relay(&packet, &upstreams).await {
                Some(reply) => {
                    let _ = socket.send_to(&reply, peer).await;
                }
                None => stats.inc("dns.relay_failures"),
            }
        });
    }
}

/// Sends the query to each upstream in turn until one answers.
pub async fn relay(packet: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(socket) = UdpSocket::bind(bind).await else {
            continue;
        };
        // Connected: only the upstream's answer is accepted, and a closed port fails fast.
        if socket.connect(upstream).await.is_err() || socket.send(packet).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn other_names_are_relayed_to_the_first_upstream_that_answers() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let address = upstream.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            if let Ok((n, peer)) = upstream.recv_from(&mut buf).await {
                let mut reply = buf[..n].to_vec();
                reply.extend_from_slice(b"+answer");
                let _ = upstream.send_to(&reply, peer).await;
            }
        });
        // A silent upstream first (nothing listens there), then the one that answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let silent_address = silent.local_addr().expect("addr");
        drop(silent);
        let reply = relay(b"query", &[silent_address, address]).await;
        assert_eq!(reply.as_deref(), Some(&b"query+answer"[..]));
    }

    #[test]
    fn resolv_conf_nameservers() {
        let conf = "# generated\nsearch example.org\nnameserver 198.18.2.1\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            upstreams(conf),
            vec![
                "198.18.2.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
