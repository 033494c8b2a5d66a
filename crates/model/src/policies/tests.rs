use serde_json::{Value, json};

use super::*;
use crate::resource::Spec;

pub(super) fn parse(yaml: &str) -> Result<Resource, Violations> {
    let value: Value = serde_norway::from_str(yaml).expect("test YAML parses");
    let r = Resource::from_value(value)?;
    crate::validate(&r)?;
    Ok(r)
}

const MTP: &str = "
type: MeshTrafficPermission
name: payments-clients
mesh: default
labels: {team: payments}
spec:
  targetRef: {kind: MeshService, name: payments}
  from:
    - targetRef: {kind: Mesh}
      default: {action: Deny}
    - targetRef: {kind: MeshSubset, tags: {kuma.io/service: orders}}
      default: {action: Allow}
    - targetRef: {kind: MeshSubset, tags: {kuma.io/zone: us-east, team: audit}}
      default: {action: AllowWithShadowDeny}
";

const HTTP_ROUTE: &str = "
type: MeshHTTPRoute
name: backend-canary
mesh: default
spec:
  targetRef: {kind: MeshService, name: frontend}
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches:
            - path: {type: PathPrefix, value: /api}
              method: GET
              headers: [{type: Exact, name: x-canary, value: '1'}, {type: Present, name: x-user}]
              queryParams: [{type: RegularExpression, name: v, value: '^[0-9]+$'}]
            - path: {type: RegularExpression, value: '^/v[12]/.*'}
          default:
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {set: [{name: x-via, value: mesh}], remove: [x-debug]}
              - type: URLRewrite
                urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}, hostname: api.internal}
              - type: RequestMirror
                requestMirror: {percentage: 10, backendRef: {kind: MeshService, name: backend-shadow}}
            backendRefs:
              - {kind: MeshServiceSubset, name: backend, tags: {version: v1}, weight: 90}
              - {kind: MeshServiceSubset, name: backend, tags: {version: v2, kuma.io/zone: zone-2}, weight: 10}
        - matches: [{path: {type: Exact, value: /old}}]
          default:
            filters:
              - type: RequestRedirect
                requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}
";

const TCP_ROUTE: &str = "
type: MeshTCPRoute
name: redis-split
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: MeshService, name: redis}
      rules:
        - default:
            backendRefs: [{kind: MeshService, name: redis, weight: 80}, {kind: MeshService, name: redis-dr, weight: 20}]
";

#[test]
fn valid_documents_parse_validate_and_round_trip_with_spec_kept() {
    for (doc, rt) in [
        (MTP, ResourceType::MeshTrafficPermission),
        (HTTP_ROUTE, ResourceType::MeshHTTPRoute),
        (TCP_ROUTE, ResourceType::MeshTCPRoute),
    ] {
        let r = parse(doc).unwrap_or_else(|v| panic!("{rt}: {v}"));
        assert_eq!(r.resource_type(), rt);
        let out = r.to_value();
        assert_eq!(out["type"], rt.name());
        assert!(out["spec"].is_object(), "{rt}: output keeps spec: {out}");
        assert!(out.get("targetRef").is_none(), "{rt}: nothing inline");
        // The output parses back to the same resource, and so does the stored form.
        assert_eq!(Resource::from_value(out).expect("round trip"), r);
        let stored = Spec::from_json(rt, &r.spec_json()).expect("stored form parses");
        assert_eq!(stored, r.spec);
        let fields: Value = serde_json::from_str(&r.spec_json()).expect("JSON");
        assert_eq!(
            Spec::from_fields(rt, fields).expect("stored fields parse"),
            r.spec
        );
    }
}

#[test]
fn spec_fields_inline_are_accepted_too() {
    let r = parse(
        "type: MeshTrafficPermission\nname: a\nmesh: default\nfrom:\n  - targetRef: {kind: Mesh}\n    default: {action: Allow}\n",
    )
    .expect("valid");
    assert!(r.to_value()["spec"]["from"].is_array());
}

