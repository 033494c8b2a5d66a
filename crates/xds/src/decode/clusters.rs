//! Clusters and load assignments as a plan kuma-dp runs, field by field. kuma-dp balances with
//! weighted round robin over the lowest priority that has a healthy endpoint, runs the outlier
//! detection, connection limits and panic threshold the cluster asks for (`resilience.rs`),
//! connects within `connect_timeout`, speaks HTTP/1
//! or prior-knowledge HTTP/2, and originates mTLS. Every `Cluster` and `ClusterLoadAssignment`
//! field that would make Envoy do something else is a decode error naming the cluster and the
//! field path, so the control plane gets a NACK instead of a proxy that silently differs from
//! Envoy. Fields that change nothing kuma-dp must do (names, stats, settings of cluster types or
//! features refused elsewhere) pass; each is listed below with the reason.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, ClusterProtocolSelection, DiscoveryType,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig as ExplicitProtocol;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Name;

use super::resilience::{self, LimitsPlan, OutlierPlan};
use super::{
    ClusterPlan, DecodeError, EndpointPlan, err, socket_addr, tls_plan, transport_tls, unpack,
};

/// The key of the one typed extension protocol option kuma-dp reads.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Metadata namespaces that select endpoints or transport sockets (subset load balancing,
/// `transport_socket_matches`); other namespaces only annotate.
const MATCHING_METADATA: [&str; 2] = ["envoy.lb", "envoy.transport_socket_match"];

/// The cluster types kuma-dp runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discovery {
    Static,
    Eds,
    OriginalDst,
}

pub fn decode_cluster(any: &Any) -> Result<ClusterPlan, DecodeError> {
    let c: Cluster = unpack(any).map_err(|e| err("cluster", e))?;
    let name = c.name.clone();
    let discovery = match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Static as i32 => {
            Discovery::Static
        }
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32 => Discovery::Eds,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32 => {
            Discovery::OriginalDst
        }
        _ => {
            return Err(err(
                &name,
                "only STATIC, EDS and ORIGINAL_DST clusters are supported",
            ));
        }
    };
    check_cluster(&c, discovery).map_err(|(field, what)| err(&name, format!("{field}: {what}")))?;
    let static_endpoints = match discovery {
        Discovery::Static => {
            let cla = c
                .load_assignment
                .as_ref()
                .ok_or_else(|| err(&name, "static cluster without load_assignment"))?;
            Some(endpoints_of(&name, "load_assignment.", cla)?)
        }
        Discovery::Eds | Discovery::OriginalDst => None,
    };
    let mut origination = None;
    let tls = match transport_tls::<UpstreamTlsContext>(&name, c.transport_socket.as_ref())? {
        None => None,
        Some(u) if super::origination::is_origination(&u) => {
            origination = Some(super::origination::origination_plan(&name, &u)?);
            None
        }
        Some(u) => {
            let sni = Some(u.sni.clone()).filter(|s| !s.is_empty());
            Some(tls_plan(&name, u.common_tls_context.as_ref(), sni)?)
        }
    };
    let mut timeouts = super::ClusterTimeouts {
        connect: super::timeouts::connect_timeout(c.connect_timeout.as_ref())
            .map_err(|e| err(&name, e))?,
        ..Default::default()
    };
    let http2 =
        http2(&c, &mut timeouts).map_err(|(field, what)| err(&name, format!("{field}: {what}")))?;
    let r = resilience_of(&c, discovery)
        .map_err(|(field, what)| err(&name, format!("{field}: {what}")))?;
    let health_check = match discovery {
        Discovery::OriginalDst if !c.health_checks.is_empty() => Err(refuse(
            "health_checks",
            "kuma-dp does not check original destinations",
        )),
        _ => super::health_checks::health_check(&c.health_checks),
    }
    .map_err(|(field, what)| err(&name, format!("{field}: {what}")))?;
    Ok(ClusterPlan {
        name,
        static_endpoints,
        tls,
        http2,
        original_dst: discovery == Discovery::OriginalDst,
        limits: r.limits,
        outlier: r.outlier,
        panic_threshold: r.panic_threshold,
        fail_traffic_on_panic: r.fail_traffic_on_panic,
        timeouts,
        origination,
        health_check,
    })
}

