//! MeshTrafficPermission's configurer (Kuma's `legacy_rbac_configurer.go`, reference §2.1):
//! with mTLS on, every filter chain of every inbound listener gets an RBAC filter that allows
//! only the clients of the inbound's Allow / AllowWithShadowDeny rule subsets.
//!
//! - A chain with an HTTP connection manager gets `envoy.filters.http.rbac` first in its HTTP
//!   filters (decided per request); a TCP chain gets `envoy.filters.network.rbac` first in its
//!   network filters (decided per connection), with `stat_prefix: "<listener, sanitized>."`.
//! - `rules`: action ALLOW, one policy `MeshTrafficPermission` with `permissions: [any]` and the
//!   allowing subsets as principals. An inbound without rules gets zero policies, which denies
//!   every client (Kuma's default deny).
//! - `shadow_rules`: action DENY with the AllowWithShadowDeny subsets (omitted when none).
//!
//! Without mTLS there is no client identity and the policy has no effect (Kuma: "Mesh is not
//! Mtls enabled this policy will have no effect").
//!
//! Permissive mTLS: the plaintext chain gets the same filter as the TLS chain, as Kuma's
//! configurer does (it edits every chain of the inbound). A plaintext client has no certificate,
//! so no `authenticated` principal matches it: it is allowed only by a subset that holds without
//! identity — an empty subset (`from: Mesh`, principal `any`) or one made only of negations
//! (`not_id` of a name it does not carry). Permissive mode is thus no way around a permission.

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier, Set};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac, permission};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::util::pack_any;
use meshzone_model::policy::{Rule, TagMatcher};
use meshzone_model::specs::SERVICE_TAG;
use prost::{Message, Name};

use crate::generate::{ListenerOrigin, ProxyInput, Resources, sanitize_stat, spiffe, tag_uri};

/// Name of the one RBAC policy, as Kuma names it.
pub const POLICY_NAME: &str = "MeshTrafficPermission";
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";

/// What a rule's `action` does to the clients of its subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    AllowWithShadowDeny,
    Deny,
}

/// A rule's action; anything but the two allowing actions denies (validation admits only the
/// three names, so this only decides what an unreadable conf does: it fails closed).
fn action(rule: &Rule) -> Verdict {
    match rule.conf.get("action").and_then(|a| a.as_str()) {
        Some("Allow") => Verdict::Allow,
        Some("AllowWithShadowDeny") => Verdict::AllowWithShadowDeny,
        _ => Verdict::Deny,
    }
}

/// The RBAC principals of one inbound's rules: (allowed, shadow-denied).
pub fn principals(mesh: &str, rules: &[Rule]) -> (Vec<Principal>, Vec<Principal>) {
    let mut allow = Vec::new();
    let mut shadow = Vec::new();
    for rule in rules {
        match action(rule) {
            Verdict::Allow => allow.push(subset_principal(mesh, &rule.matchers)),
            Verdict::AllowWithShadowDeny => {
                allow.push(subset_principal(mesh, &rule.matchers));
                shadow.push(subset_principal(mesh, &rule.matchers));
            }
            Verdict::Deny => {}
        }
    }
    (allow, shadow)
}

/// One subset as a principal: `any` when empty, the tag's principal for one matcher, `and_ids`
/// for several.
fn subset_principal(mesh: &str, matchers: &[TagMatcher]) -> Principal {
    let identifier = match matchers {
        [] => Identifier::Any(true),
        [one] => return tag_principal(mesh, one),
        many => Identifier::AndIds(Set {
            ids: many.iter().map(|m| tag_principal(mesh, m)).collect(),
        }),
    };
    Principal {
        identifier: Some(identifier),
    }
}

