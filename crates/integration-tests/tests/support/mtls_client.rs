//! A client of a proxy's mTLS inbound holding a certificate the test chose (a foreign CA's,
//! another mesh's), shared by the tests that check who an inbound lets in.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

/// Tries an HTTPS GET to a proxy's inbound with a given client certificate.
pub fn tls_get(port: u16, cert: &meshzone_pki::CertifiedKey) -> Result<String, String> {
    use meshzone_tls_client::{Trust, Verifier};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let verifier =
        Verifier::new(&Trust::SkipVerify, provider.clone()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("echo").map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tls.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("HTTP/1.1 200") {
        Ok(out)
    } else {
        Err(format!("no answer: {out:?}"))
    }
}