pub fn decode_assignment(any: &Any) -> Result<(String, Vec<EndpointPlan>), DecodeError> {
    let cla: ClusterLoadAssignment = unpack(any).map_err(|e| err("cluster load assignment", e))?;
    let endpoints = endpoints_of(&cla.cluster_name, "", &cla)?;
    Ok((cla.cluster_name, endpoints))
}

/// A refused field: its path below the cluster and why.
type Refusal = (String, String);

fn refuse(field: impl Into<String>, what: impl Into<String>) -> Refusal {
    (field.into(), what.into())
}

fn not_enforced(field: &str) -> Refusal {
    refuse(field, "not enforced by kuma-dp")
}

/// Every cluster-level field, in the order of `cluster.proto`'s Rust struct. Deprecated
/// fields are read to refuse them.
#[allow(deprecated)]
fn check_cluster(c: &Cluster, discovery: Discovery) -> Result<(), Refusal> {
    // Fields refused whenever set, each with why kuma-dp cannot do what Envoy would.
    let refused: [(&str, bool, &str); 24] = [
        // One transport socket for every endpoint (read by `decode_cluster`).
        (
            "transport_socket_matches",
            !c.transport_socket_matches.is_empty(),
            "",
        ),
        (
            "transport_socket_matcher",
            c.transport_socket_matcher.is_some(),
            "",
        ),
        // Envoy's buffer sizes and watermark timeouts shape flow control; kuma-dp has its own.
        (
            "per_connection_buffer_limit_bytes",
            c.per_connection_buffer_limit_bytes.is_some(),
            "",
        ),
        (
            "per_connection_buffer_high_watermark_timeout",
            c.per_connection_buffer_high_watermark_timeout.is_some(),
            "",
        ),
        (
            "max_requests_per_connection",
            c.max_requests_per_connection.is_some(),
            "",
        ),
        // The deprecated protocol fields: kuma-dp reads `typed_extension_protocol_options` only.
        (
            "upstream_http_protocol_options",
            c.upstream_http_protocol_options.is_some(),
            "",
        ),
        (
            "common_http_protocol_options",
            c.common_http_protocol_options.is_some(),
            "",
        ),
        (
            "http_protocol_options",
            c.http_protocol_options.is_some(),
            "",
        ),
        (
            "http2_protocol_options",
            c.http2_protocol_options.is_some(),
            "",
        ),
        // Source address binding.
        ("upstream_bind_config", c.upstream_bind_config.is_some(), ""),
        ("lb_subset_config", c.lb_subset_config.is_some(), ""),
        (
            "protocol_selection",
            c.protocol_selection != ClusterProtocolSelection::UseConfiguredProtocol as i32,
            "",
        ),
        // TCP keepalive, happy eyeballs.
        (
            "upstream_connection_options",
            c.upstream_connection_options.is_some(),
            "",
        ),
        (
            "close_connections_on_host_health_failure",
            c.close_connections_on_host_health_failure,
            "",
        ),
        // Upstream network filters.
        ("filters", !c.filters.is_empty(), ""),
        (
            "load_balancing_policy",
            c.load_balancing_policy.is_some(),
            "",
        ),
        (
            "lrs_server",
            c.lrs_server.is_some(),
            "load reporting is not done by kuma-dp",
        ),
        (
            "lrs_report_endpoint_metrics",
            !c.lrs_report_endpoint_metrics.is_empty(),
            "load reporting is not done by kuma-dp",
        ),
        ("upstream_config", c.upstream_config.is_some(), ""),
        ("preconnect_policy", c.preconnect_policy.is_some(), ""),
        (
            "connection_pool_per_downstream_connection",
            c.connection_pool_per_downstream_connection,
            "",
        ),
        ("queuing_policies", c.queuing_policies.is_some(), ""),
        (
            "load_assignment",
            c.load_assignment.is_some() && discovery != Discovery::Static,
            "only a STATIC cluster carries its endpoints",
        ),
        (
            "eds_cluster_config",
            c.eds_cluster_config.is_some() && discovery != Discovery::Eds,
            "only for EDS clusters",
        ),
    ];
    if let Some((field, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err(match *why {
            "" => not_enforced(field),
            why => refuse(*field, why),
        });
    }
    // Passed: `name`, `alt_stat_name`, `stats_matcher`, `track_timeout_budgets`,
    // `track_cluster_stats` (what the cluster is called and counted, not what it does to
    // traffic); `dns_*`, `respect_dns_ttl`, `use_tcp_for_dns_lookups`,
    // `typed_dns_resolver_config` (only for DNS cluster types, which are refused);
    // `wait_for_warm_on_init` (Envoy's start-up ordering; kuma-dp serves as soon as a resource
    // is decoded); `cleanup_interval` (how often ORIGINAL_DST hosts are garbage-collected;
    // kuma-dp keeps none); `ignore_health_on_host_removal` (kuma-dp stops using an endpoint
    // as soon as the load assignment drops it, checked or not — Envoy keeps a removed endpoint
    // that still passes its active checks unless this is true).
    // `health_checks`: read by `decode_cluster` (`health_checks.rs`).
    // Read by `decode_cluster`: `transport_socket`, `typed_extension_protocol_options` (`http2`).
    if discovery == Discovery::Eds {
        let Some(eds) = &c.eds_cluster_config else {
            return Err(refuse(
                "eds_cluster_config",
                "required for an EDS cluster (kuma-dp receives endpoints over ADS)",
            ));
        };
        let ads = eds.eds_config.as_ref().is_some_and(|s| {
            matches!(
                s.config_source_specifier,
                Some(ConfigSourceSpecifier::Ads(_))
            ) && s.authorities.is_empty()
        });
        if !ads {
            return Err(refuse(
                "eds_cluster_config.eds_config",
                "kuma-dp receives endpoints over ADS only",
            ));
        }
        // kuma-dp keys load assignments by the cluster's own name.
        if !eds.service_name.is_empty() && eds.service_name != c.name {
            return Err(refuse(
                "eds_cluster_config.service_name",
                "kuma-dp reads the load assignment named like the cluster",
            ));
        }
    }
    // `connect_timeout` is read by `decode_cluster` (MeshTimeout's connectionTimeout).
    // `lb_policy`, `lb_config`, `common_lb_config`: read by `balancing` (its own refusals;
    // the panic threshold and `fail_traffic_on_panic` are `resilience`'s).
    super::balancing::cluster_balancing(c, discovery == Discovery::OriginalDst)?;
    if let Some(md) = &c.metadata {
        metadata("metadata", md)?;
    }
    Ok(())
}

/// The resilience part of the plan: connection limits, outlier detection, panic threshold.
fn resilience_of(c: &Cluster, discovery: Discovery) -> Result<Resilience, Refusal> {
    let outlier = match (&c.outlier_detection, discovery) {
        (None, _) => None,
        (Some(_), Discovery::OriginalDst) => {
            return Err(refuse(
                "outlier_detection",
                "kuma-dp does not eject original destinations",
            ));
        }
        (Some(od), _) => Some(resilience::outlier(od)?),
    };
    let (panic_threshold, fail_traffic_on_panic) =
        resilience::common_lb(c.common_lb_config.as_ref())?;
    Ok(Resilience {
        limits: resilience::limits(c.circuit_breakers.as_ref())?,
        outlier,
        panic_threshold,
        fail_traffic_on_panic,
    })
}

struct Resilience {
    limits: LimitsPlan,
    outlier: Option<OutlierPlan>,
    panic_threshold: u32,
    fail_traffic_on_panic: bool,
}

/// Whether the cluster speaks HTTP/2: `typed_extension_protocol_options` may only hold
/// `HttpProtocolOptions` with an explicit HTTP/2 configuration of Envoy's defaults.
fn http2(c: &Cluster, timeouts: &mut super::ClusterTimeouts) -> Result<bool, Refusal> {
    let mut keys: Vec<&String> = c.typed_extension_protocol_options.keys().collect();
    keys.sort();
    let mut http2 = false;
    for key in keys {
        let at = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_PROTOCOL_OPTIONS {
            return Err(not_enforced(&at));
        }
        let any = &c.typed_extension_protocol_options[key];
        if any.type_url != HttpProtocolOptions::type_url() {
            return Err(refuse(
                at,
                format!("{} is not enforced by kuma-dp", any.type_url),
            ));
        }
        let o: HttpProtocolOptions = unpack(any).map_err(|e| refuse(at.clone(), e))?;
        // Idle timeout and stream duration (MeshTimeout); header limits, requests per
        // connection and the rest are not applied by kuma-dp's HTTP client.
        if let Some(common) = &o.common_http_protocol_options {
            let at = format!("{at}.common_http_protocol_options");
            super::timeouts::cluster_http_options(common, &at, timeouts).map_err(|e| {
                match e.split_once(": ") {
                    Some((field, what)) => refuse(field, what),
                    None => refuse(at.clone(), e),
                }
            })?;
        }
        if o.upstream_http_protocol_options.is_some() {
            return Err(not_enforced(&format!(
                "{at}.upstream_http_protocol_options"
            )));
        }
        if !o.http_filters.is_empty() {
            return Err(not_enforced(&format!("{at}.http_filters")));
        }
        if o.header_validation_config.is_some() {
            return Err(not_enforced(&format!("{at}.header_validation_config")));
        }
        if o.outlier_detection.is_some() {
            return Err(not_enforced(&format!("{at}.outlier_detection")));
        }
        if !o.request_mirror_policies.is_empty() {
            return Err(not_enforced(&format!("{at}.request_mirror_policies")));
        }
        match &o.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ExplicitProtocol::Http2ProtocolOptions(h2)),
            })) => {
                // Stream limits, window sizes, keepalive: kuma-dp's HTTP/2 client has its own.
                if *h2 != Default::default() {
                    return Err(not_enforced(&format!(
                        "{at}.explicit_http_config.http2_protocol_options"
                    )));
                }
                http2 = true;
            }
            // HTTP/1 with Envoy's defaults (what MeshTimeout's options sit beside).
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ExplicitProtocol::HttpProtocolOptions(h1)),
            })) if *h1 == Default::default() => {}
            _ => {
                return Err(refuse(
                    format!("{at}.upstream_protocol_options"),
                    "only an explicit HTTP/2, or HTTP/1 with Envoy's defaults, is enforced by kuma-dp",
                ));
            }
        }
    }
    Ok(http2)
}

