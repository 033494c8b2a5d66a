//! Helpers the resilience configurers share: editing a listener's packed network filters in
//! place (HTTP connection manager or TCP proxy), the route actions of an inline route table,
//! the destination service of a cluster, and durations in protobuf form.

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteAction;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use prost::{Message, Name};
use serde_json::Value;

use crate::generate::ProxyInput;

/// A listener's network filter, unpacked for editing.
pub(crate) enum NetFilter<'a> {
    Hcm(&'a mut HttpConnectionManager),
    Tcp(&'a mut TcpProxy),
}

/// Calls `edit` on every HTTP connection manager and TCP proxy of every chain of `listener`,
/// packing each back.
pub(crate) fn edit_filters(listener: &mut Listener, mut edit: impl FnMut(NetFilter<'_>)) {
    for chain in &mut listener.filter_chains {
        for filter in &mut chain.filters {
            let Some(FilterConfigType::TypedConfig(any)) = &mut filter.config_type else {
                continue;
            };
            if any.type_url == HttpConnectionManager::type_url() {
                if let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
                    edit(NetFilter::Hcm(&mut hcm));
                    *any = pack_any(hcm);
                }
            } else if any.type_url == TcpProxy::type_url()
                && let Ok(mut tcp) = TcpProxy::decode(any.value.as_slice())
            {
                edit(NetFilter::Tcp(&mut tcp));
                *any = pack_any(tcp);
            }
        }
    }
}

/// Every forwarding action of the HTTP connection manager's inline route table.
pub(crate) fn route_actions(hcm: &mut HttpConnectionManager) -> Vec<&mut RouteAction> {
    let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier else {
        return Vec::new();
    };
    rc.virtual_hosts
        .iter_mut()
        .flat_map(|vh| vh.routes.iter_mut())
        .filter_map(|r| match &mut r.action {
            Some(Action::Route(a)) => Some(a),
            _ => None,
        })
        .collect()
}

/// The service an outbound cluster leads to: its own name, or for a subset cluster
/// `<service>_<hash>` the longest known service it starts with.
pub(crate) fn cluster_service<'a>(input: &'a ProxyInput<'_>, cluster: &str) -> Option<&'a str> {
    let known = input.endpoints.keys().chain(input.protocols.keys());
    known
        .filter(|s| {
            cluster == s.as_str()
                || cluster
                    .strip_prefix(s.as_str())
                    .is_some_and(|rest| rest.starts_with('_'))
        })
        .max_by_key(|s| s.len())
        .map(String::as_str)
}

pub(crate) fn pb(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The duration at `s` (a Go duration string), or `fallback`.
pub(crate) fn duration_or(
    s: Option<&String>,
    fallback: std::time::Duration,
) -> std::time::Duration {
    s.and_then(|s| meshzone_model::policies::duration::parse_non_negative(s))
        .unwrap_or(fallback)
}

/// The typed conf of a rule (validated when stored, so it parses).
pub(crate) fn typed<T: serde::de::DeserializeOwned>(conf: &Value) -> Option<T> {
    serde_json::from_value(conf.clone()).ok()
}
