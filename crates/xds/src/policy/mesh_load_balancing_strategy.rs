//! MeshLoadBalancingStrategy's configurer (Kuma plugin order 400; fact sheet §2.6). For each
//! outbound EDS cluster whose service has a rule (the service's own cluster and its subset
//! clusters `<service>_<h>`):
//!
//! - `loadBalancer.type` → `Cluster.lb_policy` and its `lb_config` (least request's choice count
//!   and active request bias, ring hash's function and ring sizes, maglev's table size);
//! - locality awareness edits the load assignment: `disabled` puts every locality at priority 0;
//!   otherwise local localities stay at 0, other zones go to 1, or with `crossZone.failover` to
//!   `i + 1` for the first rule `i` that applies to this proxy's zone (`from` unset or naming
//!   it) and covers the endpoint's zone; a zone no rule covers is removed. Priorities are then
//!   renumbered densely (Envoy wants no gaps; an empty priority only spills over anyway).
//!   Endpoints without a zone (the local zone egress standing for every remote zone) count as
//!   one remote locality: they cannot be told apart by zone here.
//! - `localZone.affinityTags` splits the local locality into groups (`sub_zone` `key=value`):
//!   endpoints sharing the proxy's value of tag `i` (first match wins) weigh `weight` or
//!   `9·10^(n-i-1)`, the rest 1, and the cluster gets `locality_weighted_lb_config`;
//! - with `localZone` or `crossZone`, the assignment's `overprovisioning_factor` is
//!   `100 / failoverThreshold.percentage × 100`, 200 without a threshold.
//!
//! `hashPolicies` (or the deprecated per-balancer ones) go on every route of the service's HTTP
//! outbound as `hash_policy`; a TCP outbound hashes only by source IP (`tcp_proxy.hash_policy`,
//! the one hash a TCP proxy has), when a `Connection{sourceIP}` or `SourceIP` policy is given.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, LocalityWeightedLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction as EnvoyHashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, LbConfig, LbPolicy, LeastRequestLbConfig,
    MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::RuntimeDouble;
use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy as ClaPolicy;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
    ConnectionProperties, Cookie, FilterState, Header, PolicySpecifier, QueryParameter,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::r#type::v3::HashPolicy as TcpHashPolicy;
use envoy_types::pb::envoy::r#type::v3::hash_policy::{
    PolicySpecifier as TcpPolicySpecifier, SourceIp,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use meshzone_model::policies::mesh_load_balancing_strategy::{
    HashFunction, HashPolicyType, LbConf, LbType, LocalityAwareness,
};
use meshzone_model::specs::{Tags, ZONE_TAG};
use meshzone_model::policies::duration::parse_non_negative as parse_duration;
use prost::{Message, Name};

use crate::generate::{ListenerOrigin, ProxyInput, Resources};

/// The runtime key of least request's bias: no runtime layer sets it, so the default applies.
pub const ACTIVE_REQUEST_BIAS_KEY: &str = "meshzone.lb.active_request_bias";

/// The overprovisioning factor Kuma sets when locality awareness is configured: failover starts
/// when fewer than 50 % of a priority's endpoints are healthy.
const DEFAULT_OVERPROVISIONING: u32 = 200;

/// The merged conf of `service`, if a policy selects it (an unreadable conf counts as none:
/// validation made it, so that does not happen).
fn conf_for(input: &ProxyInput<'_>, service: &str) -> Option<LbConf> {
    let rule = input.policies.load_balancing.to_rule(service)?;
    serde_json::from_value(rule.conf.clone()).ok()
}

/// The service an outbound EDS cluster is for: its own name, or `<service>_<8 hex>` of a subset.
fn service_of<'a>(cluster: &'a str, input: &ProxyInput<'_>) -> &'a str {
    if input.endpoints.contains_key(cluster) || input.protocols.contains_key(cluster) {
        return cluster;
    }
    match cluster.rsplit_once('_') {
        Some((service, h)) if h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()) => service,
        _ => cluster,
    }
}

