//! ExternalService (Kuma's resource for a service outside the mesh): a `host:port` address,
//! optional TLS towards it (CA, client certificate, SNI), and tags — `kuma.io/service` names
//! it, `kuma.io/protocol` says how it is spoken (tcp when absent), `kuma.io/zone` restricts it
//! to that zone's egress.
//!
//! Pure: the spec, its validation with field paths, and the lookup of its certificates in the
//! mesh's secrets. The DP server turns it into outbounds, the zone's DNS gives it a VIP.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::specs::{PROTOCOL_TAG, SERVICE_TAG, Tags, ZONE_TAG};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalServiceSpec {
    #[serde(default)]
    pub networking: ExternalNetworking,
    #[serde(default)]
    pub tags: Tags,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalNetworking {
    /// `host:port`; the host is an IP address or a DNS name.
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalTls>,
    /// No DNS entry for the host of `address` (only `<service>.mesh` is answered).
    #[serde(
        default,
        rename = "disableHostDNSEntry",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_host_dns_entry: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalTls {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<DataSource>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_renegotiation: bool,
    /// SNI and the name the server's certificate must carry (the host of `address` when
    /// absent and the host is a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_hostname_verification: bool,
}

/// Where certificate bytes come from (Kuma's `DataSource`): one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataSource {
    /// The name of a Secret of the same mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Base64 of the bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
    /// A file on the control plane's host: refused (see [`DataSource::check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// A certificate source that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataSourceError {
    #[error("secret {0:?} does not exist in the mesh")]
    MissingSecret(String),
    #[error("secret {0:?} does not hold UTF-8 PEM text")]
    NotText(String),
    #[error("inline data is not base64 UTF-8 PEM text")]
    BadInline,
    #[error("no source given")]
    Empty,
}

