//! The store contract, run by the same code against every backend.

use std::collections::BTreeMap;

use meshzone_model::specs::{DataplaneSpec, Inbound, MeshSpec, ZoneInsightSpec, ZoneSpec};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};

use crate::{Backend, EventKind, SqliteBackend, Store, StoreError};

fn mesh(name: &str) -> Resource {
    Resource::new(Meta::named(name, ""), Spec::Mesh(MeshSpec::default()))
}

fn dataplane(mesh: &str, name: &str, port: u32) -> Resource {
    let mut spec = DataplaneSpec::default();
    spec.networking.address = "10.0.0.1".into();
    spec.networking.inbound.push(Inbound {
        port,
        tags: BTreeMap::from([("kuma.io/service".to_string(), "web".to_string())]),
        ..Default::default()
    });
    Resource::new(Meta::named(name, mesh), Spec::Dataplane(spec))
}

async fn create_get_list_update_delete<B: Backend>(store: Store<B>) {
    let mut events = store.subscribe();
    store.create(mesh("default")).await.expect("mesh");
    let created = store
        .create(dataplane("default", "dp-1", 8080))
        .await
        .expect("dp");
    assert_eq!(created.meta.version, 1);
    assert!(created.meta.creation_time.is_some());

    let key = ResourceKey::new(ResourceType::Dataplane, "default", "dp-1");
    let got = store.get(&key).await.expect("get");
    assert_eq!(got.spec, created.spec);
    assert_eq!(got.meta.version, 1);

    assert!(matches!(
        store.create(dataplane("default", "dp-1", 8080)).await,
        Err(StoreError::AlreadyExists(_))
    ));

    let mut next = got.clone();
    if let Spec::Dataplane(d) = &mut next.spec {
        d.networking.inbound[0].port = 9090;
    }
    let updated = store.update(next.clone()).await.expect("update");
    assert_eq!(updated.meta.version, 2);
    assert_eq!(updated.meta.creation_time, got.meta.creation_time);
    // A second writer holding the old version loses.
    match store.update(next).await {
        Err(StoreError::Conflict {
            expected: 1,
            actual: 2,
            ..
        }) => {}
        other => panic!("expected conflict, got {other:?}"),
    }

    store
        .create(dataplane("default", "dp-0", 8080))
        .await
        .expect("dp-0");
    let names: Vec<String> = store
        .list(ResourceType::Dataplane, Some("default"))
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.meta.name)
        .collect();
    assert_eq!(names, ["dp-0", "dp-1"]);
    assert!(
        store
            .list(ResourceType::Dataplane, Some("other"))
            .await
            .expect("list")
            .is_empty()
    );

    assert!(matches!(
        store.delete(&key, Some(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store.delete(&key, Some(2)).await.expect("delete"),
        vec![key.clone()]
    );
    assert!(matches!(
        store.get(&key).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete(&key, None).await,
        Err(StoreError::NotFound(_))
    ));

    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push(e.kind);
    }
    assert_eq!(
        kinds,
        [
            EventKind::Created,
            EventKind::Created,
            EventKind::Updated,
            EventKind::Created,
            EventKind::Deleted
        ]
    );
}

async fn invalid_and_orphans_are_refused<B: Backend>(store: Store<B>) {
    assert!(matches!(
        store.create(dataplane("nowhere", "dp", 8080)).await,
        Err(StoreError::MeshNotFound(m)) if m == "nowhere"
    ));
    store.create(mesh("default")).await.expect("mesh");
    assert!(matches!(
        store.create(dataplane("default", "dp", 0)).await,
        Err(StoreError::Invalid(_))
    ));
    let mut owned = Resource::new(
        Meta::named("z1", ""),
        Spec::ZoneInsight(ZoneInsightSpec::default()),
    );
    owned.meta.owner = Some(ResourceKey::global(ResourceType::Zone, "z1"));
    assert!(matches!(
        store.create(owned).await,
        Err(StoreError::OwnerNotFound(_))
    ));
    assert!(
        store
            .list(ResourceType::Dataplane, None)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .list(ResourceType::ZoneInsight, None)
            .await
            .expect("list")
            .is_empty()
    );
}

async fn deletes_cascade<B: Backend>(store: Store<B>) {
    store.create(mesh("a")).await.expect("mesh a");
    store.create(mesh("b")).await.expect("mesh b");
    store.create(dataplane("a", "dp", 1)).await.expect("dp a");
    store.create(dataplane("b", "dp", 1)).await.expect("dp b");
    let zone = Resource::new(Meta::named("z1", ""), Spec::Zone(ZoneSpec::default()));
    store.create(zone).await.expect("zone");
    let mut insight = Resource::new(
        Meta::named("z1", ""),
        Spec::ZoneInsight(ZoneInsightSpec::default()),
    );
    insight.meta.owner = Some(ResourceKey::global(ResourceType::Zone, "z1"));
    store.create(insight).await.expect("insight");
    // A dataplane in mesh b owned by the zone: deleting the zone removes it too.
    let mut from_zone = dataplane("b", "from-z1", 2);
    from_zone.meta.owner = Some(ResourceKey::global(ResourceType::Zone, "z1"));
    store.create(from_zone).await.expect("dp from zone");

    let deleted = store
        .delete(&ResourceKey::global(ResourceType::Zone, "z1"), None)
        .await
        .expect("delete zone");
    assert_eq!(deleted.len(), 3, "{deleted:?}");
    assert!(
        store
            .list(ResourceType::ZoneInsight, None)
            .await
            .expect("list")
            .is_empty()
    );

    let deleted = store
        .delete(&ResourceKey::global(ResourceType::Mesh, "a"), None)
        .await
        .expect("delete mesh");
    assert_eq!(
        deleted,
        vec![
            ResourceKey::global(ResourceType::Mesh, "a"),
            ResourceKey::new(ResourceType::Dataplane, "a", "dp")
        ]
    );
    let left: Vec<ResourceKey> = store
        .list(ResourceType::Dataplane, None)
        .await
        .expect("list")
        .iter()
        .map(Resource::key)
        .collect();
    assert_eq!(
        left,
        vec![ResourceKey::new(ResourceType::Dataplane, "b", "dp")]
    );
}

/// Lists are served from the read cache: each kind of write, through any clone of the store,
/// shows in the next list, cascades included.
async fn lists_follow_every_write<B: Backend>(store: Store<B>) {
    let other = store.clone();
    let ports = async |mesh: Option<&str>| -> Vec<(String, u32)> {
        let listed = store
            .list(ResourceType::Dataplane, mesh)
            .await
            .expect("list");
        listed
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Dataplane(d) => Some((r.meta.name.clone(), d.networking.inbound[0].port)),
                _ => None,
            })
            .collect()
    };
    let one = |name: &str, port: u32| vec![(name.to_string(), port)];
    store.create(mesh("a")).await.expect("mesh a");
    assert!(ports(None).await.is_empty());
    other.create(dataplane("a", "dp-1", 1)).await.expect("dp-1");
    assert_eq!(ports(None).await, one("dp-1", 1));
    // The same shared list until the type changes, also after a write of another type.
    let listed = store.list_all(ResourceType::Dataplane).await.expect("list");
    store.create(mesh("b")).await.expect("mesh b");
    let kept = store.list_all(ResourceType::Dataplane).await.expect("list");
    assert!(std::sync::Arc::ptr_eq(&listed, &kept));

    let mut next = listed[0].clone();
    if let Spec::Dataplane(d) = &mut next.spec {
        d.networking.inbound[0].port = 2;
    }
    other.update(next).await.expect("update");
    assert_eq!(ports(Some("a")).await, one("dp-1", 2));
    // Refused writes change nothing.
    assert!(other.create(dataplane("a", "dp-1", 3)).await.is_err());
    assert_eq!(ports(None).await, one("dp-1", 2));
    other.create(dataplane("b", "dp-2", 4)).await.expect("dp-2");
    assert_eq!(ports(Some("b")).await, one("dp-2", 4));
    // Deleting mesh a removes its Dataplane from the cached list too.
    other
        .delete(&ResourceKey::global(ResourceType::Mesh, "a"), None)
        .await
        .expect("delete mesh");
    assert_eq!(ports(None).await, one("dp-2", 4));
    let meshes: Vec<String> = store
        .list(ResourceType::Mesh, None)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.meta.name)
        .collect();
    assert_eq!(meshes, ["b"]);
}