/// The tags of the proxy (its first inbound), which locality awareness compares to.
fn own_tags<'a>(input: &'a ProxyInput<'_>) -> Option<&'a Tags> {
    input.dataplane.networking.inbound.first().map(|i| &i.tags)
}

fn is_eds(c: &Cluster) -> bool {
    matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// `lb_policy` and `lb_config` of the balancer type.
fn balancer(cluster: &mut Cluster, conf: &LbConf) {
    let Some(lb) = &conf.load_balancer else {
        return;
    };
    let (policy, config) = match lb.lb_type {
        LbType::RoundRobin => (LbPolicy::RoundRobin, None),
        LbType::Random => (LbPolicy::Random, None),
        LbType::LeastRequest => {
            let lr = lb.least_request.clone().unwrap_or_default();
            let config = LeastRequestLbConfig {
                choice_count: lr.choice_count.and_then(u32v),
                active_request_bias: lr.active_request_bias.and_then(|b| b.value()).map(
                    |default_value| RuntimeDouble {
                        default_value,
                        runtime_key: ACTIVE_REQUEST_BIAS_KEY.into(),
                    },
                ),
                ..Default::default()
            };
            (
                LbPolicy::LeastRequest,
                Some(LbConfig::LeastRequestLbConfig(config)),
            )
        }
        LbType::RingHash => {
            let rh = lb.ring_hash.clone().unwrap_or_default();
            let hash_function = match rh.hash_function {
                Some(HashFunction::MurmurHash2) => EnvoyHashFunction::MurmurHash2,
                _ => EnvoyHashFunction::XxHash,
            };
            let size = |n: Option<u32>| {
                n.map(|value| UInt64Value {
                    value: value.into(),
                })
            };
            let config = RingHashLbConfig {
                minimum_ring_size: size(rh.min_ring_size),
                maximum_ring_size: size(rh.max_ring_size),
                hash_function: hash_function as i32,
            };
            (LbPolicy::RingHash, Some(LbConfig::RingHashLbConfig(config)))
        }
        LbType::Maglev => {
            let table_size =
                lb.maglev
                    .as_ref()
                    .and_then(|m| m.table_size)
                    .map(|value| UInt64Value {
                        value: value.into(),
                    });
            (
                LbPolicy::Maglev,
                Some(LbConfig::MaglevLbConfig(MaglevLbConfig { table_size })),
            )
        }
    };
    cluster.lb_policy = policy as i32;
    cluster.lb_config = config;
}

/// The `host:port` of an endpoint.
fn endpoint_address(e: &LbEndpoint) -> Option<(&str, u32)> {
    let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return None;
    };
    let Some(AddressKind::SocketAddress(sa)) = ep.address.as_ref()?.address.as_ref() else {
        return None;
    };
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return None;
    };
    Some((sa.address.as_str(), port))
}

/// The priority of a non-local locality in `zone` (`None`: the egress), or `None` to drop it.
fn remote_priority(
    la: &LocalityAwareness,
    own_zone: Option<&str>,
    zone: Option<&str>,
) -> Option<u32> {
    let failover = la.cross_zone.as_ref().and_then(|c| c.failover.as_ref());
    let (Some(failover), Some(zone)) = (failover, zone) else {
        return Some(1);
    };
    failover
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            f.from
                .as_ref()
                .is_none_or(|from| own_zone.is_some_and(|z| from.zones.iter().any(|x| x == z)))
        })
        .find(|(_, f)| f.to.covers(zone))
        .map(|(i, _)| i as u32 + 1)
}

/// Splits the local locality by affinity tags into weighted groups.
fn affinity_groups(
    local: LocalityLbEndpoints,
    tags: &[(String, u32)],
    own: &Tags,
    endpoint_tags: &dyn Fn(&LbEndpoint) -> Option<Tags>,
) -> Vec<LocalityLbEndpoints> {
    let mut groups: BTreeMap<usize, Vec<LbEndpoint>> = BTreeMap::new();
    for e in local.lb_endpoints.iter().cloned() {
        let et = endpoint_tags(&e).unwrap_or_default();
        let group = tags
            .iter()
            .position(|(key, _)| own.get(key).is_some_and(|v| et.get(key) == Some(v)))
            .unwrap_or(tags.len());
        groups.entry(group).or_default().push(e);
    }
    groups
        .into_iter()
        .map(|(g, lb_endpoints)| {
            let mut locality = local.locality.clone().unwrap_or_default();
            let weight = match tags.get(g) {
                Some((key, weight)) => {
                    locality.sub_zone =
                        format!("{key}={}", own.get(key).map_or("", String::as_str));
                    *weight
                }
                None => 1,
            };
            LocalityLbEndpoints {
                locality: Some(locality),
                lb_endpoints,
                load_balancing_weight: u32v(weight),
                ..local.clone()
            }
        })
        .collect()
}

