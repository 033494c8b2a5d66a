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
    meshzone_store::postgres::testing::kuma_cp_env(s)
}