async fn concurrent_updates_one_wins<B: Backend>(store: Store<B>) {
    store.create(mesh("default")).await.expect("mesh");
    let base = store
        .create(dataplane("default", "dp", 1))
        .await
        .expect("dp");
    let mut tasks = Vec::new();
    for port in 2..10u32 {
        let store = store.clone();
        let mut next = base.clone();
        if let Spec::Dataplane(d) = &mut next.spec {
            d.networking.inbound[0].port = port;
        }
        tasks.push(tokio::spawn(async move { store.update(next).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(store.get(&base.key()).await.expect("get").meta.version, 2);
}

/// Every policy type is stored and read back unchanged (each backend has its own spec codec).
async fn policies_round_trip<B: Backend>(store: Store<B>) {
    store.create(mesh("default")).await.expect("mesh");
    for policy in meshzone_model::policies::initial_policies("default", &MeshSpec::default()) {
        let key = policy.key();
        store.create(policy.clone()).await.expect("create policy");
        let back = store.get(&key).await.expect("get policy");
        assert_eq!(back.spec, policy.spec);
        let listed = store
            .list(key.resource_type, Some("default"))
            .await
            .expect("list");
        assert_eq!(listed.len(), 1);
    }
}

macro_rules! contract {
    ($($name:ident),*) => {
        mod memory {
            $(#[tokio::test]
            async fn $name() {
                super::$name(crate::Store::new(crate::MemoryBackend::new())).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let dir = tempfile::tempdir().expect("tempdir");
                let backend = crate::SqliteBackend::open(&dir.path().join("store.db")).await.expect("open");
                super::$name(crate::Store::new(backend)).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let db = crate::postgres::testing::TestDatabase::migrated().await;
                let backend = crate::PostgresBackend::connect(db.settings.clone()).await.expect("connect");
                let store = crate::Store::new(backend);
                let listener = tokio::spawn(
                    store.backend().clone().follow_changes(store.event_sink(), Default::default()),
                );
                let start = std::time::Instant::now();
                while !store.backend().is_following() {
                    assert!(start.elapsed() < std::time::Duration::from_secs(20), "the listener never caught up");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                super::$name(store).await;
                listener.abort();
                db.drop_now().await;
            })*
        }
    };
}

contract!(
    create_get_list_update_delete,
    invalid_and_orphans_are_refused,
    deletes_cascade,
    concurrent_updates_one_wins,
    lists_follow_every_write,
    policies_round_trip
);

#[tokio::test]
async fn sqlite_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    {
        let store = Store::new(SqliteBackend::open(&path).await.expect("open"));
        store.create(mesh("default")).await.expect("mesh");
        store
            .create(dataplane("default", "dp", 1))
            .await
            .expect("dp");
    }
    let store = Store::new(SqliteBackend::open(&path).await.expect("reopen"));
    let dp = store
        .get(&ResourceKey::new(ResourceType::Dataplane, "default", "dp"))
        .await
        .expect("dp after reopen");
    assert_eq!(dp.meta.version, 1);
}
