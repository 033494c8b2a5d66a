//! Table tests of the policy engine, with the examples of `kuma-policies.md` §1.5.

use crate::specs::tags;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::specs::Tags;

fn spec(yaml: &str) -> PolicySpec {
    serde_norway::from_str(yaml).expect("test spec parses")
}

fn policy(name: &str, yaml: &str) -> Policy {
    Policy::new(name, "default", spec(yaml))
}

/// A sidecar in zone `east` with one inbound per (port, service, version).
fn sidecar(inbounds: &[(u32, &str, &str)]) -> ProxyDescription {
    ProxyDescription::sidecar(
        "default",
        inbounds
            .iter()
            .map(|(port, service, version)| InboundDescription {
                port: *port,
                tags: tags(&[
                    ("kuma.io/service", service),
                    ("kuma.io/zone", "east"),
                    ("version", version),
                ]),
            })
            .collect(),
    )
}

fn no_routes() -> BTreeMap<String, TargetRef> {
    BTreeMap::new()
}

fn rules(proxy: &ProxyDescription, policies: &[Policy]) -> PolicyRules {
    rules_for_proxy(proxy, policies, &no_routes()).expect("rules build")
}

fn origin_names(origin: &[RuleOrigin]) -> Vec<(&str, usize)> {
    origin
        .iter()
        .map(|o| (o.resource_meta.name.as_str(), o.rule_index))
        .collect()
}

fn matched_names(proxy: &ProxyDescription, policies: &[Policy]) -> Vec<String> {
    let mut matched = select(proxy, policies, &no_routes());
    sort_matched(&mut matched);
    matched.iter().map(|m| m.policy.name.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// §1.5 merge example

#[test]
fn mesh_timeout_example_of_the_reference() {
    let policies = [
        policy(
            "mesh-timeout-all-default",
            "targetRef: {kind: Mesh}\n\
             to:\n\
             - targetRef: {kind: Mesh}\n  \
               default: {connectionTimeout: 5s, http: {requestTimeout: 15s, streamIdleTimeout: 30m}}\n",
        ),
        policy(
            "backend-slow",
            "targetRef: {kind: Mesh}\n\
             to:\n\
             - targetRef: {kind: MeshService, name: backend}\n  \
               default: {http: {requestTimeout: 60s}}\n",
        ),
    ];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    let backend = r.to_rule("backend").expect("a rule for backend");
    assert_eq!(
        backend.conf,
        json!({"connectionTimeout": "5s", "http": {"requestTimeout": "60s", "streamIdleTimeout": "30m"}})
    );
    assert_eq!(
        origin_names(&backend.origin),
        [("mesh-timeout-all-default", 0), ("backend-slow", 0)]
    );
    assert_eq!(
        backend.matchers,
        [TagMatcher {
            key: "kuma.io/service".into(),
            value: "backend".into(),
            not: false
        }]
    );
    let other = r.to_rule("redis").expect("the mesh-wide rule");
    assert_eq!(
        other.conf,
        json!({"connectionTimeout": "5s", "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"}})
    );
    assert_eq!(
        other.matchers,
        [TagMatcher {
            key: "kuma.io/service".into(),
            value: "backend".into(),
            not: true
        }]
    );
    assert_eq!(r.to_rules.len(), 2);
}

#[test]
fn to_items_resort_by_to_kind_before_the_name() {
    // kuma#9151: "aaa" wins over "zzz" by name, but its `to` is Mesh-wide, so zzz's
    // MeshService item must still override it for backend.
    let policies = [
        policy(
            "aaa",
            "to:\n- targetRef: {kind: Mesh}\n  default: {idleTimeout: 1h}\n",
        ),
        policy(
            "zzz",
            "to:\n- targetRef: {kind: MeshService, name: backend}\n  default: {idleTimeout: 5m}\n",
        ),
    ];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    let backend = r.to_rule("backend").expect("backend rule");
    assert_eq!(backend.conf, json!({"idleTimeout": "5m"}));
    assert_eq!(origin_names(&backend.origin), [("aaa", 0), ("zzz", 0)]);
    assert_eq!(
        r.to_rule("db").map(|r| &r.conf),
        Some(&json!({"idleTimeout": "1h"}))
    );
}

#[test]
fn later_item_of_one_policy_overrides_an_earlier_one() {
    let p = policy(
        "one",
        "to:\n\
         - targetRef: {kind: Mesh}\n  default: {a: 1, b: 1}\n\
         - targetRef: {kind: Mesh}\n  default: {b: 2}\n",
    );
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &[p]);
    let rule = r.to_rule("any").expect("rule");
    assert_eq!(rule.conf, json!({"a": 1, "b": 2}));
    assert_eq!(origin_names(&rule.origin), [("one", 0), ("one", 1)]);
}

