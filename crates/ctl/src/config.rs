//! The kumactl configuration file (`~/.kumactl/config`): control planes and the current context,
//! in the same shape Kuma's kumactl writes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CtlConfig {
    #[serde(default)]
    pub control_planes: Vec<ControlPlane>,
    #[serde(default)]
    pub contexts: Vec<Context_>,
    #[serde(default)]
    pub current_context: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    pub name: String,
    pub coordinates: Coordinates,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coordinates {
    pub api_server: ApiServer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServer {
    pub url: String,
    /// `tokens`: requests carry `authConf.token` as a bearer token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_type: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub auth_conf: std::collections::BTreeMap<String, String>,
    #[serde(flatten)]
    pub tls: Tls,
}

/// TLS to an `https://` control plane (Kuma's `--ca-cert-file`, `--client-cert-file`,
/// `--client-key-file`, `--skip-verify`); paths are stored absolute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    /// PEM roots that verify the server; empty: the system's roots.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_cert_file: String,
    /// PEM certificate presented to the server (an admin client certificate), with its key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_cert_file: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_key_file: String,
    /// Do not verify the server's certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_verify: bool,
}

impl Tls {
    /// From the flags of `config control-planes add` for `address`, checked.
    pub fn from_flags(
        address: &str,
        ca_cert_file: Option<&Path>,
        client_cert_file: Option<&Path>,
        client_key_file: Option<&Path>,
        skip_verify: bool,
    ) -> anyhow::Result<Self> {
        let absolute = |flag: &str, p: Option<&Path>| -> anyhow::Result<String> {
            match p {
                None => Ok(String::new()),
                Some(p) => Ok(std::path::absolute(p)
                    .with_context(|| format!("{flag} {}: not a usable path", p.display()))?
                    .display()
                    .to_string()),
            }
        };
        let tls = Tls {
            ca_cert_file: absolute("--ca-cert-file", ca_cert_file)?,
            client_cert_file: absolute("--client-cert-file", client_cert_file)?,
            client_key_file: absolute("--client-key-file", client_key_file)?,
            skip_verify,
        };
        if tls.client_cert_file.is_empty() != tls.client_key_file.is_empty() {
            bail!("--client-cert-file and --client-key-file go together: give both or neither");
        }
        if tls.skip_verify && !tls.ca_cert_file.is_empty() {
            bail!(
                "--skip-verify and --ca-cert-file exclude each other: the CA verifies the server, --skip-verify does not"
            );
        }
        if tls != Tls::default() && !address.starts_with("https://") {
            bail!(
                "--ca-cert-file, --client-cert-file, --client-key-file and --skip-verify need an https:// --address (the HTTPS API is on port 5682), not {address:?}"
            );
        }
        Ok(tls)
    }
}

/// How kumactl authenticates to a control plane (`--auth-type`, `--auth-conf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Auth {
    pub auth_type: String,
    pub conf: std::collections::BTreeMap<String, String>,
}

