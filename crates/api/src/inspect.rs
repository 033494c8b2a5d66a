//! Policy inspection: `GET /meshes/{mesh}/dataplanes/{name}/_rules` (what every policy type
//! configures on one proxy, in Kuma's `InspectRules` shape) and
//! `GET /meshes/{mesh}/{policy-path}/{name}/_resources/dataplanes` (the proxies a policy
//! selects). A zone computes both from its store with the same engine the DP server uses. On
//! global, `_rules` is asked of the zone that owns the proxy (`ApiSettings::zone_rules`) and its
//! answer returned unchanged — never computed from global's copies, which may lag; the list of
//! selected proxies is computed over every zone's Dataplane copies (their inbounds carry
//! `kuma.io/zone`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use meshzone_model::policies::{
    DataplaneRulesError, MeshPolicies, describe_dataplane, to_engine_policy,
};
use meshzone_model::policy::{Policy, PolicyRules, Rule, TargetRef, select};
use meshzone_model::specs::MeshSpec;
use meshzone_model::{Resource, ResourceKey, ResourceType, Spec};
use serde_json::{Value, json};

use meshzone_store::Store;

use crate::{ApiContext, ApiError, ApiResult, CpMode, PageQuery, page, paged, resolve};

/// Kuma's warning for a MeshTrafficPermission in a mesh without mTLS
/// (`api/openapi/specs/common/resource.yaml`).
pub const MTP_WITHOUT_MTLS: &str = "Mesh is not Mtls enabled this policy will have no effect";

fn rule_json(r: &Rule) -> Value {
    json!({"matchers": r.matchers, "conf": r.conf, "origin": r.origin})
}

