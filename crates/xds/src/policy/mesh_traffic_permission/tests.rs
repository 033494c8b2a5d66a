//! Table tests of the principals and of where the filters go. The Envoy output itself is pinned
//! by `tests/mesh_traffic_permission.rs` (golden JSON, accepted by Envoy).

use meshzone_model::policy::{Rule, TagMatcher};
use serde_json::json;

use super::*;

fn m(key: &str, value: &str, not: bool) -> TagMatcher {
    TagMatcher {
        key: key.into(),
        value: value.into(),
        not,
    }
}

fn rule(matchers: Vec<TagMatcher>, action: &str) -> Rule {
    Rule {
        matchers,
        conf: json!({ "action": action }),
        origin: vec![],
    }
}

/// A principal as a short expression, to keep the table readable.
fn show(p: &Principal) -> String {
    match &p.identifier {
        Some(Identifier::Any(true)) => "any".into(),
        Some(Identifier::Authenticated(Authenticated {
            principal_name:
                Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(name)),
                    ignore_case: false,
                }),
        })) => name.clone(),
        Some(Identifier::AndIds(set)) => format!(
            "and({})",
            set.ids.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Some(Identifier::NotId(inner)) => format!("not({})", show(inner)),
        other => format!("unexpected {other:?}"),
    }
}

#[test]
fn subsets_become_principals() {
    let cases: Vec<(&str, Vec<TagMatcher>, &str)> = vec![
        ("empty subset: anyone", vec![], "any"),
        (
            "a service is its SPIFFE ID",
            vec![m("kuma.io/service", "orders", false)],
            "spiffe://default/orders",
        ),
        (
            "another tag is its kuma:// URI",
            vec![m("kuma.io/zone", "east", false)],
            "kuma://kuma.io/zone/east",
        ),
        (
            "a negated tag",
            vec![m("version", "v1", true)],
            "not(kuma://version/v1)",
        ),
        (
            "several tags, in order, negations kept",
            vec![
                m("kuma.io/service", "orders", false),
                m("kuma.io/zone", "west", true),
                m("team", "audit", false),
            ],
            "and(spiffe://default/orders, not(kuma://kuma.io/zone/west), kuma://team/audit)",
        ),
    ];
    for (what, matchers, want) in cases {
        let (allow, shadow) = principals("default", &[rule(matchers, "Allow")]);
        assert_eq!(
            allow.iter().map(show).collect::<Vec<_>>(),
            vec![want],
            "{what}"
        );
        assert!(shadow.is_empty(), "{what}");
    }
}

/// (what, rules, allowed principals, shadow-denied principals)
type ActionCase = (
    &'static str,
    Vec<Rule>,
    Vec<&'static str>,
    Vec<&'static str>,
);

#[test]
fn actions_pick_allow_and_shadow_lists() {
    let orders = || vec![m("kuma.io/service", "orders", false)];
    let east = || vec![m("kuma.io/zone", "east", false)];
    let cases: Vec<ActionCase> = vec![
        ("no rules: nobody", vec![], vec![], vec![]),
        (
            "deny only: nobody",
            vec![rule(orders(), "Deny")],
            vec![],
            vec![],
        ),
        (
            "allow and deny: only the allowed subset",
            vec![rule(orders(), "Allow"), rule(vec![], "Deny")],
            vec!["spiffe://default/orders"],
            vec![],
        ),
        (
            "shadow deny is allowed and shadow-denied",
            vec![rule(east(), "AllowWithShadowDeny"), rule(orders(), "Allow")],
            vec!["kuma://kuma.io/zone/east", "spiffe://default/orders"],
            vec!["kuma://kuma.io/zone/east"],
        ),
        (
            "an unknown action fails closed",
            vec![rule(orders(), "allow")],
            vec![],
            vec![],
        ),
    ];
    for (what, rules, want_allow, want_shadow) in cases {
        let (allow, shadow) = principals("default", &rules);
        assert_eq!(
            allow.iter().map(show).collect::<Vec<_>>(),
            want_allow,
            "{what}"
        );
        assert_eq!(
            shadow.iter().map(show).collect::<Vec<_>>(),
            want_shadow,
            "{what}"
        );
    }
}

#[test]
fn no_allowing_rule_is_zero_policies_and_no_shadow() {
    let (rules, shadow) = rules_of("default", &[rule(vec![], "Deny")]);
    assert_eq!(rules.action, Action::Allow as i32);
    assert!(rules.policies.is_empty(), "ALLOW with no policy denies all");
    assert!(shadow.is_none());
    let (rules, shadow) = rules_of("default", &[rule(vec![], "AllowWithShadowDeny")]);
    let policy = &rules.policies[POLICY_NAME];
    assert_eq!(
        policy.permissions,
        vec![Permission {
            rule: Some(permission::Rule::Any(true))
        }]
    );
    let shadow = shadow.expect("shadow rules");
    assert_eq!(shadow.action, Action::Deny as i32);
    assert_eq!(shadow.policies[POLICY_NAME].principals.len(), 1);
}
