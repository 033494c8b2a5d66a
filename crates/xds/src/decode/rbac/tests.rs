//! RBAC decoding: evaluation tables, NACK tables (every field kuma-dp does not enforce), and
//! round trips generate → decode checked against the policy engine's own decision.

use meshzone_model::specs::tags;
use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, CidrRange, SocketAddress};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::rbac::v3::principal::Set;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::util::pack_any;
use meshzone_model::policy::{Policy as EnginePolicy, ProxyDescription};
use meshzone_model::specs::{DataplaneSpec, MeshSpec, Tags};
use prost::Message;
use serde_json::json;

use super::*;
use crate::decode::decode_listener;
use crate::generate::{ProxyInput, TlsMaterial, generate};
use crate::names::TypeUrl;
use crate::policy::ProxyPolicies;

fn name(n: &str) -> PrincipalPlan {
    PrincipalPlan::Name(n.into())
}

fn sans(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn principals_evaluate_against_peer_sans() {
    let orders = || name("spiffe://default/orders");
    let east = || name("kuma://kuma.io/zone/east");
    let cases = [
        (
            "any admits a plaintext peer",
            PrincipalPlan::Any,
            vec![],
            true,
        ),
        (
            "a name needs the SAN",
            orders(),
            sans(&["spiffe://default/web"]),
            false,
        ),
        (
            "a name is found among several",
            orders(),
            sans(&["kuma://x/y", "spiffe://default/orders"]),
            true,
        ),
        (
            "no prefix matching",
            orders(),
            sans(&["spiffe://default/orders-v2"]),
            false,
        ),
        (
            "and: all",
            PrincipalPlan::And(vec![orders(), east()]),
            sans(&["spiffe://default/orders"]),
            false,
        ),
        (
            "and: all present",
            PrincipalPlan::And(vec![orders(), east()]),
            sans(&["spiffe://default/orders", "kuma://kuma.io/zone/east"]),
            true,
        ),
        (
            "or: one",
            PrincipalPlan::Or(vec![orders(), east()]),
            sans(&["kuma://kuma.io/zone/east"]),
            true,
        ),
        (
            "not: absent",
            PrincipalPlan::Not(Box::new(east())),
            sans(&["spiffe://default/orders"]),
            true,
        ),
        (
            "not: present",
            PrincipalPlan::Not(Box::new(east())),
            sans(&["kuma://kuma.io/zone/east"]),
            false,
        ),
        (
            "not: a plaintext peer carries nothing",
            PrincipalPlan::Not(Box::new(east())),
            vec![],
            true,
        ),
    ];
    for (what, principal, peer, want) in cases {
        assert_eq!(principal.matches(&peer), want, "{what}");
    }
}

#[test]
fn a_plan_allows_by_any_principal_and_counts_shadow_denies() {
    let plan = RbacPlan {
        stat_prefix: "p.".into(),
        allow: vec![name("spiffe://default/a"), name("spiffe://default/b")],
        shadow_deny: vec![name("spiffe://default/b")],
    };
    let cases = [("a", true, false), ("b", true, true), ("c", false, false)];
    for (client, allowed, shadow_denied) in cases {
        assert_eq!(
            plan.evaluate(&sans(&[&format!("spiffe://default/{client}")])),
            Verdict {
                allowed,
                shadow_denied
            },
            "{client}"
        );
    }
    let nobody = RbacPlan {
        stat_prefix: "p.".into(),
        allow: vec![],
        shadow_deny: vec![],
    };
    assert!(!nobody.evaluate(&[]).allowed, "no principal: nobody");
}

// ---------------------------------------------------------------------------------------------
// NACKs

fn exact(n: &str) -> Principal {
    Principal {
        identifier: Some(Identifier::Authenticated(Authenticated {
            principal_name: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(n.into())),
                ..Default::default()
            }),
        })),
    }
}

fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn rules(principals: Vec<Principal>) -> Rbac {
    Rbac {
        action: Action::Allow as i32,
        policies: [(
            "MeshTrafficPermission".to_string(),
            Policy {
                permissions: vec![any_permission()],
                principals,
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn good_network() -> NetworkRbac {
    NetworkRbac {
        rules: Some(rules(vec![exact("spiffe://default/orders")])),
        stat_prefix: "inbound_x.".into(),
        ..Default::default()
    }
}

/// A TCP inbound listener: `filters` (packed typed configs) then a tcp_proxy.
fn tcp_listener(front: Vec<Any>) -> Any {
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    let filter = |cfg: Any| Filter {
        name: "f".into(),
        config_type: Some(FilterConfigType::TypedConfig(cfg)),
    };
    let mut filters: Vec<Filter> = front.into_iter().map(filter).collect();
    filters.push(filter(pack_any(TcpProxy {
        stat_prefix: "x".into(),
        cluster_specifier: Some(ClusterSpecifier::Cluster("app".into())),
        ..Default::default()
    })));
    pack_any(Listener {
        name: "inbound:x".into(),
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(PortSpecifier::PortValue(1)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters,
            ..Default::default()
        }],
        ..Default::default()
    })
}

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

/// An HTTP inbound listener whose HCM has `http_filters`.
fn http_listener(http_filters: Vec<Any>) -> Any {
    use envoy_types::pb::envoy::config::listener::v3::Filter;
    let mut base = generated_listener(false, "http");
    let l = &mut base;
    let chain = &mut l.filter_chains[0];
    let Some(FilterConfigType::TypedConfig(cfg)) = &chain.filters[0].config_type else {
        panic!("typed hcm");
    };
    let mut hcm = HttpConnectionManager::decode(cfg.value.as_slice()).expect("hcm");
    hcm.http_filters = http_filters
        .into_iter()
        .map(|cfg| HttpFilter {
            name: "h".into(),
            config_type: Some(HttpFilterConfigType::TypedConfig(cfg)),
            ..Default::default()
        })
        .collect();
    chain.filters = vec![Filter {
        name: "hcm".into(),
        config_type: Some(FilterConfigType::TypedConfig(pack_any(hcm))),
    }];
    pack_any(base)
}

fn router() -> Any {
    pack_any(envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default())
}

fn decode_err(any: &Any) -> String {
    match decode_listener(any) {
        Ok(plan) => panic!("decoded: {plan:?}"),
        Err(e) => e.to_string(),
    }
}

fn policy(f: &mut NetworkRbac) -> &mut Policy {
    f.rules
        .as_mut()
        .and_then(|r| r.policies.get_mut("MeshTrafficPermission"))
        .expect("policy")
}

#[test]
fn rbac_features_kuma_dp_does_not_enforce_are_refused_by_field() {
    let with = |edit: &dyn Fn(&mut NetworkRbac)| {
        let mut f = good_network();
        edit(&mut f);
        tcp_listener(vec![pack_any(f)])
    };
    let cases: Vec<(&str, Any, &str)> = vec![
        (
            "DENY rules",
            with(&|f| f.rules.as_mut().expect("rules").action = Action::Deny as i32),
            "inbound:x: filter_chains[0].filters[0].rules.action: DENY is not enforced",
        ),
        (
            "ALLOW shadow rules",
            with(&|f| f.shadow_rules = Some(rules(vec![]))),
            "filter_chains[0].filters[0].shadow_rules.action: ALLOW is not enforced",
        ),
        (
            "a header permission",
            with(&|f| {
                policy(f).permissions = vec![Permission {
                    rule: Some(permission::Rule::DestinationPort(80)),
                }]
            }),
            "rules.policies[\"MeshTrafficPermission\"].permissions[0]: only {any: true}",
        ),
        (
            "no permission",
            with(&|f| policy(f).permissions.clear()),
            "rules.policies[\"MeshTrafficPermission\"].permissions: required",
        ),
        (
            "a source IP principal",
            with(&|f| {
                policy(f).principals = vec![Principal {
                    identifier: Some(Identifier::DirectRemoteIp(CidrRange::default())),
                }]
            }),
            "principals[0]: only any, authenticated (exact name), and_ids, or_ids and not_id",
        ),
        (
            "a prefix principal name, nested",
            with(&|f| {
                let mut p = exact("x");
                if let Some(Identifier::Authenticated(a)) = &mut p.identifier {
                    a.principal_name = Some(StringMatcher {
                        match_pattern: Some(MatchPattern::Prefix("spiffe://".into())),
                        ..Default::default()
                    });
                }
                policy(f).principals = vec![Principal {
                    identifier: Some(Identifier::AndIds(Set {
                        ids: vec![
                            exact("y"),
                            Principal {
                                identifier: Some(Identifier::NotId(Box::new(p))),
                            },
                        ],
                    })),
                }]
            }),
            "principals[0].and_ids.ids[1].not_id.authenticated.principal_name: only an exact",
        ),
        (
            "a case-insensitive name",
            with(&|f| {
                policy(f).principals = vec![Principal {
                    identifier: Some(Identifier::Authenticated(Authenticated {
                        principal_name: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact("x".into())),
                            ignore_case: true,
                        }),
                    })),
                }]
            }),
            "principals[0].authenticated.principal_name: only an exact, case-sensitive name",
        ),
        (
            "authenticated without a name",
            with(&|f| {
                policy(f).principals = vec![Principal {
                    identifier: Some(Identifier::Authenticated(Authenticated::default())),
                }]
            }),
            "principals[0].authenticated.principal_name: required",
        ),
        (
            "an empty and_ids",
            with(&|f| {
                policy(f).principals = vec![Principal {
                    identifier: Some(Identifier::AndIds(Set::default())),
                }]
            }),
            "principals[0].and_ids.ids: must not be empty",
        ),
        (
            "a condition",
            with(&|f| policy(f).condition = Some(Default::default())),
            "rules.policies[\"MeshTrafficPermission\"].condition: not enforced",
        ),
        (
            "audit logging",
            with(&|f| {
                f.rules.as_mut().expect("rules").audit_logging_options = Some(Default::default())
            }),
            "rules.audit_logging_options: not enforced",
        ),
        (
            "a matcher",
            with(&|f| f.matcher = Some(Default::default())),
            "filters[0].matcher: not enforced by kuma-dp (network RBAC)",
        ),
        (
            "enforcement on every payload",
            with(&|f| f.enforcement_type = EnforcementType::Continuous as i32),
            "filters[0].enforcement_type: not enforced",
        ),
        (
            "a delayed deny",
            with(&|f| f.delay_deny = Some(Default::default())),
            "filters[0].delay_deny: not enforced",
        ),
        (
            "no stat prefix",
            with(&|f| f.stat_prefix.clear()),
            "filters[0].stat_prefix: required",
        ),
        (
            "another network filter in front",
            tcp_listener(vec![pack_any(TlsInspector::default())]),
            "filter_chains[0].filters: 2 filters",
        ),
        (
            "RBAC twice",
            tcp_listener(vec![pack_any(good_network()), pack_any(good_network())]),
            "filter_chains[0].filters: 3 filters",
        ),
        (
            "an unknown terminal filter",
            {
                let mut l = Listener::decode(tcp_listener(vec![]).value.as_slice()).expect("l");
                l.filter_chains[0].filters[0].config_type = Some(FilterConfigType::TypedConfig(
                    pack_any(TlsInspector::default()),
                ));
                pack_any(l)
            },
            "filter_chains[0].filters[0]: type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector is not enforced",
        ),
        (
            "an unknown HTTP filter",
            http_listener(vec![pack_any(TlsInspector::default()), router()]),
            "filter_chains[0].filters[0].http_filters[0]: type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector is not enforced",
        ),
        (
            "HTTP RBAC after another filter",
            http_listener(vec![router(), pack_any(HttpRbac::default()), router()]),
            "http_filters[0]: type.googleapis.com/envoy.extensions.filters.http.router.v3.Router is not enforced",
        ),
        (
            "HTTP RBAC without the router",
            http_listener(vec![pack_any(HttpRbac::default())]),
            "http_filters[0]: type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC is not enforced",
        ),
        (
            "no HTTP filter",
            http_listener(vec![]),
            "filter_chains[0].filters[0].http_filters: the router is required",
        ),
        (
            "HTTP RBAC per-rule stats",
            http_listener(vec![
                pack_any(HttpRbac {
                    track_per_rule_stats: true,
                    ..Default::default()
                }),
                router(),
            ]),
            "http_filters[0].track_per_rule_stats: not enforced by kuma-dp (HTTP RBAC)",
        ),
    ];
    for (what, listener, want) in cases {
        let got = decode_err(&listener);
        assert!(got.contains(want), "{what}: {got}");
    }
}

#[test]
fn rules_absent_enforce_nothing_as_in_envoy() {
    let plan = decode_listener(&tcp_listener(vec![pack_any(NetworkRbac {
        stat_prefix: "s".into(),
        ..Default::default()
    })]))
    .expect("decodes");
    let rbac = plan.rbac.expect("rbac");
    assert_eq!(rbac.allow, vec![PrincipalPlan::Any]);
    assert_eq!(rbac.stat_prefix, "s.", "Envoy joins the prefix with a dot");
}

#[test]
fn a_permissive_listener_needs_the_same_filters_on_both_chains() {
    let mut l = generated_listener(true, "tcp");
    assert_eq!(l.filter_chains.len(), 2);
    decode_listener(&pack_any(l.clone())).expect("generated permissive listener decodes");
    l.filter_chains[1].filters.remove(0);
    let got = decode_err(&pack_any(l));
    assert!(
        got.contains("filter_chains[1]: the plaintext chain must have the same filters"),
        "{got}"
    );
}

// ---------------------------------------------------------------------------------------------
// Round trips: generate → decode, judged against the engine

fn dataplane(protocol: &str) -> DataplaneSpec {
    serde_json::from_value(json!({
        "networking": {
            "address": "10.0.0.1",
            "inbound": [{"port": 10001, "servicePort": 20001,
                         "tags": {"kuma.io/service": "backend", "kuma.io/protocol": protocol}}]
        }
    }))
    .expect("dataplane")
}

fn mesh(mode: &str) -> MeshSpec {
    serde_json::from_value(json!({
        "mtls": {"enabledBackend": "ca-1",
                 "backends": [{"name": "ca-1", "type": "builtin", "mode": mode}]}
    }))
    .expect("mesh")
}

fn engine_rules(dp: &DataplaneSpec, from: serde_json::Value) -> ProxyPolicies {
    let proxy = ProxyDescription::of_dataplane("default", dp);
    let policy = EnginePolicy::new(
        "mtp",
        "default",
        serde_json::from_value(json!({
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "from": from
        }))
        .expect("spec"),
    );
    ProxyPolicies {
        traffic_permission: meshzone_model::policy::rules_for_proxy(
            &proxy,
            &[policy],
            &BTreeMap::new(),
        )
        .expect("rules"),
        ..Default::default()
    }
}

fn generate_inbound(permissive: bool, protocol: &str, policies: &ProxyPolicies) -> Listener {
    let dp = dataplane(protocol);
    let mesh = mesh(if permissive { "PERMISSIVE" } else { "STRICT" });
    let material = TlsMaterial {
        identity_cert_pem: "C".into(),
        identity_key_pem: "K".into(),
        ca_cert_pem: "A".into(),
    };
    let snapshot = generate(&ProxyInput {
        mesh: "default",
        mesh_spec: &mesh,
        dataplane: &dp,
        endpoints: &BTreeMap::new(),
        tls: Some(&material),
        protocols: &BTreeMap::new(),
        proxyless: false,
        transparent: None,
        policies,
        external_services: &Default::default(),
    });
    let listener = snapshot
        .get(TypeUrl::Listener)
        .and_then(|t| t.resources.iter().find(|r| r.name.starts_with("inbound:")))
        .expect("inbound listener");
    Listener::decode(listener.resource.value.as_slice()).expect("listener")
}

fn generated_listener(permissive: bool, protocol: &str) -> Listener {
    generate_inbound(permissive, protocol, &ProxyPolicies::default())
}

/// The URI SANs a client with these inbound tags gets (as `meshzone_identity::workload_uris`).
fn client_sans(client: &Tags) -> Vec<String> {
    let mut out: Vec<String> = client
        .get("kuma.io/service")
        .map(|s| format!("spiffe://default/{s}"))
        .into_iter()
        .collect();
    out.extend(client.iter().map(|(k, v)| format!("kuma://{k}/{v}")));
    out
}

/// Deny all, allow zone east, shadow-deny orders v2, deny interns (later items win).
fn permissions() -> serde_json::Value {
    json!([
        {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
        {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "east"}},
         "default": {"action": "Allow"}},
        {"targetRef": {"kind": "MeshServiceSubset", "name": "orders", "tags": {"version": "v2"}},
         "default": {"action": "AllowWithShadowDeny"}},
        {"targetRef": {"kind": "MeshSubset", "tags": {"team": "intern"}},
         "default": {"action": "Deny"}}
    ])
}

