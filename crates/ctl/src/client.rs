//! HTTP(S) client of the REST API. Turns transport failures and API error bodies into one-line
//! errors that name the control plane's address.
//!
//! One HTTP/1.1 connection per request (kumactl makes a few), over TCP or, to an `https://`
//! address, over rustls with the configured roots and client certificate
//! ([`crate::config::Tls`]). It is hyper's client, not reqwest's: reqwest's rustls backend
//! needs a process-wide crypto provider (or brings ring), which every other reqwest user of
//! the workspace would then need as well.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
pub use hyper::{Method, StatusCode};
use hyper::{Uri, header};
use hyper_util::rt::TokioIo;
use meshzone_tls_client::{Roots, Trust, Verifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::Tls;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ApiClient {
    base: String,
    token: Option<String>,
    /// For an https:// address.
    tls: Option<TlsConnector>,
    /// The CA file that verifies an https:// control plane, for error messages.
    ca_cert_file: Option<String>,
}

/// The rustls configuration for an https:// control plane: its roots (`--ca-cert-file`, else
/// the system's) or none (`--skip-verify`), and the client certificate if one is configured.
/// Every unreadable or bad file is named with its flag.
fn tls_config(tls: &Tls) -> anyhow::Result<rustls::ClientConfig> {
    let trust = if tls.skip_verify {
        Trust::SkipVerify
    } else if !tls.ca_cert_file.is_empty() {
        Trust::Roots(Roots::read("--ca-cert-file", Path::new(&tls.ca_cert_file))?)
    } else {
        Trust::Roots(Roots::native().map_err(|e| {
            anyhow!("cannot verify the control plane: {e}; give its CA with --ca-cert-file")
        })?)
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Verifier::new(&trust, provider.clone())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS client setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = if tls.client_cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let cert_file = &tls.client_cert_file;
        let key_file = &tls.client_key_file;
        let cert_pem = std::fs::read(cert_file)
            .with_context(|| format!("cannot read --client-cert-file {cert_file}"))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("--client-cert-file {cert_file}: not PEM: {e}"))?;
        if chain.is_empty() {
            return Err(anyhow!(
                "--client-cert-file {cert_file}: no certificate in it (expected a -----BEGIN CERTIFICATE----- block)"
            ));
        }
        let key_pem = std::fs::read(key_file)
            .with_context(|| format!("cannot read --client-key-file {key_file}"))?;
        // The key's bytes never appear in a message.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            anyhow!(
                "--client-key-file {key_file}: no private key in it (expected a -----BEGIN PRIVATE KEY----- block)"
            )
        })?;
        builder.with_client_auth_cert(chain, key).map_err(|e| {
            anyhow!("--client-cert-file {cert_file} with --client-key-file {key_file}: {e}")
        })?
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The rustls error behind `e`, if any (an `io::Error` hides its inner error from `source`).
fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(found) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// A request's body and its content type.
struct Body<'a> {
    bytes: Vec<u8>,
    content_type: &'a str,
}

