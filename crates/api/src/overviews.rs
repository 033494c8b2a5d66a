//! Kuma's summary endpoints, computed on read from the stored resources:
//! `/zones/_overview`, `/zoneingresses/_overview`, `/zoneegresses/_overview` (each resource with
//! its insight), `/meshes/{mesh}/dataplanes/_overview` (filtered server-side: `name`, repeated
//! `tag=key:value`, `gateway`, and our `status`), `/mesh-insights`, `/global-insight` and
//! `/_resources`. The counting and filtering are pure functions; the handlers only read the store.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use meshzone_model::specs::{DataplaneInsightSpec, DataplaneSpec, Subscriptions};
use meshzone_model::{Resource, ResourceType, Scope, Spec, format_time};
use serde_json::{Value, json};

use crate::{ApiContext, ApiError, ApiResult, PageQuery, page, paged, paged_map, views};

/// A proxy's status as the GUI shows it (kuma-gui `DataplaneOverview.ts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataplaneStatus {
    Online,
    Offline,
    PartiallyDegraded,
}

impl DataplaneStatus {
    pub fn name(self) -> &'static str {
        match self {
            DataplaneStatus::Online => "online",
            DataplaneStatus::Offline => "offline",
            DataplaneStatus::PartiallyDegraded => "partially_degraded",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Online, Self::Offline, Self::PartiallyDegraded]
            .into_iter()
            .find(|v| v.name() == s)
    }
}

/// Offline without a connected subscription; a gateway is online once connected; otherwise
/// online when every inbound is ready, offline when none is, partially degraded in between.
pub fn dataplane_status(
    dp: &DataplaneSpec,
    insight: Option<&DataplaneInsightSpec>,
) -> DataplaneStatus {
    if !insight.is_some_and(|i| i.is_online()) {
        return DataplaneStatus::Offline;
    }
    let inbounds = &dp.networking.inbound;
    if dp.networking.gateway.is_some() || inbounds.is_empty() {
        return DataplaneStatus::Online;
    }
    let ready = inbounds.iter().filter(|i| i.is_healthy()).count();
    if ready == inbounds.len() {
        DataplaneStatus::Online
    } else if ready == 0 {
        DataplaneStatus::Offline
    } else {
        DataplaneStatus::PartiallyDegraded
    }
}

/// The filters of `/meshes/{mesh}/dataplanes/_overview`.
#[derive(Debug, Default, PartialEq)]
pub struct DataplaneFilter {
    /// A substring of the name.
    pub name: Option<String>,
    /// `key:value` (the tag has this value on an inbound or the gateway) or `key` (it is set).
    pub tags: Vec<(String, Option<String>)>,
    pub gateway: Option<bool>,
    pub status: Option<DataplaneStatus>,
}