#[test]
fn engine_conversion_keeps_sections_and_labels() {
    let mtp = parse(MTP).expect("valid");
    let p = to_engine_policy(&mtp).expect("a policy");
    assert_eq!(
        (p.name.as_str(), p.mesh.as_str()),
        ("payments-clients", "default")
    );
    assert_eq!(p.labels.get("team").map(String::as_str), Some("payments"));
    assert_eq!(p.target_ref().kind, TargetRefKind::MeshService);
    assert_eq!(p.spec.from.len(), 3);
    assert_eq!(p.spec.from[0].default, Some(json!({"action": "Deny"})));
    assert_eq!(
        p.spec.from[2].default,
        Some(json!({"action": "AllowWithShadowDeny"}))
    );
    crate::policy::validate_policy(&p.spec).expect("engine accepts it");

    let route = to_engine_policy(&parse(HTTP_ROUTE).expect("valid")).expect("a policy");
    let rules = route.spec.to[0].rules.as_ref().expect("route rules");
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0]
            .matches
            .as_ref()
            .and_then(|m| m.pointer("/0/path/type")),
        Some(&json!("PathPrefix"))
    );
    assert_eq!(
        rules[0].default.pointer("/backendRefs/1/weight"),
        Some(&json!(10))
    );
    crate::policy::validate_policy(&route.spec).expect("engine accepts it");

    let tcp = to_engine_policy(&parse(TCP_ROUTE).expect("valid")).expect("a policy");
    let rules = tcp.spec.to[0].rules.as_ref().expect("route rules");
    assert_eq!(rules[0].matches, None);
    assert_eq!(
        rules[0].default.pointer("/backendRefs/1/name"),
        Some(&json!("redis-dr"))
    );

    let mesh = Resource::new(crate::Meta::named("m", ""), Spec::Mesh(Default::default()));
    assert_eq!(to_engine_policy(&mesh), None);
}

/// Replaces the first occurrence of `from` in `doc` (which must be there).
pub(super) fn edit(doc: &str, from: &str, to: &str) -> String {
    assert!(doc.contains(from), "test edit {from:?} not in document");
    doc.replacen(from, to, 1)
}

