//! PostgreSQL backend, for several control-plane instances on one database. One table
//! (`migrations/postgres/`), each call one transaction; owner and mesh cascades are foreign keys
//! with `ON DELETE CASCADE`, so no concurrent create can leave an orphan. A trigger NOTIFYs the
//! key of every changed row in the writing transaction; [`PostgresBackend::follow_changes`]
//! turns those notifications (from every instance) into the store's change events.

mod changes;
pub mod lease;
pub mod schema;
pub mod settings;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row, Transaction};

pub use changes::{FollowSettings, diff_announced, observe_revision};
pub use schema::{MigrationReport, SchemaState};
pub use settings::{PostgresSettings, PostgresTls, SettingsError, TlsMode};

use crate::{Backend, Result, StoreError};

/// The NOTIFY channel every write announces its key on.
pub const CHANNEL: &str = "meshzone_resources";

/// What this instance has announced to its subscribers: the `revision` of every resource as of
/// its last event. Own writes record theirs when they commit (the `Store` announces them), so
/// the notification of an own write is recognised and not announced twice.
type Announced = Arc<Mutex<HashMap<ResourceKey, i64>>>;

#[derive(Clone)]
pub struct PostgresBackend {
    pool: PgPool,
    settings: Arc<PostgresSettings>,
    announced: Announced,
    /// Own writes hold it shared from begin until their revision is recorded; the listener holds
    /// it alone while it reads revisions, so what it reads never races an own write between its
    /// commit and its record in `announced` (which would announce that write a second time).
    write_gate: Arc<tokio::sync::RwLock<()>>,
    /// Whether the change listener is connected and has resynced.
    following: Arc<std::sync::atomic::AtomicBool>,
}

fn backend_err(context: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("{context}: {e}"))
}

/// Whether a pool's connections are closed when idle or old (the settings' limits).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Recycle {
    AsConfigured,
    /// The listener's connection: closing it would lose notifications.
    Never,
}

/// Opening a pool: errors that name the settings to check.
async fn connect_pool(settings: &PostgresSettings, size: u32, recycle: Recycle) -> Result<PgPool> {
    let (idle, lifetime) = match recycle {
        Recycle::AsConfigured => (
            settings.max_connection_idle_time,
            settings.max_connection_lifetime,
        ),
        Recycle::Never => (None, None),
    };
    let options = settings
        .connect_options()
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .min_connections(settings.min_open_connections.min(size))
        .acquire_timeout(settings.connection_timeout)
        .idle_timeout(idle)
        .max_lifetime(lifetime);
    // One plain connection first: the pool would retry a refused connection until its timeout
    // and report only that, while this reports why (refused, bad password, no database).
    let probe = tokio::time::timeout(
        settings.connection_timeout,
        <PgConnection as Connection>::connect_with(&options),
    )
    .await;
    match probe {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(StoreError::Backend(explain_connect_error(settings, &e))),
        Err(_) => {
            return Err(StoreError::Backend(format!(
                "cannot connect to {} within {:?} (KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT): check KUMA_STORE_POSTGRES_HOST and KUMA_STORE_POSTGRES_PORT",
                settings.describe(),
                settings.connection_timeout
            )));
        }
    }
    pool.connect_with(options)
        .await
        .map_err(|e| StoreError::Backend(explain_connect_error(settings, &e)))
}

/// A connection failure in words that say which setting to check.
fn explain_connect_error(settings: &PostgresSettings, e: &sqlx::Error) -> String {
    let target = settings.describe();
    if let sqlx::Error::Database(db) = e {
        match db.code().as_deref() {
            Some("28P01") | Some("28000") => {
                return format!(
                    "{target} refused the login of user {:?}: check KUMA_STORE_POSTGRES_USER and KUMA_STORE_POSTGRES_PASSWORD ({})",
                    settings.user,
                    db.message()
                );
            }
            Some("3D000") => {
                return format!(
                    "{target}: database {:?} does not exist: create it, or set KUMA_STORE_POSTGRES_DB_NAME ({})",
                    settings.db_name,
                    db.message()
                );
            }
            _ => {}
        }
    }
    let tls_failed = |text: &str| {
        let text = text.to_ascii_lowercase();
        ["certificate", "tls", "handshake", "ssl"]
            .iter()
            .any(|w| text.contains(w))
    };
    match e {
        // sqlx reports TLS failures (an unknown issuer, a name mismatch) as I/O errors.
        sqlx::Error::Io(io) if tls_failed(&io.to_string()) => format!(
            "TLS to {target} failed: {io}: check KUMA_STORE_POSTGRES_TLS_MODE and KUMA_STORE_POSTGRES_TLS_CA_PATH"
        ),
        sqlx::Error::Io(io) => format!(
            "cannot reach {target}: {io}: check KUMA_STORE_POSTGRES_HOST and KUMA_STORE_POSTGRES_PORT"
        ),
        sqlx::Error::Tls(tls) => format!(
            "TLS to {target} failed: {tls}: check KUMA_STORE_POSTGRES_TLS_MODE and KUMA_STORE_POSTGRES_TLS_CA_PATH"
        ),
        other => format!("cannot connect to {target}: {other}"),
    }
}