// ---------------------------------------------------------------------------------------------
// Ordering

#[test]
fn top_level_kind_specificity_orders_policies() {
    // Names are chosen so that the name order alone would give the opposite result.
    let policies = [
        policy(
            "a-route",
            "targetRef: {kind: MeshHTTPRoute, name: r}\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
        ),
        policy(
            "b-subset-svc",
            "targetRef: {kind: MeshServiceSubset, name: web, tags: {version: v1}}\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
        ),
        policy(
            "c-service",
            "targetRef: {kind: MeshService, name: web}\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
        ),
        policy(
            "d-subset",
            "targetRef: {kind: MeshSubset, tags: {version: v1}}\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
        ),
        policy(
            "e-mesh",
            "targetRef: {kind: Mesh}\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
        ),
        policy(
            "f-no-target-ref",
            "to: [{targetRef: {kind: Mesh}, default: {}}]\n",
        ),
    ];
    let routes = BTreeMap::from([(
        "r".to_string(),
        TargetRef::new(TargetRefKind::MeshService).with_name("web"),
    )]);
    let proxy = sidecar(&[(8080, "web", "v1")]);
    let mut matched = select(&proxy, &policies, &routes);
    sort_matched(&mut matched);
    let names: Vec<&str> = matched.iter().map(|m| m.policy.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "f-no-target-ref",
            "e-mesh",
            "d-subset",
            "c-service",
            "b-subset-svc",
            "a-route"
        ]
    );
}

#[test]
fn ties_broken_by_origin_then_inverted_name() {
    struct Case {
        what: &'static str,
        a: Policy,
        b: Policy,
        want: Ordering,
    }
    let mesh = "to: [{targetRef: {kind: Mesh}, default: {}}]\n";
    let cases = [
        Case {
            what: "zone beats global at equal kind, whatever the names",
            a: policy("aaa", mesh).with_label(ORIGIN_LABEL, "global"),
            b: policy("zzz", mesh).with_label(ORIGIN_LABEL, "zone"),
            want: Ordering::Less,
        },
        Case {
            what: "no origin label sits between global and zone",
            a: policy("x", mesh),
            b: policy("x", mesh).with_label(ORIGIN_LABEL, "global"),
            want: Ordering::Greater,
        },
        Case {
            what: "same kind and origin: aaa wins over bbb (2.6+)",
            a: policy("aaa", mesh),
            b: policy("bbb", mesh),
            want: Ordering::Greater,
        },
        Case {
            what: "the display-name label is what is compared",
            a: policy("aaa", mesh).with_label(DISPLAY_NAME_LABEL, "zzz"),
            b: policy("bbb", mesh),
            want: Ordering::Less,
        },
        Case {
            what: "kind before origin",
            a: policy("a", "targetRef: {kind: MeshService, name: web}\n")
                .with_label(ORIGIN_LABEL, "global"),
            b: policy("a", mesh).with_label(ORIGIN_LABEL, "zone"),
            want: Ordering::Greater,
        },
        Case {
            what: "role after origin: consumer over producer",
            a: policy("aaa", mesh).with_label(POLICY_ROLE_LABEL, "consumer"),
            b: policy("zzz", mesh).with_label(POLICY_ROLE_LABEL, "producer"),
            want: Ordering::Greater,
        },
        Case {
            what: "MeshGateway with more tags wins",
            a: policy("aaa", "targetRef: {kind: MeshGateway, name: gw}\n"),
            b: policy(
                "zzz",
                "targetRef: {kind: MeshGateway, name: gw, tags: {port: '80'}}\n",
            ),
            want: Ordering::Less,
        },
    ];
    for c in cases {
        assert_eq!(compare_policies(&c.a, &c.b), c.want, "{}", c.what);
        assert_eq!(compare_policies(&c.b, &c.a), c.want.reverse(), "{}", c.what);
    }
}

#[test]
fn zone_policy_overrides_global_one_in_the_merge() {
    let policies = [
        policy(
            "from-zone",
            "to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 1m}}]\n",
        )
        .with_label(ORIGIN_LABEL, "zone")
        .with_label(ZONE_LABEL, "east"),
        policy(
            "from-global",
            "to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 9m, other: 1}}]\n",
        )
        .with_label(ORIGIN_LABEL, "global"),
    ];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    let rule = r.to_rule("x").expect("rule");
    assert_eq!(rule.conf, json!({"idleTimeout": "1m", "other": 1}));
    assert_eq!(
        origin_names(&rule.origin),
        [("from-global", 0), ("from-zone", 0)]
    );
    let names: Vec<&str> = r.policies.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["from-global", "from-zone"]);
}

// ---------------------------------------------------------------------------------------------
// Selection

