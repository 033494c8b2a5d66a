//! For tests: a fresh database per test on the server named by `MESHZONE_TEST_POSTGRES_URL`
//! (which `scripts/test.sh` sets after starting Debian's PostgreSQL), so tests run in parallel
//! without seeing each other's rows or notifications.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::PostgresSettings;

/// The variable naming the test server: `postgres://user:password@host:port/database`.
pub const URL_VAR: &str = "MESHZONE_TEST_POSTGRES_URL";

/// The test server's settings, or a panic saying how to get one.
pub fn server() -> PostgresSettings {
    let url = std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set: the Postgres store tests need a PostgreSQL server whose user may create databases. \
             Run scripts/test.sh (it starts Debian's postgresql and sets it), or run scripts/test-postgres.sh \
             and export {URL_VAR}=<the URL it prints>"
        )
    });
    parse_url(&url).unwrap_or_else(|e| panic!("{URL_VAR}={url:?}: {e}"))
}

/// `postgres://user:password@host:port/database` into settings (TLS off).
pub fn parse_url(url: &str) -> Result<PostgresSettings, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or("expected postgres://user:password@host:port/database")?;
    let (credentials, rest) = rest.rsplit_once('@').ok_or("no user@ part")?;
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (address, db) = rest.split_once('/').ok_or("no /database part")?;
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "5432"));
    let port = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    Ok(PostgresSettings {
        host: host.to_string(),
        port,
        user: user.to_string(),
        password: password.to_string(),
        db_name: db.to_string(),
        max_open_connections: 8,
        ..PostgresSettings::kuma_defaults()
    })
}

/// A database made for one test; [`TestDatabase::drop_now`] removes it (a run that panicked
/// leaves it for `scripts/test-postgres.sh` to remove: they are all named `meshzone_t_*`).
#[derive(Debug)]
pub struct TestDatabase {
    pub settings: PostgresSettings,
    server: PostgresSettings,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn admin(server: &PostgresSettings) -> PgConnection {
    let options = server.connect_options().expect("test server settings");
    PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test server {}: {e}",
                server.describe()
            )
        })
}

impl TestDatabase {
    /// An empty database (no schema) on the test server.
    pub async fn create() -> TestDatabase {
        let server = server();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .subsec_nanos();
        let name = format!(
            "meshzone_t_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut conn = admin(&server).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = conn.close().await;
        TestDatabase {
            settings: PostgresSettings {
                db_name: name,
                ..server.clone()
            },
            server,
        }
    }

    /// An empty database with the schema applied.
    pub async fn migrated() -> TestDatabase {
        let db = Self::create().await;
        super::PostgresBackend::migrate(&db.settings)
            .await
            .expect("migrate the test database");
        db
    }

    /// Runs SQL as the test user on this database (e.g. `pg_terminate_backend`).
    pub async fn execute(&self, sql: &str) -> u64 {
        let mut conn = admin(&self.settings).await;
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
        done.rows_affected()
    }

    /// Drops the database, closing whatever is still connected to it.
    pub async fn drop_now(self) {
        let mut conn = admin(&self.server).await;
        let sql = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.settings.db_name
        );
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            eprintln!("cannot drop test database {}: {e}", self.settings.db_name);
        }
        let _ = conn.close().await;
    }
}

/// The `KUMA_STORE_*` environment of a kuma-cp on the database `s` names.
pub fn kuma_cp_env(s: &PostgresSettings) -> Vec<(&'static str, String)> {
    vec![
        ("KUMA_STORE_TYPE", "postgres".into()),
        ("KUMA_STORE_POSTGRES_HOST", s.host.clone()),
        ("KUMA_STORE_POSTGRES_PORT", s.port.to_string()),
        ("KUMA_STORE_POSTGRES_USER", s.user.clone()),
        ("KUMA_STORE_POSTGRES_PASSWORD", s.password.clone()),
        ("KUMA_STORE_POSTGRES_DB_NAME", s.db_name.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let s = parse_url("postgres://u:p@127.0.0.1:5433/db").expect("parse");
        assert_eq!(
            (
                s.host.as_str(),
                s.port,
                s.user.as_str(),
                s.password.as_str()
            ),
            ("127.0.0.1", 5433, "u", "p")
        );
        assert_eq!(s.db_name, "db");
        assert!(parse_url("mysql://x").is_err());
    }
}
