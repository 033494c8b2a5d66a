//! Base builder: clusters. An application cluster per inbound (static, the local application),
//! an EDS cluster per outbound service (with the mesh's mTLS towards it), the passthrough
//! cluster of a transparent proxy, and the EDS clusters of a zone proxy's SNI routes.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig as ExplicitProtocol;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::PASSTHROUGH_CLUSTER;
use super::common::{Protocol, ads, common_tls, inline, sni, spiffe, transport_socket};
use super::endpoints::lb_endpoint;

fn connect_timeout() -> Option<Duration> {
    Some(Duration {
        seconds: 5,
        nanos: 0,
    })
}

/// The static cluster of an inbound: its application at `address:port`.
pub(crate) fn app_cluster(name: &str, address: &str, port: u32, protocol: Protocol) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: connect_timeout(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        typed_extension_protocol_options: if protocol == Protocol::Http2 {
            http2_upstream().into_iter().collect()
        } else {
            Default::default()
        },
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(address, port, 1)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The original-destination cluster a transparent proxy passes unknown destinations to.
pub(crate) fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        connect_timeout: connect_timeout(),
        lb_policy: LbPolicy::ClusterProvided as i32,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        ..Default::default()
    }
}

/// The cluster of an outbound service; with mTLS it accepts only the service's SPIFFE ID.
pub(crate) fn outbound_cluster(
    service: &str,
    mesh: &str,
    protocol: Protocol,
    mtls: bool,
) -> Cluster {
    destination_cluster(service, service, &sni(service, mesh), mesh, protocol, mtls)
}

/// An EDS cluster `name` towards `service`: with mTLS it sends `sni` (a subset's SNI names its
/// tags, so that a zone ingress picks the matching instances) and accepts only the service's
/// SPIFFE ID.
pub(crate) fn destination_cluster(
    name: &str,
    service: &str,
    sni: &str,
    mesh: &str,
    protocol: Protocol,
    mtls: bool,
) -> Cluster {
    let mut cluster = eds_cluster(name);
    if protocol == Protocol::Http2 {
        cluster.typed_extension_protocol_options = http2_upstream().into_iter().collect();
    }
    if mtls {
        cluster.transport_socket = Some(transport_socket(pack_any(UpstreamTlsContext {
            sni: sni.to_string(),
            common_tls_context: Some(common_tls(
                mesh,
                StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(spiffe(mesh, service))),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })));
    }
    cluster
}

/// The EDS cluster of an ExternalService reached directly: plain TCP, or TLS originated with
/// the user's CA (inline `trusted_ca`, the server name matched as a DNS SAN), optional client
/// certificate and SNI, as Kuma does.
pub(crate) fn external_cluster(
    service: &str,
    protocol: Protocol,
    tls: Option<&super::OriginatedTls>,
) -> Cluster {
    let mut cluster = eds_cluster(service);
    if protocol == Protocol::Http2 {
        cluster.typed_extension_protocol_options = http2_upstream().into_iter().collect();
    }
    if let Some(t) = tls {
        let validation = t.ca_pem.as_ref().map(|ca| {
            ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: Some(inline(ca)),
                match_typed_subject_alt_names: t
                    .verify_name
                    .iter()
                    .map(|n| SubjectAltNameMatcher {
                        san_type: SanType::Dns as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(n.clone())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        });
        let certificates = match (&t.client_cert_pem, &t.client_key_pem) {
            (Some(cert), Some(key)) => vec![TlsCertificate {
                certificate_chain: Some(inline(cert)),
                private_key: Some(inline(key)),
                ..Default::default()
            }],
            _ => Vec::new(),
        };
        cluster.transport_socket = Some(transport_socket(pack_any(UpstreamTlsContext {
            sni: t.sni.clone().unwrap_or_default(),
            allow_renegotiation: t.allow_renegotiation,
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: certificates,
                validation_context_type: validation,
                ..Default::default()
            }),
            ..Default::default()
        })));
    }
    cluster
}

/// Speak HTTP/2 to the cluster's endpoints.
fn http2_upstream() -> BTreeMap<String, Any> {
    BTreeMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        pack_any(HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ExplicitProtocol::Http2ProtocolOptions(
                        Default::default(),
                    )),
                },
            )),
            ..Default::default()
        }),
    )])
}

/// A round-robin cluster whose endpoints come by EDS (over ADS) under its own name. A
/// sidecar's outbound clusters get outlier detection from MeshCircuitBreaker only (the mesh's
/// default policy has it), as in Kuma.
pub(crate) fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: connect_timeout(),
        lb_policy: LbPolicy::RoundRobin as i32,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        ..Default::default()
    }
}

/// The EDS cluster of a zone proxy's SNI route, with passive health.
pub(crate) fn zone_proxy_cluster(name: &str) -> Cluster {
    Cluster {
        outlier_detection: Some(passive_health()),
        ..eds_cluster(name)
    }
}

/// Passive health of a zone proxy (which no policy configures): an endpoint that refuses or times out a connection is
/// ejected for 10 s, so traffic moves to the other endpoints or the next priority (another zone)
/// without waiting for the control plane. Envoy's other detectors, on by default (5 consecutive
/// 5xx, success rates), are switched off, and every ejection lasts the base time (Envoy would
/// otherwise lengthen repeated ones), so that Envoy ejects what kuma-dp ejects
/// (`decode::clusters` refuses any other shape).
fn passive_health() -> OutlierDetection {
    let ejection = Some(Duration {
        seconds: 10,
        nanos: 0,
    });
    OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: Some(UInt32Value { value: 1 }),
        enforcing_consecutive_local_origin_failure: Some(UInt32Value { value: 100 }),
        enforcing_consecutive_5xx: Some(UInt32Value { value: 0 }),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        enforcing_local_origin_success_rate: Some(UInt32Value { value: 0 }),
        base_ejection_time: ejection,
        max_ejection_time: ejection,
        max_ejection_percent: Some(UInt32Value { value: 100 }),
        ..Default::default()
    }
}
