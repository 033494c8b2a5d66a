//! In-memory backend: a map under one lock. For tests and throwaway control planes.
//!
//! Resources are held in their compact serialized form (spec JSON), like a database row, so a
//! held Dataplane costs about its JSON size, and reads hand out fresh copies.

use std::collections::BTreeMap;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};

use crate::{Backend, Result, StoreError};

/// One stored resource: everything but the key, spec as JSON text.
struct Row {
    version: u64,
    labels: BTreeMap<String, String>,
    creation_time: Option<DateTime<Utc>>,
    modification_time: Option<DateTime<Utc>>,
    owner: Option<ResourceKey>,
    spec: Box<str>,
}

impl Row {
    fn of(r: &Resource) -> Row {
        Row {
            version: r.meta.version,
            labels: r.meta.labels.clone(),
            creation_time: r.meta.creation_time,
            modification_time: r.meta.modification_time,
            owner: r.meta.owner.clone(),
            spec: r.spec_json().into_boxed_str(),
        }
    }

    fn decode(&self, key: &ResourceKey) -> Result<Resource> {
        let spec = Spec::from_json(key.resource_type, &self.spec)
            .map_err(|v| StoreError::Backend(format!("corrupt entry {key}: {v}")))?;
        Ok(Resource {
            meta: Meta {
                name: key.name.clone(),
                mesh: key.mesh.clone(),
                labels: self.labels.clone(),
                version: self.version,
                creation_time: self.creation_time,
                modification_time: self.modification_time,
                owner: self.owner.clone(),
            },
            spec,
        })
    }
}

type Map = BTreeMap<ResourceKey, Row>;

#[derive(Default)]
pub struct MemoryBackend {
    rows: RwLock<Map>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        // Each change is a single map operation, so a poisoned lock is still consistent.
        self.rows.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map> {
        self.rows.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_parents(map: &Map, r: &Resource) -> Result<()> {
    if r.resource_type().is_mesh_scoped() {
        let mesh_key = ResourceKey::global(ResourceType::Mesh, &r.meta.mesh);
        if !map.contains_key(&mesh_key) {
            return Err(StoreError::MeshNotFound(r.meta.mesh.clone()));
        }
    }
    if let Some(owner) = &r.meta.owner
        && !map.contains_key(owner)
    {
        return Err(StoreError::OwnerNotFound(owner.clone()));
    }
    Ok(())
}

impl Backend for MemoryBackend {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>> {
        self.read().get(key).map(|row| row.decode(key)).transpose()
    }

    async fn list(&self, rt: ResourceType, mesh: Option<&str>) -> Result<Vec<Resource>> {
        self.read()
            .iter()
            .filter(|(k, _)| k.resource_type == rt && mesh.is_none_or(|m| k.mesh == m))
            .map(|(k, row)| row.decode(k))
            .collect()
    }

    async fn create(&self, resource: Resource) -> Result<()> {
        let row = Row::of(&resource);
        let mut map = self.write();
        let key = resource.key();
        if map.contains_key(&key) {
            return Err(StoreError::AlreadyExists(key));
        }
        check_parents(&map, &resource)?;
        map.insert(key, row);
        Ok(())
    }

    async fn update(&self, resource: Resource, expected: u64) -> Result<()> {
        let row = Row::of(&resource);
        let mut map = self.write();
        let key = resource.key();
        let Some(stored) = map.get_mut(&key) else {
            return Err(StoreError::NotFound(key));
        };
        if stored.version != expected {
            return Err(StoreError::Conflict {
                key,
                expected,
                actual: stored.version,
            });
        }
        *stored = row;
        Ok(())
    }

    async fn delete(&self, key: &ResourceKey, expected: Option<u64>) -> Result<Vec<ResourceKey>> {
        let mut map = self.write();
        let Some(stored) = map.get(key) else {
            return Err(StoreError::NotFound(key.clone()));
        };
        if let Some(expected) = expected
            && stored.version != expected
        {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                actual: stored.version,
            });
        }
        let doomed = cascade(key, |parent| {
            map.iter()
                .filter(|(k, row)| is_child(parent, k, row.owner.as_ref()))
                .map(|(k, _)| k.clone())
                .collect()
        });
        for k in &doomed {
            map.remove(k);
        }
        Ok(doomed)
    }
}

/// Whether `child` is owned by `parent`, explicitly or as the content of a Mesh.
pub(crate) fn is_child(
    parent: &ResourceKey,
    child: &ResourceKey,
    owner: Option<&ResourceKey>,
) -> bool {
    owner == Some(parent)
        || (parent.resource_type == ResourceType::Mesh
            && child.resource_type.is_mesh_scoped()
            && child.mesh == parent.name)
}

/// The key and everything below it, breadth first, each once.
pub(crate) fn cascade(
    root: &ResourceKey,
    mut children_of: impl FnMut(&ResourceKey) -> Vec<ResourceKey>,
) -> Vec<ResourceKey> {
    let mut out = vec![root.clone()];
    let mut seen: std::collections::BTreeSet<ResourceKey> = out.iter().cloned().collect();
    let mut next = 0;
    while next < out.len() {
        let parent = out[next].clone();
        next += 1;
        for child in children_of(&parent) {
            if seen.insert(child.clone()) {
                out.push(child);
            }
        }
    }
    out
}
