//! Pure generation of a proxy's Envoy configuration from mesh state: one inbound listener per
//! inbound, one outbound listener per outbound, an application cluster per inbound, an EDS cluster
//! and a load assignment per outbound service, and (with mTLS) the identity certificate and mesh
//! CA as SDS secrets. No I/O, no clock.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, Locality, SocketAddress,
    TransportSocket, data_source,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::listener::v3::ApiListener;
use envoy_types::pb::envoy::config::route::v3::route::Action as RouteActionKind;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig as ExplicitProtocol;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use meshzone_model::specs::{DataplaneSpec, MeshSpec, PROTOCOL_TAG};

use crate::names::{self, TypeUrl};
use crate::policy::ProxyPolicies;

/// One instance of a service that a proxy may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub address: String,
    pub port: u32,
    pub weight: u32,
    pub zone: Option<String>,
    /// 0 is tried first; higher priorities only take traffic when no lower one has a healthy
    /// endpoint (locality-aware load balancing puts remote zones at 1).
    pub priority: u32,
}

/// Certificates of a proxy when its mesh has mTLS on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub identity_cert_pem: String,
    pub identity_key_pem: String,
    pub ca_cert_pem: String,
}

/// Everything the configuration of one proxy depends on.
#[derive(Debug, Clone)]
pub struct ProxyInput<'a> {
    pub mesh: &'a str,
    pub mesh_spec: &'a MeshSpec,
    pub dataplane: &'a DataplaneSpec,
    /// Reachable instances of each service in the mesh.
    pub endpoints: &'a BTreeMap<String, Vec<EndpointInfo>>,
    pub tls: Option<&'a TlsMaterial>,
    /// `kuma.io/protocol` of each service (absent: tcp).
    pub protocols: &'a BTreeMap<String, String>,
    /// A proxyless gRPC client (gRPC's own xDS support): it gets an API listener per outbound
    /// service, named after the service (`xds:///<service>`), routing to that service's cluster.
    pub proxyless: bool,
    /// Set when the Dataplane has `transparentProxying`: outbound traffic arrives redirected by
    /// iptables and is routed by its original destination.
    pub transparent: Option<Transparent<'a>>,
    /// What the policies selecting this proxy configure.
    pub policies: &'a ProxyPolicies,
}

/// Transparent proxying: one listener on the redirect port that dispatches each connection by
/// its original destination to a `VIP:80` listener (not bound to a socket), or passes it through
/// to where it was going. With inbound redirection too, inbound listeners are not bound either
/// (the application listens on its port) and a second redirect listener dispatches to them.
#[derive(Debug, Clone)]
pub struct Transparent<'a> {
    pub redirect_port_outbound: u32,
    pub redirect_port_inbound: Option<u32>,
    /// Service → its virtual IP (from the zone's DNS).
    pub vips: &'a BTreeMap<String, String>,
}

/// Port of the `VIP:port` listeners, the seed's convention (`<service>.mesh:80`).
pub const VIP_PORT: u32 = 80;

/// Listeners on the redirect ports, and the cluster that passes unknown destinations through.
pub const REDIRECT_LISTENER: &str = "outbound:redirect";
pub const INBOUND_REDIRECT_LISTENER: &str = "inbound:redirect";
pub const PASSTHROUGH_CLUSTER: &str = "outbound:passthrough";

/// A named, packed resource.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: String,
    pub resource: Any,
}

/// The complete configuration of a proxy, by type, each type with a content version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub types: BTreeMap<TypeUrl, TypeSnapshot>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeSnapshot {
    /// FNV-1a of every resource's name and bytes: equal content, equal version.
    pub version: String,
    pub resources: Vec<NamedResource>,
}

impl Snapshot {
    pub fn get(&self, type_url: TypeUrl) -> Option<&TypeSnapshot> {
        self.types.get(&type_url)
    }

    /// Same content, judged by the per-type content hashes (what proxies are sent by).
    pub fn same_versions(&self, other: &Snapshot) -> bool {
        self.types.len() == other.types.len()
            && self
                .types
                .iter()
                .all(|(t, ts)| other.get(*t).is_some_and(|o| o.version == ts.version))
    }
}

fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn type_snapshot(mut resources: Vec<NamedResource>) -> TypeSnapshot {
    resources.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = 0xcbf2_9ce4_8422_2325;
    for r in &resources {
        h = fnv1a(h, r.name.as_bytes());
        h = fnv1a(h, &r.resource.value);
    }
    TypeSnapshot {
        version: format!("{h:016x}"),
        resources,
    }
}

fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn sds(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads()),
    }
}

/// How traffic of a service is carried: bytes (tcp) or HTTP requests (L7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Http1,
    /// `http2` and `grpc`: HTTP/2 towards the application too.
    Http2,
}

