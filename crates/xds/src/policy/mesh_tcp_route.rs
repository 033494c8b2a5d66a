//! MeshTCPRoute's configurer (Kuma plugin order 200): an outbound whose service has a
//! `tcp_route` rule sends each connection to its backendRefs with `tcp_proxy.weighted_clusters`
//! (fact sheet §2.8; Kuma uses `cluster` for one backend, the same to Envoy, but the split
//! form keeps the service in `stat_prefix` for kuma-dp: its DNS name under transparent proxying). On an HTTP outbound it applies
//! only when no MeshHTTPRoute does (MeshHTTPRoute wins), and then the outbound becomes TCP.

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, WeightedCluster,
};
use envoy_types::util::pack_any;
use serde_json::Value;

use super::backend_refs::{ensure_cluster, rule_backends};
use super::mesh_http_route::rules_for;
use crate::generate::common::{Protocol, protocol};
use crate::generate::{ListenerOrigin, ProxyInput, Resources};

/// The `tcp_proxy` of an outbound to `service` with the route's `rules` (one rule, no matches).
fn tcp_proxy(
    input: &ProxyInput<'_>,
    resources: &mut Resources,
    service: &str,
    rules: &[Value],
) -> Option<TcpProxy> {
    let default = rules.first()?.get("default")?;
    let mut clusters: Vec<(String, u32)> = rule_backends(default)
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| (ensure_cluster(input, resources, b), b.weight))
        .collect();
    if clusters.is_empty() {
        return None;
    }
    // Always weighted (even one backend), its stat_prefix the service: the proxy then still
    // knows which service the outbound is for (its DNS name under transparent proxying).
    let cluster_specifier = ClusterSpecifier::WeightedClusters(WeightedCluster {
        clusters: clusters
            .drain(..)
            .map(|(name, weight)| ClusterWeight {
                name,
                weight,
                metadata_match: None,
            })
            .collect(),
    });
    Some(TcpProxy {
        stat_prefix: service.to_string(),
        cluster_specifier: Some(cluster_specifier),
        ..Default::default()
    })
}

pub(crate) fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    for i in 0..resources.listeners.len() {
        let ListenerOrigin::Outbound { service } = &resources.listeners[i].origin else {
            continue;
        };
        let service = service.clone();
        let http = protocol(input.protocols.get(&service).map(String::as_str)) != Protocol::Tcp;
        if http && rules_for(&input.policies.http_route, &service).is_some() {
            continue;
        }
        let Some(rules) = rules_for(&input.policies.tcp_route, &service) else {
            continue;
        };
        let Some(tcp) = tcp_proxy(input, resources, &service, rules) else {
            continue;
        };
        let filter = Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(FilterConfigType::TypedConfig(pack_any(tcp))),
        };
        for chain in &mut resources.listeners[i].listener.filter_chains {
            chain.filters = vec![filter.clone()];
        }
    }
}
