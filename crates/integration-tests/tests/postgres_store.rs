//! `kuma-cp` on the Postgres store, as processes: `migrate up` creates the schema (from `KUMA_*`
//! or `-c`), `run` refuses an unmigrated or newer schema naming `kuma-cp migrate up`, and two
//! instances on one database serve the same resources. Needs MESHZONE_TEST_POSTGRES_URL
//! (scripts/test.sh sets it after starting Debian's PostgreSQL).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshzone_integration_tests::{ControlPlane, binary, free_port, write_file};
use meshzone_store::postgres::testing::TestDatabase;

#[path = "support/postgres.rs"]
mod postgres;
use postgres::{block_on, store_env};

/// Runs `kuma-cp ARGS` to its end (bounded), with only the given environment (and free ports).
fn kuma_cp(args: &[&str], env: &[(&str, String)], dir: &Path) -> Output {
    let ports = [
        "KUMA_API_SERVER_HTTP_PORT",
        "KUMA_API_SERVER_HTTPS_PORT",
        "KUMA_DIAGNOSTICS_SERVER_PORT",
        "KUMA_DP_SERVER_PORT",
        "KUMA_DNS_SERVER_PORT",
    ]
    .map(|var| (var, free_port().to_string()));
    let mut child = Command::new(binary("kuma-cp"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("KUMA_GENERAL_WORK_DIR", dir.join("kuma"))
        .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
        .env("KUMA_API_SERVER_HTTPS_INTERFACE", "127.0.0.1")
        .envs(ports.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kuma-cp");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("kuma-cp {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn migrate_up_creates_the_schema_that_run_requires() {
    let db = block_on(TestDatabase::create());
    let dir = tempfile::tempdir().expect("tempdir");
    let env = store_env(&db.settings);

    // An empty database: run refuses and says what to run.
    let refused = kuma_cp(&["run"], &env, dir.path());
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("is not migrated: run `kuma-cp migrate up`"),
        "{}",
        text(&refused)
    );

    // Migrating from a config file (-c), as `run` takes it.
    let s = &db.settings;
    let file = write_file(
        dir.path(),
        "cp.yaml",
        &format!(
            "store:\n  type: postgres\n  postgres:\n    host: {}\n    port: {}\n    user: {}\n    password: {}\n    dbName: {}\n",
            s.host, s.port, s.user, s.password, s.db_name
        ),
    );
    let file_arg = file.display().to_string();
    let migrated = kuma_cp(&["migrate", "up", "-c", &file_arg], &[], dir.path());
    assert!(migrated.status.success(), "{}", text(&migrated));
    assert!(
        text(&migrated).contains("migrated to schema version 2"),
        "{}",
        text(&migrated)
    );
    let again = kuma_cp(&["migrate", "up"], &env, dir.path());
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("already at schema version 2"),
        "{}",
        text(&again)
    );

    // Two instances on the migrated database: what one stores, the other serves.
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&a_dir).expect("dir");
    std::fs::create_dir_all(&b_dir).expect("dir");
    let a = ControlPlane::start(&a_dir, &extra);
    let b = ControlPlane::start(&b_dir, &extra);
    let client = reqwest::blocking::Client::new();
    let put = client
        .put(format!("{}/meshes/second", a.api_url()))
        .header("content-type", "application/json")
        .body(r#"{"type":"Mesh","name":"second"}"#)
        .send()
        .expect("PUT mesh");
    assert!(put.status().is_success(), "{:?}", put.text());
    let meshes: serde_json::Value = client
        .get(format!("{}/meshes", b.api_url()))
        .send()
        .expect("GET meshes")
        .json()
        .expect("json");
    let names: Vec<&str> = meshes["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["default", "second"]);
    // The API never shows the database password.
    let config = client
        .get(format!("{}/config", b.api_url()))
        .send()
        .expect("GET config")
        .text()
        .expect("text");
    let shown: serde_json::Value = serde_json::from_str(&config).expect("config json");
    assert_eq!(shown["store"]["postgres"]["password"], "*****", "{config}");
    drop((a, b));

    // A schema from a newer kuma-cp: refused, not used.
    block_on(db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'from the future', true, '\\x00', 0)",
    ));
    let newer = kuma_cp(&["run"], &env, dir.path());
    assert!(!newer.status.success(), "{}", text(&newer));
    assert!(
        text(&newer).contains("newer than this kuma-cp knows"),
        "{}",
        text(&newer)
    );
    let newer_migrate = kuma_cp(&["migrate", "up"], &env, dir.path());
    assert!(!newer_migrate.status.success(), "{}", text(&newer_migrate));
    block_on(db.drop_now());
}

#[test]
fn bad_store_settings_are_named() {
    let db = block_on(TestDatabase::create());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = store_env(&db.settings);
    env.retain(|(k, _)| *k != "KUMA_STORE_POSTGRES_PASSWORD");
    env.push(("KUMA_STORE_POSTGRES_PASSWORD", "wrong".into()));
    let o = kuma_cp(&["migrate", "up"], &env, dir.path());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("KUMA_STORE_POSTGRES_PASSWORD"),
        "{}",
        text(&o)
    );

    let mut env = store_env(&db.settings);
    env.push(("KUMA_STORE_POSTGRES_TLS_MODE", "verifyFull".into()));
    let o = kuma_cp(&["migrate", "up"], &env, dir.path());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("KUMA_STORE_POSTGRES_TLS_CA_PATH"),
        "{}",
        text(&o)
    );

    // Nothing listens on this loopback port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let mut env = store_env(&db.settings);
    env.push(("KUMA_STORE_POSTGRES_PORT", port.to_string()));
    let o = kuma_cp(&["run"], &env, dir.path());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("check KUMA_STORE_POSTGRES_HOST and KUMA_STORE_POSTGRES_PORT"),
        "{}",
        text(&o)
    );

    let o = kuma_cp(&["migrate", "up"], &[], dir.path());
    assert!(!o.status.success());
    assert!(
        text(&o).contains("KUMA_STORE_TYPE=postgres"),
        "{}",
        text(&o)
    );
    block_on(db.drop_now());
}
