//! The Postgres schema: versioned migrations embedded in the binary, applied by
//! `kuma-cp migrate up` (sqlx's migrator, which locks the database while it works), and the
//! check `kuma-cp run` makes before it uses a database.

use std::borrow::Cow;

use sqlx::migrate::{Migrate, Migration, MigrationType, Migrator};
use sqlx::{PgPool, SqlSafeStr};

use crate::StoreError;

/// `(version, description, SQL)`, oldest first. Never edit a released file: add one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "resources",
        include_str!("../../migrations/postgres/0001_resources.sql"),
    ),
    (
        2,
        "leases",
        include_str!("../../migrations/postgres/0002_leases.sql"),
    ),
];

/// sqlx's bookkeeping table (one row per applied version, with a checksum).
const TABLE: &str = "_sqlx_migrations";

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The newest schema version this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _, _)| *v)
}

/// What a database's schema is, compared with this binary's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    Current,
    /// No migration was ever applied.
    Unmigrated,
    /// Some of this binary's migrations are not applied yet.
    Behind {
        database: i64,
        binary: i64,
    },
    /// The database has migrations this binary does not know: a newer kuma-cp migrated it.
    Newer {
        database: i64,
        binary: i64,
    },
    /// An applied migration differs from this binary's, or one failed half way.
    Damaged(String),
}

impl SchemaState {
    /// Why `run` refuses this schema, naming what to do; `None` when it can be used.
    pub fn refusal(&self, database: &str) -> Option<String> {
        match self {
            SchemaState::Current => None,
            SchemaState::Unmigrated => Some(format!(
                "database {database} is not migrated: run `kuma-cp migrate up` with the same store settings (KUMA_STORE_POSTGRES_* or -c), then start kuma-cp again"
            )),
            SchemaState::Behind {
                database: d,
                binary,
            } => Some(format!(
                "database {database} has schema version {d}, this kuma-cp needs {binary}: run `kuma-cp migrate up` with the same store settings, then start kuma-cp again"
            )),
            SchemaState::Newer {
                database: d,
                binary,
            } => Some(format!(
                "database {database} has schema version {d}, newer than this kuma-cp knows ({binary}): a newer kuma-cp migrated it; run that version (downgrading the schema is not supported)"
            )),
            SchemaState::Damaged(why) => Some(format!(
                "database {database} has a schema this kuma-cp cannot use: {why}"
            )),
        }
    }
}

/// One applied migration as recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    pub checksum: Vec<u8>,
}

/// Compares what the database has applied with what this binary embeds. Pure.
pub fn compare(applied: &[Applied], embedded: &[(i64, Vec<u8>)]) -> SchemaState {
    let binary = embedded.last().map_or(0, |(v, _)| *v);
    let Some(database) = applied.iter().map(|a| a.version).max() else {
        return SchemaState::Unmigrated;
    };
    if let Some(unknown) = applied
        .iter()
        .find(|a| !embedded.iter().any(|(v, _)| *v == a.version))
    {
        return if unknown.version > binary {
            SchemaState::Newer { database, binary }
        } else {
            SchemaState::Damaged(format!(
                "migration {} is applied but this kuma-cp does not have it",
                unknown.version
            ))
        };
    }
    for a in applied {
        if let Some((_, sum)) = embedded.iter().find(|(v, _)| *v == a.version)
            && *sum != a.checksum
        {
            return SchemaState::Damaged(format!(
                "migration {} was applied from a different text than this kuma-cp's",
                a.version
            ));
        }
    }
    if applied.len() < embedded.len() {
        return SchemaState::Behind { database, binary };
    }
    SchemaState::Current
}

fn err(what: &str) -> impl Fn(sqlx::migrate::MigrateError) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

/// Reads the database's schema state without changing anything.
pub async fn state(pool: &PgPool) -> Result<SchemaState, StoreError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(TABLE)
        .fetch_one(pool)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot read the schema version: {e}")))?;
    if exists.is_none() {
        return Ok(SchemaState::Unmigrated);
    }
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| StoreError::Backend(format!("cannot read the schema version: {e}")))?;
    if let Some(v) = conn
        .dirty_version(TABLE)
        .await
        .map_err(err("cannot read the schema version"))?
    {
        return Ok(SchemaState::Damaged(format!(
            "migration {v} failed half way; fix the database and remove its row from {TABLE}"
        )));
    }
    let applied: Vec<Applied> = conn
        .list_applied_migrations(TABLE)
        .await
        .map_err(err("cannot read the schema version"))?
        .into_iter()
        .map(|a| Applied {
            version: a.version,
            checksum: a.checksum.into_owned(),
        })
        .collect();
    let embedded: Vec<(i64, Vec<u8>)> = migrator()
        .iter()
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect();
    Ok(compare(&applied, &embedded))
}

/// What `migrate up` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub before: SchemaState,
    pub version: i64,
}

/// Applies every migration the database lacks (each in its own transaction, under sqlx's
/// advisory lock, so two concurrent runs do not collide). Refuses a newer or damaged schema.
pub async fn migrate_up(pool: &PgPool, database: &str) -> Result<MigrationReport, StoreError> {
    let before = state(pool).await?;
    if let SchemaState::Newer { .. } | SchemaState::Damaged(_) = &before {
        return Err(StoreError::Backend(
            before.refusal(database).unwrap_or_default(),
        ));
    }
    migrator()
        .run(pool)
        .await
        .map_err(err("migration failed"))?;
    Ok(MigrationReport {
        before,
        version: latest_version(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(v: &[(i64, u8)]) -> Vec<Applied> {
        v.iter()
            .map(|(version, sum)| Applied {
                version: *version,
                checksum: vec![*sum],
            })
            .collect()
    }

    #[test]
    fn schema_states() {
        let embedded = vec![(1, vec![1]), (2, vec![2])];
        let cases: &[(&[(i64, u8)], SchemaState)] = &[
            (&[], SchemaState::Unmigrated),
            (&[(1, 1), (2, 2)], SchemaState::Current),
            (
                &[(1, 1)],
                SchemaState::Behind {
                    database: 1,
                    binary: 2,
                },
            ),
            (
                &[(1, 1), (2, 2), (3, 3)],
                SchemaState::Newer {
                    database: 3,
                    binary: 2,
                },
            ),
        ];
        for (db, want) in cases {
            assert_eq!(&compare(&applied(db), &embedded), want, "{db:?}");
        }
        assert!(matches!(
            compare(&applied(&[(1, 9), (2, 2)]), &embedded),
            SchemaState::Damaged(m) if m.contains("migration 1")
        ));
    }

    #[test]
    fn refusals_say_what_to_run() {
        let db = "postgres://kuma@db:5432/kuma";
        let unmigrated = SchemaState::Unmigrated.refusal(db).expect("refused");
        assert!(unmigrated.contains("kuma-cp migrate up"), "{unmigrated}");
        assert!(unmigrated.contains(db), "{unmigrated}");
        let behind = SchemaState::Behind {
            database: 1,
            binary: 2,
        }
        .refusal(db)
        .expect("refused");
        assert!(behind.contains("kuma-cp migrate up"), "{behind}");
        let newer = SchemaState::Newer {
            database: 3,
            binary: 2,
        }
        .refusal(db)
        .expect("refused");
        assert!(newer.contains("newer"), "{newer}");
        assert_eq!(SchemaState::Current.refusal(db), None);
    }

    #[test]
    fn embedded_versions_increase() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|(v, _, _)| *v).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert_eq!(
            latest_version(),
            *versions.last().expect("one migration at least")
        );
    }
}
