//! How to reach the database: Kuma's `store.postgres` settings, checked, and turned into sqlx
//! connection options. Pure apart from reading the certificate files the settings name.

use std::path::Path;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// Kuma's `store.postgres.tls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS (`sslmode=disable`).
    Disable,
    /// TLS without checking the server's certificate (`require`).
    VerifyNone,
    /// TLS, the certificate signed by `caPath` (`verify-ca`).
    VerifyCa,
    /// TLS, the certificate signed by `caPath` and naming the host (`verify-full`).
    VerifyFull,
}

impl TlsMode {
    /// Kuma's spelling: `disable`, `verifyNone`, `verifyCa`, `verifyFull`.
    pub fn parse(s: &str) -> Option<TlsMode> {
        Some(match s {
            "disable" => TlsMode::Disable,
            "verifyNone" => TlsMode::VerifyNone,
            "verifyCa" => TlsMode::VerifyCa,
            "verifyFull" => TlsMode::VerifyFull,
            _ => return None,
        })
    }

    fn ssl_mode(self) -> PgSslMode {
        match self {
            TlsMode::Disable => PgSslMode::Disable,
            TlsMode::VerifyNone => PgSslMode::Require,
            TlsMode::VerifyCa => PgSslMode::VerifyCa,
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// TLS to the database. Paths are empty when unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTls {
    pub mode: TlsMode,
    pub cert_path: String,
    pub key_path: String,
    pub ca_path: String,
}

/// Everything needed to open the Postgres store.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub db_name: String,
    /// Limit on establishing one connection (Kuma's `connectionTimeout`).
    pub connection_timeout: Duration,
    /// Pool size; 0 means no limit (as in Kuma).
    pub max_open_connections: u32,
    pub min_open_connections: u32,
    pub max_connection_idle_time: Option<Duration>,
    pub max_connection_lifetime: Option<Duration>,
    pub tls: PostgresTls,
    /// Shown in `pg_stat_activity`; the change listener's connection adds ` listener`.
    pub application_name: String,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"***")
            .field("db_name", &self.db_name)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A setting that cannot work. `key` is the `store.postgres.*` key (the binary adds the env name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store.postgres.{key}: {message}")]
pub struct SettingsError {
    pub key: &'static str,
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError {
        key,
        message: message.into(),
    }
}

/// Pool size sqlx uses for "no limit" (Kuma gives pgx MaxInt32; a pool that size is the same).
const UNLIMITED_CONNECTIONS: u32 = 10_000;

impl PostgresSettings {
    /// Kuma's defaults: 127.0.0.1:15432, user, password and database `kuma`, no TLS.
    pub fn kuma_defaults() -> Self {
        PostgresSettings {
            host: "127.0.0.1".into(),
            port: 15432,
            user: "kuma".into(),
            password: "kuma".into(),
            db_name: "kuma".into(),
            connection_timeout: Duration::from_secs(5),
            max_open_connections: 50,
            min_open_connections: 0,
            max_connection_idle_time: Some(Duration::from_secs(30 * 60)),
            max_connection_lifetime: Some(Duration::from_secs(60 * 60)),
            tls: PostgresTls {
                mode: TlsMode::Disable,
                cert_path: String::new(),
                key_path: String::new(),
                ca_path: String::new(),
            },
            application_name: "kuma-cp".into(),
        }
    }

    /// Checks what can be checked without the network: required values, bounds, and that the
    /// TLS mode has the files it needs.
    pub fn check(&self) -> Result<(), SettingsError> {
        for (key, value) in [
            ("host", &self.host),
            ("user", &self.user),
            ("password", &self.password),
            ("dbName", &self.db_name),
        ] {
            if value.is_empty() {
                return Err(bad(key, "must not be empty"));
            }
        }
        if self.port == 0 {
            return Err(bad("port", "must be in the range from 1 to 65535"));
        }
        if self.connection_timeout.is_zero() {
            return Err(bad("connectionTimeout", "must be at least 1 second"));
        }
        if self.max_open_connections != 0 && self.min_open_connections > self.max_open_connections {
            return Err(bad(
                "minOpenConnections",
                format!(
                    "{} is more than maxOpenConnections ({})",
                    self.min_open_connections, self.max_open_connections
                ),
            ));
        }
        let tls = &self.tls;
        if tls.cert_path.is_empty() != tls.key_path.is_empty() {
            return Err(bad(
                if tls.cert_path.is_empty() {
                    "tls.certPath"
                } else {
                    "tls.keyPath"
                },
                "set both the client certificate (tls.certPath) and its key (tls.keyPath), or neither",
            ));
        }
        match tls.mode {
            TlsMode::VerifyCa | TlsMode::VerifyFull if tls.ca_path.is_empty() => {
                return Err(bad(
                    "tls.caPath",
                    format!(
                        "tls.mode {} verifies the server's certificate, so it needs the CA certificate that signed it",
                        if tls.mode == TlsMode::VerifyCa {
                            "verifyCa"
                        } else {
                            "verifyFull"
                        }
                    ),
                ));
            }
            TlsMode::Disable if !tls.cert_path.is_empty() || !tls.ca_path.is_empty() => {
                return Err(bad(
                    "tls.mode",
                    "is disable, but TLS certificates are set; choose verifyNone, verifyCa or verifyFull",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The pool's size limit.
    pub fn pool_size(&self) -> u32 {
        match self.max_open_connections {
            0 => UNLIMITED_CONNECTIONS,
            n => n,
        }
    }

    /// sqlx options, with the TLS files read now so a missing file is named before connecting.
    pub fn connect_options(&self) -> Result<PgConnectOptions, SettingsError> {
        self.check()?;
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&self.host)
            .port(self.port)
            .username(&self.user)
            .password(&self.password)
            .database(&self.db_name)
            .application_name(&self.application_name)
            .ssl_mode(self.tls.mode.ssl_mode());
        let tls = &self.tls;
        if !tls.ca_path.is_empty() {
            options = options.ssl_root_cert_from_pem(read_pem("tls.caPath", &tls.ca_path)?);
        }
        if !tls.cert_path.is_empty() {
            options = options
                .ssl_client_cert_from_pem(read_pem("tls.certPath", &tls.cert_path)?)
                .ssl_client_key_from_pem(read_pem("tls.keyPath", &tls.key_path)?);
        }
        Ok(options)
    }

    /// `host:port/db` for messages (no password).
    pub fn describe(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.db_name
        )
    }
}

fn read_pem(key: &'static str, path: &str) -> Result<Vec<u8>, SettingsError> {
    let bytes =
        std::fs::read(Path::new(path)).map_err(|e| bad(key, format!("cannot read {path}: {e}")))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(bad(key, format!("{path} is not a PEM file")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_tls(mode: TlsMode, cert: &str, key: &str, ca: &str) -> PostgresSettings {
        let mut s = PostgresSettings::kuma_defaults();
        s.tls = PostgresTls {
            mode,
            cert_path: cert.into(),
            key_path: key.into(),
            ca_path: ca.into(),
        };
        s
    }

    #[test]
    fn kuma_defaults_are_valid() {
        let s = PostgresSettings::kuma_defaults();
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.port, 15432);
        assert_eq!(s.pool_size(), 50);
        assert_eq!(s.describe(), "postgres://kuma@127.0.0.1:15432/kuma");
        assert!(!format!("{s:?}").contains("\"kuma\", db_name"));
        assert!(format!("{s:?}").contains("***"));
    }

    #[test]
    fn tls_modes_parse_as_kuma_spells_them() {
        assert_eq!(TlsMode::parse("verifyFull"), Some(TlsMode::VerifyFull));
        assert_eq!(TlsMode::parse("verifyNone"), Some(TlsMode::VerifyNone));
        assert_eq!(TlsMode::parse("require"), None);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let cases: &[(PostgresSettings, &str)] = &[
            (with_tls(TlsMode::VerifyCa, "", "", ""), "tls.caPath"),
            (with_tls(TlsMode::VerifyFull, "", "", ""), "tls.caPath"),
            (
                with_tls(TlsMode::VerifyNone, "/c.pem", "", ""),
                "tls.keyPath",
            ),
            (
                with_tls(TlsMode::VerifyNone, "", "/k.pem", ""),
                "tls.certPath",
            ),
            (with_tls(TlsMode::Disable, "", "", "/ca.pem"), "tls.mode"),
            (
                PostgresSettings {
                    host: String::new(),
                    ..PostgresSettings::kuma_defaults()
                },
                "host",
            ),
            (
                PostgresSettings {
                    min_open_connections: 60,
                    ..PostgresSettings::kuma_defaults()
                },
                "minOpenConnections",
            ),
            (
                PostgresSettings {
                    connection_timeout: Duration::ZERO,
                    ..PostgresSettings::kuma_defaults()
                },
                "connectionTimeout",
            ),
        ];
        for (settings, key) in cases {
            let e = settings.check().expect_err(key);
            assert_eq!(e.key, *key, "{e}");
        }
        assert_eq!(with_tls(TlsMode::VerifyNone, "", "", "").check(), Ok(()));
    }

    #[test]
    fn missing_certificate_files_are_named() {
        let e = with_tls(TlsMode::VerifyCa, "", "", "/nonexistent/ca.pem")
            .connect_options()
            .expect_err("missing file");
        assert_eq!(e.key, "tls.caPath");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let e = with_tls(TlsMode::VerifyCa, "", "", &not_pem.display().to_string())
            .connect_options()
            .expect_err("not pem");
        assert!(e.message.contains("not a PEM file"), "{e}");
    }

    #[test]
    fn zero_max_connections_means_no_limit() {
        let s = PostgresSettings {
            max_open_connections: 0,
            min_open_connections: 5,
            ..PostgresSettings::kuma_defaults()
        };
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.pool_size(), UNLIMITED_CONNECTIONS);
    }
}