impl DataplaneFilter {
    /// From the query pairs; `offset` and `size` belong to paging and are skipped.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut f = DataplaneFilter::default();
        for (k, v) in pairs {
            match k.as_str() {
                "name" if !v.is_empty() => f.name = Some(v.clone()),
                "tag" if !v.is_empty() => f.tags.push(match v.split_once(':') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (v.clone(), None),
                }),
                "gateway" if !v.is_empty() => {
                    f.gateway = Some(match v.as_str() {
                        "true" | "builtin" | "delegated" => true,
                        "false" => false,
                        _ => {
                            return Err(ApiError::invalid_field(
                                "gateway",
                                format!("{v:?} is not true, false, builtin or delegated"),
                            ));
                        }
                    })
                }
                "status" if !v.is_empty() => {
                    f.status = Some(DataplaneStatus::parse(v).ok_or_else(|| {
                        ApiError::invalid_field(
                            "status",
                            format!("{v:?} is not online, offline or partially_degraded"),
                        )
                    })?)
                }
                "name" | "tag" | "gateway" | "status" | "offset" | "size" => {}
                other => {
                    return Err(ApiError::invalid_field(
                        other,
                        "unknown filter: use name, tag, gateway or status",
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn matches(
        &self,
        name: &str,
        dp: &DataplaneSpec,
        insight: Option<&DataplaneInsightSpec>,
    ) -> bool {
        if self
            .name
            .as_ref()
            .is_some_and(|n| !name.contains(n.as_str()))
        {
            return false;
        }
        if let Some(g) = self.gateway
            && dp.networking.gateway.is_some() != g
        {
            return false;
        }
        let tag_sets: Vec<_> = dp
            .networking
            .inbound
            .iter()
            .map(|i| &i.tags)
            .chain(dp.networking.gateway.as_ref().map(|g| &g.tags))
            .collect();
        for (k, v) in &self.tags {
            let hit = tag_sets.iter().any(|tags| match (tags.get(k), v) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            });
            if !hit {
                return false;
            }
        }
        self.status
            .is_none_or(|s| dataplane_status(dp, insight) == s)
    }
}

/// `{total, online, offline, partiallyDegraded}`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatusCounts {
    pub total: u64,
    pub online: u64,
    pub offline: u64,
    pub partially_degraded: u64,
}

impl StatusCounts {
    fn add(&mut self, s: DataplaneStatus) {
        self.total += 1;
        match s {
            DataplaneStatus::Online => self.online += 1,
            DataplaneStatus::Offline => self.offline += 1,
            DataplaneStatus::PartiallyDegraded => self.partially_degraded += 1,
        }
    }

    fn to_json(self) -> Value {
        json!({"total": self.total, "online": self.online, "offline": self.offline,
               "partiallyDegraded": self.partially_degraded})
    }
}

/// Counts of one mesh's proxies: all, standard (sidecars) and gateways.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DataplaneTally {
    pub all: StatusCounts,
    pub standard: StatusCounts,
    pub gateway: StatusCounts,
    /// Issued mTLS backend → proxies.
    pub issued_backends: BTreeMap<String, u64>,
    /// kuma-dp version → proxies.
    pub kuma_dp_versions: BTreeMap<String, u64>,
}

pub fn tally<'a>(
    dataplanes: impl IntoIterator<Item = (&'a DataplaneSpec, Option<&'a DataplaneInsightSpec>)>,
) -> DataplaneTally {
    let mut t = DataplaneTally::default();
    for (dp, insight) in dataplanes {
        let s = dataplane_status(dp, insight);
        t.all.add(s);
        if dp.networking.gateway.is_some() {
            t.gateway.add(s);
        } else {
            t.standard.add(s);
        }
        if let Some(b) = insight
            .and_then(|i| i.mtls.as_ref())
            .map(|m| &m.issued_backend)
            .filter(|b| !b.is_empty())
        {
            *t.issued_backends.entry(b.clone()).or_default() += 1;
        }
        let version = insight
            .and_then(|i| {
                i.subscriptions
                    .iter()
                    .rev()
                    .find_map(|s| s.version.as_ref())
            })
            .and_then(|v| v.kuma_dp.as_ref())
            .map(|v| v.version.clone())
            .unwrap_or_else(|| "unknown".into());
        *t.kuma_dp_versions.entry(version).or_default() += 1;
    }
    t
}

fn times(r: &Resource, item: &mut Value) {
    if let Some(t) = r.meta.creation_time {
        item["creationTime"] = json!(format_time(t));
    }
    if let Some(t) = r.meta.modification_time {
        item["modificationTime"] = json!(format_time(t));
    }
}

fn spec_json(r: Option<&Resource>) -> Value {
    r.and_then(|r| serde_json::to_value(&r.spec).ok())
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| json!({}))
}

