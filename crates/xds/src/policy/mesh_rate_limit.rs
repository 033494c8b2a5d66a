//! MeshRateLimit's configurer (Kuma's `plugin/xds/configurer.go` and
//! `xds/envoy/routes/v3/ratelimit.go`, reference §2.10). The conf is the inbound's `from` rule
//! for every client (the empty tag set, Kuma's `MeshElement`), so the limits are per inbound:
//!
//! - HTTP: `envoy.filters.http.local_ratelimit` before the router of the inbound's HTTP
//!   connection manager (a bare `stat_prefix: rate_limit`, enforcing nothing by itself), and on
//!   every route `typed_per_filter_config` with the limit: token bucket `max_tokens =
//!   tokens_per_fill = num`, `fill_interval = interval`, enabled and enforced for 100 %, the
//!   `status` when set (Envoy answers 429 otherwise) and `response_headers_to_add` (`add`
//!   appends, `set` overwrites).
//! - TCP: `envoy.filters.network.local_ratelimit` (`stat_prefix: tcp_rate_limit`, a token
//!   bucket of connections) before the chain's last filter, on every chain of the inbound.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as HttpLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as NetworkLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, HttpStatus, TokenBucket};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use meshzone_model::policies::mesh_rate_limit::{LocalConf, Rate, RateLimitConf};

use super::inbound_http::{edit_hcm, insert_before_router};
use crate::generate::{ListenerOrigin, ProxyInput, Resources};

pub const HTTP_FILTER: &str = "envoy.filters.http.local_ratelimit";
pub const NETWORK_FILTER: &str = "envoy.filters.network.local_ratelimit";
/// Kuma's stat prefixes: `<hcm prefix>.rate_limit.http_local_rate_limit.*` … Envoy roots the
/// HTTP stats at `<stat_prefix>.http_local_rate_limit.` and the network ones at
/// `local_ratelimit.<stat_prefix>.`.
pub const HTTP_STAT_PREFIX: &str = "rate_limit";
pub const TCP_STAT_PREFIX: &str = "tcp_rate_limit";

fn bucket(rate: &Rate) -> Option<TokenBucket> {
    let (num, interval) = rate.parsed()?;
    Some(TokenBucket {
        max_tokens: num,
        tokens_per_fill: Some(UInt32Value { value: num }),
        fill_interval: Some(PbDuration {
            seconds: i64::try_from(interval.as_secs()).ok()?,
            nanos: i32::try_from(interval.subsec_nanos()).ok()?,
        }),
    })
}

fn all_of(runtime_key: &str) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: runtime_key.into(),
    }
}

/// The per-route HTTP limit of a conf; `None` when HTTP is not limited.
pub(crate) fn http_limit(local: &LocalConf) -> Option<HttpLocalRateLimit> {
    let http = local.http.as_ref().filter(|h| h.disabled != Some(true))?;
    let token_bucket = bucket(http.request_rate.as_ref()?)?;
    let on = http.on_rate_limit.clone().unwrap_or_default();
    let header = |h: &meshzone_model::policies::mesh_rate_limit::Header,
                  action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: h.name.clone(),
            value: h.value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let headers = on.headers.unwrap_or_default();
    Some(HttpLocalRateLimit {
        stat_prefix: HTTP_STAT_PREFIX.into(),
        status: on
            .status
            .and_then(|s| i32::try_from(s).ok())
            .map(|code| HttpStatus { code }),
        token_bucket: Some(token_bucket),
        filter_enabled: Some(all_of("local_rate_limit_enabled")),
        filter_enforced: Some(all_of("local_rate_limit_enforced")),
        response_headers_to_add: headers
            .add
            .iter()
            .map(|h| header(h, HeaderAppendAction::AppendIfExistsOrAdd))
            .chain(
                headers
                    .set
                    .iter()
                    .map(|h| header(h, HeaderAppendAction::OverwriteIfExistsOrAdd)),
            )
            .collect(),
        ..Default::default()
    })
}

/// The TCP connection limit of a conf; `None` when connections are not limited.
pub(crate) fn tcp_limit(local: &LocalConf) -> Option<NetworkLocalRateLimit> {
    let tcp = local.tcp.as_ref().filter(|t| t.disabled != Some(true))?;
    Some(NetworkLocalRateLimit {
        stat_prefix: TCP_STAT_PREFIX.into(),
        token_bucket: Some(bucket(tcp.connection_rate.as_ref()?)?),
        ..Default::default()
    })
}

fn limit_routes(hcm: &mut HttpConnectionManager, limit: &HttpLocalRateLimit) {
    insert_before_router(
        hcm,
        HTTP_FILTER,
        pack_any(HttpLocalRateLimit {
            stat_prefix: HTTP_STAT_PREFIX.into(),
            ..Default::default()
        }),
    );
    if let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier {
        for vh in &mut rc.virtual_hosts {
            for route in &mut vh.routes {
                route
                    .typed_per_filter_config
                    .insert(HTTP_FILTER.into(), pack_any(limit.clone()));
            }
        }
    }
}

fn limit_connections(chain: &mut FilterChain, limit: &NetworkLocalRateLimit) {
    let at = chain.filters.len().saturating_sub(1);
    chain.filters.insert(
        at,
        Filter {
            name: NETWORK_FILTER.into(),
            config_type: Some(FilterConfigType::TypedConfig(pack_any(limit.clone()))),
        },
    );
}

/// The configurer: the limits of each inbound's every-client conf on its chains.
pub fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    let inbounds = &input.dataplane.networking.inbound;
    let everyone = Default::default();
    for generated in &mut resources.listeners {
        let ListenerOrigin::Inbound { index } = generated.origin else {
            continue;
        };
        let Some(inbound) = inbounds.get(index) else {
            continue;
        };
        let Some(rule) = input.policies.rate_limit.from_rule(inbound.port, &everyone) else {
            continue;
        };
        let conf: RateLimitConf = serde_json::from_value(rule.conf.clone()).unwrap_or_default();
        let Some(local) = conf.local else { continue };
        let (http, tcp) = (http_limit(&local), tcp_limit(&local));
        for chain in &mut generated.listener.filter_chains {
            if let Some(limit) = &tcp {
                limit_connections(chain, limit);
            }
            if let Some(limit) = &http {
                edit_hcm(chain, |hcm| limit_routes(hcm, limit));
            }
        }
    }
}