fn protocol(tag: Option<&str>) -> Protocol {
    match tag {
        Some("http") => Protocol::Http1,
        Some("http2") | Some("grpc") => Protocol::Http2,
        _ => Protocol::Tcp,
    }
}

/// The listener's network filter: a TCP proxy, or for HTTP an HTTP connection manager that
/// routes every request to `cluster` (per-request balancing and statistics).
fn network_filter(stat_prefix: &str, cluster: &str, protocol: Protocol) -> Filter {
    if protocol == Protocol::Tcp {
        return tcp_proxy_filter(stat_prefix, cluster);
    }
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(FilterConfigType::TypedConfig(pack_any(
            http_connection_manager(stat_prefix, cluster),
        ))),
    }
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

fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(FilterConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        }))),
    }
}

/// TLS settings shared by both directions: our identity, the mesh CA, and which peer SANs pass.
fn common_tls(mesh: &str, san: StringMatcher) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(names::identity_secret(mesh))],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Uri as i32,
                        matcher: Some(san),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(names::ca_secret(mesh))),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn transport_socket(config: Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfigType::TypedConfig(config)),
    }
}

fn inline(text: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(
            text.as_bytes().to_vec(),
        )),
        ..Default::default()
    }
}

/// SNI a client sends for a service of a mesh (DNS-safe; see docs/adr/0002).
pub fn sni(service: &str, mesh: &str) -> String {
    format!("{service}.{mesh}.mesh")
}

