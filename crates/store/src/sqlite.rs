//! SQLite backend: the durable default. One table, WAL journal, `synchronous=FULL`, so an
//! acknowledged write survives `kill -9` (and power loss). The SQL is kept portable to PostgreSQL.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meshzone_model::{Meta, Resource, ResourceKey, ResourceType, Spec, format_time};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::memory::is_child;
use crate::{Backend, Result, StoreError};

pub struct SqliteBackend {
    pool: SqlitePool,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS resources (
        type TEXT NOT NULL,
        mesh TEXT NOT NULL,
        name TEXT NOT NULL,
        version BIGINT NOT NULL,
        spec TEXT NOT NULL,
        labels TEXT NOT NULL,
        owner_type TEXT,
        owner_mesh TEXT,
        owner_name TEXT,
        creation_time TEXT NOT NULL,
        modification_time TEXT NOT NULL,
        PRIMARY KEY (type, mesh, name)
    )",
    "CREATE INDEX IF NOT EXISTS resources_owner ON resources (owner_type, owner_mesh, owner_name)",
    "CREATE INDEX IF NOT EXISTS resources_mesh ON resources (mesh)",
];

fn backend_err(context: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("{context}: {e}"))
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file and its schema.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Backend(format!("cannot open SQLite store {}: {e}", path.display()))
            })?;
        for statement in SCHEMA {
            sqlx::query(*statement)
                .execute(&pool)
                .await
                .map_err(backend_err("cannot create schema"))?;
        }
        Ok(SqliteBackend { pool })
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        // IMMEDIATE takes the write lock up front, so read-then-write never deadlocks.
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend_err("cannot begin transaction"))
    }
}

fn decode(row: &SqliteRow) -> Result<Resource> {
    let corrupt = |what: &str| StoreError::Backend(format!("corrupt row in store: {what}"));
    let get = |col: &str| -> Result<String> {
        row.try_get::<String, _>(col)
            .map_err(|e| corrupt(&format!("{col}: {e}")))
    };
    let rt = ResourceType::from_str(&get("type")?).map_err(|e| corrupt(&e.to_string()))?;
    let name = get("name")?;
    let spec_value: serde_json::Value =
        serde_json::from_str(&get("spec")?).map_err(|e| corrupt(&e.to_string()))?;
    let spec =
        Spec::from_fields(rt, spec_value).map_err(|v| corrupt(&format!("{rt} {name:?}: {v}")))?;
    let labels = serde_json::from_str(&get("labels")?).map_err(|e| corrupt(&e.to_string()))?;
    let time = |col: &str| -> Result<Option<DateTime<Utc>>> {
        let text = get(col)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| corrupt(&format!("{col}: {e}")))
    };
    let owner_type: Option<String> = row.try_get("owner_type").ok().flatten();
    let owner = match owner_type {
        Some(t) => Some(ResourceKey {
            resource_type: ResourceType::from_str(&t).map_err(|e| corrupt(&e.to_string()))?,
            mesh: row.try_get("owner_mesh").unwrap_or_default(),
            name: row.try_get("owner_name").unwrap_or_default(),
        }),
        None => None,
    };
    let version: i64 = row
        .try_get("version")
        .map_err(|e| corrupt(&format!("version: {e}")))?;
    Ok(Resource {
        meta: Meta {
            name,
            mesh: get("mesh")?,
            labels,
            version: u64::try_from(version).map_err(|_| corrupt("negative version"))?,
            creation_time: time("creation_time")?,
            modification_time: time("modification_time")?,
            owner,
        },
        spec,
    })
}

async fn exists(tx: &mut Transaction<'static, Sqlite>, key: &ResourceKey) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM resources WHERE type = ? AND mesh = ? AND name = ?")
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend_err("lookup"))?;
    Ok(row.is_some())
}

async fn stored_version(
    tx: &mut Transaction<'static, Sqlite>,
    key: &ResourceKey,
) -> Result<Option<u64>> {
    let row = sqlx::query("SELECT version FROM resources WHERE type = ? AND mesh = ? AND name = ?")
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend_err("lookup"))?;
    Ok(row
        .and_then(|r| r.try_get::<i64, _>(0).ok())
        .map(|v| v as u64))
}

fn times(r: &Resource) -> (String, String) {
    let now = Utc::now();
    (
        format_time(r.meta.creation_time.unwrap_or(now)),
        format_time(r.meta.modification_time.unwrap_or(now)),
    )
}

fn labels_json(r: &Resource) -> String {
    serde_json::to_string(&r.meta.labels).unwrap_or_else(|_| "{}".into())
}

impl Backend for SqliteBackend {
    async fn get(&self, key: &ResourceKey) -> Result<Option<Resource>> {
        let row = sqlx::query(
            "SELECT type, mesh, name, version, spec, labels, owner_type, owner_mesh, owner_name, creation_time, modification_time
             FROM resources WHERE type = ? AND mesh = ? AND name = ?",
        )
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
                sqlx::query(
                    "SELECT type, mesh, name, version, spec, labels, owner_type, owner_mesh, owner_name, creation_time, modification_time
                     FROM resources WHERE type = ? AND mesh = ? ORDER BY mesh, name",
                )
                .bind(rt.name())
                .bind(mesh)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(
                    "SELECT type, mesh, name, version, spec, labels, owner_type, owner_mesh, owner_name, creation_time, modification_time
                     FROM resources WHERE type = ? ORDER BY mesh, name",
                )
                .bind(rt.name())
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(backend_err("list"))?;
        rows.iter().map(decode).collect()
    }

