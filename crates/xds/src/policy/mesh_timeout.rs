//! MeshTimeout's configurer (Kuma plugin order 1000; fact sheet §2.2). For an outbound (the
//! `to` rule of its service) and an inbound (its `from` rule): the listener's HTTP connection
//! manager gets `request_headers_timeout` and a downstream idle timeout of 0 (idle moved to the
//! cluster), every route `timeout` (requestTimeout) and `idle_timeout` (streamIdleTimeout); a
//! TCP proxy gets `idle_timeout`. The clusters get `connect_timeout` and, for HTTP, the
//! `HttpProtocolOptions` common options `idle_timeout`, `max_stream_duration` and
//! `max_connection_duration`. Unset fields take Kuma's built-in defaults (5s, 1h, 15s, 30m);
//! an outbound or inbound no MeshTimeout selects is left as the base builders made it.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, HttpProtocolOptions as CommonOptions};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig as ExplicitProtocol;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::util::pack_any;
use meshzone_model::policies::mesh_timeout::TimeoutConf;
use meshzone_model::specs::Tags;
use prost::{Message, Name};

use super::filters::{
    NetFilter, cluster_service, duration_or, edit_filters, pb, route_actions, typed,
};
use crate::generate::common::{Protocol, protocol};
use crate::generate::{ListenerOrigin, ProxyInput, Resources};
use crate::names;

/// Kuma's fallbacks when a selected conf leaves a field unset.
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
pub const DEFAULT_REQUEST: Duration = Duration::from_secs(15);
pub const DEFAULT_STREAM_IDLE: Duration = Duration::from_secs(30 * 60);

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The `to` conf of `service`, if a MeshTimeout gives one.
fn outbound_conf(input: &ProxyInput<'_>, service: &str) -> Option<TimeoutConf> {
    typed(&input.policies.timeout.to_rule(service)?.conf)
}

/// The `from` conf of the inbound on `port` (only `from: Mesh` exists, so any client).
fn inbound_conf(input: &ProxyInput<'_>, port: u32) -> Option<TimeoutConf> {
    typed(&input.policies.timeout.from_rule(port, &Tags::new())?.conf)
}

fn configure_listener(
    listener: &mut envoy_types::pb::envoy::config::listener::v3::Listener,
    conf: &TimeoutConf,
) {
    let http = conf.http.clone().unwrap_or_default();
    edit_filters(listener, |f| match f {
        NetFilter::Hcm(hcm) => {
            hcm.common_http_protocol_options = Some(CommonOptions {
                idle_timeout: Some(pb(Duration::ZERO)),
                ..Default::default()
            });
            if let Some(d) = http.request_headers_timeout.as_ref() {
                let d = duration_or(Some(d), Duration::ZERO);
                hcm.request_headers_timeout = (!d.is_zero()).then(|| pb(d));
            }
            let request = duration_or(http.request_timeout.as_ref(), DEFAULT_REQUEST);
            let stream_idle = duration_or(http.stream_idle_timeout.as_ref(), DEFAULT_STREAM_IDLE);
            for action in route_actions(hcm) {
                action.timeout = Some(pb(request));
                action.idle_timeout = Some(pb(stream_idle));
            }
        }
        NetFilter::Tcp(tcp) => {
            tcp.idle_timeout = Some(pb(duration_or(conf.idle_timeout.as_ref(), DEFAULT_IDLE)));
        }
    });
}

fn configure_cluster(cluster: &mut Cluster, conf: &TimeoutConf, http: bool) {
    cluster.connect_timeout = Some(pb(duration_or(
        conf.connection_timeout.as_ref(),
        DEFAULT_CONNECT,
    )));
    if !http {
        return;
    }
    let timeouts = conf.http.clone().unwrap_or_default();
    let optional = |s: Option<&String>| {
        let d = duration_or(s, Duration::ZERO);
        (!d.is_zero()).then(|| pb(d))
    };
    let mut options = cluster
        .typed_extension_protocol_options
        .get(HTTP_OPTIONS)
        .filter(|a| a.type_url == HttpProtocolOptions::type_url())
        .and_then(|a| HttpProtocolOptions::decode(a.value.as_slice()).ok())
        .unwrap_or_else(|| HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ExplicitProtocol::HttpProtocolOptions(
                        Http1ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        });
    options.common_http_protocol_options = Some(CommonOptions {
        idle_timeout: Some(pb(duration_or(conf.idle_timeout.as_ref(), DEFAULT_IDLE))),
        max_stream_duration: optional(timeouts.max_stream_duration.as_ref()),
        max_connection_duration: optional(timeouts.max_connection_duration.as_ref()),
        ..Default::default()
    });
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_OPTIONS.to_string(), pack_any(options));
}

pub(crate) fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    let net = &input.dataplane.networking;
    for generated in &mut resources.listeners {
        let conf = match &generated.origin {
            ListenerOrigin::Outbound { service } => outbound_conf(input, service),
            ListenerOrigin::Inbound { index } => net
                .inbound
                .get(*index)
                .and_then(|i| inbound_conf(input, i.port)),
            _ => None,
        };
        if let Some(conf) = conf {
            configure_listener(&mut generated.listener, &conf);
        }
    }
    // Inbound application clusters: the inbound's `from` conf.
    for inbound in &net.inbound {
        let Some(conf) = inbound_conf(input, inbound.port) else {
            continue;
        };
        let name = names::app_cluster(inbound.service_port.unwrap_or(inbound.port));
        let http = protocol(
            inbound
                .tags
                .get(meshzone_model::specs::PROTOCOL_TAG)
                .map(String::as_str),
        ) != Protocol::Tcp;
        if let Some(c) = resources.clusters.iter_mut().find(|c| c.name == name) {
            configure_cluster(c, &conf, http);
        }
    }
    // Outbound clusters (subsets included): the `to` conf of the service they lead to.
    for cluster in &mut resources.clusters {
        let Some(service) = cluster_service(input, &cluster.name) else {
            continue;
        };
        let Some(conf) = outbound_conf(input, service) else {
            continue;
        };
        let http = protocol(input.protocols.get(service).map(String::as_str)) != Protocol::Tcp;
        configure_cluster(cluster, &conf, http);
    }
}
