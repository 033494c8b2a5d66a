//! What the proxy runs right now: the decoded configuration plus, per cluster and per listener,
//! a runtime object built from its plan. The `Runtime` is replaced as a whole (behind `watch`)
//! on every accepted update, so each connection works with one consistent version while new
//! connections use the newest; the per-cluster objects (endpoints, round-robin cursor, health,
//! TLS, HTTP pool) and per-listener objects (route table, split state) are carried over from the
//! previous version unless their own plan changed, so an update of one cluster or of another
//! xDS type keeps every other cluster's cursor, health and pooled connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Instant;

use meshzone_xds::decode::balancing::BalancingPlan;
use meshzone_xds::decode::{
    ClusterPlan, EndpointPlan, ListenerPlan, ProxyConfig, SanMatch, SecretPlan, TlsPlan,
};
use rustls::{ClientConfig, ServerConfig};

use crate::balancer::Balancer;
use crate::routes::{RouteTable, Split};
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

/// Everything a cluster's runtime object is built from; the object is rebuilt when it changes.
#[derive(PartialEq)]
struct ClusterKey {
    plan: ClusterPlan,
    endpoints: Vec<EndpointPlan>,
    /// Balancer, overprovisioning and localities (`decode::balancing`).
    balancing: BalancingPlan,
    /// The secrets its TLS uses, as received.
    secrets: Option<(Option<SecretPlan>, Option<SecretPlan>)>,
}

/// One cluster as the data path uses it, kept across updates while its plan is unchanged.
/// Its health-check stats (`cluster.<name>.health_check.*`) are [`ClusterRuntime::health_check_stats`].
pub struct ClusterRuntime {
    key: ClusterKey,
    /// Priority, locality and endpoint choice (`balancer.rs`), with in-flight counts.
    pub balancer: Balancer,
    /// Endpoints that recently failed; carried over when the cluster is rebuilt.
    pub health: Arc<Health>,
    /// `Err`: the cluster has TLS but its material is unusable, so nothing is sent.
    pub tls: Result<Option<UpstreamTls>, String>,
    /// Pooled HTTP client (connections are made on first use).
    pub http: crate::http::HttpClient,
    /// The same client without a pool: a request through it opens a new connection (to reach
    /// another instance behind a zone proxy).
    pub http_unpooled: crate::http::HttpClient,
    /// Connection limits (circuit breakers) in force.
    pub limits: crate::limits::Limits,
    /// The active health checker of the endpoints, when the plan has a check; stopped when
    /// this object is dropped (its state lives on in `health`).
    _checker: Option<crate::health_check::Checker>,
    /// The endpoints that are the zone's egress (usually none), read once per build.
    egresses: Vec<SocketAddr>,
    /// Its stats handles, resolved on first use by this build (never per request); its HTTP
    /// connector reads them too.
    stats: crate::stats::ClusterStatsSlot,
}

impl ClusterRuntime {
    pub fn plan(&self) -> &ClusterPlan {
        &self.key.plan
    }

    pub fn endpoints(&self) -> &[EndpointPlan] {
        &self.key.endpoints
    }

    /// The cluster's Envoy stats handles (`cluster.<name>.*`).
    pub fn stats(&self, all: &crate::stats::Stats) -> &crate::stats::ClusterStats {
        self.stats.get_or_init(|| all.cluster(&self.key.plan.name))
    }

    /// Envoy's `cluster.<name>.health_check.{attempt,success,failure,network_failure,healthy}`
    /// of a cluster with an active check (none without).
    pub fn health_check_stats(&self) -> Vec<(String, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.key.plan.health_check.is_none() {
            return Vec::new();
        }
        let name = &self.key.plan.name;
        let c = &self.health.active.counters;
        let addresses: Vec<SocketAddr> = self.endpoints().iter().map(|e| e.address).collect();
        let healthy = self.health.active.healthy_count(&addresses) as u64;
        [
            ("attempt", c.attempt.load(Relaxed)),
            ("success", c.success.load(Relaxed)),
            ("failure", c.failure.load(Relaxed)),
            ("network_failure", c.network_failure.load(Relaxed)),
            ("healthy", healthy),
        ]
        .into_iter()
        .map(|(stat, v)| (format!("cluster.{name}.health_check.{stat}"), v))
        .collect()
    }
}