/// Locality awareness on the assignment of a cluster of `service`; whether localities were
/// weighted (the cluster then needs `locality_weighted_lb_config`).
fn localities(
    input: &ProxyInput<'_>,
    service: &str,
    cla: &mut ClusterLoadAssignment,
    la: &LocalityAwareness,
) -> bool {
    if la.disabled == Some(true) {
        for l in &mut cla.endpoints {
            l.priority = 0;
        }
        return false;
    }
    let own = own_tags(input);
    let own_zone = own.and_then(|t| t.get(ZONE_TAG)).map(String::as_str);
    let affinity: Vec<(String, u32)> = la
        .local_zone
        .as_ref()
        .and_then(|l| l.affinity_tags.as_ref())
        .map(|tags| {
            let n = tags.len() as u32;
            tags.iter()
                .enumerate()
                .map(|(i, t)| {
                    let default = 9u32.saturating_mul(10u32.saturating_pow(n - 1 - i as u32));
                    (t.key.clone(), t.weight.unwrap_or(default))
                })
                .collect()
        })
        .unwrap_or_default();
    let service_endpoints = input.endpoints.get(service);
    let endpoint_tags = |e: &LbEndpoint| {
        let (a, p) = endpoint_address(e)?;
        service_endpoints?
            .iter()
            .find(|x| x.address == a && x.port == p)
            .map(|x| x.tags.clone())
    };
    let mut weighted = false;
    let mut out = Vec::new();
    for mut l in std::mem::take(&mut cla.endpoints) {
        let zone = l
            .locality
            .as_ref()
            .map(|x| x.zone.as_str())
            .filter(|z| !z.is_empty());
        if zone == own_zone {
            l.priority = 0;
            match own {
                Some(own) if !affinity.is_empty() => {
                    weighted = true;
                    out.extend(affinity_groups(l, &affinity, own, &endpoint_tags));
                }
                _ => out.push(l),
            }
            continue;
        }
        if let Some(p) = remote_priority(la, own_zone, zone) {
            l.priority = p;
            out.push(l);
        }
    }
    // Dense priorities, in order.
    let mut used: Vec<u32> = out.iter().map(|l| l.priority).collect();
    used.sort_unstable();
    used.dedup();
    for l in &mut out {
        l.priority = used.iter().position(|p| *p == l.priority).unwrap_or(0) as u32;
    }
    out.sort_by_key(|l| l.priority);
    cla.endpoints = out;
    if la.local_zone.is_some() || la.cross_zone.is_some() {
        let factor = la
            .cross_zone
            .as_ref()
            .and_then(|c| c.failover_threshold.as_ref())
            .and_then(|t| t.overprovisioning_factor())
            .unwrap_or(DEFAULT_OVERPROVISIONING);
        cla.policy = Some(ClaPolicy {
            overprovisioning_factor: u32v(factor),
            ..Default::default()
        });
    }
    weighted
}