impl DataSource {
    fn set_fields(&self) -> Vec<&'static str> {
        [
            ("secret", self.secret.is_some()),
            ("inline", self.inline.is_some()),
            ("inlineString", self.inline_string.is_some()),
            ("file", self.file.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }

    fn check(&self, path: &str, v: &mut Violations) {
        let set = self.set_fields();
        if set.len() != 1 {
            v.push(
                path,
                "exactly one of secret, inline, inlineString must be set",
            );
            return;
        }
        if self.file.is_some() {
            v.push(
                format!("{path}.file"),
                "files are not supported (the control plane does not read files for proxies); use secret, inline or inlineString",
            );
        }
        if let Some(s) = &self.secret
            && s.is_empty()
        {
            v.push(format!("{path}.secret"), "cannot be empty");
        }
        if let Some(b) = &self.inline
            && decode_text(b).is_none()
        {
            v.push(format!("{path}.inline"), "must be base64 of UTF-8 text");
        }
    }

    /// The PEM text, `secrets` giving the base64 `data` of the mesh's Secrets by name.
    pub fn resolve(&self, secrets: &BTreeMap<String, String>) -> Result<String, DataSourceError> {
        if let Some(name) = &self.secret {
            let data = secrets
                .get(name)
                .ok_or_else(|| DataSourceError::MissingSecret(name.clone()))?;
            return decode_text(data).ok_or_else(|| DataSourceError::NotText(name.clone()));
        }
        if let Some(b) = &self.inline {
            return decode_text(b).ok_or(DataSourceError::BadInline);
        }
        self.inline_string.clone().ok_or(DataSourceError::Empty)
    }
}

fn decode_text(b64: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

impl ExternalServiceSpec {
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }

    /// `kuma.io/protocol`, tcp when absent.
    pub fn protocol(&self) -> &str {
        self.tags.get(PROTOCOL_TAG).map_or("tcp", String::as_str)
    }

    /// The zone whose egress alone reaches it (`kuma.io/zone`).
    pub fn zone(&self) -> Option<&str> {
        self.tags.get(ZONE_TAG).map(String::as_str)
    }

    /// Host and port of `networking.address` (`None` when it does not parse).
    pub fn host_port(&self) -> Option<(&str, u16)> {
        split_host_port(&self.networking.address)
    }

    /// The host of the address that gets a DNS entry (and a VIP) of its own: a name, not an
    /// IP, unless `disableHostDNSEntry`.
    pub fn host_dns_entry(&self) -> Option<&str> {
        if self.networking.disable_host_dns_entry {
            return None;
        }
        let (host, _) = self.host_port()?;
        host.parse::<std::net::IpAddr>().is_err().then_some(host)
    }

    /// TLS settings when TLS is enabled.
    pub fn tls(&self) -> Option<&ExternalTls> {
        self.networking.tls.as_ref().filter(|t| t.enabled)
    }

    /// The SNI (and expected certificate name): `serverName`, else the host when it is a name.
    pub fn server_name(&self) -> Option<String> {
        let tls = self.tls()?;
        if let Some(n) = tls.server_name.as_ref().filter(|n| !n.is_empty()) {
            return Some(n.clone());
        }
        let (host, _) = self.host_port()?;
        (host.parse::<std::net::IpAddr>().is_err()).then(|| host.to_string())
    }

    pub fn validate(&self, v: &mut Violations) {
        crate::validate::check_service_tags("tags", &self.tags, v);
        let address = &self.networking.address;
        if address.is_empty() {
            v.push("networking.address", "cannot be empty");
        } else {
            match split_host_port(address) {
                None => v.push(
                    "networking.address",
                    format!("{address:?} must be host:port with a port in 1..65535"),
                ),
                Some((host, _)) => {
                    if host.parse::<std::net::IpAddr>().is_err()
                        && !crate::virtual_outbound::is_hostname(host)
                    {
                        v.push(
                            "networking.address",
                            format!("{host:?} is not an IP address or a hostname"),
                        );
                    }
                }
            }
        }
        if let Some(tls) = &self.networking.tls {
            for (field, ds) in [
                ("caCert", &tls.ca_cert),
                ("clientCert", &tls.client_cert),
                ("clientKey", &tls.client_key),
            ] {
                if let Some(ds) = ds {
                    ds.check(&format!("networking.tls.{field}"), v);
                }
            }
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                v.push(
                    "networking.tls",
                    "clientCert and clientKey must be set together",
                );
            }
            if let Some(n) = &tls.server_name
                && !n.is_empty()
                && !crate::virtual_outbound::is_hostname(n)
            {
                v.push("networking.tls.serverName", "must be a DNS name");
            }
        }
    }
}

