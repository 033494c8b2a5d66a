//! The proxy side: turns received Envoy resources into the plain plan the proxy runs. Only the
//! subset the proxy needs is read (TCP proxy listeners, static and EDS clusters with optional
//! TLS, load assignments, TLS certificate and validation-context secrets); anything else is
//! rejected per resource, which becomes the NACK message.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfigType;
use envoy_types::pb::envoy::config::core::v3::{Address, DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, Secret,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::HeaderMutation;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as NetworkLocalRateLimit;
use prost::{Message, Name};
use serde::Serialize;

use crate::names::TypeUrl;

pub mod access_log;
pub mod balancing;
pub(crate) mod clusters;
pub mod health_checks;
mod inbound;
pub mod metrics;
mod origination;
mod rbac;
pub mod resilience;
pub mod routes;
pub mod timeouts;
pub mod tracing;
pub use clusters::{decode_assignment, decode_cluster};
pub use health_checks::{CheckerPlan, HealthCheckPlan};
pub use inbound::{
    ConnectionLimitPlan, FaultPlan, HeaderContains, HttpRateLimitPlan, InboundHttpPlan, Injected,
    TokenBucketPlan,
};
pub use origination::OriginationPlan;
pub use rbac::{PrincipalPlan, RbacPlan, Verdict};
pub use resilience::{DEFAULT_PANIC_THRESHOLD, LimitsPlan, OutlierPlan, RatePlan};
pub use routes::{RoutePlan, WeightedClusterPlan};
pub use timeouts::{
    ClusterTimeouts, ListenerTimeouts, RateLimitedBackOffPlan, ResetFormat, RetryOn, RetryPlan,
    RouteTimeouts,
};

/// Why one resource could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct DecodeError {
    pub name: String,
    pub reason: String,
}

fn err(name: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// How a peer's certificate must look: SPIFFE URI SAN equal to, or starting with, a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SanMatch {
    Exact(String),
    Prefix(String),
}

impl SanMatch {
    pub fn matches(&self, san: &str) -> bool {
        match self {
            SanMatch::Exact(v) => san == v,
            SanMatch::Prefix(p) => san.starts_with(p.as_str()),
        }
    }
}

/// mTLS settings of a listener or cluster: which secrets to use and which peers to accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsPlan {
    pub identity_secret: String,
    pub ca_secret: String,
    pub peer: Vec<SanMatch>,
    /// Client side only: the SNI to send.
    pub sni: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerPlan {
    pub name: String,
    pub address: SocketAddr,
    pub cluster: String,
    /// Inbound mTLS: terminate and require a client certificate.
    pub tls: Option<TlsPlan>,
    /// With `tls`: plaintext connections are accepted too (mesh mTLS mode `permissive`).
    pub permissive: bool,
    /// HTTP-aware (an HTTP connection manager): requests are balanced and counted one by one.
    pub http: bool,
    /// HTTP listeners: the route table, tried in order (`cluster` then names the destination
    /// service: the route configuration's name, which the generator gives its service).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RoutePlan>,
    /// TCP listeners whose `tcp_proxy` has `weighted_clusters`: one cluster per connection,
    /// picked by weight (`cluster` then names the destination service: the `stat_prefix`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weighted: Vec<WeightedClusterPlan>,
    /// A zone proxy's SNI router: SNI → cluster, TLS passed through untouched (`cluster` is
    /// empty). A connection without a listed SNI is closed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sni_routes: BTreeMap<String, String>,
    /// A zone egress's chains that terminate the mesh's mTLS (ExternalServices): SNI → the
    /// chain as a listener of its own (`<listener>/<sni>`, not bound: TLS, RBAC, cluster).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sni_terminated: BTreeMap<String, ListenerPlan>,
    /// False for a transparent proxy's `VIP:80` listeners: no socket of their own; the redirect
    /// listener hands them the connections whose original destination is their address.
    pub bind: bool,
    /// The redirect listener: dispatch by original destination (`SO_ORIGINAL_DST`).
    pub use_original_dst: bool,
    /// Who may connect (network RBAC, per connection) or send requests (HTTP RBAC, per
    /// request); `None`: everyone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rbac: Option<RbacPlan>,
    /// DNS names the listener's address answers (a VirtualOutbound's hostname), from its
    /// metadata ([`crate::generate::DNS_METADATA`]); kuma-dp's resolver serves them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// HTTP listeners: the caller header, faults and rate limit applied to each request
    /// (MeshFaultInjection, MeshRateLimit).
    #[serde(skip_serializing_if = "InboundHttpPlan::is_empty")]
    pub inbound_http: InboundHttpPlan,
    /// New connections beyond this budget are closed at once (MeshRateLimit's TCP limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<ConnectionLimitPlan>,
    /// Request-headers timeout (HTTP), idle timeout and connect attempts (TCP).
    pub timeouts: ListenerTimeouts,
    /// TCP listeners: a ring hash or maglev cluster picks by the client's IP address
    /// (`tcp_proxy.hash_policy` `source_ip`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hash_source_ip: bool,
    /// MeshAccessLog: a line per request (HTTP) or connection (TCP) to each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_logs: Vec<access_log::AccessLogPlan>,
    /// HTTP listeners with MeshTrace: sampling, tags, span kind and where spans go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<tracing::TracingPlan>,
}