/// `kuma.io/service: s` is the SPIFFE ID `spiffe://<mesh>/s`; any other tag is
/// `kuma://<tag>/<value>`; a negated matcher wraps it in `not_id`.
fn tag_principal(mesh: &str, m: &TagMatcher) -> Principal {
    let name = if m.key == SERVICE_TAG {
        spiffe(mesh, &m.value)
    } else {
        tag_uri(&m.key, &m.value)
    };
    let principal = Principal {
        identifier: Some(Identifier::Authenticated(Authenticated {
            principal_name: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(name)),
                ..Default::default()
            }),
        })),
    };
    if m.not {
        Principal {
            identifier: Some(Identifier::NotId(Box::new(principal))),
        }
    } else {
        principal
    }
}

fn rbac(action: Action, principals: Vec<Principal>) -> Rbac {
    Rbac {
        action: action as i32,
        policies: std::iter::once((
            POLICY_NAME.to_string(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals,
                ..Default::default()
            },
        ))
        .collect(),
        ..Default::default()
    }
}

/// The `rules` and `shadow_rules` of one inbound. No allowing principal: zero policies (ALLOW
/// with nothing allowed denies everyone).
fn rules_of(mesh: &str, rules: &[Rule]) -> (Rbac, Option<Rbac>) {
    let (allow, shadow) = principals(mesh, rules);
    let rules = if allow.is_empty() {
        Rbac {
            action: Action::Allow as i32,
            ..Default::default()
        }
    } else {
        rbac(Action::Allow, allow)
    };
    let shadow_rules = (!shadow.is_empty()).then(|| rbac(Action::Deny, shadow));
    (rules, shadow_rules)
}

/// Puts the RBAC filter first in one filter chain: HTTP RBAC inside its HTTP connection
/// manager, network RBAC otherwise.
fn protect_chain(chain: &mut FilterChain, stat_prefix: &str, rules: &Rbac, shadow: &Option<Rbac>) {
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
    if let Some(any) = hcm {
        // Our own base builders packed this manager; its bytes always decode.
        let mut manager = HttpConnectionManager::decode(any.value.as_slice())
            .expect("the base builders packed an HttpConnectionManager");
        manager.http_filters.insert(
            0,
            HttpFilter {
                name: HTTP_RBAC_FILTER.into(),
                config_type: Some(HttpFilterConfigType::TypedConfig(pack_any(HttpRbac {
                    rules: Some(rules.clone()),
                    shadow_rules: shadow.clone(),
                    ..Default::default()
                }))),
                ..Default::default()
            },
        );
        *any = pack_any(manager);
        return;
    }
    chain.filters.insert(
        0,
        Filter {
            name: NETWORK_RBAC_FILTER.into(),
            config_type: Some(FilterConfigType::TypedConfig(pack_any(NetworkRbac {
                rules: Some(rules.clone()),
                shadow_rules: shadow.clone(),
                stat_prefix: stat_prefix.to_string(),
                ..Default::default()
            }))),
        },
    );
}

/// RBAC on a zone egress's chain of an ExternalService of `mesh`, from the service's rules
/// (none: every client is denied, as on an inbound).
pub(crate) fn protect_external_chain(
    chain: &mut FilterChain,
    mesh: &str,
    rules: &[Rule],
    stat_prefix: &str,
) {
    let (rules, shadow) = rules_of(mesh, rules);
    protect_chain(chain, stat_prefix, &rules, &shadow);
}

/// The configurer: RBAC on every chain of every inbound listener, when the mesh has mTLS.
pub fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    if input.mtls().is_none() {
        return;
    }
    let inbounds = &input.dataplane.networking.inbound;
    for generated in &mut resources.listeners {
        let ListenerOrigin::Inbound { index } = generated.origin else {
            continue;
        };
        let Some(inbound) = inbounds.get(index) else {
            continue;
        };
        let rules = input
            .policies
            .traffic_permission
            .from_rules
            .iter()
            .find(|f| f.inbound.port == inbound.port)
            .map(|f| f.rules.as_slice())
            .unwrap_or_default();
        let (rules, shadow) = rules_of(input.mesh, rules);
        let listener = &mut generated.listener;
        let stat_prefix = format!("{}.", sanitize_stat(&listener.name));
        for chain in &mut listener.filter_chains {
            protect_chain(chain, &stat_prefix, &rules, &shadow);
        }
    }
}

#[cfg(test)]
mod tests;