/// One listener's routing state: its HTTP route table or TCP split.
pub struct ListenerRuntime {
    plan: ListenerPlan,
    pub routes: Option<RouteTable>,
    /// A TCP listener's weighted split (none: everything goes to `plan.cluster`).
    pub split: Option<Split>,
    /// MeshRateLimit's token buckets (requests, connections).
    pub limits: crate::ratelimit::Limits,
    /// Its stats handles, resolved on first use by this build (never per connection).
    stats: std::sync::OnceLock<(crate::stats::ListenerStats, crate::stats::HttpStats)>,
    /// Its access loggers (MeshAccessLog), started on first use by this build.
    access_logs: std::sync::OnceLock<Vec<crate::access_log::Logger>>,
}

impl ListenerRuntime {
    pub fn plan(&self) -> &ListenerPlan {
        &self.plan
    }

    /// The listener's Envoy stats handles (`listener.<name>.*`, `http.<name>.*`).
    pub fn stats(
        &self,
        all: &crate::stats::Stats,
    ) -> &(crate::stats::ListenerStats, crate::stats::HttpStats) {
        self.stats
            .get_or_init(|| (all.listener(&self.plan.name), all.http(&self.plan.name)))
    }

    /// The listener's access loggers; empty without a MeshAccessLog.
    pub fn access_logs(&self, all: &Arc<crate::stats::Stats>) -> &[crate::access_log::Logger] {
        if self.plan.access_logs.is_empty() {
            return &[];
        }
        self.access_logs
            .get_or_init(|| crate::access_log::loggers(&self.plan.access_logs, all))
    }

    /// The cluster of a new TCP connection.
    pub fn tcp_cluster(&self) -> &str {
        match &self.split {
            Some(s) => s.pick(),
            None => &self.plan.cluster,
        }
    }
}

pub struct Runtime {
    pub config: ProxyConfig,
    pub downstream: BTreeMap<String, DownstreamTls>,
    pub clusters: BTreeMap<String, Arc<ClusterRuntime>>,
    pub listeners: BTreeMap<String, Arc<ListenerRuntime>>,
    /// `.mesh` name → VIP, for the local resolver of a transparent proxy.
    pub dns_names: BTreeMap<String, std::net::Ipv4Addr>,
    /// MeshTrace: the span exporter of each collector cluster the listeners trace to.
    pub tracers: BTreeMap<String, Arc<crate::trace::Exporter>>,
    /// The proxy's service (Zipkin's `localEndpoint.serviceName`, as Envoy's node cluster);
    /// carried from build to build.
    pub local_service: Arc<str>,
    /// The tracing counters, carried from build to build.
    pub trace_counters: Arc<crate::trace::TraceCounters>,
}

pub use crate::outlier::{Health, Outcome};

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

fn upstream_tls(config: &ProxyConfig, c: &ClusterPlan) -> Result<Option<UpstreamTls>, String> {
    if let Some(plan) = &c.origination {
        let cfg = tls::origination_config(&c.name, plan).map_err(|e| e.to_string())?;
        return Ok(Some(UpstreamTls {
            config: cfg,
            sni: plan.sni.clone(),
        }));
    }
    let Some(plan) = &c.tls else { return Ok(None) };
    let (id, roots) = material(config, plan)?;
    let cfg = tls::client_config(&id, roots, plan.peer.clone()).map_err(|e| e.to_string())?;
    Ok(Some(UpstreamTls {
        config: cfg,
        sni: plan.sni.clone(),
    }))
}