/// One entry of `rules[]`: a policy type's rules on the proxy, with its warnings.
fn type_entry(rt: ResourceType, rules: &PolicyRules, mesh: &MeshSpec) -> Value {
    let mut warnings = Vec::new();
    if rt == ResourceType::MeshTrafficPermission && mesh.enabled_mtls_backend().is_none() {
        warnings.push(MTP_WITHOUT_MTLS);
    }
    let mut entry = json!({
        "type": rt.name(),
        "toRules": rules.to_rules.iter().map(rule_json).collect::<Vec<_>>(),
        "fromRules": rules.from_rules.iter().map(|f| json!({
            "inbound": f.inbound,
            "rules": f.rules.iter().map(rule_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "inboundRules": rules.inbound_rules,
        "warnings": warnings,
    });
    if let (Some(p), Some(map)) = (&rules.proxy_rule, entry.as_object_mut()) {
        map.insert("proxyRule".into(), json!(p));
    }
    entry
}

/// Kuma's `httpMatches`: every distinct `matches` of the MeshHTTPRoute rules on the proxy,
/// with a stable hash of it (FNV-64a of its JSON, 16 hex digits).
fn http_matches(rules: &PolicyRules) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let all = rules.to_rules.iter().flat_map(|r| {
        r.conf["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|rule| rule["matches"].clone())
    });
    for matches in all.filter(|m| !m.is_null()) {
        let text = matches.to_string();
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let entry = json!({"hash": format!("{hash:016x}"), "match": matches});
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

/// The `_rules` answer for the Dataplane `dp` (pure).
pub(crate) fn dataplane_rules(
    dp: &Resource,
    mesh: &MeshSpec,
    policies: &MeshPolicies,
    zone: Option<&str>,
) -> Result<Value, DataplaneRulesError> {
    let mut entries = Vec::new();
    let mut matches = Vec::new();
    for (rt, rules) in policies.dataplane_rules(dp, zone)? {
        if rules.policies.is_empty() {
            continue;
        }
        if rt == ResourceType::MeshHTTPRoute {
            matches = http_matches(&rules);
        }
        entries.push(type_entry(rt, &rules, mesh));
    }
    Ok(json!({
        "resource": {"type": "Dataplane", "mesh": dp.meta.mesh, "name": dp.meta.name},
        "rules": entries,
        "httpMatches": matches,
    }))
}

/// The Dataplanes `policy` selects, as Kuma lists them (`mesh`, `name`, `labels`; pure).
pub(crate) fn selected_dataplanes(
    policy: &Policy,
    dataplanes: &[Resource],
    http_routes: &std::collections::BTreeMap<String, TargetRef>,
    zone: Option<&str>,
) -> Vec<Value> {
    dataplanes
        .iter()
        .filter_map(|dp| describe_dataplane(dp, zone).map(|proxy| (dp, proxy)))
        .filter(|(_, proxy)| !select(proxy, std::slice::from_ref(policy), http_routes).is_empty())
        .map(|(dp, _)| {
            json!({"type": "Dataplane", "mesh": dp.meta.mesh, "name": dp.meta.name, "labels": dp.meta.labels})
        })
        .collect()
}

fn zone_name(ctx: &ApiContext) -> Option<&str> {
    match &ctx.0.settings.mode {
        CpMode::Zone { name, .. } => Some(name.as_str()).filter(|n| !n.is_empty()),
        CpMode::Global => None,
    }
}

async fn mesh_policies(store: &Store, mesh: &str) -> ApiResult<MeshPolicies> {
    let mut resources = Vec::new();
    for rt in ResourceType::policies() {
        resources.extend(store.list(rt, Some(mesh)).await?);
    }
    Ok(MeshPolicies::from_resources(&resources))
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_rules`.
pub(crate) async fn dataplane_rules_handler(
    State(ctx): State<ApiContext>,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult {
    let key = ResourceKey::new(ResourceType::Dataplane, &mesh, &name);
    if !matches!(ctx.0.settings.mode, CpMode::Global) {
        let answer = local_dataplane_rules(&ctx.0.store, &key, zone_name(&ctx)).await?;
        return Ok(Json(answer).into_response());
    }
    if ctx.0.store.find(&key).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "Dataplane {name:?} not found in mesh {mesh:?}"
        )));
    }
    let Some(ask) = &ctx.0.settings.zone_rules else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Zone unavailable",
            "this global control plane cannot reach zones: ask the zone control plane the proxy belongs to",
        ));
    };
    Ok(Json(ask(key).await?).into_response())
}

/// The `_rules` answer for Dataplane `key` from this control plane's own store, with `zone`
/// stamped on its inbounds: what a zone (or a standalone CP) answers, over REST and over KDS.
pub async fn local_dataplane_rules(
    store: &Store,
    key: &ResourceKey,
    zone: Option<&str>,
) -> Result<Value, ApiError> {
    let mesh = &key.mesh;
    let mesh_spec = match store
        .get(&ResourceKey::global(ResourceType::Mesh, mesh))
        .await?
        .spec
    {
        Spec::Mesh(m) => m,
        _ => MeshSpec::default(),
    };
    let dp = store.find(key).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "Dataplane {:?} not found in mesh {mesh:?}",
            key.name
        ))
    })?;
    let policies = mesh_policies(store, mesh).await?;
    dataplane_rules(&dp, &mesh_spec, &policies, zone).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Could not compute the rules",
            e.to_string(),
        )
    })
}

/// `GET /meshes/{mesh}/{policy-path}/{name}/_resources/dataplanes`.
pub(crate) async fn policy_dataplanes_handler(
    State(ctx): State<ApiContext>,
    Path((mesh, ws, name)): Path<(String, String, String)>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = page(&q)?;
    let rt = resolve(&ws, true)?;
    if !rt.descriptor().policy {
        return Err(ApiError::not_found(format!(
            "{rt} is not a policy: only policies select dataplanes"
        )));
    }
    let stored = ctx.0.store.get(&ResourceKey::new(rt, &mesh, &name)).await?;
    let policy = to_engine_policy(&stored)
        .ok_or_else(|| ApiError::not_found(format!("{rt} {name:?} is not a policy")))?;
    let policies = mesh_policies(&ctx.0.store, &mesh).await?;
    let dataplanes = ctx
        .0
        .store
        .list(ResourceType::Dataplane, Some(&mesh))
        .await?;
    let items = selected_dataplanes(&policy, &dataplanes, &policies.http_routes, zone_name(&ctx));
    let path = format!("/meshes/{mesh}/{ws}/{name}/_resources/dataplanes");
    Ok(paged(items, p, &headers, &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(v: Value) -> Resource {
        let r = Resource::from_value(v).expect("parses");
        meshzone_model::validate(&r).expect("valid");
        r
    }

    fn dp(name: &str, service: &str) -> Resource {
        resource(json!({"type": "Dataplane", "mesh": "default", "name": name,
            "networking": {"address": "10.0.0.1", "inbound": [{"port": 8080, "tags": {"kuma.io/service": service}}]}}))
    }

    fn policies() -> Vec<Resource> {
        vec![
            resource(
                json!({"type": "MeshTrafficPermission", "mesh": "default", "name": "backend-clients",
                "spec": {"targetRef": {"kind": "MeshService", "name": "backend"}, "from": [
                    {"targetRef": {"kind": "MeshSubset", "tags": {"kuma.io/zone": "zone-2"}}, "default": {"action": "Deny"}}]}}),
            ),
            resource(
                json!({"type": "MeshHTTPRoute", "mesh": "default", "name": "canary",
                "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
                    {"matches": [{"headers": [{"type": "Exact", "name": "x-canary", "value": "1"}]}],
                     "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}]}}]}]}}),
            ),
        ]
    }

    fn types_of(v: &Value) -> Vec<String> {
        let rules = v["rules"].as_array().cloned().unwrap_or_default();
        rules
            .iter()
            .filter_map(|r| r["type"].as_str().map(str::to_string))
            .collect()
    }

    #[test]
    fn rules_of_a_proxy_in_kumas_shape_with_the_mtls_warning() {
        let all = MeshPolicies::from_resources(&policies());
        let v = dataplane_rules(
            &dp("backend-1", "backend"),
            &MeshSpec::default(),
            &all,
            Some("zone-1"),
        )
        .expect("rules");
        assert_eq!(
            v["resource"],
            json!({"type": "Dataplane", "mesh": "default", "name": "backend-1"})
        );
        assert_eq!(types_of(&v), ["MeshTrafficPermission", "MeshHTTPRoute"]);
        let mtp = &v["rules"][0];
        assert_eq!(mtp["warnings"], json!([MTP_WITHOUT_MTLS]));
        assert_eq!(mtp["fromRules"][0]["inbound"]["port"], 8080);
        assert_eq!(
            mtp["fromRules"][0]["inbound"]["tags"]["kuma.io/zone"],
            "zone-1"
        );
        let rule = &mtp["fromRules"][0]["rules"][0];
        assert_eq!(
            rule["matchers"],
            json!([{"key": "kuma.io/zone", "value": "zone-2"}])
        );
        assert_eq!(rule["conf"], json!({"action": "Deny"}));
        assert_eq!(rule["origin"][0]["resourceMeta"]["name"], "backend-clients");
        let route = &v["rules"][1];
        assert_eq!(route["warnings"], json!([]));
        assert_eq!(
            route["toRules"][0]["matchers"],
            json!([{"key": "kuma.io/service", "value": "backend"}])
        );
        assert_eq!(
            v["httpMatches"][0]["match"],
            json!([{"headers": [{"type": "Exact", "name": "x-canary", "value": "1"}]}])
        );
        assert_eq!(v["httpMatches"][0]["hash"].as_str().map(str::len), Some(16));

        // With mTLS the warning goes away; a proxy nothing selects has no MTP entry.
        let mtls: MeshSpec = serde_json::from_value(json!({"mtls": {"enabledBackend": "ca", "backends": [{"name": "ca", "type": "builtin"}]}})).expect("mesh");
        let v = dataplane_rules(&dp("backend-1", "backend"), &mtls, &all, None).expect("rules");
        assert_eq!(v["rules"][0]["warnings"], json!([]));
        let v = dataplane_rules(&dp("web-1", "web"), &mtls, &all, None).expect("rules");
        assert_eq!(types_of(&v), ["MeshHTTPRoute"]);
    }

    #[test]
    fn a_policy_lists_the_proxies_it_selects() {
        let all = MeshPolicies::from_resources(&policies());
        let dps = [
            dp("backend-1", "backend"),
            dp("web-1", "web"),
            dp("backend-2", "backend"),
        ];
        let mtp = to_engine_policy(&policies()[0]).expect("policy");
        let names: Vec<Value> = selected_dataplanes(&mtp, &dps, &all.http_routes, None)
            .into_iter()
            .map(|d| d["name"].clone())
            .collect();
        assert_eq!(names, [json!("backend-1"), json!("backend-2")]);
        let route = to_engine_policy(&policies()[1]).expect("policy");
        assert_eq!(
            selected_dataplanes(&route, &dps, &all.http_routes, None).len(),
            3
        );
    }
}