/// A bound TCP listener on `0.0.0.0:0` with nothing configured (what tests build plans from).
impl Default for ListenerPlan {
    fn default() -> Self {
        ListenerPlan {
            name: String::new(),
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            cluster: String::new(),
            tls: None,
            permissive: false,
            http: false,
            routes: Vec::new(),
            weighted: Vec::new(),
            sni_routes: BTreeMap::new(),
            sni_terminated: BTreeMap::new(),
            bind: true,
            use_original_dst: false,
            rbac: None,
            dns_names: Vec::new(),
            inbound_http: InboundHttpPlan::default(),
            connection_limit: None,
            timeouts: ListenerTimeouts::default(),
            hash_source_ip: false,
            access_logs: Vec::new(),
            tracing: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointPlan {
    pub address: SocketAddr,
    pub weight: u32,
    pub zone: Option<String>,
    /// Lower first: a higher priority takes traffic only when no lower one has a healthy endpoint.
    pub priority: u32,
    /// The zone's egress, carrying remote zones' traffic (marked with
    /// [`crate::generate::ZONE_EGRESS_METADATA`]): only a failure to reach it counts against it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub via_zone_egress: bool,
    /// `health_check_config.disable_active_health_check`: the cluster's active checks leave
    /// this endpoint alone (the zone's egress, which checks each remote zone itself).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_active_health_check: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterPlan {
    pub name: String,
    /// Endpoints given in the cluster itself; `None` means they come by EDS.
    pub static_endpoints: Option<Vec<EndpointPlan>>,
    /// Outbound mTLS: originate TLS with our identity and check the server.
    pub tls: Option<TlsPlan>,
    /// Speak HTTP/2 (prior knowledge) to the endpoints, for HTTP listeners.
    pub http2: bool,
    /// ORIGINAL_DST: connect to wherever the connection was going (transparent passthrough).
    pub original_dst: bool,
    /// Connection limits (Envoy's defaults when the cluster sets none).
    pub limits: LimitsPlan,
    /// Passive health; none: no endpoint is ever ejected.
    pub outlier: Option<OutlierPlan>,
    /// Below this share of healthy endpoints (hundredths of a percent) every endpoint is used.
    pub panic_threshold: u32,
    /// In panic, fail requests instead of using unhealthy endpoints.
    pub fail_traffic_on_panic: bool,
    /// Connect timeout and HTTP connection settings (MeshTimeout).
    pub timeouts: ClusterTimeouts,
    /// TLS towards a server outside the mesh (an ExternalService), instead of `tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origination: Option<OriginationPlan>,
    /// Active health checking of the endpoints (MeshHealthCheck); none: no probes (and
    /// absent from the config dump).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckPlan>,
}

/// An EDS cluster without TLS, HTTP/2 or outlier detection, with Envoy's default limits and
/// panic threshold (what tests build plans from).
impl Default for ClusterPlan {
    fn default() -> Self {
        ClusterPlan {
            name: String::new(),
            static_endpoints: None,
            tls: None,
            http2: false,
            original_dst: false,
            limits: LimitsPlan::default(),
            outlier: None,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            fail_traffic_on_panic: false,
            timeouts: ClusterTimeouts::default(),
            origination: None,
            health_check: None,
        }
    }
}

/// A certificate with its key, or a trust anchor. `Serialize` (config dump) hides the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SecretPlan {
    Identity {
        cert_pem: String,
        #[serde(skip)]
        key_pem: String,
    },
    TrustedCa {
        ca_pem: String,
    },
}

/// Everything the proxy runs, by resource name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    pub listeners: BTreeMap<String, ListenerPlan>,
    pub clusters: BTreeMap<String, ClusterPlan>,
    pub endpoints: BTreeMap<String, Vec<EndpointPlan>>,
    pub secrets: BTreeMap<String, SecretPlan>,
    /// Each cluster's balancer (`lb_policy`, `lb_config`, `common_lb_config`); a STATIC
    /// cluster's own load assignment is read into `static_assignments`.
    pub balancers: BTreeMap<String, balancing::ClusterBalancing>,
    pub static_assignments: BTreeMap<String, balancing::AssignmentBalancing>,
    /// Each EDS load assignment's overprovisioning factor and localities.
    pub assignment_balancing: BTreeMap<String, balancing::AssignmentBalancing>,
    /// MeshMetric scrape endpoints (listeners `_kuma:metrics:prometheus:*`), by name; they
    /// are not in `listeners`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, metrics::MetricsPlan>,
}

fn unpack<T: Message + Name + Default>(any: &Any) -> Result<T, String> {
    if any.type_url != T::type_url() {
        return Err(format!("expected {}, got {}", T::type_url(), any.type_url));
    }
    T::decode(any.value.as_slice()).map_err(|e| format!("cannot decode: {e}"))
}

fn socket_addr(name: &str, address: Option<&Address>) -> Result<SocketAddr, DecodeError> {
    let Some(Address {
        address: Some(AddressKind::SocketAddress(sa)),
    }) = address
    else {
        return Err(err(name, "only socket addresses are supported"));
    };
    let ip: IpAddr = sa
        .address
        .parse()
        .map_err(|_| err(name, format!("{:?} is not an IP address", sa.address)))?;
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return Err(err(name, "a port value is required"));
    };
    let port = u16::try_from(port).map_err(|_| err(name, format!("port {port} out of range")))?;
    Ok(SocketAddr::new(ip, port))
}

