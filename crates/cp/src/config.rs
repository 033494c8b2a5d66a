//! kuma-cp configuration: defaults ← `--config-file` YAML ← `KUMA_*` environment, then checked.
//! [`load`] is a pure function of its inputs; tests call it with a map.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshzone_store::postgres::{PostgresSettings, PostgresTls, TlsMode};

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub mode: String,
    pub general: General,
    pub store: StoreConfig,
    pub api_server: ApiServer,
    pub dp_server: DpServer,
    pub diagnostics: Diagnostics,
    pub multizone: Multizone,
    pub dns_server: DnsServer,
    pub defaults: Defaults,
    pub inter_cp: InterCp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct General {
    /// Where the CP keeps its database and generated certificates.
    pub work_dir: String,
    /// How long a stopping CP waits for its streams to close before it exits anyway, e.g. `4s`.
    pub graceful_shutdown_timeout: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreConfig {
    #[serde(rename = "type")]
    pub store_type: String,
    pub sqlite: SqliteConfig,
    pub postgres: PostgresConfig,
}

/// Kuma's `store.postgres`, with its keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub db_name: String,
    /// Only `pgx` (Kuma's only driver too); kept so Kuma config files load.
    pub driver_name: String,
    /// Seconds allowed to establish a connection.
    pub connection_timeout: u32,
    /// 0 means no limit.
    pub max_open_connections: u32,
    /// Accepted for Kuma's files; the pool closes idle connections after `maxConnectionIdleTime`.
    pub max_idle_connections: i64,
    pub min_open_connections: u32,
    pub max_connection_idle_time: String,
    pub max_connection_lifetime: String,
    pub max_connection_lifetime_jitter: String,
    pub health_check_interval: String,
    pub max_list_query_elements: u32,
    pub tls: PostgresTlsConfig,
    pub read_replica: ReadReplicaConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresTlsConfig {
    /// `disable`, `verifyNone`, `verifyCa`, `verifyFull`.
    pub mode: String,
    pub cert_path: String,
    pub key_path: String,
    pub ca_path: String,
    #[serde(rename = "disableSSLSNI")]
    pub disable_sslsni: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReadReplicaConfig {
    pub host: String,
    pub port: u16,
    pub ratio: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SqliteConfig {
    /// Database file; empty means `<workDir>/kuma-cp.db`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiServer {
    pub http: HttpListener,
    pub https: HttpsListener,
    pub auth: ApiAuth,
    pub authn: ApiAuthn,
}

/// Kuma's `apiServer.auth`: admin client certificates, checked on the HTTPS API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiAuth {
    /// Directory of PEM certificates; a client presenting one of them over HTTPS is an admin.
    pub client_certs_dir: String,
}

/// How API requests are authenticated (Kuma's `apiServer.authn`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiAuthn {
    /// `tokens`: user tokens (the only type; admin client certificates work beside them on
    /// the HTTPS API, see [`ApiAuth`]).
    #[serde(rename = "type")]
    pub authn_type: String,
    /// Requests from the CP's own host without a token are the admin.
    pub localhost_is_admin: bool,
    /// Requests without a token may read everything but secrets.
    pub unauthenticated_read: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpListener {
    pub port: u16,
    pub interface: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpsListener {
    pub enabled: bool,
    pub port: u16,
    pub interface: String,
    /// PEM certificate of the HTTPS API; empty: the work dir's generated `kuma-cp.crt`.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Refuse, at the handshake, a client that presents no certificate.
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DpServer {
    pub port: u16,
    /// PEM certificate of the DP server; empty: generated once into `<workDir>/kuma-cp.crt`.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// `dpToken` (default) or `none` (no authentication, for local experiments).
    pub authn: String,
    /// How long a Dataplane registered by a proxy outlives its stream, e.g. `10s`.
    pub deregistration_delay: String,
    /// How long a proxy whose streams all ended stays before it is deleted (the ones a control
    /// plane that died could not deregister); `0s`: kept for ever.
    pub dataplane_cleanup_age: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Diagnostics {
    pub server_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Multizone {
    pub global: GlobalMultizone,
    pub zone: ZoneMultizone,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalMultizone {
    pub kds: GlobalKds,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalKds {
    pub grpc_port: u16,
    /// PEM certificate of the KDS server; empty: the generated `<workDir>/kuma-cp.crt`.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// `none` (as Kuma) or `zoneToken`: zones present a zone token with the `cp` scope.
    pub auth_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneMultizone {
    pub name: String,
    pub global_address: String,
    pub kds: ZoneKds,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneKds {
    pub root_ca_file: String,
    pub tls_skip_verify: bool,
    /// Zone token presented to global when it requires one.
    pub auth_token_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsServer {
    pub port: u16,
    #[serde(rename = "CIDR")]
    pub cidr: String,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Defaults {
    /// Do not create the `default` Mesh on start.
    pub skip_mesh: bool,
}

/// Kuma's `interCp`: how the instances sharing a database reach each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InterCp {
    pub catalog: InterCpCatalog,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InterCpCatalog {
    /// The address other instances reach this one at; empty: its host name.
    pub instance_address: String,
}

/// The committed defaults file; a unit test keeps it equal to [`Config::default`].
pub const DEFAULTS_YAML: &str = include_str!("../kuma-cp.defaults.yaml");

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: "zone".into(),
            general: General {
                work_dir: "~/.kuma".into(),
                graceful_shutdown_timeout: "4s".into(),
            },
            store: StoreConfig {
                store_type: "sqlite".into(),
                sqlite: SqliteConfig {
                    path: String::new(),
                },
                postgres: PostgresConfig {
                    host: "127.0.0.1".into(),
                    port: 15432,
                    user: "kuma".into(),
                    password: "kuma".into(),
                    db_name: "kuma".into(),
                    driver_name: "pgx".into(),
                    connection_timeout: 5,
                    max_open_connections: 50,
                    max_idle_connections: 50,
                    min_open_connections: 0,
                    max_connection_idle_time: "30m".into(),
                    max_connection_lifetime: "1h".into(),
                    max_connection_lifetime_jitter: "1m".into(),
                    health_check_interval: "30s".into(),
                    max_list_query_elements: 0,
                    tls: PostgresTlsConfig {
                        mode: "disable".into(),
                        cert_path: String::new(),
                        key_path: String::new(),
                        ca_path: String::new(),
                        disable_sslsni: false,
                    },
                    read_replica: ReadReplicaConfig {
                        host: String::new(),
                        port: 5432,
                        ratio: 100,
                    },
                },
            },
            api_server: ApiServer {
                http: HttpListener {
                    port: 5681,
                    interface: "0.0.0.0".into(),
                },
                https: HttpsListener {
                    enabled: true,
                    port: 5682,
                    interface: "0.0.0.0".into(),
                    tls_cert_file: String::new(),
                    tls_key_file: String::new(),
                    require_client_cert: false,
                },
                auth: ApiAuth {
                    client_certs_dir: String::new(),
                },
                authn: ApiAuthn {
                    authn_type: "tokens".into(),
                    localhost_is_admin: true,
                    unauthenticated_read: true,
                },
            },
            dp_server: DpServer {
                port: 5678,
                tls_cert_file: String::new(),
                tls_key_file: String::new(),
                authn: "dpToken".into(),
                deregistration_delay: "10s".into(),
                dataplane_cleanup_age: "72h".into(),
            },
            diagnostics: Diagnostics { server_port: 5680 },
            multizone: Multizone {
                global: GlobalMultizone {
                    kds: GlobalKds {
                        grpc_port: 5685,
                        tls_cert_file: String::new(),
                        tls_key_file: String::new(),
                        auth_type: "none".into(),
                    },
                },
                zone: ZoneMultizone {
                    name: String::new(),
                    global_address: String::new(),
                    kds: ZoneKds {
                        root_ca_file: String::new(),
                        tls_skip_verify: false,
                        auth_token_file: String::new(),
                    },
                },
            },
            dns_server: DnsServer {
                port: 5653,
                cidr: "240.0.0.0/4".into(),
                domain: "mesh".into(),
            },
            defaults: Defaults { skip_mesh: false },
            inter_cp: InterCp {
                catalog: InterCpCatalog {
                    instance_address: String::new(),
                },
            },
        }
    }
}

/// How a value is written in the environment.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Port,
    Bool,
    /// A whole number ≥ 0.
    Count,
    /// A whole number that may be negative.
    Int,
}

/// Every environment variable, the config key it sets, and its kind.
const ENV: &[(&str, &str, Kind)] = &[
    ("KUMA_MODE", "mode", Kind::Text),
    ("KUMA_GENERAL_WORK_DIR", "general.workDir", Kind::Text),
    (
        "KUMA_GENERAL_GRACEFUL_SHUTDOWN_TIMEOUT",
        "general.gracefulShutdownTimeout",
        Kind::Text,
    ),
    ("KUMA_STORE_TYPE", "store.type", Kind::Text),
    ("KUMA_STORE_SQLITE_PATH", "store.sqlite.path", Kind::Text),
    (
        "KUMA_STORE_POSTGRES_HOST",
        "store.postgres.host",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_PORT",
        "store.postgres.port",
        Kind::Port,
    ),
    (
        "KUMA_STORE_POSTGRES_USER",
        "store.postgres.user",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_PASSWORD",
        "store.postgres.password",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_DB_NAME",
        "store.postgres.dbName",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_DRIVER_NAME",
        "store.postgres.driverName",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT",
        "store.postgres.connectionTimeout",
        Kind::Count,
    ),
    (
        "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS",
        "store.postgres.maxOpenConnections",
        Kind::Count,
    ),
    (
        "KUMA_STORE_POSTGRES_MAX_IDLE_CONNECTIONS",
        "store.postgres.maxIdleConnections",
        Kind::Int,
    ),
    (
        "KUMA_STORE_POSTGRES_MIN_OPEN_CONNECTIONS",
        "store.postgres.minOpenConnections",
        Kind::Count,
    ),
    (
        "KUMA_STORE_POSTGRES_MAX_CONNECTION_IDLE_TIME",
        "store.postgres.maxConnectionIdleTime",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_MAX_CONNECTION_LIFETIME",
        "store.postgres.maxConnectionLifetime",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_MAX_CONNECTION_LIFETIME_JITTER",
        "store.postgres.maxConnectionLifetimeJitter",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_HEALTH_CHECK_INTERVAL",
        "store.postgres.healthCheckInterval",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_MAX_LIST_QUERY_ELEMENTS",
        "store.postgres.maxListQueryElements",
        Kind::Count,
    ),
    (
        "KUMA_STORE_POSTGRES_TLS_MODE",
        "store.postgres.tls.mode",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_TLS_CERT_PATH",
        "store.postgres.tls.certPath",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_TLS_KEY_PATH",
        "store.postgres.tls.keyPath",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_TLS_CA_PATH",
        "store.postgres.tls.caPath",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_TLS_DISABLE_SSLSNI",
        "store.postgres.tls.disableSSLSNI",
        Kind::Bool,
    ),
    (
        "KUMA_STORE_POSTGRES_READ_REPLICA_HOST",
        "store.postgres.readReplica.host",
        Kind::Text,
    ),
    (
        "KUMA_STORE_POSTGRES_READ_REPLICA_PORT",
        "store.postgres.readReplica.port",
        Kind::Port,
    ),
    (
        "KUMA_STORE_POSTGRES_READ_REPLICA_RATIO",
        "store.postgres.readReplica.ratio",
        Kind::Count,
    ),
    (
        "KUMA_API_SERVER_HTTP_PORT",
        "apiServer.http.port",
        Kind::Port,
    ),
    (
        "KUMA_API_SERVER_HTTP_INTERFACE",
        "apiServer.http.interface",
        Kind::Text,
    ),
    (
        "KUMA_API_SERVER_HTTPS_ENABLED",
        "apiServer.https.enabled",
        Kind::Bool,
    ),
    (
        "KUMA_API_SERVER_HTTPS_PORT",
        "apiServer.https.port",
        Kind::Port,
    ),
    (
        "KUMA_API_SERVER_HTTPS_INTERFACE",
        "apiServer.https.interface",
        Kind::Text,
    ),
    (
        "KUMA_API_SERVER_HTTPS_TLS_CERT_FILE",
        "apiServer.https.tlsCertFile",
        Kind::Text,
    ),
    (
        "KUMA_API_SERVER_HTTPS_TLS_KEY_FILE",
        "apiServer.https.tlsKeyFile",
        Kind::Text,
    ),
    (
        "KUMA_API_SERVER_HTTPS_REQUIRE_CLIENT_CERT",
        "apiServer.https.requireClientCert",
        Kind::Bool,
    ),
    (
        "KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR",
        "apiServer.auth.clientCertsDir",
        Kind::Text,
    ),
    (
        "KUMA_API_SERVER_AUTHN_TYPE",
        "apiServer.authn.type",
        Kind::Text,
    ),
    (
        "KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN",
        "apiServer.authn.localhostIsAdmin",
        Kind::Bool,
    ),
    (
        "KUMA_API_SERVER_AUTHN_UNAUTHENTICATED_READ",
        "apiServer.authn.unauthenticatedRead",
        Kind::Bool,
    ),
    ("KUMA_DP_SERVER_PORT", "dpServer.port", Kind::Port),
    (
        "KUMA_DP_SERVER_TLS_CERT_FILE",
        "dpServer.tlsCertFile",
        Kind::Text,
    ),
    (
        "KUMA_DP_SERVER_TLS_KEY_FILE",
        "dpServer.tlsKeyFile",
        Kind::Text,
    ),
    (
        "KUMA_DP_SERVER_AUTHN_DP_PROXY_TYPE",
        "dpServer.authn",
        Kind::Text,
    ),
    (
        "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY",
        "dpServer.deregistrationDelay",
        Kind::Text,
    ),
    (
        "KUMA_RUNTIME_UNIVERSAL_DATAPLANE_CLEANUP_AGE",
        "dpServer.dataplaneCleanupAge",
        Kind::Text,
    ),
    (
        "KUMA_DIAGNOSTICS_SERVER_PORT",
        "diagnostics.serverPort",
        Kind::Port,
    ),
    (
        "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT",
        "multizone.global.kds.grpcPort",
        Kind::Port,
    ),
    (
        "KUMA_MULTIZONE_GLOBAL_KDS_TLS_CERT_FILE",
        "multizone.global.kds.tlsCertFile",
        Kind::Text,
    ),
    (
        "KUMA_MULTIZONE_GLOBAL_KDS_TLS_KEY_FILE",
        "multizone.global.kds.tlsKeyFile",
        Kind::Text,
    ),
    (
        "KUMA_MULTIZONE_GLOBAL_KDS_AUTH_TYPE",
        "multizone.global.kds.authType",
        Kind::Text,
    ),
    (
        "KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE",
        "multizone.zone.kds.authTokenFile",
        Kind::Text,
    ),
    (
        "KUMA_MULTIZONE_ZONE_NAME",
        "multizone.zone.name",
        Kind::Text,
    ),
    (
        "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
        "multizone.zone.globalAddress",
        Kind::Text,
    ),
    (
        "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE",
        "multizone.zone.kds.rootCaFile",
        Kind::Text,
    ),
    (
        "KUMA_MULTIZONE_ZONE_KDS_TLS_SKIP_VERIFY",
        "multizone.zone.kds.tlsSkipVerify",
        Kind::Bool,
    ),
    ("KUMA_DNS_SERVER_PORT", "dnsServer.port", Kind::Port),
    ("KUMA_DNS_SERVER_CIDR", "dnsServer.CIDR", Kind::Text),
    ("KUMA_DNS_SERVER_DOMAIN", "dnsServer.domain", Kind::Text),
    ("KUMA_DEFAULTS_SKIP_MESH", "defaults.skipMesh", Kind::Bool),
    (
        "KUMA_INTER_CP_CATALOG_INSTANCE_ADDRESS",
        "interCp.catalog.instanceAddress",
        Kind::Text,
    ),
];

/// The environment variable that sets a config key (for error messages).
pub fn env_name(key: &str) -> &'static str {
    ENV.iter()
        .find(|(_, k, _)| *k == key)
        .map(|(e, _, _)| *e)
        .unwrap_or("")
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config file {file}: {message}")]
    File { file: String, message: String },
    #[error("{var}={value:?}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("{key} ({env}): {message}")]
    Invalid {
        key: String,
        env: String,
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        env: env_name(key).to_string(),
        message: message.into(),
    }
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set_path(root: &mut Value, key: &str, value: Value) {
    let mut cur = root;
    for part in key.split('.') {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let Value::Object(map) = cur else { return };
        cur = map.entry(part.to_string()).or_insert(Value::Null);
    }
    *cur = value;
}

/// Builds the configuration from the config file (name and text) and the environment.
pub fn load(
    file: Option<(&str, &str)>,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let mut value = serde_json::to_value(Config::default()).unwrap_or_default();
    if let Some((name, text)) = file {
        let overlay: Value = serde_norway::from_str(text).map_err(|e| ConfigError::File {
            file: name.to_string(),
            message: e.to_string(),
        })?;
        if !overlay.is_null() {
            merge(&mut value, overlay);
        }
        serde_path_to_error::deserialize::<_, Config>(value.clone()).map_err(|e| {
            ConfigError::File {
                file: name.to_string(),
                message: format!("{}: {}", e.path(), e.inner()),
            }
        })?;
    }
    for (var, key, kind) in ENV {
        let Some(raw) = env.get(*var) else { continue };
        let env_err = |message: &str| ConfigError::Env {
            var: var.to_string(),
            value: raw.clone(),
            message: message.to_string(),
        };
        let v = match kind {
            Kind::Text => Value::from(raw.clone()),
            Kind::Port => Value::from(
                raw.trim()
                    .parse::<u16>()
                    .map_err(|_| env_err("not a port number (1-65535)"))?,
            ),
            Kind::Bool => Value::from(match raw.trim() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                _ => return Err(env_err("expected true or false")),
            }),
            Kind::Count => Value::from(
                raw.trim()
                    .parse::<u32>()
                    .map_err(|_| env_err("expected a whole number, 0 or more"))?,
            ),
            Kind::Int => Value::from(
                raw.trim()
                    .parse::<i64>()
                    .map_err(|_| env_err("expected a whole number"))?,
            ),
        };
        set_path(&mut value, key, v);
    }
    let config: Config =
        serde_path_to_error::deserialize(value).map_err(|e| ConfigError::File {
            file: "(merged)".into(),
            message: format!("{}: {}", e.path(), e.inner()),
        })?;
    config.check()?;
    Ok(config)
}

/// How the CP runs, derived from a checked config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Global,
    /// A zone without a global address: a single-zone mesh.
    StandaloneZone {
        name: String,
    },
    /// A zone that syncs with a global control plane.
    FederatedZone {
        name: String,
        global: GlobalAddress,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalAddress {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Parses `grpcs://host:port` or `grpc://host:port`.
pub fn parse_global_address(s: &str) -> Result<GlobalAddress, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("grpcs://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("grpc://") {
        (false, r)
    } else {
        return Err(format!(
            "{s:?} must start with grpcs:// (TLS) or grpc:// (plaintext), e.g. grpcs://global.example.com:5685"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} has no port, e.g. grpcs://{rest}:5685"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?} has an invalid port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    Ok(GlobalAddress {
        tls,
        host: host.to_string(),
        port,
    })
}

impl Config {
    /// How long an offline proxy is kept; `None`: for ever (`0s`).
    pub fn dataplane_cleanup_age(&self) -> Result<Option<std::time::Duration>, ConfigError> {
        meshzone_model::validate::parse_duration(&self.dp_server.dataplane_cleanup_age)
            .map(|age| (!age.is_zero()).then_some(age))
            .ok_or_else(|| {
                invalid(
                    "dpServer.dataplaneCleanupAge",
                    format!(
                        "{:?} is not a duration such as 72h (0s keeps offline proxies for ever)",
                        self.dp_server.dataplane_cleanup_age
                    ),
                )
            })
    }

    /// `general.gracefulShutdownTimeout` as a duration.
    pub fn shutdown_timeout(&self) -> Result<std::time::Duration, ConfigError> {
        meshzone_model::validate::parse_duration(&self.general.graceful_shutdown_timeout)
            .ok_or_else(|| {
                invalid(
                    "general.gracefulShutdownTimeout",
                    format!(
                        "{:?} is not a duration such as 4s",
                        self.general.graceful_shutdown_timeout
                    ),
                )
            })
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !matches!(self.mode.as_str(), "global" | "zone") {
            return Err(invalid(
                "mode",
                format!("unknown mode {:?}; expected global or zone", self.mode),
            ));
        }
        match self.store.store_type.as_str() {
            "memory" | "sqlite" => {}
            "postgres" => {
                self.postgres_settings()?;
            }
            other => {
                return Err(invalid(
                    "store.type",
                    format!(
                        "unknown store type {other:?}; expected sqlite (durable, default), postgres (several instances on one database) or memory"
                    ),
                ));
            }
        }
        for (key, port) in [
            ("apiServer.http.port", self.api_server.http.port),
            ("apiServer.https.port", self.api_server.https.port),
            ("dpServer.port", self.dp_server.port),
            ("diagnostics.serverPort", self.diagnostics.server_port),
            (
                "multizone.global.kds.grpcPort",
                self.multizone.global.kds.grpc_port,
            ),
            ("dnsServer.port", self.dns_server.port),
        ] {
            if port == 0 {
                return Err(invalid(key, "port must be in the range from 1 to 65535"));
            }
        }
        if !matches!(
            self.multizone.global.kds.auth_type.as_str(),
            "none" | "zoneToken"
        ) {
            return Err(invalid(
                "multizone.global.kds.authType",
                format!(
                    "{:?}: expected none or zoneToken",
                    self.multizone.global.kds.auth_type
                ),
            ));
        }
        match self.api_server.authn.authn_type.as_str() {
            "tokens" => {}
            "adminClientCerts" => {
                return Err(invalid(
                    "apiServer.authn.type",
                    "use tokens: admin client certificates are accepted beside user tokens on the HTTPS API (KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR)",
                ));
            }
            other => {
                return Err(invalid(
                    "apiServer.authn.type",
                    format!("{other:?}: expected tokens"),
                ));
            }
        }
        if !matches!(self.dp_server.authn.as_str(), "dpToken" | "none") {
            return Err(invalid(
                "dpServer.authn",
                format!("{:?}: expected dpToken or none", self.dp_server.authn),
            ));
        }
        if self.dp_server.tls_cert_file.is_empty() != self.dp_server.tls_key_file.is_empty() {
            return Err(invalid(
                "dpServer.tlsCertFile",
                "set both the certificate and the key file (KUMA_DP_SERVER_TLS_KEY_FILE), or neither",
            ));
        }
        if meshzone_model::validate::parse_duration(&self.dp_server.deregistration_delay).is_none()
        {
            return Err(invalid(
                "dpServer.deregistrationDelay",
                format!(
                    "{:?} is not a duration such as 10s",
                    self.dp_server.deregistration_delay
                ),
            ));
        }
        self.dataplane_cleanup_age()?;
        self.shutdown_timeout()?;
        for (key, interface) in [
            ("apiServer.http.interface", &self.api_server.http.interface),
            (
                "apiServer.https.interface",
                &self.api_server.https.interface,
            ),
        ] {
            if interface.parse::<IpAddr>().is_err() {
                return Err(invalid(key, format!("{interface:?} is not an IP address")));
            }
        }
        let https = &self.api_server.https;
        if https.tls_cert_file.is_empty() != https.tls_key_file.is_empty() {
            return Err(invalid(
                "apiServer.https.tlsCertFile",
                "set both the certificate and the key file (KUMA_API_SERVER_HTTPS_TLS_KEY_FILE), or neither",
            ));
        }
        if https.require_client_cert && !https.enabled {
            return Err(invalid(
                "apiServer.https.requireClientCert",
                "needs the HTTPS API (KUMA_API_SERVER_HTTPS_ENABLED=true)",
            ));
        }
        if self.general.work_dir.is_empty() {
            return Err(invalid("general.workDir", "cannot be empty"));
        }
        check_cidr(&self.dns_server.cidr).map_err(|m| invalid("dnsServer.CIDR", m))?;
        let zone = &self.multizone.zone;
        if !zone.name.is_empty() && !meshzone_model::validate::is_dns_label(&zone.name) {
            return Err(invalid(
                "multizone.zone.name",
                format!(
                    "{:?} must be a DNS label: at most 63 lowercase letters, digits and '-'",
                    zone.name
                ),
            ));
        }
        if self.mode == "zone" && !zone.global_address.is_empty() {
            parse_global_address(&zone.global_address)
                .map_err(|m| invalid("multizone.zone.globalAddress", m))?;
            if zone.name.is_empty() {
                return Err(invalid(
                    "multizone.zone.name",
                    "is required when a global address is set: name this zone",
                ));
            }
        }
        Ok(())
    }

    pub fn role(&self) -> Role {
        let zone = &self.multizone.zone;
        if self.mode == "global" {
            return Role::Global;
        }
        let name = if zone.name.is_empty() {
            "default".to_string()
        } else {
            zone.name.clone()
        };
        match parse_global_address(&zone.global_address) {
            Ok(global) if !zone.global_address.is_empty() => Role::FederatedZone { name, global },
            _ => Role::StandaloneZone { name },
        }
    }

    /// The work directory with `~` expanded.
    pub fn work_dir(&self, home: &str) -> PathBuf {
        match self.general.work_dir.strip_prefix("~/") {
            Some(rest) => PathBuf::from(home).join(rest),
            None if self.general.work_dir == "~" => PathBuf::from(home),
            None => PathBuf::from(&self.general.work_dir),
        }
    }

    /// The Postgres store's settings, checked; errors name the key and its variable.
    pub fn postgres_settings(&self) -> Result<PostgresSettings, ConfigError> {
        let pg = &self.store.postgres;
        let duration = |key: &str, text: &str| -> Result<Option<Duration>, ConfigError> {
            let d = meshzone_model::validate::parse_duration(text).ok_or_else(|| {
                invalid(key, format!("{text:?} is not a duration such as 30m or 1h"))
            })?;
            Ok(Some(d).filter(|d| !d.is_zero()))
        };
        if pg.driver_name != "pgx" {
            return Err(invalid(
                "store.postgres.driverName",
                format!("{:?}: only pgx is supported (as in Kuma)", pg.driver_name),
            ));
        }
        if !pg.read_replica.host.is_empty() {
            return Err(invalid(
                "store.postgres.readReplica.host",
                "read replicas are not supported yet; leave it empty",
            ));
        }
        if pg.tls.disable_sslsni {
            return Err(invalid(
                "store.postgres.tls.disableSSLSNI",
                "not supported: the TLS client sends SNI for host names (never for IP addresses); set KUMA_STORE_POSTGRES_HOST to an IP address to connect without SNI",
            ));
        }
        for key in [
            (
                "store.postgres.maxConnectionLifetimeJitter",
                &pg.max_connection_lifetime_jitter,
            ),
            (
                "store.postgres.healthCheckInterval",
                &pg.health_check_interval,
            ),
        ] {
            duration(key.0, key.1)?;
        }
        let mode = TlsMode::parse(&pg.tls.mode).ok_or_else(|| {
            invalid(
                "store.postgres.tls.mode",
                format!(
                    "{:?}: expected disable, verifyNone, verifyCa or verifyFull",
                    pg.tls.mode
                ),
            )
        })?;
        let settings = PostgresSettings {
            host: pg.host.clone(),
            port: pg.port,
            user: pg.user.clone(),
            password: pg.password.clone(),
            db_name: pg.db_name.clone(),
            connection_timeout: Duration::from_secs(pg.connection_timeout.into()),
            max_open_connections: pg.max_open_connections,
            min_open_connections: pg.min_open_connections,
            max_connection_idle_time: duration(
                "store.postgres.maxConnectionIdleTime",
                &pg.max_connection_idle_time,
            )?,
            max_connection_lifetime: duration(
                "store.postgres.maxConnectionLifetime",
                &pg.max_connection_lifetime,
            )?,
            tls: PostgresTls {
                mode,
                cert_path: pg.tls.cert_path.clone(),
                key_path: pg.tls.key_path.clone(),
                ca_path: pg.tls.ca_path.clone(),
            },
            application_name: "kuma-cp".into(),
        };
        settings
            .check()
            .map_err(|e| invalid(&format!("store.postgres.{}", e.key), e.message.clone()))?;
        Ok(settings)
    }

    pub fn sqlite_path(&self, home: &str) -> PathBuf {
        if self.store.sqlite.path.is_empty() {
            self.work_dir(home).join("kuma-cp.db")
        } else {
            PathBuf::from(&self.store.sqlite.path)
        }
    }
}

fn check_cidr(s: &str) -> Result<(), String> {
    let (ip, bits) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR such as 240.0.0.0/4"))?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("{s:?}: bad address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits.parse::<u8>() {
        Ok(b) if b <= max => Ok(()),
        _ => Err(format!("{s:?}: prefix length must be 0 to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn committed_defaults_file_matches_the_code() {
        let from_file: Config = serde_norway::from_str(DEFAULTS_YAML).expect("defaults parse");
        assert_eq!(from_file, Config::default());
        assert_eq!(load(None, &env(&[])).expect("defaults"), Config::default());
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let file = "apiServer:\n  http:\n    port: 6000\nmode: global\n";
        let c = load(
            Some(("cp.yaml", file)),
            &env(&[
                ("KUMA_API_SERVER_HTTP_PORT", "7000"),
                ("KUMA_STORE_TYPE", "memory"),
            ]),
        )
        .expect("load");
        assert_eq!(c.api_server.http.port, 7000);
        assert_eq!(c.mode, "global");
        assert_eq!(c.store.store_type, "memory");
        assert_eq!(c.role(), Role::Global);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = load(None, &env(&[("KUMA_MODE", "remote")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mode (KUMA_MODE): unknown mode \"remote\"; expected global or zone"
        );
        let e = load(None, &env(&[("KUMA_API_SERVER_HTTP_PORT", "99999")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("KUMA_API_SERVER_HTTP_PORT=\"99999\""),
            "{e}"
        );
        let e = load(
            None,
            &env(&[
                ("KUMA_MULTIZONE_ZONE_NAME", "z1"),
                ("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", "https://g:5685"),
            ]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS"),
            "{e}"
        );
        assert!(e.to_string().contains("grpcs://"), "{e}");
        let e = load(Some(("cp.yaml", "apiServer:\n  htp: {}\n")), &env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("apiServer.htp")
                || e.to_string().contains("unknown field `htp`"),
            "{e}"
        );
        let e = load(None, &env(&[("KUMA_DIAGNOSTICS_SERVER_PORT", "0")])).unwrap_err();
        assert!(
            e.to_string()
                .contains("diagnostics.serverPort (KUMA_DIAGNOSTICS_SERVER_PORT)"),
            "{e}"
        );
        let e = load(
            None,
            &env(&[("KUMA_RUNTIME_UNIVERSAL_DATAPLANE_CLEANUP_AGE", "3 days")]),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "dpServer.dataplaneCleanupAge (KUMA_RUNTIME_UNIVERSAL_DATAPLANE_CLEANUP_AGE): \"3 days\" is not a duration"
            ),
            "{e}"
        );
    }

    #[test]
    fn offline_proxies_are_cleaned_up_after_72h_unless_turned_off() {
        let age = |vars: &[(&str, &str)]| {
            load(None, &env(vars))
                .expect("valid")
                .dataplane_cleanup_age()
                .expect("a duration")
        };
        assert_eq!(age(&[]), Some(std::time::Duration::from_secs(72 * 3600)));
        let var = "KUMA_RUNTIME_UNIVERSAL_DATAPLANE_CLEANUP_AGE";
        assert_eq!(
            age(&[(var, "90s")]),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(age(&[(var, "0s")]), None);
    }

    #[test]
    fn roles() {
        let c = load(
            None,
            &env(&[
                ("KUMA_MULTIZONE_ZONE_NAME", "zone-1"),
                (
                    "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS",
                    "grpcs://10.0.0.1:5685",
                ),
            ]),
        )
        .expect("zone");
        assert_eq!(
            c.role(),
            Role::FederatedZone {
                name: "zone-1".into(),
                global: GlobalAddress {
                    tls: true,
                    host: "10.0.0.1".into(),
                    port: 5685
                }
            }
        );
        assert!(matches!(
            load(None, &env(&[])).expect("d").role(),
            Role::StandaloneZone { .. }
        ));
        let e = load(
            None,
            &env(&[("KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS", "grpc://g:5685")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("KUMA_MULTIZONE_ZONE_NAME"), "{e}");
    }

    #[test]
    fn https_api_settings_follow_kuma_keys_and_name_them_when_bad() {
        let d = load(None, &env(&[])).expect("defaults");
        let https = &d.api_server.https;
        assert!(https.enabled && !https.require_client_cert);
        assert_eq!((https.port, https.interface.as_str()), (5682, "0.0.0.0"));
        assert!(https.tls_cert_file.is_empty() && d.api_server.auth.client_certs_dir.is_empty());
        let c = load(
            None,
            &env(&[
                ("KUMA_API_SERVER_HTTPS_ENABLED", "false"),
                ("KUMA_API_SERVER_HTTPS_PORT", "6682"),
                ("KUMA_API_SERVER_HTTPS_INTERFACE", "127.0.0.1"),
                ("KUMA_API_SERVER_HTTPS_TLS_CERT_FILE", "/c.pem"),
                ("KUMA_API_SERVER_HTTPS_TLS_KEY_FILE", "/k.pem"),
                ("KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR", "/admins"),
            ]),
        )
        .expect("load");
        let https = &c.api_server.https;
        assert!(!https.enabled);
        assert_eq!((https.port, https.interface.as_str()), (6682, "127.0.0.1"));
        assert_eq!(
            (https.tls_cert_file.as_str(), https.tls_key_file.as_str()),
            ("/c.pem", "/k.pem")
        );
        assert_eq!(c.api_server.auth.client_certs_dir, "/admins");
        let file =
            "apiServer:\n  https:\n    requireClientCert: true\n  auth:\n    clientCertsDir: /a\n";
        let c = load(Some(("cp.yaml", file)), &env(&[])).expect("file");
        assert!(c.api_server.https.require_client_cert);
        assert_eq!(c.api_server.auth.client_certs_dir, "/a");
        for (pairs, want) in [
            (
                vec![("KUMA_API_SERVER_HTTPS_TLS_CERT_FILE", "/c.pem")],
                "apiServer.https.tlsCertFile (KUMA_API_SERVER_HTTPS_TLS_CERT_FILE): set both",
            ),
            (
                vec![("KUMA_API_SERVER_HTTPS_INTERFACE", "localhost")],
                "apiServer.https.interface (KUMA_API_SERVER_HTTPS_INTERFACE): \"localhost\" is not an IP address",
            ),
            (
                vec![("KUMA_API_SERVER_HTTPS_PORT", "0")],
                "apiServer.https.port (KUMA_API_SERVER_HTTPS_PORT): port must be",
            ),
            (
                vec![("KUMA_API_SERVER_HTTPS_REQUIRE_CLIENT_CERT", "yes")],
                "KUMA_API_SERVER_HTTPS_REQUIRE_CLIENT_CERT=\"yes\": expected true or false",
            ),
            (
                vec![
                    ("KUMA_API_SERVER_HTTPS_ENABLED", "false"),
                    ("KUMA_API_SERVER_HTTPS_REQUIRE_CLIENT_CERT", "true"),
                ],
                "apiServer.https.requireClientCert (KUMA_API_SERVER_HTTPS_REQUIRE_CLIENT_CERT): needs the HTTPS API",
            ),
        ] {
            let e = load(None, &env(&pairs)).expect_err(want).to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    /// Settings that are read but whose feature does not exist yet.
    const NOT_SERVED: &[&str] = &[
        "KUMA_STORE_POSTGRES_TLS_DISABLE_SSLSNI",
        "KUMA_STORE_POSTGRES_READ_REPLICA_HOST",
    ];

    #[test]
    fn the_defaults_file_never_calls_an_implemented_setting_unsupported() {
        for line in DEFAULTS_YAML.lines() {
            let Some((_, comment)) = line.split_once('#') else {
                continue;
            };
            let Some(var) = comment
                .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .find(|w| w.starts_with("KUMA_"))
            else {
                continue;
            };
            let lower = comment.to_ascii_lowercase();
            let says_missing = [
                "not supported",
                "unsupported",
                "not implemented",
                "not served",
            ]
            .iter()
            .any(|w| lower.contains(w));
            assert_eq!(
                says_missing,
                NOT_SERVED.contains(&var),
                "{var}: the defaults file says {comment:?}"
            );
        }
    }

    #[test]
    fn every_variable_named_in_the_defaults_file_is_read() {
        for word in DEFAULTS_YAML.split(|c: char| !(c.is_ascii_uppercase() || c == '_')) {
            if word.starts_with("KUMA_") {
                assert!(
                    !env_name_key(word).is_empty(),
                    "{word} is documented but not read"
                );
            }
        }
        let c = load(
            None,
            &env(&[
                ("KUMA_MULTIZONE_GLOBAL_KDS_AUTH_TYPE", "zoneToken"),
                ("KUMA_MULTIZONE_GLOBAL_KDS_TLS_CERT_FILE", "/c"),
                ("KUMA_MULTIZONE_ZONE_KDS_AUTH_TOKEN_FILE", "/t"),
            ]),
        )
        .expect("load");
        assert_eq!(c.multizone.global.kds.auth_type, "zoneToken");
        assert_eq!(c.multizone.global.kds.tls_cert_file, "/c");
        assert_eq!(c.multizone.zone.kds.auth_token_file, "/t");
    }

    fn env_name_key(var: &str) -> &'static str {
        ENV.iter()
            .find(|(e, _, _)| *e == var)
            .map(|(_, k, _)| *k)
            .unwrap_or("")
    }

    #[test]
    fn postgres_settings_follow_kuma_keys_and_name_them_when_bad() {
        let c = load(
            None,
            &env(&[
                ("KUMA_STORE_TYPE", "postgres"),
                ("KUMA_STORE_POSTGRES_HOST", "db.example"),
                ("KUMA_STORE_POSTGRES_PORT", "5432"),
                ("KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS", "0"),
                ("KUMA_STORE_POSTGRES_TLS_MODE", "verifyNone"),
            ]),
        )
        .expect("postgres");
        let s = c.postgres_settings().expect("settings");
        assert_eq!((s.host.as_str(), s.port), ("db.example", 5432));
        assert_eq!(s.max_open_connections, 0);
        assert_eq!(s.tls.mode, TlsMode::VerifyNone);
        assert_eq!(s.connection_timeout, Duration::from_secs(5));
        assert_eq!(Config::default().store.postgres.port, 15432);

        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("KUMA_STORE_POSTGRES_TLS_MODE", "verifyCa")],
                "store.postgres.tls.caPath (KUMA_STORE_POSTGRES_TLS_CA_PATH)",
            ),
            (
                &[("KUMA_STORE_POSTGRES_TLS_MODE", "require")],
                "store.postgres.tls.mode (KUMA_STORE_POSTGRES_TLS_MODE)",
            ),
            (
                &[
                    ("KUMA_STORE_POSTGRES_TLS_CERT_PATH", "/c.pem"),
                    ("KUMA_STORE_POSTGRES_TLS_MODE", "verifyNone"),
                ],
                "store.postgres.tls.keyPath (KUMA_STORE_POSTGRES_TLS_KEY_PATH)",
            ),
            (
                &[("KUMA_STORE_POSTGRES_USER", "")],
                "store.postgres.user (KUMA_STORE_POSTGRES_USER)",
            ),
            (
                &[("KUMA_STORE_POSTGRES_MAX_CONNECTION_LIFETIME", "soon")],
                "store.postgres.maxConnectionLifetime (KUMA_STORE_POSTGRES_MAX_CONNECTION_LIFETIME)",
            ),
            (
                &[("KUMA_STORE_POSTGRES_READ_REPLICA_HOST", "replica")],
                "KUMA_STORE_POSTGRES_READ_REPLICA_HOST",
            ),
            (
                &[("KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT", "-1")],
                "KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT=\"-1\"",
            ),
            (
                &[("KUMA_STORE_POSTGRES_DRIVER_NAME", "postgres")],
                "store.postgres.driverName (KUMA_STORE_POSTGRES_DRIVER_NAME)",
            ),
        ];
        for (vars, named) in cases {
            let mut all = vec![("KUMA_STORE_TYPE", "postgres")];
            all.extend_from_slice(vars);
            let e = load(None, &env(&all)).expect_err(named).to_string();
            assert!(e.contains(named), "{vars:?}: {e}");
        }
        // Postgres keys are only checked when the store is postgres.
        load(None, &env(&[("KUMA_STORE_POSTGRES_TLS_MODE", "verifyCa")])).expect("sqlite");
    }

    #[test]
    fn work_dir_expands_home() {
        let c = Config::default();
        assert_eq!(
            c.sqlite_path("/home/u"),
            PathBuf::from("/home/u/.kuma/kuma-cp.db")
        );
    }
}