/// The span exporter of each collector cluster a listener traces to: the previous one when its
/// provider and cluster object are the same, else a new one (the old one's task stops with it).
/// A missing collector cluster, or one with TLS for OTLP, is a problem (requests still carry
/// the trace context; their spans are not recorded).
fn tracers(
    config: &ProxyConfig,
    clusters: &BTreeMap<String, Arc<ClusterRuntime>>,
    previous: &Runtime,
    problems: &mut Vec<RuntimeProblem>,
) -> BTreeMap<String, Arc<crate::trace::Exporter>> {
    use meshzone_xds::decode::tracing::ProviderPlan;
    let mut out = BTreeMap::new();
    for l in config.listeners.values() {
        let Some(plan) = &l.tracing else { continue };
        let name = plan.provider.cluster();
        if out.contains_key(name) {
            continue;
        }
        let Some(cluster) = clusters.get(name) else {
            problems.push(RuntimeProblem(format!(
                "listener {}: tracing collector cluster {name} is not configured",
                l.name
            )));
            continue;
        };
        if matches!(plan.provider, ProviderPlan::OpenTelemetry { .. })
            && cluster.tls.as_ref().is_ok_and(|t| t.is_some())
        {
            problems.push(RuntimeProblem(format!(
                "cluster {name}: kuma-dp exports OTLP over plaintext gRPC only"
            )));
            continue;
        }
        let key = crate::trace::ExporterKey {
            provider: plan.provider.clone(),
            service: previous.local_service.to_string(),
            cluster: cluster.clone(),
        };
        let exporter = match previous.tracers.get(name) {
            Some(old) if old.key == key => old.clone(),
            _ => Arc::new(crate::trace::Exporter::spawn(
                key,
                previous.trace_counters.clone(),
            )),
        };
        out.insert(name.to_string(), exporter);
    }
    out
}

/// Starts the active checks of a cluster whose plan has them (none while its TLS is unusable:
/// nothing is sent to it anyway).
fn checker(
    key: &ClusterKey,
    tls: &Result<Option<UpstreamTls>, String>,
    health: &Arc<Health>,
) -> Option<crate::health_check::Checker> {
    let plan = key.plan.health_check.clone()?;
    let tls = tls.as_ref().ok()?;
    let target = crate::health_check::Target {
        cluster: key.plan.name.clone(),
        plan,
        tls: tls.as_ref().map(|u| (u.config.clone(), u.sni.clone())),
    };
    let endpoints = key
        .endpoints
        .iter()
        .filter(|e| !e.no_active_health_check)
        .map(|e| e.address)
        .collect();
    crate::health_check::start(target, endpoints, health.clone())
}

impl ClusterRuntime {
    fn build(config: &ProxyConfig, key: ClusterKey, health: Arc<Health>) -> Self {
        let tls = upstream_tls(config, &key.plan);
        let stats = crate::stats::ClusterStatsSlot::default();
        let client = |pooled| {
            crate::http::client(
                tls.as_ref()
                    .ok()
                    .and_then(Option::as_ref)
                    .map(|u| (u.config.clone(), u.sni.clone())),
                key.plan.http2,
                &key.plan.timeouts,
                stats.clone(),
                pooled,
            )
        };
        let (http, http_unpooled) = (client(true), client(false));
        let limits = crate::limits::Limits::new(key.plan.limits, key.plan.http2);
        let checker = checker(&key, &tls, &health);
        let egresses = key
            .endpoints
            .iter()
            .filter(|e| e.via_zone_egress)
            .map(|e| e.address)
            .collect();
        ClusterRuntime {
            _checker: checker,
            egresses,
            balancer: Balancer::new(key.balancing.clone(), &key.endpoints),
            key,
            health,
            tls,
            http,
            http_unpooled,
            limits,
            stats,
        }
    }

    /// Records what an attempt to use `endpoint` gave, for outlier detection; returns the
    /// ejections it caused.
    pub fn record(
        &self,
        endpoint: SocketAddr,
        outcome: Outcome,
    ) -> Vec<(SocketAddr, crate::outlier::Ejection)> {
        self.health.record(
            self.key.plan.outlier.as_ref(),
            self.endpoints(),
            endpoint,
            outcome,
            Instant::now(),
        )
    }

    /// [`ClusterRuntime::record`] for what happened once the endpoint was reached (an answer,
    /// a TLS handshake, a timeout or a reset). Through the zone egress that belongs to one
    /// remote zone, whose health the egress keeps; only not reaching the egress counts against
    /// it, so one failing zone does not eject every zone (Kuma #8297).
    pub fn record_past_connect(
        &self,
        endpoint: SocketAddr,
        outcome: Outcome,
    ) -> Vec<(SocketAddr, crate::outlier::Ejection)> {
        if self.egresses.contains(&endpoint) {
            return Vec::new();
        }
        self.record(endpoint, outcome)
    }

    /// Endpoints in the order to try them, for a request without a hash key (see
    /// [`ClusterRuntime::pick_with`]).
    #[cfg(test)]
    pub fn pick(&self) -> Vec<SocketAddr> {
        self.pick_with(None)
    }

