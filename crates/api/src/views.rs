//! Read-only views computed from stored resources: dataplane overviews and service insights.

use std::collections::BTreeMap;

use meshzone_model::insights::compute_service_insight;
use meshzone_model::specs::{DataplaneInsightSpec, DataplaneSpec};
use meshzone_model::{ResourceType, Spec, format_time};
use meshzone_store::{Store, StoreError};
use serde_json::{Value, json};

/// `GET /meshes/{mesh}/dataplanes+insights`: each Dataplane with its insight.
pub async fn dataplane_overviews(store: &Store, mesh: &str) -> Result<Vec<Value>, StoreError> {
    let dataplanes = store.list(ResourceType::Dataplane, Some(mesh)).await?;
    let mut insights: BTreeMap<String, Value> = store
        .list(ResourceType::DataplaneInsight, Some(mesh))
        .await?
        .into_iter()
        .map(|r| {
            let mut v = r.to_value();
            if let Some(o) = v.as_object_mut() {
                for k in [
                    "type",
                    "mesh",
                    "name",
                    "creationTime",
                    "modificationTime",
                    "labels",
                ] {
                    o.remove(k);
                }
            }
            (r.meta.name, v)
        })
        .collect();
    Ok(dataplanes
        .into_iter()
        .map(|dp| {
            let mut spec = dp.to_value();
            if let Some(o) = spec.as_object_mut() {
                for k in [
                    "type",
                    "mesh",
                    "name",
                    "creationTime",
                    "modificationTime",
                    "labels",
                ] {
                    o.remove(k);
                }
            }
            let mut item = json!({
                "type": "DataplaneOverview",
                "mesh": dp.meta.mesh,
                "name": dp.meta.name,
                "dataplane": spec,
                "dataplaneInsight": insights.remove(&dp.meta.name).unwrap_or_else(|| json!({})),
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
        })
        .collect())
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
            (name, item)
        })
        .collect())
}
