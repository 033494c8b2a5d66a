//! rustls configurations built from the proxy's SDS secrets: the inbound side requires a client
//! certificate from the mesh CA, the outbound side presents ours and accepts only a server whose
//! certificate chains to the mesh CA and carries the expected SPIFFE ID.

use std::sync::Arc;

use meshzone_xds::decode::{OriginationPlan, SanMatch};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid PEM in secret {0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

pub fn identity(name: &str, cert_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem(name.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::Pem(name.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(name.to_string()));
    }
    Ok(Identity { chain, key })
}

pub fn roots(name: &str, ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|_| TlsError::Pem(name.to_string()))?;
        store
            .add(cert)
            .map_err(|_| TlsError::Pem(name.to_string()))?;
    }
    if store.is_empty() {
        return Err(TlsError::Pem(name.to_string()));
    }
    Ok(Arc::new(store))
}

/// Inbound: terminate mTLS, require a client certificate issued by the mesh CA.
pub fn server_config(
    id: &Identity,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    Ok(Arc::new(config))
}

/// Outbound: present our identity; accept the server only with the expected SPIFFE ID.
pub fn client_config(
    id: &Identity,
    roots: Arc<RootCertStore>,
    expected: Vec<SanMatch>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = ServerVerifier {
        roots: Some(roots),
        check: PeerCheck::Spiffe(expected),
        provider: provider.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    Ok(Arc::new(config))
}

/// TLS to a server outside the mesh (an ExternalService): its chain checked against the
/// user's CA and its name against the plan's DNS names; without a CA nothing is checked, as
/// Envoy does without a validation context. Our client certificate when the plan has one.
pub fn origination_config(
    cluster: &str,
    plan: &OriginationPlan,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = match &plan.trusted_ca_pem {
        Some(pem) => Some(roots(&format!("{cluster} trusted_ca"), pem)?),
        None => None,
    };
    let verifier = ServerVerifier {
        roots,
        check: PeerCheck::DnsNames(plan.dns_sans.clone()),
        provider: provider.clone(),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match (&plan.client_cert_pem, &plan.client_key_pem) {
        (Some(cert), Some(key)) => {
            let id = identity(&format!("{cluster} client certificate"), cert, key)?;
            builder.with_client_auth_cert(id.chain, id.key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Whether a peer certificate carries a URI SAN that one of the matchers accepts; returns it.
pub fn peer_identity(cert: &CertificateDer<'_>, expected: &[SanMatch]) -> Option<String> {
    let info = meshzone_pki::cert_info_der(cert.as_ref()).ok()?;
    info.uri_sans
        .into_iter()
        .find(|san| expected.iter().any(|m| m.matches(san)))
}

/// What a server's certificate must show besides its chain.
#[derive(Debug)]
enum PeerCheck {
    /// A mesh peer: one of these SPIFFE IDs (DNS names are ignored: mesh identities are URIs).
    Spiffe(Vec<SanMatch>),
    /// An external server: one of these DNS names (none: any name).
    DnsNames(Vec<String>),
}

/// Checks the chain against the roots, then the [`PeerCheck`]. Without roots (TLS to an
/// external server with no CA given) nothing is checked, as Envoy does without a validation
/// context.
#[derive(Debug)]
struct ServerVerifier {
    roots: Option<Arc<RootCertStore>>,
    check: PeerCheck,
    provider: Arc<CryptoProvider>,
}

impl ServerVerifier {
    fn check_names(
        cert: &rustls::server::ParsedCertificate<'_>,
        names: &[String],
    ) -> Result<(), rustls::Error> {
        if names.is_empty() {
            return Ok(());
        }
        let mut last = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        for name in names {
            let Ok(expected) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            match rustls::client::verify_server_name(cert, &expected) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match &self.check {
            PeerCheck::Spiffe(expected) if peer_identity(end_entity, expected).is_none() => Err(
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
            ),
            PeerCheck::Spiffe(_) => Ok(ServerCertVerified::assertion()),
            PeerCheck::DnsNames(names) => {
                Self::check_names(&cert, names).map(|()| ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

#[cfg(test)]
mod origination_tests;
