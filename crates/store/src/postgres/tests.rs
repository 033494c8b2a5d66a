//! Several instances on one database: writes through one are events in the others, and a
//! listener whose connection is cut catches up on what it missed.

use std::time::{Duration, Instant};

use meshzone_model::specs::{DataplaneSpec, Inbound, MeshSpec};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use tokio::sync::broadcast;

use super::testing::TestDatabase;
use super::{FollowSettings, PostgresBackend};
use crate::{EventKind, Store, StoreEvent};

const DEADLINE: Duration = Duration::from_secs(20);

fn mesh(name: &str) -> Resource {
    Resource::new(Meta::named(name, ""), Spec::Mesh(MeshSpec::default()))
}

fn dataplane(name: &str, port: u32) -> Resource {
    let mut spec = DataplaneSpec::default();
    spec.networking.address = "10.0.0.1".into();
    spec.networking.inbound.push(Inbound {
        port,
        tags: [("kuma.io/service".to_string(), "web".to_string())].into(),
        ..Default::default()
    });
    Resource::new(Meta::named(name, "default"), Spec::Dataplane(spec))
}

fn dp_key(name: &str) -> ResourceKey {
    ResourceKey::new(ResourceType::Dataplane, "default", name)
}

/// One control-plane instance: a store on the shared database, its listener running.
struct Instance {
    store: Store<PostgresBackend>,
    listener: tokio::task::JoinHandle<crate::Result<()>>,
    application_name: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

async fn instance(db: &TestDatabase, name: &str, pacing: FollowSettings) -> Instance {
    let mut settings = db.settings.clone();
    settings.application_name = name.to_string();
    let backend = PostgresBackend::connect(settings).await.expect("connect");
    let store = Store::new(backend);
    let listener = tokio::spawn(
        store
            .backend()
            .clone()
            .follow_changes(store.event_sink(), pacing),
    );
    Instance {
        store,
        listener,
        application_name: format!("{name} listener"),
    }
}

/// The backend pid of an instance's listener, once it is listening.
async fn listener_pid(db: &TestDatabase, instance: &Instance) -> Option<i32> {
    let settings = db.settings.connect_options().expect("options");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&settings)
        .await
        .expect("connect");
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .bind(&instance.application_name)
    .fetch_optional(&mut conn)
    .await
    .expect("pg_stat_activity")
}