/// `{type: <Kind>Overview, name, <kind>: spec, <kind>Insight: insight}` for every resource of
/// `rt`, joined with its insight by name.
async fn overviews_of(ctx: &ApiContext, rt: ResourceType) -> ApiResult<Vec<Value>> {
    let insight_type = rt
        .insight()
        .ok_or_else(|| ApiError::not_found(format!("{rt} has no insight")))?;
    let items = ctx.0.store.list(rt, None).await?;
    let insights: BTreeMap<String, Resource> = ctx
        .0
        .store
        .list(insight_type, None)
        .await?
        .into_iter()
        .map(|r| (r.meta.name.clone(), r))
        .collect();
    let field = lower_first(rt.name());
    Ok(items
        .iter()
        .map(|r| {
            let mut item = json!({"type": format!("{}Overview", rt.name()), "name": r.meta.name});
            item[&field] = spec_json(Some(r));
            item[format!("{field}Insight")] = spec_json(insights.get(&r.meta.name));
            if !r.meta.labels.is_empty() {
                item["labels"] = json!(r.meta.labels);
            }
            times(r, &mut item);
            item
        })
        .collect())
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

/// The type of `/{ws}/_overview`; kuma-gui also spells the zone proxies `zone-ingresses` and
/// `zone-egresses`.
fn overview_type(ws: &str) -> ApiResult<ResourceType> {
    let ws = match ws {
        "zone-ingresses" => "zoneingresses",
        "zone-egresses" => "zoneegresses",
        other => other,
    };
    match ResourceType::from_ws_path(ws) {
        Some(rt @ (ResourceType::Zone | ResourceType::ZoneIngress | ResourceType::ZoneEgress)) => {
            Ok(rt)
        }
        _ => Err(ApiError::not_found(format!("no overview of {ws:?}"))),
    }
}

/// `GET /zones/_overview`, `/zoneingresses/_overview`, `/zoneegresses/_overview`.
pub async fn list_overviews(
    State(ctx): State<ApiContext>,
    Path(ws): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let p = page(&q)?;
    let rt = overview_type(&ws)?;
    let items = overviews_of(&ctx, rt).await?;
    Ok(paged(items, p, &headers, &format!("/{ws}/_overview")))
}

/// `GET /zones/{name}/_overview` and the same for zone ingresses and egresses.
pub async fn get_overview(
    State(ctx): State<ApiContext>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    let rt = overview_type(&ws)?;
    overviews_of(&ctx, rt)
        .await?
        .into_iter()
        .find(|v| v["name"] == name.as_str())
        .map(|v| Json(v).into_response())
        .ok_or_else(|| ApiError::not_found(format!("{rt} {name:?} not found")))
}

/// Every Dataplane of `mesh` with its insight (by name), typed.
async fn dataplanes_with_insights(
    ctx: &ApiContext,
    mesh: &str,
) -> ApiResult<(Vec<Resource>, BTreeMap<String, Resource>)> {
    let dps = ctx
        .0
        .store
        .list(ResourceType::Dataplane, Some(mesh))
        .await?;
    let insights = ctx
        .0
        .store
        .list(ResourceType::DataplaneInsight, Some(mesh))
        .await?
        .into_iter()
        .map(|r| (r.meta.name.clone(), r))
        .collect();
    Ok((dps, insights))
}

fn typed<'a>(
    dp: &'a Resource,
    insights: &'a BTreeMap<String, Resource>,
) -> Option<(&'a DataplaneSpec, Option<&'a DataplaneInsightSpec>)> {
    let Spec::Dataplane(spec) = &dp.spec else {
        return None;
    };
    let insight = insights.get(&dp.meta.name).and_then(|r| match &r.spec {
        Spec::DataplaneInsight(i) => Some(i),
        _ => None,
    });
    Some((spec, insight))
}

fn dataplane_overview(dp: &Resource, insights: &BTreeMap<String, Resource>) -> Value {
    let mut item = views::dataplane_overview(dp, insights.get(&dp.meta.name));
    if let Some((spec, insight)) = typed(dp, insights) {
        item["status"] = json!(dataplane_status(spec, insight).name());
    }
    item
}