    /// Endpoints in the order to try them. The first is the balancer's choice (priority with
    /// spill-over, locality, then the balancer type; `key` is the request's hash for ring hash
    /// and maglev); the other healthy endpoints follow as fallbacks (same priority first), and
    /// unhealthy ones (ejected, or failing active checks) come last. In panic — fewer than the cluster's `healthy_panic_threshold`
    /// of its endpoints healthy (Envoy's default 50 %) — the balancer chooses among every
    /// endpoint as if healthy, as Envoy does, unless the cluster fails traffic on panic (then
    /// nothing is picked).
    pub fn pick_with(&self, key: Option<u64>) -> Vec<SocketAddr> {
        let endpoints = self.endpoints();
        let now = Instant::now();
        if endpoints.is_empty() {
            return Vec::new();
        }
        // Panic (Envoy's): fewer than `healthy_panic_threshold` (basis points of the cluster's
        // endpoints) healthy, and the balancer chooses among all of them as if healthy —
        // unless the cluster fails traffic on panic.
        self.health.active.mark_used();
        let unhealthy = |a: SocketAddr| self.health.is_unhealthy(a, now);
        let healthy_count = endpoints.iter().filter(|e| !unhealthy(e.address)).count();
        let threshold = self.key.plan.panic_threshold as usize;
        let panic = healthy_count * 10_000 < threshold * endpoints.len();
        if panic && self.key.plan.fail_traffic_on_panic {
            return Vec::new();
        }
        let healthy = |a: SocketAddr| panic || !unhealthy(a);
        let Some(first) = self.balancer.choose(endpoints, &healthy, key) else {
            return Vec::new();
        };
        let mut order: Vec<SocketAddr> = Vec::with_capacity(endpoints.len());
        order.push(first);
        let mut rest: Vec<&EndpointPlan> =
            endpoints.iter().filter(|e| e.address != first).collect();
        rest.sort_by_key(|e| (self.health.is_unhealthy(e.address, now), e.priority));
        for e in rest {
            if !order.contains(&e.address) {
                order.push(e.address);
            }
        }
        order
    }
}

impl Runtime {
    pub fn empty() -> Self {
        Runtime {
            config: ProxyConfig::default(),
            downstream: BTreeMap::new(),
            clusters: BTreeMap::new(),
            listeners: BTreeMap::new(),
            dns_names: BTreeMap::new(),
            tracers: BTreeMap::new(),
            local_service: Arc::from(""),
            trace_counters: Default::default(),
        }
    }

    /// The empty runtime of a proxy of `service` (before any configuration).
    pub fn empty_for(service: &str) -> Self {
        Runtime {
            local_service: Arc::from(service),
            ..Runtime::empty()
        }
    }