async fn wait_for_listener(db: &TestDatabase, instance: &Instance) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(pid) = listener_pid(db, instance).await {
            return pid;
        }
        assert!(start.elapsed() < DEADLINE, "the listener never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives events until `wanted` has been seen (in any order among others); returns them all.
async fn until_seen(
    events: &mut broadcast::Receiver<StoreEvent>,
    wanted: &[(EventKind, ResourceKey)],
) -> Vec<(EventKind, ResourceKey)> {
    let mut seen = Vec::new();
    let result = tokio::time::timeout(DEADLINE, async {
        while !wanted.iter().all(|w| seen.contains(w)) {
            match events.recv().await {
                Ok(e) => seen.push((e.kind, e.key)),
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "waited {DEADLINE:?} for {wanted:?}, saw only {seen:?}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_is_an_event_in_the_other() {
    let db = TestDatabase::migrated().await;
    let a = instance(&db, "instance-a", FollowSettings::default()).await;
    let b = instance(&db, "instance-b", FollowSettings::default()).await;
    wait_for_listener(&db, &a).await;
    wait_for_listener(&db, &b).await;
    let mut a_events = a.store.subscribe();
    let mut b_events = b.store.subscribe();

    // Each change through A is an event in B (waiting for each, since B reads the row when the
    // notice arrives and would merge a burst into its final state).
    let mesh_key = ResourceKey::global(ResourceType::Mesh, "default");
    a.store.create(mesh("default")).await.expect("mesh");
    until_seen(&mut b_events, &[(EventKind::Created, mesh_key.clone())]).await;
    // B's read cache holds the (empty) Dataplane list; A's write must not leave it stale.
    assert!(
        b.store
            .list(ResourceType::Dataplane, None)
            .await
            .expect("list")
            .is_empty()
    );
    let dp = a.store.create(dataplane("dp-1", 8080)).await.expect("dp");
    until_seen(&mut b_events, &[(EventKind::Created, dp_key("dp-1"))]).await;
    assert_eq!(
        b.store
            .list(ResourceType::Dataplane, None)
            .await
            .expect("list")
            .len(),
        1,
        "B's cached list missed A's write"
    );
    let mut next = dp.clone();
    if let Spec::Dataplane(d) = &mut next.spec {
        d.networking.inbound[0].port = 9090;
    }
    a.store.update(next).await.expect("update");
    until_seen(&mut b_events, &[(EventKind::Updated, dp_key("dp-1"))]).await;
    a.store.delete(&dp_key("dp-1"), None).await.expect("delete");
    until_seen(&mut b_events, &[(EventKind::Deleted, dp_key("dp-1"))]).await;
    // And what B reads is current.
    assert!(b.store.find(&dp_key("dp-1")).await.expect("find").is_none());
    let expected = vec![
        (EventKind::Created, mesh_key),
        (EventKind::Created, dp_key("dp-1")),
        (EventKind::Updated, dp_key("dp-1")),
        (EventKind::Deleted, dp_key("dp-1")),
    ];

    // A marker written through B: once A sees it, A's listener has handled every notification
    // of A's own writes (Postgres delivers them in commit order) — none was announced twice.
    b.store
        .create(dataplane("marker", 1))
        .await
        .expect("marker");
    let mut a_seen = until_seen(&mut a_events, &[(EventKind::Created, dp_key("marker"))]).await;
    a_seen.pop();
    assert_eq!(a_seen, expected);
    drop((a, b));
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_connection_is_cut_catches_up_on_what_it_missed() {
    let db = TestDatabase::migrated().await;
    let a = instance(&db, "writer", FollowSettings::default()).await;
    a.store.create(mesh("default")).await.expect("mesh");
    for (name, port) in [("stays", 1), ("changes", 2), ("goes", 3), ("comes-back", 4)] {
        a.store.create(dataplane(name, port)).await.expect("dp");
    }
    // B reconnects slowly, so the writes below land while it has no connection at all.
    let b = instance(
        &db,
        "reader",
        FollowSettings {
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
        },
    )
    .await;
    let mut b_events = b.store.subscribe();
    // B's read cache holds the list from before the cut.
    wait_for_listener(&db, &b).await;
    let names =
        |list: Vec<Resource>| -> Vec<String> { list.into_iter().map(|r| r.meta.name).collect() };
    assert_eq!(
        names(
            b.store
                .list(ResourceType::Dataplane, None)
                .await
                .expect("list")
        )
        .len(),
        4
    );
    let mut cut = false;
    for _attempt in 0..3 {
        let pid = wait_for_listener(&db, &b).await;
        let terminated = db
            .execute(&format!("SELECT pg_terminate_backend({pid})"))
            .await;
        assert_eq!(terminated, 1);
        // Until Postgres has removed the session, it could still receive notifications.
        let start = Instant::now();
        while listener_pid(&db, &b).await == Some(pid) {
            assert!(
                start.elapsed() < DEADLINE,
                "the listener was not terminated"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if listener_pid(&db, &b).await.is_none() {
            cut = true;
            break;
        }
    }
    assert!(cut, "could not catch the listener disconnected");
    // B has noticed: from here on it reads lists from the database.
    let start = Instant::now();
    while b.store.backend().is_following() {
        assert!(start.elapsed() < DEADLINE, "B never noticed the cut");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let changes = a.store.get(&dp_key("changes")).await.expect("get");
    let mut next = changes.clone();
    if let Spec::Dataplane(d) = &mut next.spec {
        d.networking.inbound[0].port = 20;
    }
    a.store.update(next).await.expect("update");
    a.store.delete(&dp_key("goes"), None).await.expect("delete");
    // Deleted and created again: the same version 1, a new revision.
    a.store
        .delete(&dp_key("comes-back"), None)
        .await
        .expect("delete");
    a.store
        .create(dataplane("comes-back", 40))
        .await
        .expect("recreate");
    a.store.create(dataplane("new", 5)).await.expect("create");
    // The writes happened while B had no session: their notifications are gone for B.
    assert_eq!(
        listener_pid(&db, &b).await,
        None,
        "the listener reconnected during the writes; the test did not cut it long enough"
    );
    // Meanwhile B does not serve its cached list: it reads the database.
    let listed = names(
        b.store
            .list(ResourceType::Dataplane, None)
            .await
            .expect("list"),
    );
    assert!(
        listed.contains(&"new".to_string()) && !listed.contains(&"goes".to_string()),
        "B served a stale list while its listener was cut: {listed:?}"
    );

    let missed = vec![
        (EventKind::Updated, dp_key("changes")),
        (EventKind::Deleted, dp_key("goes")),
        (EventKind::Updated, dp_key("comes-back")),
        (EventKind::Created, dp_key("new")),
    ];
    let seen = until_seen(&mut b_events, &missed).await;
    assert!(
        !seen.iter().any(|(_, k)| k == &dp_key("stays")),
        "an unchanged resource was announced: {seen:?}"
    );
    let port = |r: Resource| match r.spec {
        Spec::Dataplane(d) => d.networking.inbound[0].port,
        _ => 0,
    };
    assert_eq!(
        port(b.store.get(&dp_key("comes-back")).await.expect("get")),
        40
    );
    // Listening again: a later write arrives as a notification.
    wait_for_listener(&db, &b).await;
    a.store.create(dataplane("after", 6)).await.expect("after");
    until_seen(&mut b_events, &[(EventKind::Created, dp_key("after"))]).await;
    drop((a, b));
    db.drop_now().await;
}

/// Whether the session the store's pool hands out is encrypted (Postgres's own view).
async fn session_uses_tls(backend: &PostgresBackend) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&backend.pool)
        .await
        .expect("pg_stat_ssl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_reach_the_server_as_configured() {
    use super::settings::TlsMode;
    let db = TestDatabase::migrated().await;
    let mut settings = db.settings.clone();
    settings.tls.mode = TlsMode::VerifyNone;
    let backend = PostgresBackend::connect(settings.clone())
        .await
        .expect("TLS without verification (the test server has ssl = on, as Debian's default)");
    assert!(
        session_uses_tls(&backend).await,
        "verifyNone did not use TLS"
    );
    let store = Store::new(backend);
    store.create(mesh("default")).await.expect("write over TLS");

    settings.tls.mode = TlsMode::Disable;
    let plain = PostgresBackend::connect(settings.clone())
        .await
        .expect("plain");
    assert!(!session_uses_tls(&plain).await, "disable used TLS");

    // Verifying against a CA that did not sign the server's certificate fails, naming TLS.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, UNRELATED_CA).expect("write ca");
    settings.tls.mode = TlsMode::VerifyFull;
    settings.tls.ca_path = ca.display().to_string();
    let e = PostgresBackend::connect(settings)
        .await
        .err()
        .expect("an unrelated CA must not verify the server");
    assert!(e.to_string().contains("KUMA_STORE_POSTGRES_TLS"), "{e}");
    drop((store, plain));
    db.drop_now().await;
}

/// A self-signed CA (made once with openssl, valid until 2126) that signed nothing the server has.
const UNRELATED_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBjzCCATWgAwIBAgIUPpQmCScTrFsNlZegwktSWo6+El8wCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRdW5yZWxhdGVkIHRlc3QgQ0EwIBcNMjYxMjAyMDAwOTI5WhgP\nMjEyNjExMDgwMDA5MjlaMBwxGjAYBgNVBAMMEXVucmVsYXRlZCB0ZXN0IENBMFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7l8sCsxSi//LlY1BjicGCa9BPuL4Eu3/\nTFXNi3KqmI0c96a1nADmJOPbYTNZn27yvCoGnZezeFeJn167mnRJnqNTMFEwHQYD\nVR0OBBYEFDzaJyUe1CMD8DvB8QIqZhX8+PWuMB8GA1UdIwQYMBaAFDzaJyUe1CMD\n8DvB8QIqZhX8+PWuMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg\nXiaqN3wzX/XCtQsxQO4u/XTW2Npo3mhWNihDddY0JXgCIQCoM3sEK5xzrp1A36j8\neNxnXkJ0gQUOvOZnNtB5n/Btwg==\n-----END CERTIFICATE-----\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_racing_a_mesh_delete_on_another_instance_leave_no_orphan() {
    let db = TestDatabase::migrated().await;
    let a = instance(&db, "deleter", FollowSettings::default()).await;
    let b = instance(&db, "creator", FollowSettings::default()).await;
    for round in 0..3 {
        a.store.create(mesh("default")).await.expect("mesh");
        let creator = b.store.clone();
        let creates = tokio::spawn(async move {
            let mut created = 0;
            for i in 0..200 {
                match creator
                    .create(dataplane(&format!("dp-{round}-{i}"), 1))
                    .await
                {
                    Ok(_) => created += 1,
                    Err(crate::StoreError::MeshNotFound(_)) => {}
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            created
        });
        // Delete while the creates are under way (after the first one landed).
        let start = Instant::now();
        while b
            .store
            .list(ResourceType::Dataplane, Some("default"))
            .await
            .expect("list")
            .is_empty()
        {
            assert!(start.elapsed() < DEADLINE, "no create landed");
        }
        a.store
            .delete(&ResourceKey::global(ResourceType::Mesh, "default"), None)
            .await
            .expect("delete mesh");
        let created = creates.await.expect("join");
        // The delete landed among the creates: the later ones were refused for the missing Mesh.
        assert!(
            (1..200).contains(&created),
            "round {round}: {created} created"
        );
        // Every Dataplane that exists has its Mesh: none, since the mesh is gone.
        assert!(
            a.store
                .list(ResourceType::Dataplane, None)
                .await
                .expect("list")
                .is_empty(),
            "round {round}: a Dataplane outlived its Mesh"
        );
    }
    drop((a, b));
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_holds_the_lease_until_it_lapses_or_is_released() {
    use super::lease::LeaseState;
    let db = TestDatabase::migrated().await;
    let a = PostgresBackend::connect(db.settings.clone())
        .await
        .expect("a");
    let b = PostgresBackend::connect(db.settings.clone())
        .await
        .expect("b");
    let long = Duration::from_secs(30);

    assert_eq!(
        a.try_lease("leader", "a", long).await.expect("a takes"),
        LeaseState::Held { term: 1 }
    );
    assert_eq!(
        b.try_lease("leader", "b", long).await.expect("b tries"),
        LeaseState::HeldBy { holder: "a".into() }
    );
    // Renewing keeps the term.
    assert_eq!(
        a.try_lease("leader", "a", long).await.expect("a renews"),
        LeaseState::Held { term: 1 }
    );
    // Released: the next one takes it at once, in a new term.
    a.release_lease("leader", "a").await.expect("release");
    assert_eq!(
        b.try_lease("leader", "b", long).await.expect("b takes"),
        LeaseState::Held { term: 2 }
    );
    // Releasing what one does not hold changes nothing.
    a.release_lease("leader", "a")
        .await
        .expect("release nothing");
    assert_eq!(
        a.try_lease("leader", "a", long).await.expect("a tries"),
        LeaseState::HeldBy { holder: "b".into() }
    );

    // A short lease that is not renewed lapses: the other instance takes it.
    b.release_lease("leader", "b").await.expect("release");
    let short = Duration::from_millis(300);
    assert_eq!(
        a.try_lease("leader", "a", short).await.expect("a takes"),
        LeaseState::Held { term: 3 }
    );
    let started = Instant::now();
    loop {
        match b.try_lease("leader", "b", long).await.expect("b tries") {
            LeaseState::Held { term } => {
                assert_eq!(term, 4);
                break;
            }
            LeaseState::HeldBy { holder } => assert_eq!(holder, "a"),
        }
        assert!(started.elapsed() < DEADLINE, "the lease never lapsed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Heartbeats: both alive; one that stops beating drops out of the live set.
    a.heartbeat("a").await.expect("a beats");
    b.heartbeat("b").await.expect("b beats");
    let live = a.live_instances(long).await.expect("live");
    assert_eq!(live, ["a", "b"]);
    let started = Instant::now();
    loop {
        b.heartbeat("b").await.expect("b beats");
        let live = a
            .live_instances(Duration::from_millis(300))
            .await
            .expect("live");
        if live == ["b"] {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "a never dropped out: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.drop_now().await;
}
