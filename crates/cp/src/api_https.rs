//! The REST API over TLS (Kuma's `apiServer.https`, port 5682): the same router as the HTTP
//! API, served by a tokio-rustls accept loop that also asks for a client certificate.
//!
//! A client that presents one of the admin client certificates (the PEM files of
//! `KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR`, compared byte for byte with the presented leaf, as
//! Kuma does) gets [`meshzone_api::AdminClientCert`] on every request of its connection, which
//! `meshzone_api::auth` treats as the admin. Any other certificate is only checked to be held
//! (the handshake signature) and gives no rights: such a client is whoever its token says.
//! With `KUMA_API_SERVER_HTTPS_REQUIRE_CLIENT_CERT=true` a client without a certificate is
//! refused at the handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const CERT_SETTING: &str = "KUMA_API_SERVER_HTTPS_TLS_CERT_FILE";
const KEY_SETTING: &str = "KUMA_API_SERVER_HTTPS_TLS_KEY_FILE";
const DIR_SETTING: &str = "KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR";

/// A bad HTTPS setting, naming the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("{setting} {path}: {message}")]
    File {
        setting: &'static str,
        path: String,
        message: String,
    },
    #[error(
        "the HTTPS API's TLS configuration ({CERT_SETTING} {cert}, {KEY_SETTING} {key}): {message}"
    )]
    Tls {
        cert: String,
        key: String,
        message: String,
    },
}

fn file_error(setting: &'static str, path: &Path, message: impl Into<String>) -> HttpsError {
    HttpsError::File {
        setting,
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The admin client certificates (DER), read once at start.
#[derive(Debug, Default, Clone)]
pub struct AdminCerts {
    certs: Vec<(PathBuf, CertificateDer<'static>)>,
}

impl AdminCerts {
    /// Every file of `dir` (empty: none); each must hold PEM certificates.
    pub fn read_dir(dir: &str) -> Result<AdminCerts, HttpsError> {
        if dir.is_empty() {
            return Ok(AdminCerts::default());
        }
        let dir = Path::new(dir);
        let entries = std::fs::read_dir(dir)
            .map_err(|e| file_error(DIR_SETTING, dir, format!("cannot read the directory: {e}")))?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| file_error(DIR_SETTING, dir, format!("cannot list it: {e}")))?;
            let path = entry.path();
            if path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut certs = Vec::new();
        for path in paths {
            let pem = std::fs::read(&path)
                .map_err(|e| file_error(DIR_SETTING, &path, format!("cannot read: {e}")))?;
            let found = parse_certs(&pem).map_err(|m| file_error(DIR_SETTING, &path, m))?;
            certs.extend(found.into_iter().map(|c| (path.clone(), c)));
        }
        Ok(AdminCerts { certs })
    }

    /// The admin certificate file whose certificate is `presented`, if any.
    pub fn admin_file(&self, presented: &CertificateDer<'_>) -> Option<&Path> {
        self.certs
            .iter()
            .find(|(_, cert)| cert.as_ref() == presented.as_ref())
            .map(|(path, _)| path.as_path())
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }
}

/// Every CERTIFICATE block of `pem`; at least one.
fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it (expected a -----BEGIN CERTIFICATE----- block)".into());
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    }
    Ok(certs)
}