fn inline_text(name: &str, ds: Option<&DataSource>) -> Result<String, DecodeError> {
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => {
            String::from_utf8(b.clone()).map_err(|_| err(name, "inline bytes are not UTF-8 PEM"))
        }
        Some(data_source::Specifier::InlineString(s)) => Ok(s.clone()),
        _ => Err(err(name, "only inline certificate data is supported")),
    }
}

fn tls_plan(
    name: &str,
    common: Option<&CommonTlsContext>,
    sni: Option<String>,
) -> Result<TlsPlan, DecodeError> {
    let common = common.ok_or_else(|| err(name, "TLS context without common_tls_context"))?;
    let identity_secret = common
        .tls_certificate_sds_secret_configs
        .first()
        .map(|s| s.name.clone())
        .ok_or_else(|| err(name, "TLS context without an SDS certificate"))?;
    let Some(ValidationContextType::CombinedValidationContext(combined)) =
        &common.validation_context_type
    else {
        return Err(err(
            name,
            "TLS context must use a combined validation context",
        ));
    };
    let ca_secret = combined
        .validation_context_sds_secret_config
        .as_ref()
        .map(|s| s.name.clone())
        .ok_or_else(|| err(name, "validation context without an SDS trust anchor"))?;
    let mut peer = Vec::new();
    if let Some(default) = &combined.default_validation_context {
        for m in &default.match_typed_subject_alt_names {
            match m.matcher.as_ref().and_then(|s| s.match_pattern.as_ref()) {
                Some(MatchPattern::Exact(v)) => peer.push(SanMatch::Exact(v.clone())),
                Some(MatchPattern::Prefix(v)) => peer.push(SanMatch::Prefix(v.clone())),
                _ => {
                    return Err(err(
                        name,
                        "only exact and prefix SAN matchers are supported",
                    ));
                }
            }
        }
    }
    if peer.is_empty() {
        return Err(err(
            name,
            "mTLS without a peer identity matcher would accept anyone in the CA",
        ));
    }
    Ok(TlsPlan {
        identity_secret,
        ca_secret,
        peer,
        sni,
    })
}

fn transport_tls<T: Message + Name + Default>(
    name: &str,
    ts: Option<&TransportSocket>,
) -> Result<Option<T>, DecodeError> {
    match ts.and_then(|t| t.config_type.as_ref()) {
        None => Ok(None),
        Some(SocketConfigType::TypedConfig(any)) => {
            unpack::<T>(any).map(Some).map_err(|e| err(name, e))
        }
    }
}