impl PostgresBackend {
    /// Connects to a migrated database. An unmigrated or newer schema is refused with a message
    /// naming `kuma-cp migrate up`.
    pub async fn connect(settings: PostgresSettings) -> Result<Self> {
        let pool = connect_pool(&settings, settings.pool_size(), Recycle::AsConfigured).await?;
        let state = schema::state(&pool).await?;
        if let Some(refusal) = state.refusal(&settings.describe()) {
            pool.close().await;
            return Err(StoreError::Backend(refusal));
        }
        let backend = PostgresBackend {
            pool,
            settings: Arc::new(settings),
            announced: Announced::default(),
            write_gate: Arc::default(),
            following: Arc::default(),
        };
        // Everything that exists now counts as known; the listener announces what changes after.
        let snapshot = backend.revisions().await?;
        *backend.lock_announced() = snapshot;
        Ok(backend)
    }

    /// Creates or upgrades the schema (`kuma-cp migrate up`).
    pub async fn migrate(settings: &PostgresSettings) -> Result<MigrationReport> {
        let pool = connect_pool(settings, 1, Recycle::AsConfigured).await?;
        let report = schema::migrate_up(&pool, &settings.describe()).await;
        pool.close().await;
        report
    }

    /// The schema state of the database the settings point at.
    pub async fn schema_state(settings: &PostgresSettings) -> Result<SchemaState> {
        let pool = connect_pool(settings, 1, Recycle::AsConfigured).await?;
        let state = schema::state(&pool).await;
        pool.close().await;
        state
    }

    /// Whether [`follow_changes`](Self::follow_changes) is connected and has caught up, so
    /// every instance's writes reach this store's subscribers (and its read cache is in use).
    pub fn is_following(&self) -> bool {
        self.following.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn settings(&self) -> &PostgresSettings {
        &self.settings
    }

    fn lock_announced(&self) -> MutexGuard<'_, HashMap<ResourceKey, i64>> {
        // Every change under the lock is a single map operation or a whole replacement.
        self.announced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every resource's key and revision.
    async fn revisions(&self) -> Result<HashMap<ResourceKey, i64>> {
        let rows = sqlx::query("SELECT type, mesh, name, revision FROM resources")
            .fetch_all(&self.pool)
            .await
            .map_err(backend_err("cannot list revisions"))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let Some(key) = key_of(&row, "type", "mesh", "name") else {
                continue; // a type this binary does not know (written by a newer kuma-cp)
            };
            let revision: i64 = row
                .try_get("revision")
                .map_err(backend_err("corrupt row: revision"))?;
            out.insert(key, revision);
        }
        Ok(out)
    }

    /// The revisions of some resources; absent ones are missing from the map.
    async fn revisions_of(&self, keys: &[ResourceKey]) -> Result<HashMap<ResourceKey, i64>> {
        let types: Vec<&str> = keys.iter().map(|k| k.resource_type.name()).collect();
        let meshes: Vec<&str> = keys.iter().map(|k| k.mesh.as_str()).collect();
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        let rows = sqlx::query(
            "SELECT r.type, r.mesh, r.name, r.revision FROM resources r
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(type, mesh, name)
               ON r.type = k.type AND r.mesh = k.mesh AND r.name = k.name",
        )
        .bind(types)
        .bind(meshes)
        .bind(names)
        .fetch_all(&self.pool)
        .await
        .map_err(backend_err("cannot read revisions"))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            if let Some(key) = key_of(&row, "type", "mesh", "name") {
                let revision: i64 = row
                    .try_get("revision")
                    .map_err(backend_err("corrupt row: revision"))?;
                out.insert(key, revision);
            }
        }
        Ok(out)
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(backend_err("cannot begin transaction"))
    }
}

fn key_of(row: &PgRow, t: &str, m: &str, n: &str) -> Option<ResourceKey> {
    let rt = ResourceType::from_str(row.try_get::<&str, _>(t).ok()?).ok()?;
    Some(ResourceKey {
        resource_type: rt,
        mesh: row.try_get(m).ok()?,
        name: row.try_get(n).ok()?,
    })
}

