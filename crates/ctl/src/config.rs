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
        c.put("local", DEFAULT_URL, &Auth::default());
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

    fn put(&mut self, name: &str, url: &str, auth: &Auth) {
        self.control_planes.retain(|cp| cp.name != name);
        self.contexts.retain(|c| c.name != name);
        self.control_planes.push(ControlPlane {
            name: name.into(),
            coordinates: Coordinates {
                api_server: ApiServer {
                    url: url.into(),
                    auth_type: auth.auth_type.clone(),
                    auth_conf: auth.conf.clone(),
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
        overwrite: bool,
    ) -> anyhow::Result<()> {
        if !overwrite && self.control_planes.iter().any(|cp| cp.name == name) {
            bail!(
                "Control Plane with name {name:?} already exists. Use --overwrite to replace an existing one."
            );
        }
        self.put(name, url, auth);
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
        c.add("zone-1", "http://10.0.0.1:5681/", &Auth::default(), false)
            .expect("add");
        assert_eq!(c.current_url().expect("url"), "http://10.0.0.1:5681");
        assert!(
            c.add("zone-1", "http://x:1", &Auth::default(), false)
                .is_err()
        );
        c.add("zone-1", "http://x:1", &Auth::default(), true)
            .expect("overwrite");
        assert_eq!(c.control_planes.len(), 2);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/config");
        c.save(&path).expect("save");
        assert_eq!(CtlConfig::load(&path).expect("load"), c);
    }
}
