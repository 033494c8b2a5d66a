//! Base builder: listeners and their network filters. An inbound listener per inbound (mTLS
//! required, or also plaintext in permissive mode), an outbound listener per outbound, the
//! redirect listeners of a transparent proxy, API listeners for proxyless gRPC, and the SNI
//! router of a zone proxy.

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
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
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{BoolValue, ListValue, Struct, Value, value};
use envoy_types::util::pack_any;

use super::PASSTHROUGH_CLUSTER;
use super::common::{Protocol, common_tls, socket, transport_socket};

/// How an inbound listener accepts connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InboundTls<'a> {
    pub mesh: &'a str,
    /// `mode: permissive`: plaintext is accepted too (a second chain, picked by the TLS
    /// inspector).
    pub permissive: bool,
}

/// The listener of one inbound, forwarding to its application cluster. With `tls`, the first
/// chain requires a client certificate of the mesh (`spiffe://<mesh>/…`); in permissive mode a
/// second, plaintext chain follows it.
pub(crate) fn inbound_listener(
    name: &str,
    address: &str,
    port: u32,
    app_cluster: &str,
    protocol: Protocol,
    tls: Option<InboundTls<'_>>,
    bind: bool,
) -> Listener {
    let mut chain = FilterChain {
        filters: vec![network_filter(name, app_cluster, protocol)],
        ..Default::default()
    };
    let mut chains = Vec::new();
    let mut listener_filters = Vec::new();
    if let Some(tls) = tls {
        if tls.permissive {
            // Plaintext is accepted too: the TLS inspector picks the chain.
            listener_filters.push(tls_inspector());
            chains.push(FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    transport_protocol: "raw_buffer".into(),
                    ..Default::default()
                }),
                filters: vec![network_filter(name, app_cluster, protocol)],
                ..Default::default()
            });
            chain.filter_chain_match = Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            });
        }
        chain.transport_socket = Some(transport_socket(pack_any(DownstreamTlsContext {
            common_tls_context: Some(common_tls(
                tls.mesh,
                StringMatcher {
                    match_pattern: Some(MatchPattern::Prefix(format!("spiffe://{}/", tls.mesh))),
                    ..Default::default()
                },
            )),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        })));
    }
    chains.insert(0, chain);
    Listener {
        name: name.to_string(),
        address: Some(socket(address, port)),
        filter_chains: chains,
        listener_filters,
        bind_to_port: (!bind).then_some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// The listener of one outbound, forwarding to the service's cluster. A transparent proxy's
/// `VIP:80` listeners are not bound (the redirect listener hands them connections).
pub(crate) fn outbound_listener(
    name: &str,
    address: &str,
    port: u32,
    service: &str,
    protocol: Protocol,
    bind: bool,
) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket(address, port)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(name, service, protocol)],
            ..Default::default()
        }],
        bind_to_port: (!bind).then_some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// Metadata naming the DNS `hostnames` a listener's address answers ([`super::DNS_METADATA`]).
pub(crate) fn dns_metadata(hostnames: &[String]) -> Metadata {
    let list = ListValue {
        values: hostnames
            .iter()
            .map(|h| Value {
                kind: Some(value::Kind::StringValue(h.clone())),
            })
            .collect(),
    };
    let fields = [(
        "hostnames".to_string(),
        Value {
            kind: Some(value::Kind::ListValue(list)),
        },
    )]
    .into_iter()
    .collect();
    Metadata {
        filter_metadata: [(super::DNS_METADATA.to_string(), Struct { fields })]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// A transparent proxy's redirect listener: dispatches by original destination, passing
/// unknown destinations through.
pub(crate) fn redirect_listener(name: &str, port: u32) -> Listener {
    Listener {
        name: name.into(),
        address: Some(socket("0.0.0.0", port)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![FilterChain {
            filters: vec![tcp_proxy_filter(name, PASSTHROUGH_CLUSTER)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A zone proxy's listener: one chain per SNI, passing the TLS through to that SNI's cluster.
pub(crate) fn sni_router_listener<'a>(
    name: &str,
    address: &str,
    port: u32,
    snis: impl IntoIterator<Item = &'a String>,
) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket(address, port)),
        filter_chains: snis
            .into_iter()
            .map(|sni| FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec![sni.clone()],
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_filter(sni, sni)],
                ..Default::default()
            })
            .collect(),
        listener_filters: vec![tls_inspector()],
        ..Default::default()
    }
}

/// A zone egress's chain for an ExternalService: matched by `sni`, terminating the mesh's mTLS
/// (a client certificate of the mesh required; ours is the egress's identity in the mesh),
/// then a TCP proxy to `cluster`. MeshTrafficPermission puts its RBAC filter first.
pub(crate) fn terminating_sni_chain(sni: &str, mesh: &str, cluster: &str) -> FilterChain {
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            server_names: vec![sni.to_string()],
            ..Default::default()
        }),
        filters: vec![tcp_proxy_filter(sni, cluster)],
        transport_socket: Some(transport_socket(pack_any(DownstreamTlsContext {
            common_tls_context: Some(common_tls(
                mesh,
                StringMatcher {
                    match_pattern: Some(MatchPattern::Prefix(format!("spiffe://{mesh}/"))),
                    ..Default::default()
                },
            )),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        }))),
        ..Default::default()
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

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// An API listener for a proxyless gRPC client: HTTP connection manager with an inline route
/// sending every request to the service's cluster.
pub(crate) fn api_listener(service: &str) -> Listener {
    Listener {
        name: service.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(http_connection_manager(service, service))),
        }),
        ..Default::default()
    }
}

/// HTTP connection manager with an inline route sending every request to `cluster`.
pub(crate) fn http_connection_manager(stat_prefix: &str, cluster: &str) -> HttpConnectionManager {
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