/// `host:port` (IPv6 hosts in brackets), the port in 1..65535.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    (!host.is_empty() && (!host.contains(':') || address.starts_with('['))).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: serde_json::Value) -> ExternalServiceSpec {
        serde_json::from_value(value).expect("spec")
    }

    fn violations(s: &ExternalServiceSpec) -> Vec<(String, String)> {
        let mut v = Violations::default();
        s.validate(&mut v);
        v.violations
            .into_iter()
            .map(|x| (x.field, x.message))
            .collect()
    }

    #[test]
    fn host_port_splits_names_ips_and_bracketed_v6() {
        assert_eq!(
            split_host_port("httpbin.org:443"),
            Some(("httpbin.org", 443))
        );
        assert_eq!(split_host_port("10.0.0.1:80"), Some(("10.0.0.1", 80)));
        assert_eq!(split_host_port("[::1]:8080"), Some(("::1", 8080)));
        for bad in [
            "httpbin.org",
            "httpbin.org:0",
            "httpbin.org:99999",
            ":80",
            "::1:80",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_complete_spec_is_valid() {
        let s = spec(serde_json::json!({
            "networking": {"address": "api.example.com:443", "tls": {
                "enabled": true, "caCert": {"secret": "api-ca"},
                "clientCert": {"inlineString": "PEM"}, "clientKey": {"secret": "key"},
                "serverName": "api.example.com"}},
            "tags": {"kuma.io/service": "api", "kuma.io/protocol": "http", "kuma.io/zone": "z1"}
        }));
        assert_eq!(violations(&s), []);
        assert_eq!(s.service(), Some("api"));
        assert_eq!(s.protocol(), "http");
        assert_eq!(s.zone(), Some("z1"));
        assert_eq!(s.server_name().as_deref(), Some("api.example.com"));
    }

    #[test]
    fn mistakes_are_named_by_their_field() {
        let table: [(serde_json::Value, &str, &str); 7] = [
            (
                serde_json::json!({"networking": {"address": "a.b:80"}, "tags": {}}),
                "tags",
                "tag \"kuma.io/service\" is required",
            ),
            (
                serde_json::json!({"networking": {}, "tags": {"kuma.io/service": "x"}}),
                "networking.address",
                "cannot be empty",
            ),
            (
                serde_json::json!({"networking": {"address": "a.b"}, "tags": {"kuma.io/service": "x"}}),
                "networking.address",
                "\"a.b\" must be host:port with a port in 1..65535",
            ),
            (
                serde_json::json!({"networking": {"address": "a b:80"}, "tags": {"kuma.io/service": "x"}}),
                "networking.address",
                "\"a b\" is not an IP address or a hostname",
            ),
            (
                serde_json::json!({"networking": {"address": "a.b:80", "tls": {"enabled": true,
                    "caCert": {"secret": "s", "inlineString": "x"}}}, "tags": {"kuma.io/service": "x"}}),
                "networking.tls.caCert",
                "exactly one of secret, inline, inlineString must be set",
            ),
            (
                serde_json::json!({"networking": {"address": "a.b:80", "tls": {"enabled": true,
                    "clientCert": {"file": "/c.pem"}, "clientKey": {"secret": "k"}}}, "tags": {"kuma.io/service": "x"}}),
                "networking.tls.clientCert.file",
                "files are not supported (the control plane does not read files for proxies); use secret, inline or inlineString",
            ),
            (
                serde_json::json!({"networking": {"address": "a.b:80", "tls": {"enabled": true,
                    "clientKey": {"secret": "k"}}}, "tags": {"kuma.io/service": "x"}}),
                "networking.tls",
                "clientCert and clientKey must be set together",
            ),
        ];
        for (value, field, message) in table {
            let got = violations(&spec(value.clone()));
            assert_eq!(got, [(field.to_string(), message.to_string())], "{value}");
        }
    }

    #[test]
    fn sni_defaults_to_a_named_host_never_an_ip() {
        let named = spec(
            serde_json::json!({"networking": {"address": "db.example:5432",
            "tls": {"enabled": true}}, "tags": {"kuma.io/service": "db"}}),
        );
        assert_eq!(named.server_name().as_deref(), Some("db.example"));
        let ip = spec(
            serde_json::json!({"networking": {"address": "10.1.1.1:5432",
            "tls": {"enabled": true}}, "tags": {"kuma.io/service": "db"}}),
        );
        assert_eq!(ip.server_name(), None);
        let off = spec(
            serde_json::json!({"networking": {"address": "db.example:5432",
            "tls": {"enabled": false, "serverName": "x"}}, "tags": {"kuma.io/service": "db"}}),
        );
        assert_eq!(off.tls(), None);
        assert_eq!(off.server_name(), None);
    }

    #[test]
    fn certificates_come_from_the_mesh_secrets_or_inline() {
        let secrets = BTreeMap::from([(
            "ca".to_string(),
            base64::engine::general_purpose::STANDARD.encode("PEM-CA"),
        )]);
        let by_secret = DataSource {
            secret: Some("ca".into()),
            ..Default::default()
        };
        assert_eq!(by_secret.resolve(&secrets).as_deref(), Ok("PEM-CA"));
        let missing = DataSource {
            secret: Some("nope".into()),
            ..Default::default()
        };
        assert_eq!(
            missing.resolve(&secrets),
            Err(DataSourceError::MissingSecret("nope".into()))
        );
        let inline = DataSource {
            inline: Some(base64::engine::general_purpose::STANDARD.encode("PEM-X")),
            ..Default::default()
        };
        assert_eq!(inline.resolve(&secrets).as_deref(), Ok("PEM-X"));
        let text = DataSource {
            inline_string: Some("PEM-Y".into()),
            ..Default::default()
        };
        assert_eq!(text.resolve(&secrets).as_deref(), Ok("PEM-Y"));
    }
}
