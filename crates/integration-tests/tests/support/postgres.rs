//! Test helpers for kuma-cp on the Postgres store (needs MESHZONE_TEST_POSTGRES_URL).

use meshzone_store::postgres::PostgresSettings;

pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The `KUMA_STORE_*` settings of a kuma-cp on the database `s` names.
pub fn store_env(s: &PostgresSettings) -> Vec<(&'static str, String)> {
    vec![
        ("KUMA_STORE_TYPE", "postgres".into()),
        ("KUMA_STORE_POSTGRES_HOST", s.host.clone()),
        ("KUMA_STORE_POSTGRES_PORT", s.port.to_string()),
        ("KUMA_STORE_POSTGRES_USER", s.user.clone()),
        ("KUMA_STORE_POSTGRES_PASSWORD", s.password.clone()),
        ("KUMA_STORE_POSTGRES_DB_NAME", s.db_name.clone()),
    ]
}