/// `SELECT <columns> FROM resources`, as a literal so queries stay static strings.
macro_rules! select_resources {
    () => {
        "SELECT type, mesh, name, version, spec, labels::text AS labels, owner_type, owner_mesh, owner_name, creation_time, modification_time FROM resources"
    };
}

fn decode(row: &PgRow) -> Result<Resource> {
    let corrupt = |what: String| StoreError::Backend(format!("corrupt row in store: {what}"));
    let text = |col: &str| -> Result<String> {
        row.try_get::<String, _>(col)
            .map_err(|e| corrupt(format!("{col}: {e}")))
    };
    let rt = ResourceType::from_str(&text("type")?).map_err(|e| corrupt(e.to_string()))?;
    let name = text("name")?;
    let spec_value: serde_json::Value =
        serde_json::from_str(&text("spec")?).map_err(|e| corrupt(e.to_string()))?;
    let spec =
        Spec::from_fields(rt, spec_value).map_err(|v| corrupt(format!("{rt} {name:?}: {v}")))?;
    let labels = serde_json::from_str(&text("labels")?).map_err(|e| corrupt(e.to_string()))?;
    let time = |col: &str| -> Result<Option<DateTime<Utc>>> {
        row.try_get::<DateTime<Utc>, _>(col)
            .map(Some)
            .map_err(|e| corrupt(format!("{col}: {e}")))
    };
    let owner = if row
        .try_get::<Option<String>, _>("owner_type")
        .ok()
        .flatten()
        .is_some()
    {
        Some(
            key_of(row, "owner_type", "owner_mesh", "owner_name")
                .ok_or_else(|| corrupt(format!("{rt} {name:?}: owner")))?,
        )
    } else {
        None
    };
    let version: i64 = row
        .try_get("version")
        .map_err(|e| corrupt(format!("version: {e}")))?;
    Ok(Resource {
        meta: Meta {
            name,
            mesh: text("mesh")?,
            labels,
            version: u64::try_from(version).map_err(|_| corrupt("negative version".into()))?,
            creation_time: time("creation_time")?,
            modification_time: time("modification_time")?,
            owner,
        },
        spec,
    })
}

fn labels_json(r: &Resource) -> String {
    serde_json::to_string(&r.meta.labels).unwrap_or_else(|_| "{}".into())
}

/// A foreign-key violation on create or update: which parent is missing.
fn missing_parent(e: &sqlx::Error, resource: &Resource) -> Option<StoreError> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    match db.constraint() {
        Some("resources_mesh_fk") => Some(StoreError::MeshNotFound(resource.meta.mesh.clone())),
        Some("resources_owner_fk") => resource.meta.owner.clone().map(StoreError::OwnerNotFound),
        _ => None,
    }
}

