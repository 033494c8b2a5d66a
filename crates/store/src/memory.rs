//! In-memory backend: a map under one lock. For tests and throwaway control planes.

use std::collections::BTreeMap;
use std::sync::RwLock;

use meshzone_model::{Resource, ResourceKey, ResourceType};

use crate::{Backend, Result, StoreError};

#[derive(Default)]
pub struct MemoryBackend {
    resources: RwLock<BTreeMap<ResourceKey, Resource>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ResourceKey, Resource>> {
        // A panic while holding the lock cannot leave a half-applied change (each change is a
        // single map operation), so a poisoned lock is still consistent.
        self.resources.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ResourceKey, Resource>> {
        self.resources.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_parents(map: &BTreeMap<ResourceKey, Resource>, r: &Resource) -> Result<()> {
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
        Ok(self.read().get(key).cloned())
    }

    async fn list(&self, rt: ResourceType, mesh: Option<&str>) -> Result<Vec<Resource>> {
        Ok(self
            .read()
            .iter()
            .filter(|(k, _)| k.resource_type == rt && mesh.is_none_or(|m| k.mesh == m))
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn create(&self, resource: Resource) -> Result<()> {
        let mut map = self.write();
        let key = resource.key();
        if map.contains_key(&key) {
            return Err(StoreError::AlreadyExists(key));
        }
        check_parents(&map, &resource)?;
        map.insert(key, resource);
        Ok(())
    }

    async fn update(&self, resource: Resource, expected: u64) -> Result<()> {
        let mut map = self.write();
        let key = resource.key();
        let Some(stored) = map.get_mut(&key) else {
            return Err(StoreError::NotFound(key));
        };
        if stored.meta.version != expected {
            return Err(StoreError::Conflict {
                key,
                expected,
                actual: stored.meta.version,
            });
        }
        *stored = resource;
        Ok(())
    }

    async fn delete(&self, key: &ResourceKey, expected: Option<u64>) -> Result<Vec<ResourceKey>> {
        let mut map = self.write();
        let Some(stored) = map.get(key) else {
            return Err(StoreError::NotFound(key.clone()));
        };
        if let Some(expected) = expected
            && stored.meta.version != expected
        {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                actual: stored.meta.version,
            });
        }
        let doomed = cascade(key, |parent| {
            map.iter()
                .filter(|(k, r)| is_child(parent, k, r.meta.owner.as_ref()))
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