/// `GET /meshes/{mesh}/dataplanes/_overview`: filtered, then paged.
pub async fn list_dataplane_overviews(
    State(ctx): State<ApiContext>,
    Path(mesh): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> ApiResult {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let p = page(&PageQuery {
        size: get("size"),
        offset: get("offset"),
    })?;
    let filter = DataplaneFilter::parse(&pairs)?;
    let (dps, insights) = dataplanes_with_insights(&ctx, &mesh).await?;
    let matching: Vec<&Resource> = dps
        .iter()
        .filter(|dp| {
            typed(dp, &insights).is_some_and(|(spec, i)| filter.matches(&dp.meta.name, spec, i))
        })
        .collect();
    Ok(paged_map(
        &matching,
        p,
        &headers,
        &format!("/meshes/{mesh}/dataplanes/_overview"),
        |dp| dataplane_overview(dp, &insights),
    ))
}

/// `GET /meshes/{mesh}/dataplanes/{name}/_overview`.
pub async fn get_dataplane_overview(
    State(ctx): State<ApiContext>,
    Path((mesh, name)): Path<(String, String)>,
) -> ApiResult {
    let (dps, insights) = dataplanes_with_insights(&ctx, &mesh).await?;
    dps.iter()
        .find(|d| d.meta.name == name)
        .map(|dp| Json(dataplane_overview(dp, &insights)).into_response())
        .ok_or_else(|| {
            ApiError::not_found(format!("Dataplane {name:?} not found in mesh {mesh:?}"))
        })
}

/// One mesh's insight, in Kuma's `MeshInsight` shape.
async fn mesh_insight(ctx: &ApiContext, mesh: &Resource) -> ApiResult<Value> {
    let name = &mesh.meta.name;
    let (dps, insights) = dataplanes_with_insights(ctx, name).await?;
    let t = tally(dps.iter().filter_map(|d| typed(d, &insights)));
    let mut policies = serde_json::Map::new();
    for rt in ResourceType::policies() {
        let n = ctx.0.store.list(rt, Some(name)).await?.len();
        if n > 0 {
            policies.insert(rt.name().into(), json!({"total": n}));
        }
    }
    let services = views::service_insights(&ctx.0.store, name).await?;
    let external = ctx
        .0
        .store
        .list(ResourceType::ExternalService, Some(name))
        .await?
        .len();
    let backend = match &mesh.spec {
        Spec::Mesh(m) => m
            .enabled_mtls_backend()
            .map(|b| json!({"name": b.name, "type": b.backend_type})),
        _ => None,
    };
    let mut item = json!({
        "type": "MeshInsight",
        "name": name,
        "dataplanes": t.all.to_json(),
        "dataplanesByType": {"standard": t.standard.to_json(), "gateway": t.gateway.to_json()},
        "policies": policies,
        "dpVersions": {"kumaDp": t.kuma_dp_versions.iter().map(|(v, n)| (v.clone(), json!({"total": n}))).collect::<serde_json::Map<_, _>>()},
        "mTLS": {
            "issuedBackends": t.issued_backends.iter().map(|(b, n)| (b.clone(), json!({"total": n}))).collect::<serde_json::Map<_, _>>(),
            "enabledBackend": backend,
        },
        "services": {"total": services.len() + external, "internal": services.len(), "external": external},
    });
    times(mesh, &mut item);
    Ok(item)
}

/// `GET /mesh-insights`.
pub async fn list_mesh_insights(
    State(ctx): State<ApiContext>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let p = page(&q)?;
    let meshes = ctx.0.store.list(ResourceType::Mesh, None).await?;
    // Only the requested page is computed: each insight reads the mesh's proxies.
    let total = meshes.len();
    let start = p.offset.min(total);
    let end = p.offset.saturating_add(p.size).min(total);
    let mut items = vec![Value::Null; total];
    for (slot, mesh) in items[start..end].iter_mut().zip(&meshes[start..end]) {
        *slot = mesh_insight(&ctx, mesh).await?;
    }
    Ok(paged(items, p, &headers, "/mesh-insights"))
}

/// `GET /mesh-insights/{name}`.
pub async fn get_mesh_insight(
    State(ctx): State<ApiContext>,
    Path(name): Path<String>,
) -> ApiResult {
    let mesh = ctx
        .0
        .store
        .find(&meshzone_model::ResourceKey::global(
            ResourceType::Mesh,
            &name,
        ))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Mesh {name:?} not found")))?;
    Ok(Json(mesh_insight(&ctx, &mesh).await?).into_response())
}

fn online_of<T: Subscriptions>(items: impl IntoIterator<Item = Option<T>>) -> Value {
    let (mut total, mut online) = (0, 0);
    for i in items {
        total += 1;
        if i.is_some_and(|i| i.is_online()) {
            online += 1;
        }
    }
    json!({"total": total, "online": online})
}

async fn insights_by_name(ctx: &ApiContext, rt: ResourceType) -> ApiResult<BTreeMap<String, Spec>> {
    Ok(ctx
        .0
        .store
        .list(rt, None)
        .await?
        .into_iter()
        .map(|r| (r.meta.name, r.spec))
        .collect())
}

/// `GET /global-insight`: totals over every mesh and zone, in Kuma's `GlobalInsight` shape.
pub async fn global_insight(State(ctx): State<ApiContext>) -> ApiResult {
    let store = &ctx.0.store;
    let meshes = store.list(ResourceType::Mesh, None).await?;
    let mut all = DataplaneTally::default();
    let (mut services, mut policies) = (0, 0);
    for mesh in &meshes {
        let (dps, insights) = dataplanes_with_insights(&ctx, &mesh.meta.name).await?;
        let t = tally(dps.iter().filter_map(|d| typed(d, &insights)));
        for (sum, part) in [
            (&mut all.all, t.all),
            (&mut all.standard, t.standard),
            (&mut all.gateway, t.gateway),
        ] {
            sum.total += part.total;
            sum.online += part.online;
            sum.offline += part.offline;
            sum.partially_degraded += part.partially_degraded;
        }
        services += views::service_insights(store, &mesh.meta.name).await?.len();
        for rt in ResourceType::policies() {
            policies += store.list(rt, Some(&mesh.meta.name)).await?.len();
        }
    }
    let zones = store.list(ResourceType::Zone, None).await?;
    let zi = insights_by_name(&ctx, ResourceType::ZoneInsight).await?;
    let cps = online_of(zones.iter().map(|z| match zi.get(&z.meta.name) {
        Some(Spec::ZoneInsight(i)) => Some(i.clone()),
        _ => None,
    }));
    let proxies = |rt: ResourceType, items: Vec<Resource>, ins: BTreeMap<String, Spec>| {
        let _ = rt;
        online_of(items.iter().map(|r| match ins.get(&r.meta.name) {
            Some(Spec::ZoneIngressInsight(i) | Spec::ZoneEgressInsight(i)) => Some(i.clone()),
            _ => None,
        }))
    };
    let ingresses = proxies(
        ResourceType::ZoneIngress,
        store.list(ResourceType::ZoneIngress, None).await?,
        insights_by_name(&ctx, ResourceType::ZoneIngressInsight).await?,
    );
    let egresses = proxies(
        ResourceType::ZoneEgress,
        store.list(ResourceType::ZoneEgress, None).await?,
        insights_by_name(&ctx, ResourceType::ZoneEgressInsight).await?,
    );
    Ok(Json(json!({
        "type": "GlobalInsight",
        "createdAt": format_time(chrono::Utc::now()),
        "meshes": {"total": meshes.len()},
        "services": {"total": services, "internal": services},
        "policies": {"total": policies},
        "zones": {"controlPlanes": cps, "zoneIngresses": ingresses, "zoneEgresses": egresses},
        "dataplanes": {"standard": all.standard.to_json(), "gateway": all.gateway.to_json(), "all": all.all.to_json()},
    }))
    .into_response())
}

/// One row of `GET /_resources`.
pub fn resource_type_json(rt: ResourceType) -> Value {
    let d = rt.descriptor();
    let mut v = json!({
        "name": d.name,
        "scope": match d.scope { Scope::Mesh => "Mesh", Scope::Global => "Global" },
        "readOnly": d.read_only(),
        "path": d.ws_path,
        "singularDisplayName": d.name,
        "pluralDisplayName": format!("{}s", d.name),
        "includeInFederation": !matches!(d.sync, meshzone_model::Direction::NotSynced),
    });
    if d.policy {
        v["policy"] = json!({"isTargetRef": true});
    }
    v
}

/// `GET /_resources`: every resource type the API serves.
pub async fn resource_types() -> Json<Value> {
    Json(json!({"resources": ResourceType::all().map(resource_type_json).collect::<Vec<_>>()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshzone_model::specs::{DiscoverySubscription, Gateway, Inbound, InboundState};

    fn dp(states: &[Option<InboundState>], gateway: bool) -> DataplaneSpec {
        let mut d = DataplaneSpec::default();
        for (i, s) in states.iter().enumerate() {
            let mut inb = Inbound {
                port: 1000 + i as u32,
                state: *s,
                ..Default::default()
            };
            inb.tags
                .insert("kuma.io/service".into(), format!("svc-{i}"));
            inb.tags.insert("kuma.io/zone".into(), "zone-1".into());
            d.networking.inbound.push(inb);
        }
        if gateway {
            d.networking.gateway = Some(Gateway::default());
        }
        d
    }

    fn connected(online: bool) -> DataplaneInsightSpec {
        DataplaneInsightSpec {
            subscriptions: vec![DiscoverySubscription {
                id: "1".into(),
                connect_time: Some(chrono::Utc::now()),
                disconnect_time: (!online).then(chrono::Utc::now),
                ..Default::default()
            }],
            mtls: None,
        }
    }

    #[test]
    fn status_follows_kuma_gui_rules() {
        use DataplaneStatus::*;
        let ready = Some(InboundState::Ready);
        let not_ready = Some(InboundState::NotReady);
        let cases = [
            (dp(&[ready], false), Some(connected(true)), Online),
            (dp(&[ready], false), Some(connected(false)), Offline),
            (dp(&[ready], false), None, Offline),
            (dp(&[not_ready], false), Some(connected(true)), Offline),
            (
                dp(&[ready, not_ready], false),
                Some(connected(true)),
                PartiallyDegraded,
            ),
            (dp(&[None, None], false), Some(connected(true)), Online),
            (dp(&[], true), Some(connected(true)), Online),
            (dp(&[], true), None, Offline),
        ];
        for (i, (spec, insight, want)) in cases.iter().enumerate() {
            assert_eq!(dataplane_status(spec, insight.as_ref()), *want, "case {i}");
        }
    }

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_parse_and_refuse_unknown_values() {
        let f = DataplaneFilter::parse(&pairs(&[
            ("name", "web"),
            ("tag", "kuma.io/zone:zone-1"),
            ("tag", "version"),
            ("status", "online"),
            ("offset", "10"),
        ]))
        .expect("valid");
        assert_eq!(f.name.as_deref(), Some("web"));
        assert_eq!(
            f.tags,
            vec![
                ("kuma.io/zone".into(), Some("zone-1".into())),
                ("version".into(), None)
            ]
        );
        assert_eq!(f.status, Some(DataplaneStatus::Online));
        for bad in [("status", "up"), ("gateway", "maybe"), ("colour", "red")] {
            let e = DataplaneFilter::parse(&pairs(&[bad])).expect_err("invalid");
            assert!(format!("{e:?}").contains(bad.0), "{e:?}");
        }
    }

    #[test]
    fn filters_match_name_tags_gateway_and_status() {
        let sidecar = dp(&[Some(InboundState::Ready)], false);
        let on = connected(true);
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], true),
            (&[("name", "eb-")], true),
            (&[("name", "db")], false),
            (&[("tag", "kuma.io/service:svc-0")], true),
            (&[("tag", "kuma.io/service:svc-1")], false),
            (
                &[
                    ("tag", "kuma.io/zone:zone-1"),
                    ("tag", "kuma.io/service:svc-0"),
                ],
                true,
            ),
            (&[("tag", "kuma.io/zone")], true),
            (&[("tag", "version")], false),
            (&[("gateway", "false")], true),
            (&[("gateway", "true")], false),
            (&[("status", "online")], true),
            (&[("status", "offline")], false),
        ];
        for (q, want) in cases {
            let f = DataplaneFilter::parse(&pairs(q)).expect("valid");
            assert_eq!(f.matches("web-1", &sidecar, Some(&on)), *want, "{q:?}");
        }
    }

    #[test]
    fn tally_counts_by_type_backend_and_version() {
        let a = dp(&[Some(InboundState::Ready)], false);
        let b = dp(&[], true);
        let c = dp(&[Some(InboundState::Ready)], false);
        let mut on = connected(true);
        on.mtls = Some(meshzone_model::specs::MtlsInsight {
            issued_backend: "ca-1".into(),
            ..Default::default()
        });
        let t = tally([(&a, Some(&on)), (&b, Some(&on)), (&c, None)]);
        assert_eq!((t.all.total, t.all.online, t.all.offline), (3, 2, 1));
        assert_eq!((t.standard.total, t.gateway.total), (2, 1));
        assert_eq!(t.issued_backends.get("ca-1"), Some(&2));
        assert_eq!(t.kuma_dp_versions.get("unknown"), Some(&3));
    }

    #[test]
    fn resource_types_name_paths_and_policies() {
        let v = resource_type_json(ResourceType::MeshTrafficPermission);
        assert_eq!(v["path"], "meshtrafficpermissions");
        assert_eq!(v["scope"], "Mesh");
        assert_eq!(v["policy"]["isTargetRef"], true);
        let z = resource_type_json(ResourceType::Zone);
        assert_eq!(z["scope"], "Global");
        assert!(z.get("policy").is_none());
    }
}