impl Backend for PostgresBackend {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>> {
        let row = sqlx::query(concat!(
            select_resources!(),
            " WHERE type = $1 AND mesh = $2 AND name = $3"
        ))
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend_err("get"))?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self, rt: ResourceType, mesh: Option<&str>) -> Result<Vec<Resource>> {
        let rows = match mesh {
            Some(mesh) => {
                sqlx::query(concat!(
                    select_resources!(),
                    " WHERE type = $1 AND mesh = $2 ORDER BY mesh, name"
                ))
                .bind(rt.name())
                .bind(mesh)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(concat!(
                    select_resources!(),
                    " WHERE type = $1 ORDER BY mesh, name"
                ))
                .bind(rt.name())
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(backend_err("list"))?;
        rows.iter().map(decode).collect()
    }

    async fn create(&self, resource: Resource) -> Result<()> {
        let _gate = self.write_gate.read().await;
        let key = resource.key();
        let owner = resource.meta.owner.as_ref();
        let now = Utc::now();
        let mut tx = self.begin().await?;
        let inserted: std::result::Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
            "INSERT INTO resources (type, mesh, name, version, spec, labels, owner_type, owner_mesh, owner_name, creation_time, modification_time)
             VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11)
             ON CONFLICT (type, mesh, name) DO NOTHING
             RETURNING revision",
        )
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .bind(resource.meta.version as i64)
        .bind(resource.spec_json())
        .bind(labels_json(&resource))
        .bind(owner.map(|o| o.resource_type.name()))
        .bind(owner.map(|o| o.mesh.as_str()))
        .bind(owner.map(|o| o.name.as_str()))
        .bind(resource.meta.creation_time.unwrap_or(now))
        .bind(resource.meta.modification_time.unwrap_or(now))
        .fetch_optional(&mut *tx)
        .await;
        let revision = match inserted {
            Ok(Some(revision)) => revision,
            Ok(None) => return Err(StoreError::AlreadyExists(key)),
            Err(e) => {
                return Err(
                    missing_parent(&e, &resource).unwrap_or_else(|| backend_err("insert")(e))
                );
            }
        };
        tx.commit().await.map_err(backend_err("commit"))?;
        self.lock_announced().insert(key, revision);
        Ok(())
    }

    async fn update(&self, resource: Resource, expected: u64) -> Result<()> {
        let _gate = self.write_gate.read().await;
        let key = resource.key();
        let owner = resource.meta.owner.as_ref();
        let mut tx = self.begin().await?;
        let updated: std::result::Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
            "UPDATE resources SET version = $1, revision = nextval('resource_revisions'), spec = $2, labels = $3::jsonb,
                 owner_type = $4, owner_mesh = $5, owner_name = $6, modification_time = $7
             WHERE type = $8 AND mesh = $9 AND name = $10 AND version = $11
             RETURNING revision",
        )
        .bind(resource.meta.version as i64)
        .bind(resource.spec_json())
        .bind(labels_json(&resource))
        .bind(owner.map(|o| o.resource_type.name()))
        .bind(owner.map(|o| o.mesh.as_str()))
        .bind(owner.map(|o| o.name.as_str()))
        .bind(resource.meta.modification_time.unwrap_or_else(Utc::now))
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .bind(expected as i64)
        .fetch_optional(&mut *tx)
        .await;
        match updated {
            Ok(Some(revision)) => {
                tx.commit().await.map_err(backend_err("commit"))?;
                self.lock_announced().insert(key, revision);
                Ok(())
            }
            Ok(None) => {
                let actual: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM resources WHERE type = $1 AND mesh = $2 AND name = $3",
                )
                .bind(key.resource_type.name())
                .bind(&key.mesh)
                .bind(&key.name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend_err("lookup"))?;
                match actual {
                    None => Err(StoreError::NotFound(key)),
                    Some(actual) => Err(StoreError::Conflict {
                        key,
                        expected,
                        actual: actual as u64,
                    }),
                }
            }
            Err(e) => {
                Err(missing_parent(&e, &resource).unwrap_or_else(|| backend_err("update")(e)))
            }
        }
    }

    async fn delete(&self, key: &ResourceKey, expected: Option<u64>) -> Result<Vec<ResourceKey>> {
        let _gate = self.write_gate.read().await;
        let mut tx = self.begin().await?;
        // Locking the root first makes a concurrent create under it wait for this delete.
        let actual: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM resources WHERE type = $1 AND mesh = $2 AND name = $3 FOR UPDATE",
        )
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend_err("lookup"))?;
        let Some(actual) = actual else {
            return Err(StoreError::NotFound(key.clone()));
        };
        if let Some(expected) = expected
            && expected as i64 != actual
        {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                actual: actual as u64,
            });
        }
        // Everything below the root, nearest first; the foreign keys delete the same rows.
        let rows = sqlx::query(
            "WITH RECURSIVE doomed(type, mesh, name, depth) AS (
                 SELECT type, mesh, name, 0 FROM resources WHERE type = $1 AND mesh = $2 AND name = $3
               UNION
                 SELECT r.type, r.mesh, r.name, d.depth + 1 FROM doomed d JOIN resources r
                   ON (r.owner_type = d.type AND r.owner_mesh = d.mesh AND r.owner_name = d.name)
                   OR (r.mesh_type = d.type AND r.mesh_mesh = d.mesh AND r.mesh = d.name)
                 WHERE d.depth < 64
             )
             SELECT type, mesh, name, min(depth) AS depth FROM doomed
             GROUP BY type, mesh, name ORDER BY depth, type, mesh, name",
        )
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend_err("cascade lookup"))?;
        let mut doomed = vec![key.clone()];
        doomed.extend(
            rows.iter()
                .filter_map(|row| key_of(row, "type", "mesh", "name"))
                .filter(|k| k != key),
        );
        sqlx::query("DELETE FROM resources WHERE type = $1 AND mesh = $2 AND name = $3")
            .bind(key.resource_type.name())
            .bind(&key.mesh)
            .bind(&key.name)
            .execute(&mut *tx)
            .await
            .map_err(backend_err("delete"))?;
        tx.commit().await.map_err(backend_err("commit"))?;
        let mut announced = self.lock_announced();
        for k in &doomed {
            announced.remove(k);
        }
        Ok(doomed)
    }
}