/// Asks every client for a certificate (demands one when `require`), accepts any whose
/// handshake signature is right; an admin certificate must also be within its validity dates.
#[derive(Debug)]
struct ClientCerts {
    admins: Arc<AdminCerts>,
    require: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientCerts {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.require
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.admins.admin_file(end_entity).is_some() {
            let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            let validity = cert.validity();
            let now = now.as_secs() as i64;
            if now < validity.not_before.timestamp() {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet,
                ));
            }
            if now > validity.not_after.timestamp() {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server's TLS configuration from its certificate and key, checked before anything is
/// served; errors name the setting and the file (never the key's bytes).
pub fn tls_acceptor(
    cert: &crate::dp_server::ServerCertificate,
    admins: Arc<AdminCerts>,
    require_client_cert: bool,
) -> Result<TlsAcceptor, HttpsError> {
    let chain = parse_certs(cert.cert_pem.as_bytes())
        .map_err(|m| file_error(CERT_SETTING, &cert.cert_path, m))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|_| {
        file_error(
            KEY_SETTING,
            &cert.key_path,
            "no private key in it (expected a -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_error = |message: String| HttpsError::Tls {
        cert: cert.cert_path.display().to_string(),
        key: cert.key_path.display().to_string(),
        message,
    };
    let verifier = Arc::new(ClientCerts {
        admins,
        require: require_client_cert,
        provider: provider.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_error(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` over TLS on `listener` until `stop` resolves, then lets the open requests
/// finish. Each connection is a task of this loop (a failed handshake ends only its own).
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    admins: Arc<AdminCerts>,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut stop => break,
            // Reap finished connections as they go so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    debug!(error = %e, "HTTPS API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let admins = admins.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "HTTPS API: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "HTTPS API: TLS handshake timed out");
                    return;
                }
            };
            let admin = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| admins.admin_file(leaf))
                .map(Path::to_path_buf);
            if let Some(file) = &admin {
                debug!(%peer, file = %file.display(), "HTTPS API: admin client certificate");
            }
            let is_admin = admin.is_some();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                if is_admin {
                    req.extensions_mut().insert(meshzone_api::AdminClientCert);
                }
                tower_service::Service::call(&mut router.clone(), req)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "HTTPS API: connection ended with an error");
            }
        });
    }
    drop(listener);
    info!("HTTPS API: stopped accepting; finishing open requests");
    graceful.shutdown().await;
    connections.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn cert_pem(name: &str) -> String {
        meshzone_pki::self_signed_server_cert(
            &[name.to_string()],
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .expect("cert")
        .cert_pem
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("der")
    }

    #[test]
    fn only_the_certificates_of_the_directory_are_admins() {
        let dir = tempfile::tempdir().expect("dir");
        let (alice, bob, stranger) = (cert_pem("alice"), cert_pem("bob"), cert_pem("x"));
        write(dir.path(), "alice.pem", &alice);
        // Two certificates in one file: both count.
        write(
            dir.path(),
            "more.pem",
            &format!("{bob}{}", cert_pem("carol")),
        );
        let admins = AdminCerts::read_dir(&dir.path().display().to_string()).expect("read");
        assert_eq!(admins.len(), 3);
        assert_eq!(
            admins.admin_file(&der(&alice)),
            Some(dir.path().join("alice.pem").as_path())
        );
        assert!(admins.admin_file(&der(&bob)).is_some());
        assert_eq!(admins.admin_file(&der(&stranger)), None);
        // No directory: nobody.
        let none = AdminCerts::read_dir("").expect("empty");
        assert_eq!(none.admin_file(&der(&alice)), None);
    }

    #[test]
    fn bad_files_name_the_setting_and_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing");
        let e = AdminCerts::read_dir(&missing.display().to_string()).expect_err("missing");
        assert!(
            e.to_string().starts_with(&format!(
                "KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR {}: cannot read the directory",
                missing.display()
            )),
            "{e}"
        );
        let bad = write(dir.path(), "notes.txt", "hello");
        let e = AdminCerts::read_dir(&dir.path().display().to_string()).expect_err("bad");
        assert_eq!(
            e.to_string(),
            format!(
                "KUMA_API_SERVER_AUTH_CLIENT_CERTS_DIR {}: no certificate in it (expected a -----BEGIN CERTIFICATE----- block)",
                bad.display()
            )
        );

        let good = meshzone_pki::self_signed_server_cert(
            &["cp".to_string()],
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .expect("cert");
        let server = |cert_pem: &str, key_pem: &str| crate::dp_server::ServerCertificate {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            cert_path: "/etc/cp.crt".into(),
            key_path: "/etc/cp.key".into(),
        };
        let admins = Arc::new(AdminCerts::default());
        assert!(tls_acceptor(&server(&good.cert_pem, &good.key_pem), admins.clone(), true).is_ok());
        let e = tls_acceptor(&server("junk", &good.key_pem), admins.clone(), false)
            .err()
            .expect("bad cert");
        assert!(
            e.to_string()
                .starts_with("KUMA_API_SERVER_HTTPS_TLS_CERT_FILE /etc/cp.crt: no certificate"),
            "{e}"
        );
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END CERTIFICATE-----\n";
        let e = tls_acceptor(&server(&good.cert_pem, secret), admins.clone(), false)
            .err()
            .expect("bad key");
        assert!(
            e.to_string()
                .starts_with("KUMA_API_SERVER_HTTPS_TLS_KEY_FILE /etc/cp.key: no private key"),
            "{e}"
        );
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        // A key that is not the certificate's.
        let other = meshzone_pki::self_signed_server_cert(
            &["cp".to_string()],
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .expect("cert");
        let e = tls_acceptor(&server(&good.cert_pem, &other.key_pem), admins, false)
            .err()
            .expect("mismatch");
        assert!(
            e.to_string().starts_with(
                "the HTTPS API's TLS configuration (KUMA_API_SERVER_HTTPS_TLS_CERT_FILE /etc/cp.crt, KUMA_API_SERVER_HTTPS_TLS_KEY_FILE /etc/cp.key)"
            ),
            "{e}"
        );
    }
}
