//! What the proxy runs right now: the decoded configuration plus the TLS configurations built
//! from its secrets. Replaced as a whole (behind `watch`) on every accepted update, so each
//! connection works with one consistent version while new connections use the newest.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshzone_xds::decode::{
    EndpointPlan, ListenerPlan, ProxyConfig, SanMatch, SecretPlan, TlsPlan,
};
use rustls::{ClientConfig, ServerConfig};

use crate::tls;

/// Client side TLS of one cluster.
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    pub sni: Option<String>,
}

/// Server side TLS of one listener.
pub struct DownstreamTls {
    pub config: Arc<ServerConfig>,
    pub peer: Vec<SanMatch>,
}

pub struct Runtime {
    pub config: ProxyConfig,
    pub downstream: BTreeMap<String, DownstreamTls>,
    pub upstream: BTreeMap<String, UpstreamTls>,
    /// Pooled HTTP clients of the clusters that HTTP listeners send to.
    pub http_clients: BTreeMap<String, crate::http::HttpClient>,
    /// Round-robin position of each cluster.
    cursors: BTreeMap<String, AtomicUsize>,
    /// Endpoints that recently failed; shared by every version of the runtime.
    pub health: Arc<Health>,
    /// `.mesh` name → VIP, for the local resolver of a transparent proxy.
    pub dns_names: BTreeMap<String, std::net::Ipv4Addr>,
}

/// Passive health (outlier detection): an endpoint that refused or timed out a connection is
/// skipped for a while, so traffic moves to the others, or to the next priority (another zone),
/// without waiting for the control plane.
#[derive(Default)]
pub struct Health {
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    /// Entries in `ejected`: lets the common case (nothing ejected) skip the lock.
    count: AtomicUsize,
}

/// How long a failed endpoint is skipped.
const EJECTION: Duration = Duration::from_secs(10);

impl Health {
    pub fn eject(&self, endpoint: SocketAddr) {
        let mut e = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        e.insert(endpoint, Instant::now() + EJECTION);
        self.count.store(e.len(), Ordering::Relaxed);
    }

    /// A connection to the endpoint worked again.
    pub fn restore(&self, endpoint: SocketAddr) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut e = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        e.remove(&endpoint);
        self.count.store(e.len(), Ordering::Relaxed);
    }

    fn is_ejected(&self, endpoint: SocketAddr, now: Instant) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let e = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        e.get(&endpoint).is_some_and(|until| *until > now)
    }
}

/// A problem that makes one listener or cluster unusable; the rest still runs.
#[derive(Debug, Clone)]
pub struct RuntimeProblem(pub String);

fn material(
    config: &ProxyConfig,
    plan: &TlsPlan,
) -> Result<(tls::Identity, Arc<rustls::RootCertStore>), String> {
    let identity = match config.secrets.get(&plan.identity_secret) {
        Some(SecretPlan::Identity { cert_pem, key_pem }) => {
            tls::identity(&plan.identity_secret, cert_pem, key_pem).map_err(|e| e.to_string())?
        }
        _ => return Err(format!("secret {} has not arrived", plan.identity_secret)),
    };
    let roots = match config.secrets.get(&plan.ca_secret) {
        Some(SecretPlan::TrustedCa { ca_pem }) => {
            tls::roots(&plan.ca_secret, ca_pem).map_err(|e| e.to_string())?
        }
        _ => return Err(format!("secret {} has not arrived", plan.ca_secret)),
    };
    Ok((identity, roots))
}

impl Runtime {
    pub fn empty() -> Self {
        Self::build(ProxyConfig::default(), Arc::default()).0
    }

    pub fn build(config: ProxyConfig, health: Arc<Health>) -> (Self, Vec<RuntimeProblem>) {
        let mut problems = Vec::new();
        let mut downstream = BTreeMap::new();
        for l in config.listeners.values() {
            let Some(plan) = &l.tls else { continue };
            match material(&config, plan)
                .and_then(|(id, roots)| tls::server_config(&id, roots).map_err(|e| e.to_string()))
            {
                Ok(cfg) => {
                    downstream.insert(
                        l.name.clone(),
                        DownstreamTls {
                            config: cfg,
                            peer: plan.peer.clone(),
                        },
                    );
                }
                Err(e) => problems.push(RuntimeProblem(format!("listener {}: {e}", l.name))),
            }
        }
        let mut upstream = BTreeMap::new();
        for c in config.clusters.values() {
            let Some(plan) = &c.tls else { continue };
            match material(&config, plan).and_then(|(id, roots)| {
                tls::client_config(&id, roots, plan.peer.clone()).map_err(|e| e.to_string())
            }) {
                Ok(cfg) => {
                    upstream.insert(
                        c.name.clone(),
                        UpstreamTls {
                            config: cfg,
                            sni: plan.sni.clone(),
                        },
                    );
                }
                Err(e) => problems.push(RuntimeProblem(format!("cluster {}: {e}", c.name))),
            }
        }
        let cursors = config
            .clusters
            .keys()
            .map(|k| (k.clone(), AtomicUsize::new(0)))
            .collect();
        let http_clients = config
            .listeners
            .values()
            .filter(|l| l.http)
            .filter_map(|l| config.clusters.get(&l.cluster))
            .map(|c| {
                let tls = upstream
                    .get(&c.name)
                    .map(|u: &UpstreamTls| (u.config.clone(), u.sni.clone()));
                (c.name.clone(), crate::http::client(tls, c.http2))
            })
            .collect();
        let dns_names = crate::dns::table(&config);
        (
            Runtime {
                config,
                downstream,
                upstream,
                http_clients,
                cursors,
                health,
                dns_names,
            },
            problems,
        )
    }