    /// The runtime of `config`, reusing every cluster and listener object of `previous` whose
    /// own plan did not change.
    pub fn build(config: ProxyConfig, previous: &Runtime) -> (Self, Vec<RuntimeProblem>) {
        let mut problems = Vec::new();
        let mut downstream = BTreeMap::new();
        // Zone egress chains that terminate mTLS hold TLS of their own.
        let with_chains = config
            .listeners
            .values()
            .flat_map(|l| std::iter::once(l).chain(l.sni_terminated.values()));
        for l in with_chains {
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
        let mut clusters = BTreeMap::new();
        for c in config.clusters.values() {
            let key = ClusterKey {
                plan: c.clone(),
                endpoints: config.cluster_endpoints(&c.name).to_vec(),
                balancing: config.balancing(&c.name),
                secrets: c.tls.as_ref().map(|t| {
                    (
                        config.secrets.get(&t.identity_secret).cloned(),
                        config.secrets.get(&t.ca_secret).cloned(),
                    )
                }),
            };
            let old = previous.clusters.get(&c.name);
            let cluster = match old {
                Some(old) if old.key == key => old.clone(),
                _ => Arc::new(ClusterRuntime::build(
                    &config,
                    key,
                    old.map(|o| o.health.clone()).unwrap_or_default(),
                )),
            };
            if let Err(e) = &cluster.tls {
                problems.push(RuntimeProblem(format!("cluster {}: {e}", c.name)));
            }
            clusters.insert(c.name.clone(), cluster);
        }
        let mut listeners = BTreeMap::new();
        for l in config.listeners.values() {
            let listener = match previous.listeners.get(&l.name) {
                Some(old) if old.plan == *l => old.clone(),
                _ => {
                    let routes = if l.http {
                        match RouteTable::new(&l.routes) {
                            Ok(t) => Some(t),
                            Err(e) => {
                                problems.push(RuntimeProblem(format!("listener {}: {e}", l.name)));
                                None
                            }
                        }
                    } else {
                        None
                    };
                    Arc::new(ListenerRuntime {
                        plan: l.clone(),
                        routes,
                        split: (!l.weighted.is_empty()).then(|| Split::new(&l.weighted)),
                        limits: crate::ratelimit::Limits::of(l),
                        stats: Default::default(),
                        access_logs: Default::default(),
                    })
                }
            };
            listeners.insert(l.name.clone(), listener);
        }
        let dns_names = crate::dns::table(&config);
        let tracers = tracers(&config, &clusters, previous, &mut problems);
        (
            Runtime {
                config,
                downstream,
                clusters,
                listeners,
                dns_names,
                tracers,
                local_service: previous.local_service.clone(),
                trace_counters: previous.trace_counters.clone(),
            },
            problems,
        )
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<ClusterRuntime>> {
        self.clusters.get(name)
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerPlan> {
        self.config.listeners.get(name)
    }

    /// Endpoints of a cluster in the order to try them (see [`ClusterRuntime::pick`]).
    #[cfg(test)]
    pub fn pick(&self, cluster: &str) -> Vec<SocketAddr> {
        self.clusters
            .get(cluster)
            .map(|c| c.pick())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
                ..Default::default()
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
            via_zone_egress: false,
            no_active_health_check: false,
        };
        let config = web_cluster(vec![endpoint(a, 1), endpoint(b, 2)]);
        let (rt, problems) = Runtime::build(config, &Runtime::empty());
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
            via_zone_egress: false,
            no_active_health_check: false,
        };
        let config = web_cluster(vec![endpoint(remote, 1), endpoint(local, 0)]);
        let (rt, _) = Runtime::build(config, &Runtime::empty());
        for _ in 0..10 {
            assert_eq!(rt.pick("web"), vec![local, remote]);
        }
        rt.clusters["web"]
            .health
            .eject_until(local, Instant::now() + Duration::from_secs(10));
        for _ in 0..10 {
            assert_eq!(
                rt.pick("web"),
                vec![remote, local],
                "fails over to priority 1"
            );
        }
        rt.clusters["web"]
            .health
            .eject_until(remote, Instant::now() + Duration::from_secs(10));
        assert_eq!(rt.pick("web").len(), 2, "all ejected: try all");
        rt.clusters["web"].record(local, Outcome::Connected { last: true });
        assert_eq!(rt.pick("web")[0], local);
    }

    /// The plan of `web_cluster` plus a second cluster `other` and a listener.
    fn two_clusters(web: Vec<EndpointPlan>) -> ProxyConfig {
        let mut config = web_cluster(web);
        config.clusters.insert(
            "other".into(),
            ClusterPlan {
                name: "other".into(),
                static_endpoints: None,
                tls: None,
                http2: false,
                original_dst: false,
                ..Default::default()
            },
        );
        config.endpoints.insert(
            "other".into(),
            vec![EndpointPlan {
                address: "10.0.9.1:80".parse().unwrap(),
                weight: 1,
                zone: None,
                priority: 0,
                via_zone_egress: false,
                no_active_health_check: false,
            }],
        );
        config
    }

    #[test]
    fn an_update_keeps_the_objects_of_clusters_whose_plan_did_not_change() {
        let endpoint = |last: u8| EndpointPlan {
            address: SocketAddr::from(([10, 0, 0, last], 80)),
            weight: 1,
            zone: None,
            priority: 0,
            via_zone_egress: false,
            no_active_health_check: false,
        };
        let (first, _) = Runtime::build(
            two_clusters(vec![endpoint(1), endpoint(2)]),
            &Runtime::empty(),
        );
        // Move the cursor: state the next version must keep.
        assert_eq!(first.pick("web")[0], endpoint(1).address);

        // An unrelated update (a secret arrives): same objects, same cursor, same pool.
        let mut unrelated = first.config.clone();
        unrelated
            .secrets
            .insert("ca".into(), SecretPlan::TrustedCa { ca_pem: "x".into() });
        let (second, _) = Runtime::build(unrelated, &first);
        assert!(Arc::ptr_eq(&first.clusters["web"], &second.clusters["web"]));
        assert!(Arc::ptr_eq(
            &first.clusters["other"],
            &second.clusters["other"]
        ));
        assert_eq!(
            second.pick("web")[0],
            endpoint(2).address,
            "the cursor moved on instead of starting over"
        );
        second.clusters["web"].health.eject_until(
            endpoint(2).address,
            Instant::now() + Duration::from_secs(10),
        );

        // The endpoints of `web` change: `web` is rebuilt (health carried over), `other` kept.
        let mut changed = second.config.clone();
        changed
            .endpoints
            .insert("web".into(), vec![endpoint(1), endpoint(2), endpoint(3)]);
        let (third, _) = Runtime::build(changed, &second);
        assert!(!Arc::ptr_eq(
            &second.clusters["web"],
            &third.clusters["web"]
        ));
        assert!(Arc::ptr_eq(
            &second.clusters["other"],
            &third.clusters["other"]
        ));
        assert!(Arc::ptr_eq(
            &second.clusters["web"].health,
            &third.clusters["web"].health
        ));
        assert_eq!(third.clusters["web"].endpoints().len(), 3);
        let firsts: Vec<SocketAddr> = (0..4).map(|_| third.pick("web")[0]).collect();
        assert!(!firsts.contains(&endpoint(2).address), "{firsts:?}");

        // A removed cluster is gone.
        let mut removed = third.config.clone();
        removed.clusters.remove("other");
        let (fourth, _) = Runtime::build(removed, &third);
        assert!(fourth.cluster("other").is_none());
    }

    #[test]
    fn a_cluster_whose_tls_material_has_not_arrived_sends_nothing() {
        let mut config = web_cluster(vec![]);
        if let Some(c) = config.clusters.get_mut("web") {
            c.tls = Some(TlsPlan {
                identity_secret: "id".into(),
                ca_secret: "ca".into(),
                peer: vec![SanMatch::Exact("spiffe://default/web".into())],
                sni: None,
            });
        }
        let (rt, problems) = Runtime::build(config, &Runtime::empty());
        assert!(rt.clusters["web"].tls.is_err());
        assert_eq!(problems.len(), 1, "{:?}", problems);
        assert!(problems[0].0.contains("secret id has not arrived"));
    }

    #[test]
    fn a_tcp_listener_with_a_split_picks_a_cluster_per_connection() {
        let mut config = two_clusters(vec![]);
        let listener = ListenerPlan {
            name: "out".into(),
            address: "127.0.0.1:1".parse().unwrap(),
            cluster: "web".into(),
            weighted: vec![
                meshzone_xds::decode::WeightedClusterPlan {
                    cluster: "web".into(),
                    weight: 3,
                },
                meshzone_xds::decode::WeightedClusterPlan {
                    cluster: "other".into(),
                    weight: 1,
                },
            ],
            ..Default::default()
        };
        config.listeners.insert("out".into(), listener.clone());
        let (rt, _) = Runtime::build(config.clone(), &Runtime::empty());
        let picks: Vec<&str> = (0..8).map(|_| rt.listeners["out"].tcp_cluster()).collect();
        assert_eq!(
            picks.iter().filter(|c| **c == "other").count(),
            2,
            "{picks:?}"
        );
        // The split state survives an unrelated update and is reset by a change of the listener.
        let (same, _) = Runtime::build(config.clone(), &rt);
        assert!(Arc::ptr_eq(&rt.listeners["out"], &same.listeners["out"]));
        config.listeners.insert(
            "out".into(),
            ListenerPlan {
                weighted: vec![],
                ..listener
            },
        );
        let (single, _) = Runtime::build(config, &same);
        assert_eq!(single.listeners["out"].tcp_cluster(), "web");
    }
}

#[cfg(test)]
mod trace_tests {
    use std::net::SocketAddr;