impl Auth {
    /// From the flags: `--auth-type=tokens --auth-conf token=<token>` (Kuma's kumactl).
    pub fn from_flags(auth_type: Option<&str>, conf: &[String]) -> anyhow::Result<Self> {
        let mut map = std::collections::BTreeMap::new();
        for item in conf {
            let Some((k, v)) = item.split_once('=') else {
                bail!("--auth-conf {item:?}: expected key=value, e.g. token=<token>");
            };
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        let auth_type = auth_type.unwrap_or_default().to_string();
        match auth_type.as_str() {
            "" if map.is_empty() => {}
            "" => bail!("--auth-conf needs --auth-type (tokens)"),
            "tokens" => {
                if map.get("token").is_none_or(|t| t.is_empty()) || map.len() != 1 {
                    bail!(
                        "--auth-type=tokens takes exactly --auth-conf token=<token> (kumactl generate user-token)"
                    );
                }
            }
            other => bail!("--auth-type {other:?}: expected tokens"),
        }
        Ok(Auth {
            auth_type,
            conf: map,
        })
    }

    /// The bearer token to send, if any.
    pub fn token(&self) -> Option<&str> {
        (self.auth_type == "tokens")
            .then(|| self.conf.get("token").map(String::as_str))
            .flatten()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context_ {
    pub name: String,
    pub control_plane: String,
}

pub const DEFAULT_URL: &str = "http://localhost:5681";

pub fn default_path() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".kumactl").join("config")
}

impl CtlConfig {
    /// Reads the file; a missing file is the built-in `local` context on localhost.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_norway::from_str(&text)
                .with_context(|| format!("kumactl config {} is not valid", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::local()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn local() -> Self {
        let mut c = CtlConfig::default();
        c.put("local", DEFAULT_URL, &Auth::default(), &Tls::default());
        c
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_norway::to_string(self).context("cannot render config")?;
        // Write then rename, so a crash never leaves a truncated config.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }

    fn put(&mut self, name: &str, url: &str, auth: &Auth, tls: &Tls) {
        self.control_planes.retain(|cp| cp.name != name);
        self.contexts.retain(|c| c.name != name);
        self.control_planes.push(ControlPlane {
            name: name.into(),
            coordinates: Coordinates {
                api_server: ApiServer {
                    url: url.into(),
                    auth_type: auth.auth_type.clone(),
                    auth_conf: auth.conf.clone(),
                    tls: tls.clone(),
                },
            },
        });
        self.contexts.push(Context_ {
            name: name.into(),
            control_plane: name.into(),
        });
        self.current_context = name.into();
    }

    /// Adds a control plane and makes it current.
    pub fn add(
        &mut self,
        name: &str,
        url: &str,
        auth: &Auth,
        tls: &Tls,
        overwrite: bool,
    ) -> anyhow::Result<()> {
        if !overwrite && self.control_planes.iter().any(|cp| cp.name == name) {
            bail!(
                "Control Plane with name {name:?} already exists. Use --overwrite to replace an existing one."
            );
        }
        self.put(name, url, auth, tls);
        Ok(())
    }

    /// The API URL of the current context.
    pub fn current_url(&self) -> anyhow::Result<String> {
        Ok(self.current()?.url.trim_end_matches('/').to_string())
    }

    /// How to reach the current context's control plane: its URL and authentication.
    pub fn current_auth(&self) -> anyhow::Result<Auth> {
        let api = self.current()?;
        Ok(Auth {
            auth_type: api.auth_type.clone(),
            conf: api.auth_conf.clone(),
        })
    }

    /// The TLS settings of the current context.
    pub fn current_tls(&self) -> anyhow::Result<Tls> {
        Ok(self.current()?.tls.clone())
    }

    fn current(&self) -> anyhow::Result<&ApiServer> {
        let ctx = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .with_context(|| {
                format!(
                    "current context {:?} is not defined; run kumactl config control-planes add",
                    self.current_context
                )
            })?;
        self.control_planes
            .iter()
            .find(|cp| cp.name == ctx.control_plane)
            .map(|cp| &cp.coordinates.api_server)
            .with_context(|| format!("control plane {:?} is not defined", ctx.control_plane))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_switches_and_refuses_duplicates() {
        let mut c = CtlConfig::local();
        assert_eq!(c.current_url().expect("url"), DEFAULT_URL);
        let none = Tls::default();
        c.add(
            "zone-1",
            "http://10.0.0.1:5681/",
            &Auth::default(),
            &none,
            false,
        )
        .expect("add");
        assert_eq!(c.current_url().expect("url"), "http://10.0.0.1:5681");
        assert!(
            c.add("zone-1", "http://x:1", &Auth::default(), &none, false)
                .is_err()
        );
        c.add("zone-1", "http://x:1", &Auth::default(), &none, true)
            .expect("overwrite");
        assert_eq!(c.control_planes.len(), 2);
        let tls = Tls::from_flags(
            "https://cp:5682",
            Some(Path::new("ca.pem")),
            Some(Path::new("/certs/admin.crt")),
            Some(Path::new("/certs/admin.key")),
            false,
        )
        .expect("tls");
        assert!(Path::new(&tls.ca_cert_file).is_absolute(), "{tls:?}");
        c.add("secure", "https://cp:5682", &Auth::default(), &tls, false)
            .expect("add");
        assert_eq!(c.current_tls().expect("tls"), tls);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/config");
        c.save(&path).expect("save");
        assert_eq!(CtlConfig::load(&path).expect("load"), c);
        // Kuma's key names in the file.
        let text = std::fs::read_to_string(&path).expect("read");
        for key in [
            "caCertFile: ",
            "clientCertFile: /certs/admin.crt",
            "clientKeyFile: ",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
        assert!(!text.contains("skipVerify"), "{text}");
    }

    /// (address, CA, client cert, client key, skip-verify, expected error).
    type Case<'a> = (
        &'a str,
        Option<&'a Path>,
        Option<&'a Path>,
        Option<&'a Path>,
        bool,
        &'a str,
    );

    #[test]
    fn tls_flags_are_checked() {
        let p = |s: &'static str| Some(Path::new(s));
        let cases: Vec<Case> = vec![
            (
                "https://cp:5682",
                None,
                p("c.pem"),
                None,
                false,
                "go together",
            ),
            (
                "https://cp:5682",
                None,
                None,
                p("k.pem"),
                false,
                "go together",
            ),
            (
                "https://cp:5682",
                p("ca.pem"),
                None,
                None,
                true,
                "exclude each other",
            ),
            (
                "http://cp:5681",
                p("ca.pem"),
                None,
                None,
                false,
                "need an https://",
            ),
            ("http://cp:5681", None, None, None, true, "need an https://"),
        ];
        for (address, ca, cert, key, skip, want) in cases {
            let e = Tls::from_flags(address, ca, cert, key, skip).expect_err(want);
            assert!(e.to_string().contains(want), "{e}");
        }
        let skip = Tls::from_flags("https://cp:5682", None, None, None, true).expect("skip");
        assert!(skip.skip_verify);
        assert_eq!(
            Tls::from_flags("http://cp:5681", None, None, None, false).expect("plain"),
            Tls::default()
        );
    }
}
