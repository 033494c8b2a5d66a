//! Conversions between resources and the KDS protobuf messages, and applying planned operations
//! to a store.

use std::str::FromStr;

use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use meshzone_store::{Store, StoreError};

use crate::proto;
use crate::sync::{Op, Refusal};

/// The KDS protocol version this build speaks. Peers must share the major number.
pub const PROTOCOL_VERSION: &str = "1.0";

pub fn compatible(peer: &str) -> bool {
    peer.split('.').next() == PROTOCOL_VERSION.split('.').next()
}

pub fn to_wire(r: &Resource) -> proto::Resource {
    proto::Resource {
        r#type: r.resource_type().name().to_string(),
        mesh: r.meta.mesh.clone(),
        name: r.meta.name.clone(),
        labels: r.meta.labels.clone().into_iter().collect(),
        spec: r.spec_json().into_bytes(),
    }
}

pub fn key_to_wire(k: &ResourceKey) -> proto::ResourceKey {
    proto::ResourceKey {
        r#type: k.resource_type.name().to_string(),
        mesh: k.mesh.clone(),
        name: k.name.clone(),
    }
}

pub fn key_from_wire(k: &proto::ResourceKey) -> Option<ResourceKey> {
    let rt = ResourceType::from_str(&k.r#type).ok()?;
    Some(ResourceKey::new(rt, &k.mesh, &k.name))
}

/// Decodes and validates one received resource; a bad one becomes a refusal (NACK).
pub fn from_wire(w: &proto::Resource) -> Result<Resource, Refusal> {
    let refuse = |rt: Option<ResourceType>, reason: String| Refusal {
        key: ResourceKey {
            resource_type: rt.unwrap_or(ResourceType::Mesh),
            mesh: w.mesh.clone(),
            name: w.name.clone(),
        },
        reason,
    };
    let rt = ResourceType::from_str(&w.r#type).map_err(|e| refuse(None, e.to_string()))?;
    let text =
        std::str::from_utf8(&w.spec).map_err(|_| refuse(Some(rt), "spec is not UTF-8".into()))?;
    let spec = Spec::from_json(rt, text).map_err(|v| refuse(Some(rt), v.to_string()))?;
    let mut meta = Meta::named(&w.name, if rt.is_mesh_scoped() { &w.mesh } else { "" });
    meta.labels = w.labels.clone().into_iter().collect();
    let r = Resource::new(meta, spec);
    meshzone_model::validate(&r).map_err(|v| refuse(Some(rt), v.to_string()))?;
    Ok(r)
}

pub fn refusal_to_wire(r: &Refusal) -> proto::Rejection {
    proto::Rejection {
        key: Some(key_to_wire(&r.key)),
        reason: r.reason.clone(),
    }
}

/// Applies planned operations: creates and updates in the given type order (owners first), then
/// deletes. A resource the store refuses becomes a refusal; a storage failure aborts.
pub async fn apply(
    store: &Store,
    mut ops: Vec<Op>,
    order: &[ResourceType],
) -> Result<Vec<Refusal>, StoreError> {
    let rank = |rt: ResourceType| order.iter().position(|t| *t == rt).unwrap_or(order.len());
    ops.sort_by_key(|op| match op {
        Op::Create(r) | Op::Update(r) => (0, rank(r.resource_type())),
        Op::Delete(k) => (1, usize::MAX - rank(k.resource_type)),
    });
    let mut refusals = Vec::new();
    for op in ops {
        let (key, result) = match op {
            Op::Create(r) => (r.key(), store.create(r).await.map(|_| ())),
            Op::Update(r) => (r.key(), store.update(r).await.map(|_| ())),
            Op::Delete(k) => {
                let result = match store.delete(&k, None).await {
                    Err(StoreError::NotFound(_)) => Ok(()),
                    other => other.map(|_| ()),
                };
                (k, result)
            }
        };
        match result {
            Ok(()) => {}
            Err(StoreError::Backend(e)) => return Err(StoreError::Backend(e)),
            Err(e) => refusals.push(Refusal {
                key,
                reason: e.to_string(),
            }),
        }
    }
    Ok(refusals)
}

/// What global takes from a zone's batch: the valid resources of the types zones send up,
/// renamed and labelled as global stores them, and the removed keys in global's names; every
/// other resource becomes a refusal. Pure: the fuzz target `kds_from_zone` runs exactly this.
pub fn received_from_zone(
    zone: &str,
    changes: &proto::Changes,
) -> (crate::sync::Received, Vec<Refusal>) {
    let accepted = ResourceType::sent_to_global();
    let mut refusals = Vec::new();
    let mut upserted = Vec::new();
    for w in &changes.upserted {
        match from_wire(w) {
            Ok(r) if accepted.contains(&r.resource_type()) => {
                upserted.push(crate::sync::map_from_zone(zone, r))
            }
            Ok(r) => refusals.push(Refusal {
                key: r.key(),
                reason: format!("global does not accept {} from zones", r.resource_type()),
            }),
            Err(refusal) => refusals.push(refusal),
        }
    }
    let received = crate::sync::Received {
        initial: changes.initial,
        types: accepted.to_vec(),
        upserted,
        removed: changes
            .removed
            .iter()
            .filter_map(key_from_wire)
            .map(|k| crate::sync::key_from_zone(zone, &k))
            .collect(),
    };
    (received, refusals)
}

/// What a zone takes from global's batch: the valid resources of the types global sends down,
/// labelled `kuma.io/origin: global`, and the removed keys; every other resource becomes a
/// refusal. Pure: the fuzz target `kds_from_global` runs exactly this.
pub fn received_from_global(changes: &proto::Changes) -> (crate::sync::Received, Vec<Refusal>) {
    let accepted = ResourceType::sent_to_zones();
    let mut refusals = Vec::new();
    let mut upserted = Vec::new();
    for w in &changes.upserted {
        match from_wire(w) {
            Ok(mut r) if accepted.contains(&r.resource_type()) => {
                r.meta
                    .labels
                    .insert(crate::sync::ORIGIN_LABEL.into(), "global".into());
                upserted.push(r);
            }
            Ok(r) => refusals.push(Refusal {
                key: r.key(),
                reason: format!("zones do not accept {} from global", r.resource_type()),
            }),
            Err(refusal) => refusals.push(refusal),
        }
    }
    let received = crate::sync::Received {
        initial: changes.initial,
        types: accepted.to_vec(),
        upserted,
        removed: changes.removed.iter().filter_map(key_from_wire).collect(),
    };
    (received, refusals)
}
