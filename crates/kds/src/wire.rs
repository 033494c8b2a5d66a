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
