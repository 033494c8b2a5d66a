//! Read-only views computed from stored resources: dataplane overviews and service insights.

use std::collections::{BTreeMap, BTreeSet};

use meshzone_model::insights::compute_service_insight;
use meshzone_model::specs::{DataplaneInsightSpec, DataplaneSpec, SERVICE_TAG, ZONE_TAG};
use meshzone_model::{Resource, ResourceKey, ResourceType, Spec, format_time};
use meshzone_store::{Store, StoreError};
use serde_json::{Value, json};

/// `GET /meshes/{mesh}/dataplanes+insights`: each Dataplane with its insight.
pub async fn dataplane_overviews(store: &Store, mesh: &str) -> Result<Vec<Value>, StoreError> {
    let dataplanes = store.list(ResourceType::Dataplane, Some(mesh)).await?;
    let insights: BTreeMap<String, Resource> = store
        .list(ResourceType::DataplaneInsight, Some(mesh))
        .await?
        .into_iter()
        .map(|r| (r.meta.name.clone(), r))
        .collect();
    Ok(dataplanes
        .iter()
        .map(|dp| dataplane_overview(dp, insights.get(&dp.meta.name)))
        .collect())
}

/// One Dataplane with its insight, in Kuma's `DataplaneOverview` shape.
pub fn dataplane_overview(dp: &Resource, insight: Option<&Resource>) -> Value {
    let mut item = json!({
        "type": "DataplaneOverview",
        "mesh": dp.meta.mesh,
        "name": dp.meta.name,
        "dataplane": spec_fields(&dp.spec),
        "dataplaneInsight": insight.map(|i| spec_fields(&i.spec)).unwrap_or_else(|| json!({})),
    });
    if let Some(t) = dp.meta.creation_time {
        item["creationTime"] = json!(format_time(t));
    }
    if let Some(t) = dp.meta.modification_time {
        item["modificationTime"] = json!(format_time(t));
    }
    if !dp.meta.labels.is_empty() {
        item["labels"] = json!(dp.meta.labels);
    }
    item
}

/// Only the spec fields of a resource, as JSON.
fn spec_fields(spec: &Spec) -> Value {
    serde_json::to_value(spec).unwrap_or_default()
}

/// `GET /meshes/{mesh}/service-insights`: one item per service, keyed by service name.
pub async fn service_insights(
    store: &Store,
    mesh: &str,
) -> Result<BTreeMap<String, Value>, StoreError> {
    let dataplanes = store.list(ResourceType::Dataplane, Some(mesh)).await?;
    let insights = store
        .list(ResourceType::DataplaneInsight, Some(mesh))
        .await?;
    let specs: Vec<(&str, &DataplaneSpec)> = dataplanes
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Dataplane(d) => Some((r.meta.name.as_str(), d)),
            _ => None,
        })
        .collect();
    let insight_specs: BTreeMap<String, &DataplaneInsightSpec> = insights
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::DataplaneInsight(i) => Some((r.meta.name.clone(), i)),
            _ => None,
        })
        .collect();
    // Zones with instances: the inbounds' `kuma.io/zone` tags, and other zones' ingresses.
    let mut zones: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, dp) in &specs {
        for inbound in &dp.networking.inbound {
            if let (Some(service), Some(zone)) = (inbound.service(), inbound.tags.get(ZONE_TAG)) {
                zones
                    .entry(service.to_string())
                    .or_default()
                    .insert(zone.clone());
            }
        }
    }
    for r in store.list(ResourceType::ZoneIngress, None).await? {
        let Spec::ZoneIngress(z) = &r.spec else {
            continue;
        };
        for a in z.available_services.iter().filter(|a| a.mesh == mesh) {
            if let (Some(service), false) = (a.tags.get(SERVICE_TAG), z.zone.is_empty()) {
                zones
                    .entry(service.clone())
                    .or_default()
                    .insert(z.zone.clone());
            }
        }
    }
    let mtls = match store
        .find(&ResourceKey::global(ResourceType::Mesh, mesh))
        .await?
    {
        Some(r) => matches!(&r.spec, Spec::Mesh(m) if m.enabled_mtls_backend().is_some()),
        None => false,
    };
    let summary = compute_service_insight(specs, &insight_specs);
    Ok(summary
        .services
        .into_iter()
        .map(|(name, stat)| {
            let mut item = json!({ "type": "ServiceInsight", "mesh": mesh, "name": name });
            if let (Some(o), Ok(Value::Object(s))) =
                (item.as_object_mut(), serde_json::to_value(&stat))
            {
                o.extend(s);
            }
            let in_zones = zones.remove(&name).unwrap_or_default();
            if in_zones.len() > 1 && !mtls {
                item["crossZone"] = json!(format!(
                    "unavailable: mesh {mesh:?} has no mTLS, and zone ingresses route by the TLS SNI; each zone reaches only its own instances"
                ));
            }
            if !in_zones.is_empty() {
                item["zones"] = json!(in_zones);
            }
            (name, item)
        })
        .collect())
}