pub fn decode_listener(any: &Any) -> Result<ListenerPlan, DecodeError> {
    let l: Listener = unpack(any).map_err(|e| err("listener", e))?;
    let name = l.name.clone();
    let address = socket_addr(&name, l.address.as_ref())?;
    let routes_by_sni = l.filter_chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.server_names.is_empty())
    });
    if routes_by_sni {
        return sni_router(name, address, &l);
    }
    let (chain_index, permissive) = match l.filter_chains.as_slice() {
        [_] => (0, false),
        // Permissive: a TLS chain and a plaintext chain, told apart by the TLS inspector.
        [a, b] => {
            let proto = |c: &envoy_types::pb::envoy::config::listener::v3::FilterChain| {
                c.filter_chain_match
                    .as_ref()
                    .map(|m| m.transport_protocol.clone())
                    .unwrap_or_default()
            };
            match (proto(a).as_str(), proto(b).as_str()) {
                ("tls", "raw_buffer") => (0, true),
                ("raw_buffer", "tls") => (1, true),
                _ => {
                    return Err(err(
                        &name,
                        "two filter chains must be one \"tls\" and one \"raw_buffer\"",
                    ));
                }
            }
        }
        _ => {
            return Err(err(
                &name,
                "one filter chain (or a tls + raw_buffer pair) is supported",
            ));
        }
    };
    let chain = &l.filter_chains[chain_index];
    let filters = chain_filters(&name, chain_index, chain, l.traffic_direction)?;
    if permissive {
        // kuma-dp runs one plan per listener: the plaintext chain must do what the TLS one does.
        let other = 1 - chain_index;
        if chain_filters(&name, other, &l.filter_chains[other], l.traffic_direction)? != filters {
            return Err(err(
                &name,
                format!(
                    "filter_chains[{other}]: the plaintext chain must have the same filters as the TLS chain"
                ),
            ));
        }
    }
    let ChainFilters {
        cluster,
        http,
        rbac,
        routes,
        weighted,
        inbound_http,
        connection_limit,
        timeouts,
        hash_source_ip,
        access_logs,
        tracing,
    } = filters;
    let tls = match transport_tls::<DownstreamTlsContext>(&name, chain.transport_socket.as_ref())? {
        None => None,
        Some(d) => {
            if !d.require_client_certificate.is_some_and(|b| b.value) {
                return Err(err(&name, "inbound TLS must require a client certificate"));
            }
            Some(tls_plan(&name, d.common_tls_context.as_ref(), None)?)
        }
    };
    if permissive && tls.is_none() {
        return Err(err(
            &name,
            "the \"tls\" filter chain has no TLS transport socket",
        ));
    }
    Ok(ListenerPlan {
        name,
        address,
        cluster,
        tls,
        permissive,
        http,
        routes,
        weighted,
        sni_routes: BTreeMap::new(),
        sni_terminated: BTreeMap::new(),
        dns_names: dns_names(&l),
        bind: l.bind_to_port.is_none_or(|b| b.value),
        use_original_dst: l.use_original_dst.is_some_and(|b| b.value),
        rbac,
        inbound_http,
        connection_limit,
        timeouts,
        hash_source_ip,
        access_logs,
        tracing,
    })
}

/// What the network filters of one filter chain do.
#[derive(Debug, PartialEq)]
struct ChainFilters {
    cluster: String,
    http: bool,
    rbac: Option<RbacPlan>,
    routes: Vec<RoutePlan>,
    weighted: Vec<WeightedClusterPlan>,
    inbound_http: InboundHttpPlan,
    connection_limit: Option<ConnectionLimitPlan>,
    timeouts: ListenerTimeouts,
    hash_source_ip: bool,
    access_logs: Vec<access_log::AccessLogPlan>,
    tracing: Option<tracing::TracingPlan>,
}