/// Metadata that selects endpoints or sockets is refused; the rest only annotates.
fn metadata(at: &str, md: &Metadata) -> Result<(), Refusal> {
    for ns in MATCHING_METADATA {
        if md.filter_metadata.contains_key(ns) {
            return Err(not_enforced(&format!("{at}.filter_metadata[{ns:?}]")));
        }
        if md.typed_filter_metadata.contains_key(ns) {
            return Err(not_enforced(&format!("{at}.typed_filter_metadata[{ns:?}]")));
        }
    }
    Ok(())
}

/// The endpoints of a load assignment (at `prefix`: `load_assignment.` inside a STATIC
/// cluster, empty for EDS), every field checked.
pub(crate) fn endpoints_of(
    name: &str,
    prefix: &str,
    cla: &ClusterLoadAssignment,
) -> Result<Vec<EndpointPlan>, DecodeError> {
    let fail = |field: String, what: &str| err(name, format!("{prefix}{field}: {what}"));
    if !cla.named_endpoints.is_empty() {
        return Err(fail("named_endpoints".into(), "not enforced by kuma-dp"));
    }
    if let Some(policy) = &cla.policy {
        // kuma-dp drops nothing; `overprovisioning_factor` is read by `balancing` (spill-over
        // between priorities as Envoy does it).
        if !policy.drop_overloads.is_empty() {
            return Err(fail(
                "policy.drop_overloads".into(),
                "not enforced by kuma-dp",
            ));
        }
        if policy
            .overprovisioning_factor
            .as_ref()
            .is_some_and(|f| f.value == 0)
        {
            return Err(fail(
                "policy.overprovisioning_factor".into(),
                "must be greater than 0",
            ));
        }
        if policy.endpoint_stale_after.is_some() {
            return Err(fail(
                "policy.endpoint_stale_after".into(),
                "not enforced by kuma-dp",
            ));
        }
        if policy.weighted_priority_health {
            return Err(fail(
                "policy.weighted_priority_health".into(),
                "not enforced by kuma-dp",
            ));
        }
    }
    let mut out = Vec::new();
    for (li, locality) in cla.endpoints.iter().enumerate() {
        let at = format!("endpoints[{li}]");
        // `locality`: its zone is read; region and sub-zone only annotate.
        // `load_balancing_weight`: read by `balancing` (used with locality-weighted
        // balancing). `proximity`: unused by Envoy. Pass.
        if let Some(md) = &locality.metadata {
            metadata(&format!("{at}.metadata"), md)
                .map_err(|(f, w)| err(name, format!("{prefix}{f}: {w}")))?;
        }
        if locality.lb_config.is_some() {
            return Err(fail(
                format!("{at}.lb_config"),
                "only inline lb_endpoints are read by kuma-dp",
            ));
        }
        let priority = locality.priority;
        let zone = locality
            .locality
            .as_ref()
            .map(|l| l.zone.clone())
            .filter(|z| !z.is_empty());
        for (ei, e) in locality.lb_endpoints.iter().enumerate() {
            let at = format!("{at}.lb_endpoints[{ei}]");
            if !matches!(
                HealthStatus::try_from(e.health_status),
                Ok(HealthStatus::Unknown | HealthStatus::Healthy)
            ) {
                return Err(fail(
                    format!("{at}.health_status"),
                    "only UNKNOWN and HEALTHY are enforced by kuma-dp",
                ));
            }
            if let Some(md) = &e.metadata {
                metadata(&format!("{at}.metadata"), md)
                    .map_err(|(f, w)| err(name, format!("{prefix}{f}: {w}")))?;
            }
            let via_zone_egress = e.metadata.as_ref().is_some_and(|md| {
                md.filter_metadata
                    .contains_key(crate::generate::ZONE_EGRESS_METADATA)
            });
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                return Err(fail(
                    format!("{at}.endpoint"),
                    "an endpoint with an address is required",
                ));
            };
            // `hostname`: used by Envoy's auto SNI / host rewrite, which are refused.
            // `observability_name`: stats. Pass. `health_check_config`: only "no probes" is
            // taken; another port, address or host for the probes is refused, as kuma-dp
            // probes an endpoint where its traffic goes.
            let no_active_health_check = match &ep.health_check_config {
                None => false,
                Some(h) if h.port_value == 0 && h.hostname.is_empty() && h.address.is_none() => {
                    h.disable_active_health_check
                }
                Some(_) => {
                    return Err(fail(
                        format!("{at}.endpoint.health_check_config"),
                        "kuma-dp probes an endpoint where its traffic goes (only disable_active_health_check is taken)",
                    ));
                }
            };
            if !ep.additional_addresses.is_empty() {
                return Err(fail(
                    format!("{at}.endpoint.additional_addresses"),
                    "not enforced by kuma-dp",
                ));
            }
            out.push(EndpointPlan {
                address: socket_addr(name, ep.address.as_ref())?,
                weight: e
                    .load_balancing_weight
                    .as_ref()
                    .map_or(1, |w| w.value.max(1)),
                zone: zone.clone(),
                priority,
                via_zone_egress,
                no_active_health_check,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
