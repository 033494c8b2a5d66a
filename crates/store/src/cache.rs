//! The store's read cache: the whole list of each resource type, as the backend returned it,
//! kept until a change of that type. Components that react to changes (DNS VIPs, the ingress's
//! available services, proxy views) re-list a type on every change; without the cache each
//! write of a Dataplane made each of them decode every stored Dataplane again, so writes slowed
//! down as the store grew.
//!
//! Exact, not time-based: the [`Store`](crate::Store) invalidates a type after the backend
//! commits a write and before it announces the change, so a read that starts after the
//! announcement never sees the old list. A list read from the backend is kept only if no write
//! of its type was invalidated meanwhile (the type's generation is unchanged), so a slow read
//! that raced a write cannot put an old list back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use meshzone_model::{Resource, ResourceType};

#[derive(Default)]
struct Entry {
    /// Bumped by every invalidation.
    generation: u64,
    list: Option<Arc<Vec<Resource>>>,
}

/// Lists by type; see the module documentation.
#[derive(Default)]
pub(crate) struct ListCache {
    entries: Mutex<HashMap<ResourceType, Entry>>,
    /// Set while writes of other instances may go unheard (a Postgres listener that is not
    /// connected): nothing is served or kept.
    suspended: AtomicBool,
}

impl ListCache {
    fn entries(&self) -> MutexGuard<'_, HashMap<ResourceType, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written (each change is
        // one assignment), so a poisoned map is still consistent.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached list, or the generation a fill must present.
    pub(crate) fn lookup(&self, rt: ResourceType) -> Result<Arc<Vec<Resource>>, u64> {
        let entries = self.entries();
        if self.suspended.load(Ordering::SeqCst) {
            return Err(entries.get(&rt).map_or(0, |e| e.generation));
        }
        match entries.get(&rt) {
            Some(Entry {
                list: Some(list), ..
            }) => Ok(list.clone()),
            Some(e) => Err(e.generation),
            None => Err(0),
        }
    }

    /// Keeps `list`, read from the backend after [`lookup`](Self::lookup) gave `generation`,
    /// unless the type changed since.
    pub(crate) fn fill(&self, rt: ResourceType, generation: u64, list: Arc<Vec<Resource>>) {
        let mut entries = self.entries();
        if self.suspended.load(Ordering::SeqCst) {
            return;
        }
        let entry = entries.entry(rt).or_default();
        if entry.generation == generation {
            entry.list = Some(list);
        }
    }

    /// Forgets the type's list: a write of it was committed.
    pub(crate) fn invalidate(&self, rt: ResourceType) {
        let mut entries = self.entries();
        let entry = entries.entry(rt).or_default();
        entry.generation += 1;
        entry.list = None;
    }

    /// Serves and keeps nothing until [`resume`](Self::resume); forgets every list.
    pub(crate) fn suspend(&self) {
        let mut entries = self.entries();
        self.suspended.store(true, Ordering::SeqCst);
        for entry in entries.values_mut() {
            entry.generation += 1;
            entry.list = None;
        }
    }

    /// Caches again (lists are filled on the next reads).
    pub(crate) fn resume(&self) {
        let mut entries = self.entries();
        self.suspended.store(false, Ordering::SeqCst);
        // A fill that read the backend before the resync ended must not be kept.
        for entry in entries.values_mut() {
            entry.generation += 1;
            entry.list = None;
        }
    }

    /// Forgets every type's list.
    pub(crate) fn invalidate_all(&self) {
        for entry in self.entries().values_mut() {
            entry.generation += 1;
            entry.list = None;
        }
    }
}

/// Invalidates when dropped, so a write whose caller went away after the backend committed it
/// (a cancelled future never reaches the announcement) cannot leave an old list cached.
/// `None` stands for every type (a delete may cascade into any of them).
pub(crate) struct InvalidateOnDrop<'a> {
    pub(crate) cache: &'a ListCache,
    pub(crate) resource_type: Option<ResourceType>,
}

impl InvalidateOnDrop<'_> {
    /// The backend call finished. Success is announced (which invalidates what it changed)
    /// and a refusal changed nothing, so the guard stands down; a storage failure may have
    /// committed (a connection lost during the commit), so it invalidates.
    pub(crate) fn settle<T>(self, result: &crate::Result<T>) {
        if !matches!(result, Err(crate::StoreError::Backend(_))) {
            std::mem::forget(self);
        }
    }
}

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        match self.resource_type {
            Some(rt) => self.cache.invalidate(rt),
            None => self.cache.invalidate_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshzone_model::{Meta, Spec, specs::MeshSpec};

    fn mesh(name: &str) -> Resource {
        Resource::new(Meta::named(name, ""), Spec::Mesh(MeshSpec::default()))
    }

    #[test]
    fn a_fill_is_served_until_the_type_changes() {
        let cache = ListCache::default();
        let generation = cache.lookup(ResourceType::Mesh).unwrap_err();
        cache.fill(ResourceType::Mesh, generation, Arc::new(vec![mesh("a")]));
        assert_eq!(cache.lookup(ResourceType::Mesh).map(|l| l.len()), Ok(1));
        // Other types are not touched.
        cache.invalidate(ResourceType::Dataplane);
        assert!(cache.lookup(ResourceType::Mesh).is_ok());
        cache.invalidate(ResourceType::Mesh);
        assert!(cache.lookup(ResourceType::Mesh).is_err());
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = ListCache::default();
        // The read starts, a write of the type commits, then the (old) read result arrives.
        let generation = cache.lookup(ResourceType::Mesh).unwrap_err();
        cache.invalidate(ResourceType::Mesh);
        cache.fill(ResourceType::Mesh, generation, Arc::new(vec![mesh("old")]));
        let next = cache.lookup(ResourceType::Mesh).unwrap_err();
        assert_ne!(next, generation);
        // A read that started after the write is kept.
        cache.fill(ResourceType::Mesh, next, Arc::new(vec![mesh("new")]));
        assert_eq!(
            cache
                .lookup(ResourceType::Mesh)
                .map(|l| l[0].meta.name.clone()),
            Ok("new".to_string())
        );
    }

    #[test]
    fn a_write_dropped_midway_still_invalidates() {
        let cache = ListCache::default();
        for rt in [ResourceType::Mesh, ResourceType::Dataplane] {
            let generation = cache.lookup(rt).unwrap_err();
            cache.fill(rt, generation, Arc::new(vec![]));
        }
        drop(InvalidateOnDrop {
            cache: &cache,
            resource_type: Some(ResourceType::Mesh),
        });
        assert!(cache.lookup(ResourceType::Mesh).is_err());
        assert!(cache.lookup(ResourceType::Dataplane).is_ok());
        drop(InvalidateOnDrop {
            cache: &cache,
            resource_type: None,
        });
        assert!(cache.lookup(ResourceType::Dataplane).is_err());
    }
}