#[test]
fn each_mistake_is_reported_at_its_path() {
    let cases: Vec<(&str, String, &str, &str)> = vec![
        // (what, document, field, part of the message)
        ("unknown top-level kind", edit(MTP, "kind: MeshService, name: payments", "kind: Bogus"), "spec.targetRef.kind", "unknown kind"),
        ("MeshHTTPRoute kind at top of an MTP", edit(MTP, "kind: MeshService, name: payments", "kind: MeshHTTPRoute, name: r"), "spec.targetRef.kind", "not allowed"),
        ("MeshGateway at top", edit(TCP_ROUTE, "targetRef: {kind: Mesh}", "targetRef: {kind: MeshGateway, name: gw}"), "spec.targetRef.kind", "not allowed"),
        ("unknown from kind", edit(MTP, "targetRef: {kind: Mesh}\n", "targetRef: {kind: Dataplane}\n"), "spec.from[0].targetRef.kind", "unknown kind"),
        ("from MeshService without name", edit(MTP, "targetRef: {kind: Mesh}\n", "targetRef: {kind: MeshService}\n"), "spec.from[0].targetRef.name", "must be set"),
        ("MTP with to", edit(MTP, "  from:\n", "  to: []\n  from:\n"), "spec.to", "unknown field"),
        ("bad action", edit(MTP, "action: Deny", "action: Reject"), "spec.from[0].default.action", "unknown variant"),
        ("missing action", edit(MTP, "default: {action: Deny}", "default: {}"), "spec.from[0].default.action", "must be set"),
        ("MTP without from", "type: MeshTrafficPermission\nname: a\nmesh: default\nspec: {targetRef: {kind: Mesh}}\n".to_string(), "spec.from", "at least one"),
        ("route to Mesh", edit(HTTP_ROUTE, "targetRef: {kind: MeshService, name: backend}", "targetRef: {kind: Mesh}"), "spec.to[0].targetRef.kind", "not allowed"),
        ("route to MeshService without name", edit(HTTP_ROUTE, "targetRef: {kind: MeshService, name: backend}", "targetRef: {kind: MeshService}"), "spec.to[0].targetRef.name", "must be set"),
        ("route without rules", edit(TCP_ROUTE, "      rules:\n        - default:\n            backendRefs: [{kind: MeshService, name: redis, weight: 80}, {kind: MeshService, name: redis-dr, weight: 20}]\n", ""), "spec.to[0].rules", "exactly one"),
        ("http route without rules", "type: MeshHTTPRoute\nname: a\nmesh: default\nspec:\n  to: [{targetRef: {kind: MeshService, name: b}}]\n".to_string(), "spec.to[0].rules", "at least one"),
        ("http route without to", "type: MeshHTTPRoute\nname: a\nmesh: default\nspec: {targetRef: {kind: Mesh}}\n".to_string(), "spec.to", "at least one"),
        ("bad path type", edit(HTTP_ROUTE, "type: PathPrefix", "type: Prefix"), "spec.to[0].rules[0].matches[0].path.type", "unknown variant"),
        ("prefix without slash", edit(HTTP_ROUTE, "value: /api", "value: api"), "spec.to[0].rules[0].matches[0].path.value", "start with '/'"),
        ("exact without slash", edit(HTTP_ROUTE, "value: /old", "value: old"), "spec.to[0].rules[1].matches[0].path.value", "start with '/'"),
        ("bad path regex", edit(HTTP_ROUTE, "'^/v[12]/.*'", "'^/v[12/'"), "spec.to[0].rules[0].matches[1].path.value", "regular expression"),
        ("bad method", edit(HTTP_ROUTE, "method: GET", "method: FETCH"), "spec.to[0].rules[0].matches[0].method", "unknown variant"),
        ("bad header match type", edit(HTTP_ROUTE, "{type: Exact, name: x-canary", "{type: Contains, name: x-canary"), "spec.to[0].rules[0].matches[0].headers[0].type", "unknown variant"),
        ("present header with value", edit(HTTP_ROUTE, "{type: Present, name: x-user}", "{type: Present, name: x-user, value: a}"), "spec.to[0].rules[0].matches[0].headers[1].value", "must not be set"),
        ("exact header without value", edit(HTTP_ROUTE, "{type: Present, name: x-user}", "{type: Exact, name: x-user}"), "spec.to[0].rules[0].matches[0].headers[1].value", "must be set"),
        ("bad query regex", edit(HTTP_ROUTE, "'^[0-9]+$'", "'(['"), "spec.to[0].rules[0].matches[0].queryParams[0].value", "regular expression"),
        ("empty matches", edit(HTTP_ROUTE, "matches: [{path: {type: Exact, value: /old}}]", "matches: []"), "spec.to[0].rules[1].matches", "at least one"),
        ("bad filter type", edit(HTTP_ROUTE, "type: RequestMirror\n", "type: Mirror\n"), "spec.to[0].rules[0].default.filters[2].type", "unknown variant"),
        ("filter without its object", edit(HTTP_ROUTE, "type: URLRewrite\n                urlRewrite:", "type: URLRewrite\n                requestRedirect:"), "spec.to[0].rules[0].default.filters[1].urlRewrite", "must be set"),
        ("redirect status", edit(HTTP_ROUTE, "statusCode: 301", "statusCode: 304"), "spec.to[0].rules[1].default.filters[0].requestRedirect.statusCode", "301, 302"),
        ("rewrite without its path", edit(HTTP_ROUTE, "type: ReplacePrefixMatch, replacePrefixMatch: /v2", "type: ReplaceFullPath, replacePrefixMatch: /v2"), "spec.to[0].rules[0].default.filters[1].urlRewrite.path.replaceFullPath", "must be set"),
        ("mirror percentage", edit(HTTP_ROUTE, "percentage: 10", "percentage: 120"), "spec.to[0].rules[0].default.filters[2].requestMirror.percentage", "between 0 and 100"),
        ("negative weight", edit(HTTP_ROUTE, "weight: 90", "weight: -1"), "spec.to[0].rules[0].default.backendRefs[0].weight", "0 or more"),
        ("backendRef kind", edit(HTTP_ROUTE, "{kind: MeshServiceSubset, name: backend, tags: {version: v1}", "{kind: Mesh, name: backend, tags: {version: v1}"), "spec.to[0].rules[0].default.backendRefs[0].kind", "not allowed"),
        ("backendRef without name", edit(TCP_ROUTE, "{kind: MeshService, name: redis, weight: 80}", "{kind: MeshService, weight: 80}"), "spec.to[0].rules[0].default.backendRefs[0].name", "must be set"),
        ("two tcp rules", edit(TCP_ROUTE, "      rules:\n", "      rules:\n        - default: {backendRefs: [{kind: MeshService, name: a}]}\n"), "spec.to[0].rules", "at most 1"),
        ("empty tcp backendRefs", edit(TCP_ROUTE, "backendRefs: [{kind: MeshService, name: redis, weight: 80}, {kind: MeshService, name: redis-dr, weight: 20}]", "backendRefs: []"), "spec.to[0].rules[0].default.backendRefs", "at least one"),
        ("unknown field in a conf", edit(TCP_ROUTE, "- default:\n", "- default:\n            timeout: 1s\n"), "spec.to[0].rules[0].default.timeout", "unknown field"),
    ];
    assert_each_mistake(&cases);
}