    use meshzone_xds::decode::tracing::{ProviderPlan, SamplingPlan, SpanKind, TracingPlan};
    use meshzone_xds::decode::{ClusterPlan, EndpointPlan, ListenerPlan, ProxyConfig};

    use super::*;

    fn traced(collector_port: u16, service_name: &str) -> ProxyConfig {
        let mut config = ProxyConfig::default();
        let cluster = "meshtrace:opentelemetry";
        config.clusters.insert(
            cluster.into(),
            ClusterPlan {
                name: cluster.into(),
                http2: true,
                ..Default::default()
            },
        );
        config.endpoints.insert(
            cluster.into(),
            vec![EndpointPlan {
                address: SocketAddr::from(([127, 0, 0, 1], collector_port)),
                weight: 1,
                zone: None,
                priority: 0,
                via_zone_egress: false,
                no_active_health_check: false,
            }],
        );
        for name in ["inbound:a", "outbound:b"] {
            config.listeners.insert(
                name.into(),
                ListenerPlan {
                    name: name.into(),
                    http: true,
                    tracing: Some(TracingPlan {
                        kind: SpanKind::Server,
                        sampling: SamplingPlan::default(),
                        tags: Vec::new(),
                        provider: ProviderPlan::OpenTelemetry {
                            cluster: cluster.into(),
                            service_name: service_name.into(),
                        },
                    }),
                    ..Default::default()
                },
            );
        }
        config
    }