#[test]
fn decoded_permissions_decide_like_the_engine_for_every_client() {
    let dp = dataplane("tcp");
    let policies = engine_rules(&dp, permissions());
    let clients = [
        tags(&[("kuma.io/service", "shop"), ("kuma.io/zone", "west")]),
        tags(&[("kuma.io/service", "shop"), ("kuma.io/zone", "east")]),
        tags(&[
            ("kuma.io/service", "shop"),
            ("kuma.io/zone", "east"),
            ("team", "intern"),
        ]),
        tags(&[
            ("kuma.io/service", "orders"),
            ("kuma.io/zone", "west"),
            ("version", "v2"),
        ]),
        tags(&[
            ("kuma.io/service", "orders"),
            ("kuma.io/zone", "east"),
            ("version", "v2"),
        ]),
        tags(&[
            ("kuma.io/service", "orders"),
            ("kuma.io/zone", "west"),
            ("version", "v1"),
        ]),
        tags(&[
            ("kuma.io/service", "orders"),
            ("version", "v2"),
            ("team", "intern"),
        ]),
        tags(&[]),
    ];
    for protocol in ["tcp", "http"] {
        for permissive in [false, true] {
            let listener = generate_inbound(
                permissive,
                protocol,
                &engine_rules(&dataplane(protocol), permissions()),
            );
            let plan = decode_listener(&pack_any(listener))
                .unwrap_or_else(|e| panic!("{protocol} permissive={permissive}: {e}"));
            assert_eq!(plan.http, protocol == "http");
            let rbac = plan.rbac.expect("rbac");
            let want_prefix = if protocol == "http" {
                "http.inbound:10.0.0.1:10001."
            } else {
                "inbound_10_0_0_1_10001."
            };
            assert_eq!(rbac.stat_prefix, want_prefix);
            for client in &clients {
                let conf = policies
                    .traffic_permission
                    .from_rule(10001, client)
                    .map(|r| r.conf.clone());
                let action = conf
                    .as_ref()
                    .and_then(|c| c.get("action"))
                    .and_then(|a| a.as_str())
                    .unwrap_or("none");
                let got = rbac.evaluate(&client_sans(client));
                let want = Verdict {
                    allowed: matches!(action, "Allow" | "AllowWithShadowDeny"),
                    shadow_denied: action == "AllowWithShadowDeny",
                };
                assert_eq!(
                    got, want,
                    "{protocol} permissive={permissive} {client:?} ({action})"
                );
            }
        }
    }
}

#[test]
fn an_inbound_without_permissions_decodes_to_deny_all() {
    for protocol in ["tcp", "http"] {
        let plan =
            decode_listener(&pack_any(generated_listener(false, protocol))).expect("decodes");
        let rbac = plan.rbac.expect("rbac");
        assert!(rbac.allow.is_empty(), "{protocol}");
        assert!(!rbac.evaluate(&sans(&["spiffe://default/anyone"])).allowed);
    }
}