impl ApiClient {
    /// A client that sends `token` as `Authorization: Bearer` on every request and, to an
    /// https:// address, uses `tls`.
    pub fn new(base: &str, token: Option<&str>, tls: &Tls) -> anyhow::Result<Self> {
        if let Some(token) = token {
            header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("the configured user token is not a valid header value"))?;
        }
        let tls_connector = if base.starts_with("https://") {
            Some(TlsConnector::from(Arc::new(tls_config(tls)?)))
        } else {
            None
        };
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            tls: tls_connector,
            ca_cert_file: (!tls.ca_cert_file.is_empty()).then(|| tls.ca_cert_file.clone()),
        })
    }

    /// The client of the current context of `config`, with its authentication and TLS.
    pub fn of(config: &crate::config::CtlConfig) -> anyhow::Result<Self> {
        let auth = config.current_auth()?;
        Self::new(&config.current_url()?, auth.token(), &config.current_tls()?)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// One request: the status and the body of the answer.
    async fn exchange(
        &self,
        method: Method,
        url: &str,
        body: Option<Body<'_>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange_now(method, url, body))
            .await
            .map_err(|_| anyhow!("the control plane at {} did not answer in time", self.base))?
    }

    async fn exchange_now(
        &self,
        method: Method,
        url: &str,
        body: Option<Body<'_>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let uri: Uri = url
            .parse()
            .map_err(|e| anyhow!("{url} is not a valid address: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("{url} has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| self.connect_error(&e.to_string()))?;
        let mut request = hyper::Request::builder().method(method).uri(
            uri.path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string(),
        );
        if let Some(authority) = uri.authority() {
            request = request.header(header::HOST, authority.as_str());
        }
        if let Some(token) = &self.token {
            let mut value = header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("the configured user token is not a valid header value"))?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let bytes = match body {
            Some(b) => {
                request = request.header(header::CONTENT_TYPE, b.content_type);
                b.bytes
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| anyhow!("cannot build the request to {url}: {e}"))?;
        match (&self.tls, https) {
            (Some(tls), true) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| anyhow!("{host:?} is not a valid server name"))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.tls_error(&e))?;
                self.round_trip(stream, request, url).await
            }
            (None, false) => self.round_trip(tcp, request, url).await,
            _ => Err(anyhow!(
                "{url}: the scheme differs from the control plane's address {}",
                self.base
            )),
        }
    }

    /// Sends `request` on a fresh HTTP/1.1 connection over `io` and reads the whole answer,
    /// driving the connection in the same task.
    async fn round_trip<S>(
        &self,
        io: S,
        request: hyper::Request<Full<Bytes>>,
        url: &str,
    ) -> anyhow::Result<(StatusCode, Bytes)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |e: hyper::Error| {
            // TLS 1.3: the server refuses a client certificate after the client's handshake.
            if let Some(rustls::Error::AlertReceived(alert)) = rustls_cause(&e) {
                let hint = match alert {
                    rustls::AlertDescription::CertificateRequired => {
                        ": it requires a client certificate (--client-cert-file, --client-key-file)"
                    }
                    rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::CertificateExpired
                    | rustls::AlertDescription::UnsupportedCertificate => {
                        ": it did not accept the client certificate (--client-cert-file)"
                    }
                    _ => "",
                };
                return anyhow!(
                    "the control plane at {} refused the TLS connection ({alert:?}){hint}",
                    self.base
                );
            }
            anyhow!("request to the control plane at {} failed: {e}", self.base)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(failed)?;
        tokio::pin!(conn);
        let response = tokio::select! {
            response = sender.send_request(request) => response.map_err(failed)?,
            ended = &mut conn => {
                ended.map_err(failed)?;
                return Err(anyhow!("the control plane at {} closed the connection", self.base));
            }
        };
        let status = response.status();
        let collect = response.into_body().collect();
        tokio::pin!(collect);
        let collected = tokio::select! {
            collected = &mut collect => collected,
            // The connection ended: the rest of the body is already buffered.
            _ = &mut conn => collect.await,
        }
        .map_err(|e| anyhow!("reading the answer of {url}: {e}"))?;
        Ok((status, collected.to_bytes()))
    }

    fn connect_error(&self, cause: &str) -> anyhow::Error {
        anyhow!(
            "could not connect to the control plane at {}: {cause} (is kuma-cp running there? see kumactl config control-planes add)",
            self.base
        )
    }

    fn tls_error(&self, e: &std::io::Error) -> anyhow::Error {
        let rustls_error = rustls_cause(e);
        if let Some(rustls::Error::InvalidCertificate(reason)) = rustls_error {
            let trusted_by = match &self.ca_cert_file {
                Some(file) => format!("--ca-cert-file {file}"),
                None => "the system's roots (give its CA with --ca-cert-file)".to_string(),
            };
            return anyhow!(
                "the control plane's certificate at {} is not trusted by {trusted_by}: {reason:?}",
                self.base
            );
        }
        anyhow!(
            "TLS handshake with the control plane at {} failed: {e}",
            self.base
        )
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = self.url(path);
        let body = body
            .map(|b| {
                serde_json::to_vec(b).map(|bytes| Body {
                    bytes,
                    content_type: "application/json",
                })
            })
            .transpose()
            .map_err(|e| anyhow!("cannot encode the request: {e}"))?;
        let (status, bytes) = self.exchange(method, &url, body).await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| {
                anyhow!(
                    "{url} did not answer with JSON (HTTP {status}); is {} a kuma-cp API address?",
                    self.base
                )
            })?
        };
        Ok((status, value))
    }

    /// Sends a request and returns the JSON body of a 2xx answer; anything else is an error
    /// carrying the API's own explanation.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.send(method, path, body).await?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(anyhow!(describe_error(status, &value)))
        }
    }

    /// POSTs JSON and returns the answer as text (tokens).
    pub async fn post_text(&self, path: &str, body: &Value) -> anyhow::Result<String> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| anyhow!("cannot encode the request: {e}"))?;
        self.text(
            Method::POST,
            path,
            Some(Body {
                bytes,
                content_type: "application/json",
            }),
        )
        .await
    }

    /// GETs a text answer (a proxy's stats or clusters).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        self.text(Method::GET, path, None).await
    }

    async fn text(
        &self,
        method: Method,
        path: &str,
        body: Option<Body<'_>>,
    ) -> anyhow::Result<String> {
        let url = self.url(path);
        let (status, bytes) = self.exchange(method, &url, body).await?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| anyhow!("reading the answer of {url}: not UTF-8 text"))?;
        if status.is_success() {
            return Ok(text);
        }
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Err(anyhow!(describe_error(status, &value)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// Fetches every page of a list.
    pub async fn list_all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut next = Some(format!("{path}?size=1000"));
        while let Some(p) = next.take() {
            let page = self.get(&p).await?;
            if let Some(arr) = page["items"].as_array() {
                items.extend(arr.iter().cloned());
            }
            next = page["next"].as_str().map(str::to_string);
        }
        Ok(items)
    }
}