/// Generates the whole configuration of one proxy.
pub fn generate(input: &ProxyInput<'_>) -> Snapshot {
    let mesh = input.mesh;
    let net = &input.dataplane.networking;
    let backend = input.mesh_spec.enabled_mtls_backend();
    let mtls = input.tls.is_some() && backend.is_some();
    // `mode: permissive` (any case): inbound also accepts plaintext, e.g. while migrating to mTLS.
    let permissive = backend
        .and_then(|b| b.mode.as_deref())
        .is_some_and(|m| m.eq_ignore_ascii_case("permissive"));
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    let mut assignments = Vec::new();

    let inbound_redirect = input
        .transparent
        .as_ref()
        .and_then(|t| t.redirect_port_inbound);
    for inbound in &net.inbound {
        let address = inbound.address.as_deref().unwrap_or(&net.address);
        let name = names::inbound_listener(address, inbound.port);
        let service_port = inbound.service_port.unwrap_or(inbound.port);
        let service_address = inbound.service_address.as_deref().unwrap_or(address);
        let app_cluster = names::app_cluster(service_port);
        let inbound_protocol = protocol(inbound.tags.get(PROTOCOL_TAG).map(String::as_str));
        let mut chain = FilterChain {
            filters: vec![network_filter(&name, &app_cluster, inbound_protocol)],
            ..Default::default()
        };
        let mut chains = Vec::new();
        let mut listener_filters = Vec::new();
        if mtls && permissive {
            // Plaintext is accepted too: the TLS inspector picks the chain.
            listener_filters.push(tls_inspector());
            chains.push(FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    transport_protocol: "raw_buffer".into(),
                    ..Default::default()
                }),
                filters: vec![network_filter(&name, &app_cluster, inbound_protocol)],
                ..Default::default()
            });
            chain.filter_chain_match = Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            });
        }
        if mtls {
            chain.transport_socket = Some(transport_socket(pack_any(DownstreamTlsContext {
                common_tls_context: Some(common_tls(
                    mesh,
                    StringMatcher {
                        match_pattern: Some(MatchPattern::Prefix(format!("spiffe://{mesh}/"))),
                        ..Default::default()
                    },
                )),
                require_client_certificate: Some(BoolValue { value: true }),
                ..Default::default()
            })));
        }
        chains.insert(0, chain);
        listeners.push(NamedResource {
            name: name.clone(),
            resource: pack_any(Listener {
                name: name.clone(),
                address: Some(socket(address, inbound.port)),
                filter_chains: chains,
                listener_filters,
                bind_to_port: inbound_redirect.map(|_| BoolValue { value: false }),
                ..Default::default()
            }),
        });
        clusters.push(NamedResource {
            name: app_cluster.clone(),
            resource: pack_any(Cluster {
                name: app_cluster.clone(),
                connect_timeout: Some(Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                    DiscoveryType::Static as i32,
                )),
                typed_extension_protocol_options: if inbound_protocol == Protocol::Http2 {
                    http2_upstream().into_iter().collect()
                } else {
                    Default::default()
                },
                load_assignment: Some(ClusterLoadAssignment {
                    cluster_name: app_cluster.clone(),
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![lb_endpoint(service_address, service_port, 1)],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        });
    }

    // Explicit outbounds are bound; a transparent proxy's `VIP:80` listeners are not (the
    // redirect listener hands them connections by original destination).
    let mut outbounds: Vec<(String, u32, &str, bool)> = net
        .outbound
        .iter()
        .filter_map(|o| Some((o.address().to_string(), o.port, o.service()?, true)))
        .collect();
    if let Some(t) = &input.transparent {
        for (service, vip) in t.vips {
            if input.endpoints.contains_key(service) {
                outbounds.push((vip.clone(), VIP_PORT, service.as_str(), false));
            }
        }
        let redirects = std::iter::once((REDIRECT_LISTENER, t.redirect_port_outbound)).chain(
            t.redirect_port_inbound
                .map(|port| (INBOUND_REDIRECT_LISTENER, port)),
        );
        for (name, port) in redirects {
            listeners.push(NamedResource {
                name: name.into(),
                resource: pack_any(Listener {
                    name: name.into(),
                    address: Some(socket("0.0.0.0", port)),
                    use_original_dst: Some(BoolValue { value: true }),
                    filter_chains: vec![FilterChain {
                        filters: vec![tcp_proxy_filter(name, PASSTHROUGH_CLUSTER)],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            });
        }
        clusters.push(NamedResource {
            name: PASSTHROUGH_CLUSTER.into(),
            resource: pack_any(Cluster {
                name: PASSTHROUGH_CLUSTER.into(),
                connect_timeout: Some(Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                lb_policy: LbPolicy::ClusterProvided as i32,
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                    DiscoveryType::OriginalDst as i32,
                )),
                ..Default::default()
            }),
        });
    }
    let mut seen_services = std::collections::BTreeSet::new();
    for (address, port, service, bind) in outbounds {
        if input.proxyless && !seen_services.contains(service) {
            listeners.push(NamedResource {
                name: service.to_string(),
                resource: pack_any(api_listener(service)),
            });
        }
        let name = names::outbound_listener(&address, port);
        let outbound_protocol = protocol(input.protocols.get(service).map(String::as_str));
        listeners.push(NamedResource {
            name: name.clone(),
            resource: pack_any(Listener {
                name: name.clone(),
                address: Some(socket(&address, port)),
                filter_chains: vec![FilterChain {
                    filters: vec![network_filter(&name, service, outbound_protocol)],
                    ..Default::default()
                }],
                bind_to_port: (!bind).then_some(BoolValue { value: false }),
                ..Default::default()
            }),
        });
        if !seen_services.insert(service.to_string()) {
            continue;
        }
        let mut cluster = eds_cluster(service);
        if outbound_protocol == Protocol::Http2 {
            cluster.typed_extension_protocol_options = http2_upstream().into_iter().collect();
        }
        if mtls {
            cluster.transport_socket = Some(transport_socket(pack_any(UpstreamTlsContext {
                sni: sni(service, mesh),
                common_tls_context: Some(common_tls(
                    mesh,
                    StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(meshzone_pki_spiffe(
                            mesh, service,
                        ))),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })));
        }
        clusters.push(NamedResource {
            name: service.to_string(),
            resource: pack_any(cluster),
        });
        let endpoints = input
            .endpoints
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assignments.push(NamedResource {
            name: service.to_string(),
            resource: pack_any(load_assignment(service, endpoints)),
        });
    }

    let mut secrets = Vec::new();
    if let (true, Some(tls)) = (mtls, input.tls) {
        secrets.push(NamedResource {
            name: names::identity_secret(mesh),
            resource: pack_any(Secret {
                name: names::identity_secret(mesh),
                r#type: Some(SecretType::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(&tls.identity_cert_pem)),
                    private_key: Some(inline(&tls.identity_key_pem)),
                    ..Default::default()
                })),
            }),
        });
        secrets.push(NamedResource {
            name: names::ca_secret(mesh),
            resource: pack_any(Secret {
                name: names::ca_secret(mesh),
                r#type: Some(SecretType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(inline(&tls.ca_cert_pem)),
                        ..Default::default()
                    },
                )),
            }),
        });
    }

    snapshot_of(listeners, clusters, assignments, secrets)
}

fn snapshot_of(
    listeners: Vec<NamedResource>,
    clusters: Vec<NamedResource>,
    assignments: Vec<NamedResource>,
    secrets: Vec<NamedResource>,
) -> Snapshot {
    let mut snapshot = Snapshot::default();
    for (url, resources) in [
        (TypeUrl::Listener, listeners),
        (TypeUrl::Cluster, clusters),
        (TypeUrl::ClusterLoadAssignment, assignments),
        (TypeUrl::Secret, secrets),
    ] {
        snapshot.types.insert(url, type_snapshot(resources));
    }
    snapshot
}