/// Every `(what, document, field, part of the message)` case is refused with that violation.
pub(super) fn assert_each_mistake(cases: &[(&str, String, &str, &str)]) {
    let mut failures = Vec::new();
    for (what, doc, field, message) in cases {
        match parse(doc) {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(v) => {
                if !v
                    .violations
                    .iter()
                    .any(|x| x.field == *field && x.message.contains(message))
                {
                    failures.push(format!("{what}: want {field}: …{message}…, got {v}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn at_most_sixteen_header_modifications_each() {
    let many: Vec<Value> = (0..17)
        .map(|i| json!({"name": format!("x-{i}"), "value": "v"}))
        .collect();
    let doc = json!({
        "type": "MeshHTTPRoute", "name": "a", "mesh": "default",
        "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "b"}, "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "default": {"filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": many}}]}
        }]}]}
    });
    let r = Resource::from_value(doc).expect("parses");
    let v = crate::validate(&r).expect_err("17 additions");
    assert_eq!(
        v.violations[0].field,
        "spec.to[0].rules[0].default.filters[0].responseHeaderModifier.add"
    );
    assert!(v.violations[0].message.contains("at most 16"));
}

#[test]
fn allow_all_is_a_valid_permission() {
    let r = Resource::new(
        crate::Meta::named(&allow_all_name("default"), "default"),
        Spec::Policy(PolicyConf::MeshTrafficPermission(
            mesh_traffic_permission::MeshTrafficPermission::everyone(
                mesh_traffic_permission::Action::Allow,
            ),
        )),
    );
    crate::validate(&r).expect("valid");
    assert_eq!(r.meta.name, "allow-all-default");
    assert_eq!(
        r.to_value()["spec"],
        json!({"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]})
    );
}

#[test]
fn a_new_mesh_gets_its_initial_policies_unless_skipped() {
    let spec = |skip: &[&str]| crate::specs::MeshSpec {
        skip_creating_initial_policies: skip.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let keys = |skip: &[&str]| {
        initial_policies("demo", &spec(skip))
            .iter()
            .map(|r| {
                crate::validate(r).expect("valid");
                r.key()
            })
            .collect::<Vec<_>>()
    };
    let key = |rt, name| crate::ResourceKey::new(rt, "demo", name);
    let mtp = key(ResourceType::MeshTrafficPermission, "allow-all-demo");
    let timeout = key(ResourceType::MeshTimeout, "mesh-timeout-all-demo");
    let retry = key(ResourceType::MeshRetry, "mesh-retry-all-demo");
    let breaker = key(
        ResourceType::MeshCircuitBreaker,
        "mesh-circuit-breaker-all-demo",
    );
    assert_eq!(
        keys(&[]),
        [mtp.clone(), breaker.clone(), timeout.clone(), retry.clone()]
    );
    assert_eq!(
        keys(&["MeshTimeout"]),
        [mtp.clone(), breaker.clone(), retry.clone()]
    );
    assert_eq!(
        keys(&["MeshTrafficPermission", "MeshRetry", "MeshCircuitBreaker"]),
        [timeout]
    );
    assert!(keys(&["*"]).is_empty());
}

#[test]
fn mesh_policies_compute_a_dataplanes_rules_per_type() {
    let mut copy = parse(HTTP_ROUTE).expect("valid");
    copy.meta.name = "backend-canary-xb2k".into();
    copy.meta
        .labels
        .insert("kuma.io/display-name".into(), "backend-canary".into());
    let resources = vec![
        parse(MTP).expect("valid"),
        copy,
        parse(TCP_ROUTE).expect("valid"),
    ];
    let policies = MeshPolicies::from_resources(&resources);
    assert_eq!(policies.of(ResourceType::MeshTrafficPermission).len(), 1);
    assert_eq!(policies.of(ResourceType::MeshTCPRoute).len(), 1);
    assert!(policies.http_routes.contains_key("backend-canary"));
    assert!(policies.http_routes.contains_key("backend-canary-xb2k"));

    let dp: Value = serde_norway::from_str(
        "type: Dataplane\nmesh: default\nname: payments-1\nlabels: {kuma.io/origin: zone}\nnetworking:\n  address: 10.0.0.1\n  inbound:\n    - port: 8080\n      tags: {kuma.io/service: payments}\n",
    )
    .expect("yaml");
    let dp = Resource::from_value(dp).expect("dataplane");
    let proxy = describe_dataplane(&dp, Some("zone-1")).expect("a dataplane");
    assert_eq!(
        proxy.inbounds[0]
            .tags
            .get("kuma.io/zone")
            .map(String::as_str),
        Some("zone-1")
    );
    assert_eq!(
        proxy.labels.get("kuma.io/origin").map(String::as_str),
        Some("zone")
    );

    let mtp = policies
        .rules(ResourceType::MeshTrafficPermission, &proxy)
        .expect("rules");
    let orders = crate::specs::Tags::from([("kuma.io/service".to_string(), "orders".to_string())]);
    let other = crate::specs::Tags::from([("kuma.io/service".to_string(), "web".to_string())]);
    assert_eq!(
        mtp.from_rule(8080, &orders).map(|r| &r.conf),
        Some(&json!({"action": "Allow"}))
    );
    assert_eq!(
        mtp.from_rule(8080, &other).map(|r| &r.conf),
        Some(&json!({"action": "Deny"}))
    );
    // The HTTP route selects frontend proxies only; the TCP route every proxy.
    let http = policies
        .rules(ResourceType::MeshHTTPRoute, &proxy)
        .expect("rules");
    assert!(http.to_rules.is_empty());
    let tcp = policies
        .rules(ResourceType::MeshTCPRoute, &proxy)
        .expect("rules");
    let redis = tcp.to_rule("redis").expect("redis rule");
    assert_eq!(
        redis.conf.pointer("/rules/0/default/backendRefs/1/weight"),
        Some(&json!(20))
    );
    // Not a dataplane: no description.
    assert_eq!(describe_dataplane(&resources[0], None), None);
}