    #[tokio::test]
    async fn one_exporter_per_collector_is_kept_until_its_provider_or_cluster_changes() {
        let (first, problems) = Runtime::build(traced(4317, "web"), &Runtime::empty_for("web"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(first.tracers.len(), 1, "two listeners share one exporter");
        assert_eq!(&*first.local_service, "web");
        let exporter = first.tracers["meshtrace:opentelemetry"].clone();
        // The same configuration again: the running exporter is kept.
        let (same, _) = Runtime::build(traced(4317, "web"), &first);
        assert!(Arc::ptr_eq(
            &same.tracers["meshtrace:opentelemetry"],
            &exporter
        ));
        assert!(Arc::ptr_eq(&same.trace_counters, &first.trace_counters));
        // Another collector address or service name: a new one.
        let (moved, _) = Runtime::build(traced(4318, "web"), &same);
        assert!(!Arc::ptr_eq(
            &moved.tracers["meshtrace:opentelemetry"],
            &exporter
        ));
        let (renamed, _) = Runtime::build(traced(4318, "web-2"), &moved);
        assert!(!Arc::ptr_eq(
            &renamed.tracers["meshtrace:opentelemetry"],
            &moved.tracers["meshtrace:opentelemetry"]
        ));
        // Without its cluster: no exporter, and the problem names it.
        let mut config = traced(4318, "web");
        config.clusters.clear();
        let (missing, problems) = Runtime::build(config, &renamed);
        assert!(missing.tracers.is_empty());
        assert!(
            problems
                .iter()
                .any(|p| p.0.contains("meshtrace:opentelemetry is not configured")),
            "{problems:?}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_spans_and_counts_them_without_waiting() {
        use std::sync::atomic::Ordering;
        use std::time::SystemTime;

        use crate::trace::span::{ActiveSpan, FinishedSpan};
        // A collector that accepts connections and never answers: the exporter's task is stuck
        // in its first report while the request path keeps recording.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let (rt, _) = Runtime::build(traced(port, "web"), &Runtime::empty_for("web"));
        let exporter = rt.tracers["meshtrace:opentelemetry"].clone();
        let span = FinishedSpan {
            span: ActiveSpan {
                kind: SpanKind::Server,
                trace_id: 1,
                span_id: 1,
                parent_id: None,
                shared: false,
                name: "ingress".into(),
                start: SystemTime::UNIX_EPOCH,
                tags: Vec::new(),
            },
            duration: std::time::Duration::from_millis(1),
            error: false,
        };
        let extra = 10;
        let total = crate::trace::export::QUEUE + crate::trace::export::MAX_BATCH + extra;
        for _ in 0..total {
            exporter.record(span.clone());
        }
        // At most a queue and one batch are held; the rest was dropped and counted.
        let dropped = rt
            .trace_counters
            .opentelemetry
            .spans_dropped
            .load(Ordering::Relaxed);
        assert!(
            dropped >= extra as u64 && dropped <= (crate::trace::export::MAX_BATCH + extra) as u64,
            "{dropped} dropped"
        );
        assert_eq!(
            rt.trace_counters
                .opentelemetry
                .spans_sent
                .load(Ordering::Relaxed),
            0
        );
        drop(silent);
    }
}