#[test]
fn selection_by_top_level_target_ref() {
    let proxy = sidecar(&[(8080, "web", "v1"), (9090, "web-admin", "v2")]);
    let cases: [(&str, &str, Option<Vec<usize>>); 11] = [
        ("mesh", "targetRef: {kind: Mesh}", Some(vec![0, 1])),
        (
            "subset in zone east",
            "targetRef: {kind: MeshSubset, tags: {kuma.io/zone: east}}",
            Some(vec![0, 1]),
        ),
        (
            "subset in zone west",
            "targetRef: {kind: MeshSubset, tags: {kuma.io/zone: west}}",
            None,
        ),
        (
            "subset needs every tag",
            "targetRef: {kind: MeshSubset, tags: {kuma.io/zone: east, version: v2}}",
            Some(vec![1]),
        ),
        (
            "service",
            "targetRef: {kind: MeshService, name: web}",
            Some(vec![0]),
        ),
        (
            "other service",
            "targetRef: {kind: MeshService, name: backend}",
            None,
        ),
        (
            "service subset",
            "targetRef: {kind: MeshServiceSubset, name: web-admin, tags: {version: v2}}",
            Some(vec![1]),
        ),
        (
            "service subset, other version",
            "targetRef: {kind: MeshServiceSubset, name: web, tags: {version: v2}}",
            None,
        ),
        (
            "only gateways",
            "targetRef: {kind: Mesh, proxyTypes: [Gateway]}",
            None,
        ),
        (
            "sidecars",
            "targetRef: {kind: MeshSubset, tags: {version: v1}, proxyTypes: [Sidecar]}",
            Some(vec![0]),
        ),
        (
            "a gateway ref never selects a sidecar",
            "targetRef: {kind: MeshGateway, name: gw}",
            None,
        ),
    ];
    for (what, yaml, want) in cases {
        let policies = [policy(what, &format!("{yaml}\ndefault: {{}}\n"))];
        let got = select(&proxy, &policies, &no_routes())
            .first()
            .map(|m| m.selected.inbounds.clone());
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn selection_of_a_builtin_gateway() {
    let proxy = ProxyDescription {
        mesh: "default".into(),
        labels: Tags::new(),
        proxy_type: ProxyType::Gateway,
        inbounds: vec![],
        gateway: Some(matching::GatewayDescription {
            name: "edge".into(),
            listeners: vec![
                tags(&[("kuma.io/service", "edge"), ("port", "80")]),
                tags(&[("kuma.io/service", "edge"), ("port", "443")]),
            ],
        }),
    };
    let cases: [(&str, Option<Vec<usize>>); 5] = [
        ("{kind: MeshGateway, name: edge}", Some(vec![0, 1])),
        (
            "{kind: MeshGateway, name: edge, tags: {port: '443'}}",
            Some(vec![1]),
        ),
        ("{kind: MeshGateway, name: other}", None),
        ("{kind: Mesh, proxyTypes: [Gateway]}", Some(vec![0, 1])),
        ("{kind: Mesh, proxyTypes: [Sidecar]}", None),
    ];
    for (tr, want) in cases {
        let policies = [policy("p", &format!("targetRef: {tr}\ndefault: {{}}\n"))];
        let got = select(&proxy, &policies, &no_routes())
            .first()
            .map(|m| m.selected.listeners.clone());
        assert_eq!(got, want, "{tr}");
    }
}

#[test]
fn mesh_zone_and_route_scoping() {
    let mut proxy = sidecar(&[(8080, "web", "v1")]);
    proxy.labels = tags(&[("kuma.io/origin", "zone"), ("kuma.io/zone", "east")]);
    let base = "targetRef: {kind: Mesh}\ndefault: {}\n";
    let mut other_mesh = policy("other-mesh", base);
    other_mesh.mesh = "payments".into();
    let policies = [
        other_mesh,
        policy("west-zone", base)
            .with_label(ORIGIN_LABEL, "zone")
            .with_label(ZONE_LABEL, "west"),
        policy("east-zone", base)
            .with_label(ORIGIN_LABEL, "zone")
            .with_label(ZONE_LABEL, "east"),
        policy("west-producer", base)
            .with_label(ORIGIN_LABEL, "zone")
            .with_label(ZONE_LABEL, "west")
            .with_label(POLICY_ROLE_LABEL, "producer"),
        policy("global", base).with_label(ORIGIN_LABEL, "global"),
        policy("other-namespace", base)
            .with_label(POLICY_ROLE_LABEL, "consumer")
            .with_label(NAMESPACE_LABEL, "shop"),
        policy(
            "route-to-web",
            "targetRef: {kind: MeshHTTPRoute, name: web-route}\ndefault: {}\n",
        ),
        policy(
            "route-to-db",
            "targetRef: {kind: MeshHTTPRoute, name: db-route}\ndefault: {}\n",
        ),
        policy(
            "unknown-route",
            "targetRef: {kind: MeshHTTPRoute, name: nope}\ndefault: {}\n",
        ),
    ];
    let routes = BTreeMap::from([
        (
            "web-route".to_string(),
            TargetRef::new(TargetRefKind::MeshService).with_name("web"),
        ),
        (
            "db-route".to_string(),
            TargetRef::new(TargetRefKind::MeshService).with_name("db"),
        ),
    ]);
    let mut matched = select(&proxy, &policies, &routes);
    sort_matched(&mut matched);
    let names: Vec<&str> = matched.iter().map(|m| m.policy.name.as_str()).collect();
    // Same kind and origin: the producer role sorts above system (no role label).
    assert_eq!(
        names,
        ["global", "east-zone", "west-producer", "route-to-web"]
    );

    // A proxy without an origin label is not zone-scoped.
    let unlabelled = sidecar(&[(8080, "web", "v1")]);
    assert_eq!(
        matched_names(&unlabelled, &policies[1..3]),
        ["west-zone", "east-zone"]
    );
}

#[test]
fn a_policy_that_selects_nothing_contributes_nothing() {
    let policies = [
        policy(
            "for-backend",
            "targetRef: {kind: MeshService, name: backend}\n\
             to: [{targetRef: {kind: Mesh}, default: {x: 1}}]\n\
             from: [{targetRef: {kind: Mesh}, default: {y: 1}}]\n",
        ),
        policy(
            "for-west",
            "targetRef: {kind: MeshSubset, tags: {kuma.io/zone: west}}\n\
             to: [{targetRef: {kind: Mesh}, default: {x: 2}}]\n",
        ),
    ];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    assert_eq!(r, PolicyRules::default());
}

// ---------------------------------------------------------------------------------------------
// Merging

#[test]
fn merge_patch_follows_rfc_7396_with_append_fields() {
    let cases: [(&str, Value, Value, Value); 8] = [
        (
            "objects merge",
            json!({"a": {"b": 1, "c": 2}}),
            json!({"a": {"c": 3}}),
            json!({"a": {"b": 1, "c": 3}}),
        ),
        (
            "null removes",
            json!({"a": 1, "b": 2}),
            json!({"a": null}),
            json!({"b": 2}),
        ),
        (
            "arrays replace whole",
            json!({"l": [1, 2]}),
            json!({"l": [3]}),
            json!({"l": [3]}),
        ),
        (
            "[] clears",
            json!({"l": [1, 2]}),
            json!({"l": []}),
            json!({"l": []}),
        ),
        (
            "scalar replaces object",
            json!({"a": {"b": 1}}),
            json!({"a": 5}),
            json!({"a": 5}),
        ),
        (
            "appendModifications concatenate",
            json!({"appendModifications": [{"cluster": 1}]}),
            json!({"appendModifications": [{"cluster": 2}]}),
            json!({"appendModifications": [{"cluster": 1}, {"cluster": 2}]}),
        ),
        (
            "nested appendProfiles concatenate",
            json!({"sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}]}}}),
            json!({"sidecar": {"profiles": {"appendProfiles": [{"name": "All"}]}}}),
            json!({"sidecar": {"profiles": {"appendProfiles": [{"name": "Basic"}, {"name": "All"}]}}}),
        ),
        (
            "append onto nothing sets",
            json!({}),
            json!({"appendMatch": [{"type": "Domain"}]}),
            json!({"appendMatch": [{"type": "Domain"}]}),
        ),
    ];
    for (what, mut target, patch, want) in cases {
        merge_patch(&mut target, &patch);
        assert_eq!(target, want, "{what}");
    }
    assert_eq!(
        merge_confs([&json!({"a": 1}), &json!({"b": 2}), &json!({"a": 3})]),
        json!({"a": 3, "b": 2})
    );
}

#[test]
fn proxy_wide_default_concatenates_append_fields_across_policies() {
    let policies = [
        policy(
            "custom-b",
            "targetRef: {kind: MeshService, name: web}\n\
             default: {appendModifications: [{cluster: {operation: Add, value: b}}]}\n",
        ),
        policy(
            "custom-a",
            "default: {appendModifications: [{cluster: {operation: Add, value: a}}]}\n",
        ),
    ];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    let proxy_rule = r.proxy_rule.expect("proxy rule");
    assert_eq!(
        proxy_rule.conf,
        json!({"appendModifications": [
            {"cluster": {"operation": "Add", "value": "a"}},
            {"cluster": {"operation": "Add", "value": "b"}}
        ]})
    );
    assert_eq!(
        origin_names(&proxy_rule.origin),
        [("custom-a", 0), ("custom-b", 0)]
    );
}

#[test]
fn route_rules_merge_by_matches() {
    let policies = [
        policy(
            "route-b",
            "to:\n\
             - targetRef: {kind: MeshService, name: backend}\n  \
               rules:\n  \
               - matches: [{path: {type: PathPrefix, value: /v1}}]\n    \
                 default: {backendRefs: [{kind: MeshService, name: backend-v1}], filters: [{type: A}]}\n  \
               - matches: [{path: {type: PathPrefix, value: /v2}}]\n    \
                 default: {backendRefs: [{kind: MeshService, name: backend-v2}]}\n",
        ),
        policy(
            "route-a",
            "to:\n\
             - targetRef: {kind: MeshService, name: backend}\n  \
               rules:\n  \
               - matches: [{path: {type: PathPrefix, value: /v1}}]\n    \
                 default: {backendRefs: [{kind: MeshService, name: backend-canary}]}\n  \
               - matches: [{path: {type: Exact, value: /health}}]\n    \
                 default: {backendRefs: [{kind: MeshService, name: health}]}\n",
        ),
    ];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    let backend = r.to_rule("backend").expect("backend rule");
    assert_eq!(
        backend.conf,
        json!({"rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
             "default": {"backendRefs": [{"kind": "MeshService", "name": "backend-canary"}], "filters": [{"type": "A"}]}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
             "default": {"backendRefs": [{"kind": "MeshService", "name": "backend-v2"}]}},
            {"matches": [{"path": {"type": "Exact", "value": "/health"}}],
             "default": {"backendRefs": [{"kind": "MeshService", "name": "health"}]}}
        ]})
    );
    assert_eq!(
        origin_names(&backend.origin),
        [("route-b", 0), ("route-a", 0)]
    );
    assert!(r.to_rule("other").is_none());
}

#[test]
fn to_a_route_merges_mesh_items_and_that_routes_items() {
    let policies = [policy(
        "timeouts",
        "to:\n\
         - targetRef: {kind: MeshHTTPRoute, name: slow-route}\n  default: {http: {requestTimeout: 90s}}\n\
         - targetRef: {kind: Mesh}\n  default: {http: {requestTimeout: 15s}, connectionTimeout: 5s}\n",
    )];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    assert_eq!(r.to_route_rules.len(), 1);
    let route = &r.to_route_rules[0];
    assert_eq!(route.route, "slow-route");
    assert_eq!(
        route.conf,
        json!({"http": {"requestTimeout": "90s"}, "connectionTimeout": "5s"})
    );
    assert_eq!(
        origin_names(&route.origin),
        [("timeouts", 1), ("timeouts", 0)]
    );
    assert_eq!(
        r.to_rule("x").map(|r| &r.conf),
        Some(&json!({"http": {"requestTimeout": "15s"}, "connectionTimeout": "5s"}))
    );
}

#[test]
fn from_rules_are_subsets_with_negations() {
    let policies = [policy(
        "mtp",
        "targetRef: {kind: MeshService, name: web}\n\
         from:\n\
         - targetRef: {kind: Mesh}\n  default: {action: Deny}\n\
         - targetRef: {kind: MeshSubset, tags: {kuma.io/zone: east}}\n  default: {action: Allow, log: true}\n\
         - targetRef: {kind: MeshServiceSubset, name: orders, tags: {version: v2}}\n  default: {action: AllowWithShadowDeny}\n",
    )];
    let proxy = sidecar(&[(8080, "web", "v1"), (9090, "metrics", "v1")]);
    let r = rules(&proxy, &policies);
    assert_eq!(r.from_rules.len(), 1, "only the selected inbound");
    assert_eq!(r.from_rules[0].inbound.port, 8080);
    let cases = [
        (
            "anyone",
            tags(&[("kuma.io/service", "shop"), ("kuma.io/zone", "west")]),
            json!({"action": "Deny"}),
        ),
        (
            "a client in east",
            tags(&[("kuma.io/service", "shop"), ("kuma.io/zone", "east")]),
            json!({"action": "Allow", "log": true}),
        ),
        (
            "orders v2 in west",
            tags(&[
                ("kuma.io/service", "orders"),
                ("kuma.io/zone", "west"),
                ("version", "v2"),
            ]),
            json!({"action": "AllowWithShadowDeny"}),
        ),
        (
            "orders v2 in east: both subsets, later item wins",
            tags(&[
                ("kuma.io/service", "orders"),
                ("kuma.io/zone", "east"),
                ("version", "v2"),
            ]),
            json!({"action": "AllowWithShadowDeny", "log": true}),
        ),
        (
            "orders v1 in west",
            tags(&[
                ("kuma.io/service", "orders"),
                ("kuma.io/zone", "west"),
                ("version", "v1"),
            ]),
            json!({"action": "Deny"}),
        ),
    ];
    for (what, client, want) in cases {
        let rule = r.from_rule(8080, &client).expect(what);
        assert_eq!(rule.conf, want, "{what}");
    }
    // Most specific first; the catch-all negates every value.
    let first = &r.from_rules[0].rules[0];
    assert_eq!(
        origin_names(&first.origin),
        [("mtp", 0), ("mtp", 1), ("mtp", 2)]
    );
    let last = r.from_rules[0].rules.last().expect("rules");
    assert_eq!(last.conf, json!({"action": "Deny"}));
    assert!(last.matchers.iter().all(|m| m.not));
    assert_eq!(last.matchers.len(), 3);
    // Every combination of the three (key, value) pairs is covered by the Mesh item.
    assert_eq!(r.from_rules[0].rules.len(), 8);
}

#[test]
fn from_rules_merge_across_policies_in_order() {
    let policies = [
        policy(
            "web-only",
            "targetRef: {kind: MeshService, name: web}\n\
             from: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 1s}}}]\n",
        ),
        policy(
            "mesh-wide",
            "from: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 9s, idleTimeout: 1h}}}]\n",
        ),
    ];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    let rule = r.from_rule(8080, &Tags::new()).expect("rule");
    assert_eq!(
        rule.conf,
        json!({"http": {"requestTimeout": "1s", "idleTimeout": "1h"}})
    );
    assert_eq!(
        origin_names(&rule.origin),
        [("mesh-wide", 0), ("web-only", 0)]
    );
}

#[test]
fn inbound_rules_catch_all_and_keyed_by_matches() {
    let policies = [
        policy(
            "b",
            "rules:\n\
             - default: {http: {requestTimeout: 5s}}\n\
             - matches: [{sni: {type: Exact, value: a.mesh}}]\n  default: {x: 1}\n\
             - matches: [{spiffeID: {type: Prefix, value: 'spiffe://default/'}}]\n  default: {x: 2}\n",
        ),
        policy(
            "a",
            "rules:\n\
             - default: {http: {idleTimeout: 1h}}\n\
             - matches: [{sni: {type: Exact, value: a.mesh}}]\n  default: {y: 1}\n\
             - matches: [{spiffeID: {type: Exact, value: 'spiffe://default/web'}}]\n  default: {x: 3}\n",
        ),
    ];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    assert_eq!(r.inbound_rules.len(), 1);
    let got: Vec<(Option<Value>, Value)> = r.inbound_rules[0]
        .rules
        .iter()
        .map(|rule| (rule.matches.clone().map(Value::Array), rule.conf.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                Some(json!([{"spiffeID": {"type": "Exact", "value": "spiffe://default/web"}}])),
                json!({"x": 3})
            ),
            (
                Some(json!([{"spiffeID": {"type": "Prefix", "value": "spiffe://default/"}}])),
                json!({"x": 2})
            ),
            (
                Some(json!([{"sni": {"type": "Exact", "value": "a.mesh"}}])),
                json!({"x": 1, "y": 1})
            ),
            (
                None,
                json!({"http": {"requestTimeout": "5s", "idleTimeout": "1h"}})
            ),
        ]
    );
    let catch_all = r.inbound_rules[0].rules.last().expect("catch-all");
    assert_eq!(origin_names(&catch_all.origin), [("b", 0), ("a", 0)]);
}

#[test]
fn too_many_from_combinations_is_an_error() {
    let items: Vec<String> = (0..13)
        .map(|i| format!("- targetRef: {{kind: MeshSubset, tags: {{k{i}: v}}}}\n  default: {{}}\n"))
        .collect();
    let policies = [policy("wide", &format!("from:\n{}", items.concat()))];
    let err = rules_for_proxy(&sidecar(&[(8080, "web", "v1")]), &policies, &no_routes())
        .expect_err("2^13 combinations");
    assert_eq!(
        err,
        PolicyError::TooManyCombinations {
            section: "from of inbound 8080".into(),
            combinations: 8192,
            limit: 4096,
        }
    );
}

#[test]
fn rules_serialize_close_to_kuma_inspect_rules() {
    let policies = [policy(
        "t",
        "to: [{targetRef: {kind: MeshService, name: backend}, default: {a: 1}}]\n",
    )
    .with_label(ORIGIN_LABEL, "global")];
    let r = rules(&sidecar(&[(8080, "web", "v1")]), &policies);
    assert_eq!(
        serde_json::to_value(&r).expect("serializes"),
        json!({
            "policies": [{"name": "t", "mesh": "default", "labels": {"kuma.io/origin": "global"}}],
            "toRules": [{
                "matchers": [{"key": "kuma.io/service", "value": "backend"}],
                "conf": {"a": 1},
                "origin": [{"resourceMeta": {"name": "t", "mesh": "default", "labels": {"kuma.io/origin": "global"}}, "ruleIndex": 0}]
            }],
            "fromRules": [],
            "inboundRules": []
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Serde and validation

#[test]
fn target_ref_uses_kuma_field_names() {
    let tr: TargetRef = serde_json::from_value(json!({
        "kind": "MeshSubset",
        "tags": {"kuma.io/zone": "east"},
        "proxyTypes": ["Sidecar"]
    }))
    .expect("parses");
    assert_eq!(tr.kind, TargetRefKind::MeshSubset);
    assert_eq!(tr.proxy_types, Some(vec![ProxyType::Sidecar]));
    assert_eq!(
        serde_json::to_value(&tr).expect("serializes"),
        json!({"kind": "MeshSubset", "tags": {"kuma.io/zone": "east"}, "proxyTypes": ["Sidecar"]})
    );
    let other: TargetRef =
        serde_json::from_value(json!({"kind": "Dataplane", "sectionName": "http"}))
            .expect("parses");
    assert_eq!(other.kind, TargetRefKind::Other("Dataplane".into()));
    assert!(other.unsupported.contains_key("sectionName"));
}

fn violations(yaml: &str) -> Vec<String> {
    match validate_policy(&spec(yaml)) {
        Ok(()) => vec![],
        Err(v) => v.violations.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn valid_specs_pass() {
    for yaml in [
        "targetRef: {kind: Mesh, proxyTypes: [Sidecar, Gateway]}\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
        "targetRef: {kind: MeshSubset, tags: {kuma.io/zone: east}}\nfrom: [{targetRef: {kind: MeshSubset, tags: {kuma.io/zone: west}}, default: {action: Deny}}]\n",
        "targetRef: {kind: MeshServiceSubset, name: web, tags: {version: v1}}\nfrom: [{targetRef: {kind: MeshServiceSubset, name: a, tags: {v: '1'}}, default: {}}]\n",
        "targetRef: {kind: MeshGateway, name: edge, tags: {port: '80'}}\nto: [{targetRef: {kind: MeshService, name: b}, default: {}}]\n",
        "targetRef: {kind: MeshHTTPRoute, name: r}\nto: [{targetRef: {kind: MeshHTTPRoute, name: r}, default: {}}]\n",
        "to: [{targetRef: {kind: MeshService, name: b}, rules: [{matches: [], default: {}}]}]\n",
        "rules: [{default: {}}]\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
        "default: {appendModifications: []}\n",
    ] {
        assert_eq!(violations(yaml), Vec::<String>::new(), "{yaml}");
    }
}

#[test]
fn validation_reports_every_mistake_with_its_path() {
    let cases: [(&str, &str, Vec<&str>); 10] = [
        (
            "unknown kind",
            "targetRef: {kind: Everything}\ndefault: {}\n",
            vec![
                "spec.targetRef.kind: unknown kind \"Everything\"; must be one of Mesh, MeshSubset, MeshGateway, MeshService, MeshServiceSubset, MeshHTTPRoute",
            ],
        ),
        (
            "kind not allowed in to",
            "to: [{targetRef: {kind: MeshSubset, tags: {a: b}}, default: {}}]\n",
            vec![
                "spec.to[0].targetRef.kind: MeshSubset is not allowed in to[].targetRef; allowed: Mesh, MeshService, MeshHTTPRoute",
            ],
        ),
        (
            "kind not allowed in from",
            "from: [{targetRef: {kind: MeshGateway, name: g}, default: {}}]\n",
            vec![
                "spec.from[0].targetRef.kind: MeshGateway is not allowed in from[].targetRef; allowed: Mesh, MeshSubset, MeshService, MeshServiceSubset",
            ],
        ),
        (
            "missing name",
            "targetRef: {kind: MeshService}\nto: [{targetRef: {kind: MeshService, name: ''}, default: {}}]\n",
            vec![
                "spec.targetRef.name: must be set with kind MeshService",
                "spec.to[0].targetRef.name: cannot be empty",
            ],
        ),
        (
            "tags and name on Mesh",
            "targetRef: {kind: Mesh, name: x, tags: {a: b}}\ndefault: {}\n",
            vec![
                "spec.targetRef.name: must not be set with kind Mesh",
                "spec.targetRef.tags: must not be set with kind Mesh in a top-level targetRef",
            ],
        ),
        (
            "tags on a MeshService and an empty tag value",
            "targetRef: {kind: MeshServiceSubset, name: web, tags: {version: ''}}\nto: [{targetRef: {kind: MeshService, name: b, tags: {a: b}}, default: {}}]\n",
            vec![
                "spec.targetRef.tags[\"version\"]: tag value cannot be empty",
                "spec.to[0].targetRef.tags: must not be set with kind MeshService in to[].targetRef",
            ],
        ),
        (
            "proxyTypes where not allowed, and unknown",
            "targetRef: {kind: MeshService, name: web, proxyTypes: [Ingress]}\nto: [{targetRef: {kind: Mesh, proxyTypes: [Sidecar]}, default: {}}]\n",
            vec![
                "spec.targetRef.proxyTypes: only allowed in a top-level targetRef of kind Mesh or MeshSubset",
                "spec.targetRef.proxyTypes[0]: unknown proxy type \"Ingress\"; must be Sidecar or Gateway",
                "spec.to[0].targetRef.proxyTypes: only allowed in a top-level targetRef of kind Mesh or MeshSubset",
            ],
        ),
        (
            "mesh and unsupported fields",
            "targetRef: {kind: Mesh, mesh: other, sectionName: http}\ndefault: {}\n",
            vec![
                "spec.targetRef.sectionName: field is not supported",
                "spec.targetRef.mesh: must not be set (reserved for cross-mesh use)",
            ],
        ),
        (
            "missing confs and rules with from",
            "from: [{targetRef: {kind: Mesh}}]\nrules: [{matches: []}]\nto: [{targetRef: {kind: Mesh}, default: {}, rules: []}]\n",
            vec![
                "spec.to[0]: must set either default or rules, not both",
                "spec.from[0].default: must be set",
                "spec.rules[0].default: must be set",
                "spec.from: must be empty when rules are set",
            ],
        ),
        (
            "nothing to apply",
            "targetRef: {kind: Mesh}\n",
            vec!["spec: must set at least one of to, from, rules or default"],
        ),
    ];
    for (what, yaml, want) in cases {
        assert_eq!(violations(yaml), want, "{what}");
    }
}

#[test]
fn policy_role_as_kuma_computes_it() {
    type Case = (
        &'static str,
        Option<&'static str>,
        &'static str,
        Result<PolicyRole, PolicyError>,
    );
    let cases: [Case; 8] = [
        (
            "global, system namespace or Universal",
            None,
            "from: [{targetRef: {kind: Mesh}, default: {}}]\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
            Ok(PolicyRole::System),
        ),
        (
            "from",
            Some("shop"),
            "from: [{targetRef: {kind: Mesh}, default: {}}]\n",
            Ok(PolicyRole::WorkloadOwner),
        ),
        (
            "rules",
            Some("shop"),
            "rules: [{default: {}}]\n",
            Ok(PolicyRole::WorkloadOwner),
        ),
        (
            "no to at all",
            Some("shop"),
            "default: {}\n",
            Ok(PolicyRole::WorkloadOwner),
        ),
        (
            "every to item names a service or route",
            Some("shop"),
            "to: [{targetRef: {kind: MeshService, name: b}, default: {}}, {targetRef: {kind: MeshHTTPRoute, name: r}, default: {}}]\n",
            Ok(PolicyRole::Producer),
        ),
        (
            "to Mesh",
            Some("shop"),
            "to: [{targetRef: {kind: Mesh}, default: {}}]\n",
            Ok(PolicyRole::Consumer),
        ),
        (
            "to and from",
            Some("shop"),
            "from: [{targetRef: {kind: Mesh}, default: {}}]\nto: [{targetRef: {kind: Mesh}, default: {}}]\n",
            Err(PolicyError::MixedToAndFrom),
        ),
        (
            "producer and consumer items",
            Some("shop"),
            "to: [{targetRef: {kind: MeshService, name: b}, default: {}}, {targetRef: {kind: Mesh}, default: {}}]\n",
            Err(PolicyError::MixedProducerAndConsumer),
        ),
    ];
    for (what, namespace, yaml, want) in cases {
        assert_eq!(compute_policy_role(&spec(yaml), namespace), want, "{what}");
    }
    assert_eq!(
        PolicyError::MixedToAndFrom.to_string(),
        "it's not allowed to mix 'to' and 'from' arrays in the same policy"
    );
    assert_eq!(
        PolicyError::MixedProducerAndConsumer.to_string(),
        "it's not allowed to mix producer and consumer items in the same policy"
    );
    for role in [
        PolicyRole::System,
        PolicyRole::Producer,
        PolicyRole::Consumer,
        PolicyRole::WorkloadOwner,
    ] {
        let labels = Tags::from([(POLICY_ROLE_LABEL.to_string(), role.as_str().to_string())]);
        assert_eq!(PolicyRole::from_labels(&labels), role);
    }
}