    /// Whether a cluster's endpoints speak HTTP/2.
    pub fn http2(&self, cluster: &str) -> bool {
        self.config.clusters.get(cluster).is_some_and(|c| c.http2)
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerPlan> {
        self.config.listeners.get(name)
    }

    /// Endpoints of a cluster in the order to try them. The first comes from weighted round
    /// robin over the lowest priority that has a healthy endpoint; the other healthy endpoints
    /// follow as fallbacks (same priority first), and ejected ones come last.
    pub fn pick(&self, cluster: &str) -> Vec<SocketAddr> {
        let endpoints = self.config.cluster_endpoints(cluster);
        if endpoints.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let healthy: Vec<&EndpointPlan> = endpoints
            .iter()
            .filter(|e| !self.health.is_ejected(e.address, now))
            .collect();
        // Panic mode: when everything is ejected, try everything rather than nothing.
        let pool: Vec<&EndpointPlan> = if healthy.is_empty() {
            endpoints.iter().collect()
        } else {
            healthy
        };
        let top = pool.iter().map(|e| e.priority).min().unwrap_or(0);
        let tier: Vec<&EndpointPlan> = pool.iter().copied().filter(|e| e.priority == top).collect();
        let total: usize = tier.iter().map(|e| e.weight.max(1) as usize).sum();
        let n = self
            .cursors
            .get(cluster)
            .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed))
            % total.max(1);
        let first = tier[weighted_index(&tier, n)].address;
        let mut order: Vec<SocketAddr> = Vec::with_capacity(endpoints.len());
        order.push(first);
        let mut rest: Vec<&EndpointPlan> =
            endpoints.iter().filter(|e| e.address != first).collect();
        rest.sort_by_key(|e| (self.health.is_ejected(e.address, now), e.priority));
        for e in rest {
            if !order.contains(&e.address) {
                order.push(e.address);
            }
        }
        order
    }
}

fn weighted_index(endpoints: &[&EndpointPlan], mut n: usize) -> usize {
    for (i, e) in endpoints.iter().enumerate() {
        let w = e.weight.max(1) as usize;
        if n < w {
            return i;
        }
        n -= w;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshzone_xds::decode::ClusterPlan;

    /// A plan with one EDS cluster `web` and its endpoints.
    fn web_cluster(endpoints: Vec<EndpointPlan>) -> ProxyConfig {
        let mut config = ProxyConfig::default();
        config.clusters.insert(
            "web".into(),
            ClusterPlan {
                name: "web".into(),
                static_endpoints: None,
                tls: None,
                http2: false,
                original_dst: false,
            },
        );
        config.endpoints.insert("web".into(), endpoints);
        config
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let endpoint = |address, weight| EndpointPlan {
            address,
            weight,
            zone: None,
            priority: 0,
        };
        let config = web_cluster(vec![endpoint(a, 1), endpoint(b, 2)]);
        let (rt, problems) = Runtime::build(config, Arc::default());
        assert!(problems.is_empty());
        let firsts: Vec<SocketAddr> = (0..6).map(|_| rt.pick("web")[0]).collect();
        assert_eq!(firsts.iter().filter(|x| **x == a).count(), 2);
        assert_eq!(firsts.iter().filter(|x| **x == b).count(), 4);
        assert_eq!(rt.pick("web").len(), 2, "the other endpoint is a fallback");
        assert!(rt.pick("none").is_empty());
    }

    #[test]
    fn lower_priority_wins_until_its_endpoints_are_ejected() {
        let local: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let remote: SocketAddr = "10.0.1.100:10000".parse().unwrap();
        let endpoint = |address, priority| EndpointPlan {
            address,
            weight: 5,
            zone: None,
            priority,
        };
        let config = web_cluster(vec![endpoint(remote, 1), endpoint(local, 0)]);
        let (rt, _) = Runtime::build(config, Arc::default());
        for _ in 0..10 {
            assert_eq!(rt.pick("web"), vec![local, remote]);
        }
        rt.health.eject(local);
        for _ in 0..10 {
            assert_eq!(
                rt.pick("web"),
                vec![remote, local],
                "fails over to priority 1"
            );
        }
        rt.health.eject(remote);
        assert_eq!(rt.pick("web").len(), 2, "all ejected: try all");
        rt.health.restore(local);
        assert_eq!(rt.pick("web")[0], local);
    }
}
