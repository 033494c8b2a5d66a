//! The tonic connector: TCP + TLS (ALPN h2) with one of our verifiers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

use crate::Error;
use crate::verifier::{Trust, Verifier};

/// Opens TCP + TLS (ALPN h2) connections for `Endpoint::connect_with_connector`. The endpoint
/// must be given [`Connector::tonic_address`] of the URL: this connector speaks TLS itself.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    default_port: u16,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("default_port", &self.default_port)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// `default_port` is dialled when the address has none.
    pub fn new(trust: &Trust, default_port: u16) -> Result<Connector, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(Verifier::new(trust, provider.clone())?);
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Connector {
            tls: TlsConnector::from(Arc::new(config)),
            default_port,
        })
    }

    /// A gRPC channel to `url`, trusting exactly the certificate `certificate_pem` (pinned, as
    /// another instance advertised it): what instances sharing a store use to reach each other.
    /// `Err` says which step failed.
    pub async fn pinned_channel(
        url: &str,
        certificate_pem: &str,
        default_port: u16,
    ) -> Result<tonic::transport::Channel, String> {
        let roots = crate::Roots::from_pem(certificate_pem)
            .map_err(|e| format!("its advertised certificate: {e}"))?;
        let connector =
            Connector::new(&Trust::Roots(roots), default_port).map_err(|e| e.to_string())?;
        tonic::transport::Channel::from_shared(Self::tonic_address(url))
            .map_err(|e| format!("its address {url:?}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                let mut msg = format!("cannot connect to {url}: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })
    }

    /// The address to give tonic's `Endpoint` with this connector: `https://` becomes
    /// `http://`, since tonic refuses https without its own TLS settings (the TLS is ours).
    pub fn tonic_address(url: &str) -> String {
        match url.strip_prefix("https://") {
            Some(rest) => format!("http://{rest}"),
            None => url.to_string(),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let port = uri.port_u16().unwrap_or(self.default_port);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in address"))?
                .trim_matches(['[', ']'])
                .to_string();
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::sign::{CertifiedKey, SingleCertAndKey};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use tower_service::Service;

    use super::Connector;
    use crate::fixtures::{self, KeyKind};
    use crate::{Roots, Trust};

    /// A TLS server on loopback presenting `cert_pem` and signing with `key_pem` (which need not
    /// be the certificate's key); answers one handshake and says "hi".
    async fn server(cert_pem: &str, key_pem: &str) -> u16 {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key"))
            .expect("signing key");
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert");
        let resolver = SingleCertAndKey::from(CertifiedKey::new(vec![cert], key));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"hi").await;
                }
            }
        });
        port
    }

    /// The connector against real handshakes: the openssl certificate as its own root works;
    /// a server presenting that certificate without its key is refused (the handshake signature
    /// is checked on the pinned path too); skip-verify still checks that signature.
    #[tokio::test]
    async fn handshakes_check_the_pinned_certificate_and_the_signature() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = fixtures::self_signed(dir.path(), "real", KeyKind::EcdsaP256, "IP:127.0.0.1")
            .expect("openssl");
        let other = fixtures::self_signed(dir.path(), "other", KeyKind::EcdsaP256, "IP:127.0.0.1")
            .expect("openssl");
        let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("read");
        let pinned = Trust::Roots(Roots::from_pem(&real.cert_pem()).expect("roots"));
        for (what, key, trust, ok) in [
            ("pinned, own key", &real.key, &pinned, true),
            (
                "pinned certificate, another key",
                &other.key,
                &pinned,
                false,
            ),
            (
                "skip-verify, another key",
                &other.key,
                &Trust::SkipVerify,
                false,
            ),
        ] {
            let port = server(&real.cert_pem(), &read(key)).await;
            let mut connector = Connector::new(trust, 1).expect("connector");
            let uri = format!("http://127.0.0.1:{port}").parse().expect("uri");
            let got = connector.call(uri).await;
            assert_eq!(got.is_ok(), ok, "{what}: {:?}", got.err());
            if let Err(e) = got {
                assert!(
                    e.to_string().contains("invalid peer certificate")
                        || e.to_string().contains("signature"),
                    "{what}: {e}"
                );
            }
        }
    }

    #[test]
    fn tonic_is_handed_plain_http() {
        assert_eq!(
            Connector::tonic_address("https://127.0.0.1:5685"),
            "http://127.0.0.1:5685"
        );
        assert_eq!(
            Connector::tonic_address("http://[::1]:5678/"),
            "http://[::1]:5678/"
        );
    }
}