fn meshzone_pki_spiffe(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// Endpoints grouped into localities by (priority, zone).
fn load_assignment(cluster: &str, endpoints: &[EndpointInfo]) -> ClusterLoadAssignment {
    let mut groups: BTreeMap<(u32, Option<&str>), Vec<LbEndpoint>> = BTreeMap::new();
    for e in endpoints {
        groups
            .entry((e.priority, e.zone.as_deref()))
            .or_default()
            .push(lb_endpoint(&e.address, e.port, e.weight));
    }
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: groups
            .into_iter()
            .map(|((priority, zone), lb_endpoints)| LocalityLbEndpoints {
                // Always present (gRPC requires it), empty without a zone.
                locality: Some(Locality {
                    zone: zone.unwrap_or_default().to_string(),
                    ..Default::default()
                }),
                // gRPC drops localities without a weight; Envoy ignores it unless
                // locality-weighted balancing is on.
                load_balancing_weight: Some(UInt32Value {
                    value: lb_endpoints
                        .iter()
                        .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
                        .sum::<u32>()
                        .max(1),
                }),
                lb_endpoints,
                priority,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A zone proxy (ingress or egress): one listener that routes each TLS connection by its SNI to
/// the endpoints of that SNI, passing the TLS through untouched. Connections whose SNI is not
/// listed, or that are not TLS, match no filter chain and are closed.
#[derive(Debug, Clone)]
pub struct SniRouterInput<'a> {
    pub listener_name: &'a str,
    pub address: &'a str,
    pub port: u32,
    /// SNI → where connections carrying it go.
    pub routes: &'a BTreeMap<String, Vec<EndpointInfo>>,
}

/// Generates the whole configuration of a zone ingress or egress. Without routes there is no
/// listener (Envoy refuses a listener without filter chains), so connections are refused.
pub fn generate_sni_router(input: &SniRouterInput<'_>) -> Snapshot {
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    let mut assignments = Vec::new();
    let mut chains = Vec::new();
    for (sni, endpoints) in input.routes {
        chains.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![sni.clone()],
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(sni, sni)],
            ..Default::default()
        });
        clusters.push(NamedResource {
            name: sni.clone(),
            resource: pack_any(eds_cluster(sni)),
        });
        assignments.push(NamedResource {
            name: sni.clone(),
            resource: pack_any(load_assignment(sni, endpoints)),
        });
    }
    if !chains.is_empty() {
        listeners.push(NamedResource {
            name: input.listener_name.to_string(),
            resource: pack_any(Listener {
                name: input.listener_name.to_string(),
                address: Some(socket(input.address, input.port)),
                filter_chains: chains,
                listener_filters: vec![tls_inspector()],
                ..Default::default()
            }),
        });
    }
    snapshot_of(listeners, clusters, assignments, Vec::new())
}

/// A round-robin cluster whose endpoints come by EDS (over ADS) under its own name.
fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(Duration {
            seconds: 5,
            nanos: 0,
        }),
        lb_policy: LbPolicy::RoundRobin as i32,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        outlier_detection: Some(passive_health()),
        ..Default::default()
    }
}

/// Passive health, as kuma-dp does it: an endpoint that refuses or times out a connection is
/// ejected for 10 s, so traffic moves to the other endpoints or the next priority (another zone)
/// without waiting for the control plane.
fn passive_health() -> OutlierDetection {
    OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: Some(UInt32Value { value: 1 }),
        enforcing_consecutive_local_origin_failure: Some(UInt32Value { value: 100 }),
        base_ejection_time: Some(Duration {
            seconds: 10,
            nanos: 0,
        }),
        max_ejection_percent: Some(UInt32Value { value: 100 }),
        ..Default::default()
    }
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

fn lb_endpoint(address: &str, port: u32, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(address, port)),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value {
            value: weight.max(1),
        }),
        ..Default::default()
    }
}

/// An API listener for a proxyless gRPC client: HTTP connection manager with an inline route
/// sending every request to the service's cluster.
fn api_listener(service: &str) -> Listener {
    Listener {
        name: service.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(http_connection_manager(service, service))),
        }),
        ..Default::default()
    }
}

/// HTTP connection manager with an inline route sending every request to `cluster`.
fn http_connection_manager(stat_prefix: &str, cluster: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: cluster.to_string(),
            virtual_hosts: vec![VirtualHost {
                name: cluster.to_string(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix(String::new())),
                        ..Default::default()
                    }),
                    action: Some(RouteActionKind::Route(RouteAction {
                        cluster_specifier: Some(RouteCluster::Cluster(cluster.to_string())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    }
}
