//! What the inbound HTTP policies (MeshFaultInjection, MeshRateLimit) share: editing an
//! inbound chain's HTTP connection manager, putting a filter before the router, finding an
//! inbound's `from` rules, and the caller header.
//!
//! **The caller.** Kuma matches a fault's clients on the `x-kuma-tags` header the client's
//! outbound sets, which an application outside the mesh can forge. Here the inbound itself
//! writes the caller header from the verified peer certificate: a `header_mutation` filter
//! (before every fault filter) sets [`CALLER_HEADER`] to `,<URI SAN>,<URI SAN>,` with Envoy's
//! `%DOWNSTREAM_PEER_URI_SAN%` (the SANs joined by commas), overwriting whatever the client
//! sent. A fault's `headers` then match `contains ",<principal>,"` — the same principal names
//! as MeshTrafficPermission (`spiffe://<mesh>/<service>`, `kuma://<tag>/<value>`), negated
//! tags with `invert_match`. kuma-dp enforces the same filters from the same plan: it writes
//! the header from the SANs of the certificate it verified and evaluates the matchers. Without
//! mTLS there is no certificate: the header is `,,` and only rules without tags (`from: Mesh`)
//! apply.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::HeaderMutation as MutationRule;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::header_mutation::Action as MutationAction;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use meshzone_model::policy::{PolicyRules, Rule, TagMatcher};
use meshzone_model::specs::{Inbound, SERVICE_TAG};
use prost::{Message, Name};

use crate::generate::{spiffe, tag_uri};

/// The request header the inbound sets to the caller's certificate URI SANs.
pub const CALLER_HEADER: &str = "x-meshzone-caller-sans";
/// Its value: the SANs between commas, so `,<name>,` matches one SAN exactly.
pub const CALLER_HEADER_VALUE: &str = ",%DOWNSTREAM_PEER_URI_SAN%,";
pub const HEADER_MUTATION_FILTER: &str = "envoy.filters.http.header_mutation";

/// The `from` rules of one inbound (empty when no policy of the type selects it).
pub(crate) fn inbound_rules<'a>(rules: &'a PolicyRules, inbound: &Inbound) -> &'a [Rule] {
    rules
        .from_rules
        .iter()
        .find(|f| f.inbound.port == inbound.port)
        .map(|f| f.rules.as_slice())
        .unwrap_or_default()
}

/// Edits the HTTP connection manager of a chain, if it has one; false for a TCP chain.
pub(crate) fn edit_hcm(
    chain: &mut FilterChain,
    edit: impl FnOnce(&mut HttpConnectionManager),
) -> bool {
    let hcm = chain
        .filters
        .iter_mut()
        .find_map(|f| match &mut f.config_type {
            Some(FilterConfigType::TypedConfig(any))
                if any.type_url == HttpConnectionManager::type_url() =>
            {
                Some(any)
            }
            _ => None,
        });
    let Some(any) = hcm else { return false };
    // Our own base builders packed this manager; its bytes always decode.
    let mut manager = HttpConnectionManager::decode(any.value.as_slice())
        .expect("the base builders packed an HttpConnectionManager");
    edit(&mut manager);
    *any = pack_any(manager);
    true
}

/// Puts an HTTP filter just before the router (the last filter).
pub(crate) fn insert_before_router(hcm: &mut HttpConnectionManager, name: &str, config: Any) {
    let at = hcm.http_filters.len().saturating_sub(1);
    hcm.http_filters.insert(
        at,
        HttpFilter {
            name: name.into(),
            config_type: Some(HttpFilterConfigType::TypedConfig(config)),
            ..Default::default()
        },
    );
}

/// The filter that writes [`CALLER_HEADER`] from the peer certificate (see the module doc).
pub(crate) fn caller_header_filter() -> Any {
    pack_any(HeaderMutation {
        mutations: Some(Mutations {
            request_mutations: vec![MutationRule {
                action: Some(MutationAction::Append(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: CALLER_HEADER.into(),
                        value: CALLER_HEADER_VALUE.into(),
                        ..Default::default()
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The header matchers of one rule subset: every tag must hold (a negated one must not).
pub(crate) fn caller_matchers(mesh: &str, matchers: &[TagMatcher]) -> Vec<HeaderMatcher> {
    matchers
        .iter()
        .map(|m| {
            let name = if m.key == SERVICE_TAG {
                spiffe(mesh, &m.value)
            } else {
                tag_uri(&m.key, &m.value)
            };
            HeaderMatcher {
                name: CALLER_HEADER.into(),
                invert_match: m.not,
                treat_missing_header_as_empty: true,
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::Contains(format!(",{name},"))),
                    ..Default::default()
                })),
            }
        })
        .collect()
}