/// One line from an API error body: `details: field: message; field: message`.
pub fn describe_error(status: StatusCode, body: &Value) -> String {
    let details = body["details"]
        .as_str()
        .or(body["title"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("HTTP {status}"));
    let causes: Vec<String> = body["causes"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let field = c["field"].as_str().unwrap_or("");
                    let msg = c["message"].as_str().unwrap_or("");
                    if field.is_empty() {
                        msg.to_string()
                    } else {
                        format!("{field}: {msg}")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if causes.is_empty() {
        details
    } else {
        format!("{details}: {}", causes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unreadable or bad TLS files are named with their flag; a key's bytes never show.
    #[test]
    fn bad_tls_files_name_the_flag_and_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write");
            path(name)
        };
        let junk = write("junk.pem", "not PEM at all");
        let secret = write(
            "secret.key",
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END CERTIFICATE-----\n",
        );
        // A CERTIFICATE block (its DER is checked by the handshake, not here).
        let cert = write(
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        );
        let tls = |ca: &str, cert: &str, key: &str| Tls {
            ca_cert_file: ca.into(),
            client_cert_file: cert.into(),
            client_key_file: key.into(),
            skip_verify: ca.is_empty(),
        };
        let missing = path("missing.pem");
        let cases = [
            (
                tls(&missing, "", ""),
                format!("cannot read --ca-cert-file {missing}"),
            ),
            (
                tls(&junk, "", ""),
                format!("--ca-cert-file {junk}: no certificate"),
            ),
            (
                tls("", &missing, &secret),
                format!("cannot read --client-cert-file {missing}"),
            ),
            (
                tls("", &junk, &secret),
                format!("--client-cert-file {junk}: no certificate"),
            ),
            (
                tls("", &cert, &secret),
                format!("--client-key-file {secret}: no private key"),
            ),
        ];
        for (tls, want) in cases {
            let e = format!("{:#}", tls_config(&tls).expect_err(&want));
            assert!(e.starts_with(&want), "{e}");
            assert!(!e.contains("c2VjcmV0"), "{e}");
        }
    }

    /// A write refused because of the control plane's mode (405) shows Kuma's message as is.
    #[test]
    fn a_refusal_by_mode_shows_the_apis_message() {
        let details = "On zone control plane you can only modify zone resources with 'kumactl apply' or via the HTTP API. You can still use 'kumactl' or the HTTP API to modify the rest of the resource on the global control plane.";
        let body = serde_json::json!({"title": "Method not allowed", "details": details});
        assert_eq!(
            describe_error(StatusCode::METHOD_NOT_ALLOWED, &body),
            details
        );
        let invalid = serde_json::json!({
            "title": "Could not process a resource",
            "details": "Resource is not valid",
            "causes": [{"field": "name", "message": "cannot be empty"}],
        });
        assert_eq!(
            describe_error(StatusCode::BAD_REQUEST, &invalid),
            "Resource is not valid: name: cannot be empty"
        );
        assert_eq!(
            describe_error(StatusCode::BAD_GATEWAY, &Value::Null),
            "HTTP 502 Bad Gateway"
        );
    }
}