    async fn create(&self, resource: Resource) -> Result<()> {
        let key = resource.key();
        let mut tx = self.begin().await?;
        if exists(&mut tx, &key).await? {
            return Err(StoreError::AlreadyExists(key));
        }
        if resource.resource_type().is_mesh_scoped()
            && !exists(
                &mut tx,
                &ResourceKey::global(ResourceType::Mesh, &resource.meta.mesh),
            )
            .await?
        {
            return Err(StoreError::MeshNotFound(resource.meta.mesh.clone()));
        }
        if let Some(owner) = &resource.meta.owner
            && !exists(&mut tx, owner).await?
        {
            return Err(StoreError::OwnerNotFound(owner.clone()));
        }
        let (created, modified) = times(&resource);
        let owner = resource.meta.owner.as_ref();
        sqlx::query(
            "INSERT INTO resources (type, mesh, name, version, spec, labels, owner_type, owner_mesh, owner_name, creation_time, modification_time)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .bind(resource.meta.version as i64)
        .bind(resource.spec_json())
        .bind(labels_json(&resource))
        .bind(owner.map(|o| o.resource_type.name()))
        .bind(owner.map(|o| o.mesh.clone()))
        .bind(owner.map(|o| o.name.clone()))
        .bind(created)
        .bind(modified)
        .execute(&mut *tx)
        .await
        .map_err(backend_err("insert"))?;
        tx.commit().await.map_err(backend_err("commit"))
    }

    async fn update(&self, resource: Resource, expected: u64) -> Result<()> {
        let key = resource.key();
        let (_, modified) = times(&resource);
        let owner = resource.meta.owner.as_ref();
        let done = sqlx::query(
            "UPDATE resources SET version = ?, spec = ?, labels = ?, owner_type = ?, owner_mesh = ?, owner_name = ?, modification_time = ?
             WHERE type = ? AND mesh = ? AND name = ? AND version = ?",
        )
        .bind(resource.meta.version as i64)
        .bind(resource.spec_json())
        .bind(labels_json(&resource))
        .bind(owner.map(|o| o.resource_type.name()))
        .bind(owner.map(|o| o.mesh.clone()))
        .bind(owner.map(|o| o.name.clone()))
        .bind(modified)
        .bind(key.resource_type.name())
        .bind(&key.mesh)
        .bind(&key.name)
        .bind(expected as i64)
        .execute(&self.pool)
        .await
        .map_err(backend_err("update"))?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        match self.get(&key).await? {
            None => Err(StoreError::NotFound(key)),
            Some(stored) => Err(StoreError::Conflict {
                key,
                expected,
                actual: stored.meta.version,
            }),
        }
    }

    async fn delete(&self, key: &ResourceKey, expected: Option<u64>) -> Result<Vec<ResourceKey>> {
        let mut tx = self.begin().await?;
        let Some(actual) = stored_version(&mut tx, key).await? else {
            return Err(StoreError::NotFound(key.clone()));
        };
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                actual,
            });
        }
        let mut doomed = vec![key.clone()];
        let mut seen: std::collections::BTreeSet<ResourceKey> = doomed.iter().cloned().collect();
        let mut next = 0;
        while next < doomed.len() {
            let parent = doomed[next].clone();
            next += 1;
            let rows = if parent.resource_type == ResourceType::Mesh {
                sqlx::query(
                    "SELECT type, mesh, name, owner_type, owner_mesh, owner_name FROM resources
                     WHERE (owner_type = ? AND owner_mesh = ? AND owner_name = ?) OR mesh = ?",
                )
                .bind(parent.resource_type.name())
                .bind(&parent.mesh)
                .bind(&parent.name)
                .bind(&parent.name)
                .fetch_all(&mut *tx)
                .await
            } else {
                sqlx::query(
                    "SELECT type, mesh, name, owner_type, owner_mesh, owner_name FROM resources
                     WHERE owner_type = ? AND owner_mesh = ? AND owner_name = ?",
                )
                .bind(parent.resource_type.name())
                .bind(&parent.mesh)
                .bind(&parent.name)
                .fetch_all(&mut *tx)
                .await
            }
            .map_err(backend_err("cascade lookup"))?;
            for row in rows {
                let Ok(rt) = ResourceType::from_str(row.try_get::<&str, _>("type").unwrap_or(""))
                else {
                    continue;
                };
                let child = ResourceKey {
                    resource_type: rt,
                    mesh: row.try_get("mesh").unwrap_or_default(),
                    name: row.try_get("name").unwrap_or_default(),
                };
                let owner = row
                    .try_get::<Option<String>, _>("owner_type")
                    .ok()
                    .flatten()
                    .and_then(|t| ResourceType::from_str(&t).ok())
                    .map(|t| ResourceKey {
                        resource_type: t,
                        mesh: row.try_get("owner_mesh").unwrap_or_default(),
                        name: row.try_get("owner_name").unwrap_or_default(),
                    });
                if is_child(&parent, &child, owner.as_ref()) && seen.insert(child.clone()) {
                    doomed.push(child);
                }
            }
        }
        for k in &doomed {
            sqlx::query("DELETE FROM resources WHERE type = ? AND mesh = ? AND name = ?")
                .bind(k.resource_type.name())
                .bind(&k.mesh)
                .bind(&k.name)
                .execute(&mut *tx)
                .await
                .map_err(backend_err("delete"))?;
        }
        tx.commit().await.map_err(backend_err("commit"))?;
        Ok(doomed)
    }
}