/// Envoy's route hash policies of a conf.
fn route_hash_policies(conf: &LbConf) -> Vec<HashPolicy> {
    conf.effective_hash_policies()
        .iter()
        .filter_map(|h| {
            let specifier = match h.hash_type {
                HashPolicyType::Header => PolicySpecifier::Header(Header {
                    header_name: h.header.as_ref()?.name.clone(),
                    ..Default::default()
                }),
                HashPolicyType::Cookie => {
                    let c = h.cookie.as_ref()?;
                    PolicySpecifier::Cookie(Cookie {
                        name: c.name.clone(),
                        ttl: c.ttl.as_deref().and_then(parse_duration).map(|d| Duration {
                            seconds: d.as_secs() as i64,
                            nanos: d.subsec_nanos() as i32,
                        }),
                        path: c.path.clone().unwrap_or_default(),
                        ..Default::default()
                    })
                }
                HashPolicyType::SourceIP => {
                    PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
                }
                HashPolicyType::Connection => {
                    PolicySpecifier::ConnectionProperties(ConnectionProperties {
                        source_ip: h.connection.as_ref()?.source_ip == Some(true),
                    })
                }
                HashPolicyType::QueryParameter => PolicySpecifier::QueryParameter(QueryParameter {
                    name: h.query_parameter.as_ref()?.name.clone(),
                }),
                HashPolicyType::FilterState => PolicySpecifier::FilterState(FilterState {
                    key: h.filter_state.as_ref()?.key.clone(),
                }),
            };
            Some(HashPolicy {
                terminal: h.terminal == Some(true),
                policy_specifier: Some(specifier),
            })
        })
        .collect()
}

/// Whether the conf hashes by source IP (the one hash a TCP outbound has).
fn hashes_source_ip(conf: &LbConf) -> bool {
    conf.effective_hash_policies()
        .iter()
        .any(|h| match h.hash_type {
            HashPolicyType::SourceIP => true,
            HashPolicyType::Connection => {
                h.connection.as_ref().and_then(|c| c.source_ip) == Some(true)
            }
            _ => false,
        })
}

/// Puts the hash policies on the outbound listener at `i`: every route of its HTTP connection
/// manager, or its `tcp_proxy`.
fn hash_outbound(resources: &mut Resources, i: usize, conf: &LbConf) {
    let http = route_hash_policies(conf);
    let source_ip = hashes_source_ip(conf);
    if http.is_empty() && !source_ip {
        return;
    }
    for chain in &mut resources.listeners[i].listener.filter_chains {
        for filter in &mut chain.filters {
            let Some(FilterConfigType::TypedConfig(any)) = &mut filter.config_type else {
                continue;
            };
            if any.type_url == HttpConnectionManager::type_url() && !http.is_empty() {
                let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                    continue;
                };
                let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier else {
                    continue;
                };
                for route in rc.virtual_hosts.iter_mut().flat_map(|v| &mut v.routes) {
                    if let Some(Action::Route(action)) = &mut route.action {
                        action.hash_policy = http.clone();
                    }
                }
                *any = pack_any(hcm);
            } else if any.type_url == TcpProxy::type_url() && source_ip {
                let Ok(mut tcp) = TcpProxy::decode(any.value.as_slice()) else {
                    continue;
                };
                tcp.hash_policy = vec![TcpHashPolicy {
                    policy_specifier: Some(TcpPolicySpecifier::SourceIp(SourceIp {})),
                }];
                *any = pack_any(tcp);
            }
        }
    }
}

pub(crate) fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    if input.policies.load_balancing.to_rules.is_empty() {
        return;
    }
    for c in 0..resources.clusters.len() {
        if !is_eds(&resources.clusters[c]) {
            continue;
        }
        let name = resources.clusters[c].name.clone();
        let service = service_of(&name, input);
        let Some(conf) = conf_for(input, service) else {
            continue;
        };
        balancer(&mut resources.clusters[c], &conf);
        let Some(la) = &conf.locality_awareness else {
            continue;
        };
        let Some(cla) = resources
            .assignments
            .iter_mut()
            .find(|a| a.cluster_name == name)
        else {
            continue;
        };
        if localities(input, service, cla, la) {
            resources.clusters[c].common_lb_config = Some(CommonLbConfig {
                locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    LocalityWeightedLbConfig {},
                )),
                ..Default::default()
            });
        }
    }
    for i in 0..resources.listeners.len() {
        let ListenerOrigin::Outbound { service } = &resources.listeners[i].origin else {
            continue;
        };
        if let Some(conf) = conf_for(input, &service.clone()) {
            hash_outbound(resources, i, &conf);
        }
    }
}