/// A chain's filters: an optional network RBAC filter, then a TCP proxy or an HTTP connection
/// manager (which may hold an HTTP RBAC filter). Any other network filter is refused: kuma-dp
/// would not apply it.
fn chain_filters(
    name: &str,
    index: usize,
    chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain,
    direction: i32,
) -> Result<ChainFilters, DecodeError> {
    let at = |i: usize| format!("filter_chains[{index}].filters[{i}]");
    let typed =
        |i: usize, f: &envoy_types::pb::envoy::config::listener::v3::Filter| match &f.config_type {
            Some(FilterConfigType::TypedConfig(cfg)) => Ok(cfg.clone()),
            _ => Err(err(name, format!("{}: filter without typed config", at(i)))),
        };
    let mut configs = chain
        .filters
        .iter()
        .enumerate()
        .map(|(i, f)| typed(i, f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut network_rbac = None;
    if configs
        .first()
        .is_some_and(|c| c.type_url == NetworkRbac::type_url())
    {
        network_rbac = Some(rbac::network_rbac(name, &at(0), &configs.remove(0))?);
    }
    let mut offset = usize::from(network_rbac.is_some());
    let mut connection_limit = None;
    if configs.len() > 1 && configs[0].type_url == NetworkLocalRateLimit::type_url() {
        connection_limit = Some(
            inbound::connection_limit(&configs.remove(0), &at(offset)).map_err(|e| err(name, e))?,
        );
        offset += 1;
    }
    let [cfg] = configs.as_slice() else {
        return Err(err(
            name,
            format!(
                "filter_chains[{index}].filters: {} filters; kuma-dp enforces an optional network RBAC filter, an optional network local_ratelimit, then one tcp_proxy or http_connection_manager",
                chain.filters.len()
            ),
        ));
    };
    let at = at(offset);
    if cfg.type_url == HttpConnectionManager::type_url() {
        if network_rbac.is_some() {
            return Err(err(
                name,
                format!(
                    "{at}: network RBAC in front of an HTTP connection manager is not enforced by kuma-dp (use the HTTP RBAC filter)"
                ),
            ));
        }
        let (service, routes, rbac, inbound_http, request_headers, access_logs) =
            hcm_routes(name, &at, cfg)?;
        let tracing = hcm_tracing(name, &at, cfg, direction)?;
        let cluster = if service.is_empty() {
            default_cluster(&routes)
        } else {
            service
        };
        return Ok(ChainFilters {
            cluster,
            http: true,
            rbac,
            routes,
            weighted: Vec::new(),
            inbound_http,
            connection_limit,
            timeouts: ListenerTimeouts {
                request_headers,
                ..ListenerTimeouts::default()
            },
            hash_source_ip: false,
            access_logs,
            tracing,
        });
    }
    if cfg.type_url != TcpProxy::type_url() {
        return Err(err(
            name,
            format!("{at}: {} is not enforced by kuma-dp", cfg.type_url),
        ));
    }
    let mut tcp: TcpProxy = unpack(cfg).map_err(|e| err(name, e))?;
    let access_logs = access_log::decode(
        &std::mem::take(&mut tcp.access_log),
        &format!("{at}.tcp_proxy.access_log"),
    )
    .map_err(|e| err(name, e))?;
    let timeouts =
        timeouts::tcp_resilience(&mut tcp, &format!("{at}.tcp_proxy")).map_err(|e| err(name, e))?;
    let hash_source_ip =
        routes::tcp_hash_source_ip(&mut tcp).map_err(|e| err(name, format!("{at}: {e}")))?;
    let (clusters, split) =
        routes::tcp_proxy_clusters(&tcp).map_err(|e| err(name, format!("{at}: {e}")))?;
    let first = clusters
        .first()
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    let (cluster, weighted) = match split {
        // A split names its service in stat_prefix.
        true if !tcp.stat_prefix.is_empty() => (tcp.stat_prefix, clusters),
        true => (first, clusters),
        false => (first, Vec::new()),
    };
    Ok(ChainFilters {
        cluster,
        http: false,
        rbac: network_rbac,
        routes: Vec::new(),
        weighted,
        inbound_http: InboundHttpPlan::default(),
        connection_limit,
        timeouts,
        hash_source_ip,
        access_logs,
        tracing: None,
    })
}

/// A listener whose every filter chain matches server names: a zone proxy's SNI router.
fn sni_router(
    name: String,
    address: SocketAddr,
    l: &Listener,
) -> Result<ListenerPlan, DecodeError> {
    let mut sni_routes = BTreeMap::new();
    let mut sni_terminated = BTreeMap::new();
    for (i, chain) in l.filter_chains.iter().enumerate() {
        let names = chain
            .filter_chain_match
            .as_ref()
            .map(|m| m.server_names.clone())
            .unwrap_or_default();
        if names.is_empty() {
            return Err(err(
                &name,
                "an SNI-routing listener needs server names on every filter chain",
            ));
        }
        if chain.transport_socket.is_some() {
            let terminated = terminating_chain(&name, address, i, chain)?;
            for server_name in names {
                let mut plan = terminated.clone();
                plan.name = format!("{name}/{server_name}");
                sni_terminated.insert(server_name, plan);
            }
            continue;
        }
        let cluster = match chain_filters(&name, i, chain, 0)? {
            ChainFilters {
                cluster,
                http: false,
                rbac: None,
                weighted,
                connection_limit: None,
                access_logs,
                ..
            } if weighted.is_empty() && access_logs.is_empty() => cluster,
            _ => {
                return Err(err(
                    &name,
                    format!(
                        "filter_chains[{i}]: an SNI-routing chain has exactly one tcp_proxy (no access log)"
                    ),
                ));
            }
        };
        for server_name in names {
            sni_routes.insert(server_name, cluster.clone());
        }
    }
    Ok(ListenerPlan {
        name,
        address,
        sni_routes,
        sni_terminated,
        bind: l.bind_to_port.is_none_or(|b| b.value),
        ..ListenerPlan::default()
    })
}

/// A zone egress's chain that terminates the mesh's mTLS (an ExternalService): a client
/// certificate required, then an optional network RBAC and one tcp_proxy.
fn terminating_chain(
    name: &str,
    address: SocketAddr,
    index: usize,
    chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain,
) -> Result<ListenerPlan, DecodeError> {
    let Some(d) = transport_tls::<DownstreamTlsContext>(name, chain.transport_socket.as_ref())?
    else {
        return Err(err(
            name,
            format!("filter_chains[{index}].transport_socket: not TLS"),
        ));
    };
    if !d.require_client_certificate.is_some_and(|b| b.value) {
        return Err(err(
            name,
            format!(
                "filter_chains[{index}]: a terminating chain must require a client certificate"
            ),
        ));
    }
    let tls = tls_plan(name, d.common_tls_context.as_ref(), None)?;
    match chain_filters(name, index, chain, 0)? {
        ChainFilters {
            cluster,
            http: false,
            rbac,
            weighted,
            connection_limit: None,
            timeouts,
            access_logs,
            ..
        } if weighted.is_empty() && access_logs.is_empty() => Ok(ListenerPlan {
            name: name.to_string(),
            address,
            cluster,
            tls: Some(tls),
            bind: false,
            rbac,
            timeouts,
            ..ListenerPlan::default()
        }),
        _ => Err(err(
            name,
            format!(
                "filter_chains[{index}]: a terminating SNI chain has an optional network RBAC and one tcp_proxy (no access log)"
            ),
        )),
    }
}

/// The hostnames in a listener's [`crate::generate::DNS_METADATA`] metadata (strings of its
/// `hostnames` list; anything else there is ignored).
fn dns_names(l: &Listener) -> Vec<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let Some(list) = l
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(crate::generate::DNS_METADATA))
        .and_then(|s| s.fields.get("hostnames"))
        .and_then(|v| match &v.kind {
            Some(Kind::ListValue(list)) => Some(list),
            _ => None,
        })
    else {
        return Vec::new();
    };
    list.values
        .iter()
        .filter_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// What an HTTP connection manager gives kuma-dp: its route configuration's name, the route
/// table, the HTTP RBAC, the inbound policies and the request-headers timeout.
type HcmParts = (
    String,
    Vec<RoutePlan>,
    Option<RbacPlan>,
    InboundHttpPlan,
    Option<std::time::Duration>,
    Vec<access_log::AccessLogPlan>,
);

/// The route table of an HTTP connection manager (with its route configuration's name), its
/// HTTP RBAC and its inbound policies. Its HTTP filters must be, in this order, an optional RBAC
/// filter, an optional caller header (`header_mutation`), fault filters, an optional
/// `local_ratelimit`, and the router, last; any other HTTP filter or order is refused (kuma-dp
/// would not apply it).
fn hcm_routes(name: &str, at: &str, cfg: &Any) -> Result<HcmParts, DecodeError> {
    let mut hcm: HttpConnectionManager = unpack(cfg).map_err(|e| err(name, e))?;
    let access_logs = access_log::decode(
        &std::mem::take(&mut hcm.access_log),
        &format!("{at}.http_connection_manager.access_log"),
    )
    .map_err(|e| err(name, e))?;
    let request_headers =
        timeouts::hcm_resilience(&mut hcm, &format!("{at}.http_connection_manager"))
            .map_err(|e| err(name, e))?;
    // Read by `hcm_tracing`.
    hcm.tracing = None;
    let mut rbac = None;
    let mut inbound_http = InboundHttpPlan {
        stat_prefix: hcm.stat_prefix.clone(),
        ..Default::default()
    };
    let mut rate_limited = false;
    // Each filter's place in the fixed order; a filter may not come before an earlier one's.
    let mut stage = 0;
    let last = hcm.http_filters.len().saturating_sub(1);
    for (i, filter) in hcm.http_filters.iter().enumerate() {
        let at = format!("{at}.http_filters[{i}]");
        let Some(HttpFilterConfigType::TypedConfig(typed)) = &filter.config_type else {
            return Err(err(name, format!("{at}: HTTP filter without typed config")));
        };
        let out_of_order = |wanted: u8| {
            (stage > wanted).then(|| {
                err(
                    name,
                    format!(
                        "{at}: out of order; kuma-dp applies RBAC, the caller header, faults, then the rate limit"
                    ),
                )
            })
        };
        match typed.type_url.as_str() {
            t if t == Router::type_url() && i == last => {}
            t if t == HttpRbac::type_url() && i == 0 && i != last => {
                rbac = Some(rbac::http_rbac(name, &at, typed, &hcm.stat_prefix)?);
            }
            t if t == HeaderMutation::type_url()
                && i != last
                && inbound_http.caller_header.is_none() =>
            {
                if let Some(e) = out_of_order(1) {
                    return Err(e);
                }
                stage = 1;
                inbound_http.caller_header =
                    Some(inbound::caller_header(typed, &at).map_err(|e| err(name, e))?);
            }
            t if t == HttpFault::type_url() && i != last => {
                if let Some(e) = out_of_order(2) {
                    return Err(e);
                }
                stage = 2;
                inbound_http
                    .faults
                    .push(inbound::fault(typed, &at).map_err(|e| err(name, e))?);
            }
            t if t == HttpLocalRateLimit::type_url() && i != last && !rate_limited => {
                if let Some(e) = out_of_order(3) {
                    return Err(e);
                }
                stage = 3;
                inbound::http_rate_limit_filter(typed, &at).map_err(|e| err(name, e))?;
                rate_limited = true;
            }
            t => {
                return Err(err(
                    name,
                    format!(
                        "{at}: {t} is not enforced by kuma-dp here (an optional RBAC filter first, then the caller header, faults and a local rate limit, the router last)"
                    ),
                ));
            }
        }
    }
    if hcm.http_filters.is_empty() {
        return Err(err(
            name,
            format!("{at}.http_filters: the router is required"),
        ));
    }
    if rate_limited {
        inbound_http.rate_limit = Some(route_rate_limit(name, at, &mut hcm)?);
    }
    let (service, routes) =
        routes::hcm_routes(&hcm).map_err(|e| err(name, format!("{at}: {e}")))?;
    Ok((
        service,
        routes,
        rbac,
        inbound_http,
        request_headers,
        access_logs,
    ))
}

/// The tracing plan of an HTTP connection manager, if it traces.
fn hcm_tracing(
    name: &str,
    at: &str,
    cfg: &Any,
    direction: i32,
) -> Result<Option<tracing::TracingPlan>, DecodeError> {
    let hcm: HttpConnectionManager = unpack(cfg).map_err(|e| err(name, e))?;
    hcm.tracing
        .as_ref()
        .map(|t| tracing::plan(t, direction, &format!("{at}.http_connection_manager")))
        .transpose()
        .map_err(|e| err(name, e))
}

/// Takes the per-route limit of the `local_ratelimit` filter out of the single route of an
/// inline route configuration (the route decoder refuses any other per-filter config).
fn route_rate_limit(
    name: &str,
    at: &str,
    hcm: &mut HttpConnectionManager,
) -> Result<HttpRateLimitPlan, DecodeError> {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    let filter = crate::policy::mesh_rate_limit::HTTP_FILTER;
    let single = match &mut hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => match rc.virtual_hosts.as_mut_slice() {
            [vh] => match vh.routes.as_mut_slice() {
                [route] => Some(route),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    let Some(route) = single else {
        return Err(err(
            name,
            format!(
                "{at}: kuma-dp enforces a local rate limit on an inline route configuration of one route"
            ),
        ));
    };
    let Some(cfg) = route.typed_per_filter_config.remove(filter) else {
        return Err(err(
            name,
            format!(
                "{at}: the route has no typed_per_filter_config for {filter}; Envoy would not limit"
            ),
        ));
    };
    inbound::http_rate_limit_route(
        &cfg,
        &format!(
            "{at}.route_config.virtual_hosts[0].routes[0].typed_per_filter_config[{filter:?}]"
        ),
    )
    .map_err(|e| err(name, e))
}

/// The cluster an HTTP listener falls back to: the last route's first cluster.
fn default_cluster(routes: &[RoutePlan]) -> String {
    routes
        .iter()
        .rev()
        .find_map(|r| r.clusters().next())
        .unwrap_or_default()
        .to_string()
}

pub fn decode_secret(any: &Any) -> Result<(String, SecretPlan), DecodeError> {
    let s: Secret = unpack(any).map_err(|e| err("secret", e))?;
    let name = s.name.clone();
    let plan = match s.r#type {
        Some(SecretType::TlsCertificate(t)) => SecretPlan::Identity {
            cert_pem: inline_text(&name, t.certificate_chain.as_ref())?,
            key_pem: inline_text(&name, t.private_key.as_ref())?,
        },
        Some(SecretType::ValidationContext(v)) => SecretPlan::TrustedCa {
            ca_pem: inline_text(&name, v.trusted_ca.as_ref())?,
        },
        _ => {
            return Err(err(
                &name,
                "only TLS certificates and validation contexts are supported",
            ));
        }
    };
    Ok((name, plan))
}

/// Whether a packed listener is a MeshMetric scrape endpoint (by its name).
fn is_metrics_any(any: &Any) -> bool {
    unpack::<Listener>(any).is_ok_and(|l| metrics::is_metrics_listener(&l.name))
}

impl ProxyConfig {
    /// The plan of a whole generated configuration, every type applied in order, with the
    /// resources that failed to decode (what a proxy given this snapshot would NACK).
    pub fn from_snapshot(snapshot: &crate::generate::Snapshot) -> (ProxyConfig, Vec<DecodeError>) {
        let mut config = ProxyConfig::default();
        let mut errors = Vec::new();
        for t in TypeUrl::ALL {
            let resources: Vec<Any> = snapshot
                .get(t)
                .map(|s| s.resources.iter().map(|r| r.resource.clone()).collect())
                .unwrap_or_default();
            errors.extend(config.apply(t, &resources));
        }
        (config, errors)
    }

    /// Replaces every resource of one type with the given set (state-of-the-world). Resources
    /// that fail to decode are skipped and returned; the rest apply.
    pub fn apply(&mut self, type_url: TypeUrl, resources: &[Any]) -> Vec<DecodeError> {
        let mut errors = Vec::new();
        match type_url {
            TypeUrl::Listener => {
                let (scrape, proxied): (Vec<&Any>, Vec<&Any>) =
                    resources.iter().partition(|r| is_metrics_any(r));
                self.listeners = proxied
                    .into_iter()
                    .filter_map(|r| decode_listener(r).map_err(|e| errors.push(e)).ok())
                    .map(|l| (l.name.clone(), l))
                    .collect();
                self.metrics = scrape
                    .into_iter()
                    .filter_map(|r| {
                        unpack::<Listener>(r)
                            .map_err(|e| err("listener", e))
                            .and_then(|l| metrics::decode(&l))
                            .map_err(|e| errors.push(e))
                            .ok()
                    })
                    .map(|m| (m.name.clone(), m))
                    .collect();
            }
            TypeUrl::Cluster => {
                self.clusters = resources
                    .iter()
                    .filter_map(|r| decode_cluster(r).map_err(|e| errors.push(e)).ok())
                    .map(|c| (c.name.clone(), c))
                    .collect();
                // `decode_cluster` checked the balancing fields, so this reads accepted ones.
                (self.balancers, self.static_assignments) = (BTreeMap::new(), BTreeMap::new());
                for r in resources {
                    if let Ok((name, b, own)) = balancing::decode_cluster_balancing(r)
                        && self.clusters.contains_key(&name)
                    {
                        self.balancers.insert(name.clone(), b);
                        if let Some(own) = own {
                            self.static_assignments.insert(name, own);
                        }
                    }
                }
            }
            TypeUrl::ClusterLoadAssignment => {
                self.endpoints = resources
                    .iter()
                    .filter_map(|r| decode_assignment(r).map_err(|e| errors.push(e)).ok())
                    .collect();
                self.assignment_balancing = resources
                    .iter()
                    .filter_map(|r| balancing::decode_assignment_balancing(r).ok())
                    .filter(|(name, _)| self.endpoints.contains_key(name))
                    .collect();
            }
            TypeUrl::Secret => {
                self.secrets = resources
                    .iter()
                    .filter_map(|r| decode_secret(r).map_err(|e| errors.push(e)).ok())
                    .collect();
            }
        }
        errors
    }

    /// How a cluster balances: its balancer and its (static or EDS) assignment's localities.
    pub fn balancing(&self, cluster: &str) -> balancing::BalancingPlan {
        let b = self.balancers.get(cluster).cloned().unwrap_or_default();
        let a = self
            .static_assignments
            .get(cluster)
            .or_else(|| self.assignment_balancing.get(cluster))
            .cloned()
            .unwrap_or_default();
        balancing::BalancingPlan {
            balancer: b.balancer,
            locality_weighted: b.locality_weighted,
            overprovisioning_factor: a.overprovisioning_factor,
            localities: a.localities,
        }
    }

    /// Endpoints of a cluster: its own (static) or those assigned by EDS.
    pub fn cluster_endpoints(&self, cluster: &str) -> &[EndpointPlan] {
        match self
            .clusters
            .get(cluster)
            .and_then(|c| c.static_endpoints.as_ref())
        {
            Some(eps) => eps,
            None => self
                .endpoints
                .get(cluster)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests;
