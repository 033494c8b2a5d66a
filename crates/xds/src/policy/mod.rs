//! What the targetRef policies configure on one proxy, handed to the generator. The zone CP
//! computes each policy type's rules for the proxy with the shared engine
//! (`meshzone_model::policy::rules_for_proxy`); here they are plain input. Each policy type
//! has its own configurer module that edits the Envoy resources the base builders made, and
//! the configurers run in one fixed order (Kuma's plugin order: routes first, traffic
//! permissions later).
//!
//! An empty [`PolicyRules`] means no policy of that type selects the proxy.

use meshzone_model::policy::PolicyRules;

pub mod mesh_traffic_permission;

/// The rules of every policy type the generator knows, for one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyPolicies {
    /// MeshTrafficPermission: `from_rules` per inbound; each rule's conf is
    /// `{"action": "Allow" | "Deny" | "AllowWithShadowDeny"}`. Enforced only when the mesh
    /// has mTLS (the client identity comes from its certificate). With mTLS, an inbound with no
    /// allowing rule denies every client, as Kuma does.
    pub traffic_permission: PolicyRules,
    /// MeshHTTPRoute: `to_rules` per outbound service; each conf holds the merged `rules`
    /// (`[{matches, default: {filters, backendRefs}}]`).
    pub http_route: PolicyRules,
    /// MeshTCPRoute: `to_rules` per outbound service; each conf holds `rules`
    /// (`[{default: {backendRefs}}]`).
    pub tcp_route: PolicyRules,
    /// MeshLoadBalancingStrategy: `to_rules` per outbound service; each conf is a merged
    /// `meshzone_model::policies::mesh_load_balancing_strategy::LbConf`.
    pub load_balancing: PolicyRules,
    /// MeshFaultInjection: `from_rules` per inbound; each conf is `{"http": [{abort, delay,
    /// responseBandwidth}]}`.
    pub fault_injection: PolicyRules,
    /// MeshRateLimit: `from_rules` per inbound; the conf of the empty client set
    /// (`{"local": {http, tcp}}`) limits the inbound.
    pub rate_limit: PolicyRules,
    /// MeshHealthCheck: `to_rules` per outbound service; each conf is the merged `default`
    /// (`{interval, timeout, …, http, tcp, grpc}`).
    pub health_check: PolicyRules,
    /// MeshCircuitBreaker: `to_rules` per outbound service; each conf is the merged `default`
    /// (`{connectionLimits, outlierDetection}`).
    pub circuit_breaker: PolicyRules,
    /// MeshTimeout: `to_rules` per outbound service and `from_rules` per inbound; confs as
    /// `meshzone_model::policies::mesh_timeout::TimeoutConf`.
    pub timeout: PolicyRules,
    /// MeshRetry: `to_rules` per outbound service; confs as
    /// `meshzone_model::policies::mesh_retry::RetryConf`.
    pub retry: PolicyRules,
    /// MeshTrace: the proxy-wide `proxy_rule`, whose conf is a merged
    /// `meshzone_model::policies::mesh_trace::TraceConf`.
    pub trace: PolicyRules,
    /// MeshAccessLog: `to_rules` per outbound service, `from_rules` and `inbound_rules` per
    /// inbound; confs as `meshzone_model::policies::mesh_access_log::AccessLogConf`.
    pub access_log: PolicyRules,
    /// Where Tcp access-log backends write for kuma-dp to forward
    /// (`mesh_access_log::socket_path` of the Dataplane's name and mesh).
    pub access_log_socket: String,
    /// MeshMetric: the proxy-wide `proxy_rule`, whose conf is a merged
    /// `meshzone_model::policies::mesh_metric::MetricConf`.
    pub metric: PolicyRules,
}

pub mod backend_refs;
mod filters;
pub mod inbound_http;
pub mod mesh_access_log;
mod mesh_circuit_breaker;
pub mod mesh_fault_injection;
pub(crate) mod mesh_health_check;
mod mesh_http_route;
mod mesh_load_balancing_strategy;
pub mod mesh_metric;
pub mod mesh_rate_limit;
pub mod mesh_retry;
mod mesh_tcp_route;
pub mod mesh_timeout;
pub mod mesh_trace;
mod resilience;
pub mod zone_egress;

use crate::generate::{ProxyInput, Resources};

/// A policy type's configurer: edits the typed resources of one proxy from that proxy's input
/// (its [`ProxyPolicies`] included).
pub type Configurer = fn(&ProxyInput<'_>, &mut Resources);

/// Every configurer, in the order they run (Kuma's plugin order: MeshHTTPRoute 100,
/// MeshTCPRoute 200, …, MeshTrafficPermission 1100). One line per policy type.
pub const CONFIGURERS: &[(&str, Configurer)] = &[
    ("MeshHTTPRoute", mesh_http_route::configure),
    ("MeshTCPRoute", mesh_tcp_route::configure),
    (
        "MeshLoadBalancingStrategy",
        mesh_load_balancing_strategy::configure,
    ),
    ("MeshAccessLog", mesh_access_log::configure),
    ("MeshTrace", mesh_trace::configure),
    ("MeshFaultInjection", mesh_fault_injection::configure),
    ("MeshRateLimit", mesh_rate_limit::configure),
    ("MeshTimeout", mesh_timeout::configure),
    ("MeshTrafficPermission", mesh_traffic_permission::configure),
    ("MeshHealthCheck", mesh_health_check::configure),
    ("MeshCircuitBreaker", mesh_circuit_breaker::configure),
    ("MeshRetry", mesh_retry::configure),
    ("MeshMetric", mesh_metric::configure),
];

/// Applies every policy's configurer to the base resources of a proxy, in [`CONFIGURERS`]
/// order. None of them sees packed bytes.
pub fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    for (_, configurer) in CONFIGURERS {
        configurer(input, resources);
    }
}
