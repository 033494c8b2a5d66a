//! The server certificate verifier for a [`Trust`]: the configured roots, plus a self-signed
//! root presented as itself (pinned); or, for explicit skip-verify, nothing but the handshake
//! signature.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use crate::{Error, Roots};

/// How the server's certificate is checked.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Against these roots; a self-signed root presented as itself is pinned.
    Roots(Roots),
    /// Not at all (the handshake signature only). Explicit trial settings only.
    SkipVerify,
}

/// With [`Trust::Roots`]: normal webpki verification against the roots, except that a
/// presented end-entity certificate byte-equal to one of the roots is trusted as pinned (as
/// Go's `x509.Verify` does), its names, dates and extended key usage still checked. With
/// [`Trust::SkipVerify`]: any certificate. The handshake signature is always checked.
#[derive(Debug)]
pub struct Verifier {
    /// `None` for skip-verify.
    roots: Option<(Vec<CertificateDer<'static>>, Arc<WebPkiServerVerifier>)>,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    pub fn new(trust: &Trust, provider: Arc<CryptoProvider>) -> Result<Verifier, Error> {
        let roots = match trust {
            Trust::SkipVerify => None,
            Trust::Roots(roots) => {
                let mut store = RootCertStore::empty();
                for cert in roots.certs() {
                    store
                        .add(cert.clone())
                        .map_err(|e| Error::Setup(format!("root certificate: {e}")))?;
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                        .build()
                        .map_err(|e| Error::Setup(e.to_string()))?;
                Some((roots.certs().to_vec(), webpki))
            }
        };
        Ok(Verifier { roots, provider })
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((roots, webpki)) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        if roots
            .iter()
            .any(|root| root.as_ref() == end_entity.as_ref())
        {
            return verify_pinned(end_entity, server_name, now);
        }
        webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

/// The checks a pinned certificate still has to pass: it names the server, it is within its
/// dates, it is meant for servers and it has no critical extension we do not understand.
fn verify_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    let end_entity = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::from(CertificateError::BadEncoding))?;
    end_entity
        .verify_is_valid_for_subject_name(server_name)
        .map_err(|e| match e {
            webpki::Error::CertNotValidForName(ctx) => CertificateError::NotValidForNameContext {
                expected: ctx.expected,
                presented: ctx.presented,
            },
            _ => CertificateError::NotValidForName,
        })?;
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::from(CertificateError::BadEncoding))?;
    let time = |t: x509_parser::time::ASN1Time| {
        UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(t.timestamp()).unwrap_or(0),
        ))
    };
    let not_before = time(parsed.validity().not_before);
    let not_after = time(parsed.validity().not_after);
    if now.as_secs() < not_before.as_secs() {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before,
        }
        .into());
    }
    if now.as_secs() > not_after.as_secs() {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after,
        }
        .into());
    }
    for extension in parsed.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) if !(eku.any || eku.server_auth) => {
                return Err(CertificateError::InvalidPurpose.into());
            }
            ParsedExtension::UnsupportedExtension { .. } | ParsedExtension::ParseError { .. }
                if extension.critical =>
            {
                return Err(CertificateError::UnhandledCriticalExtension.into());
            }
            _ => {}
        }
    }
    Ok(ServerCertVerified::assertion())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::fixtures::{self, KeyKind};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM")
    }

    fn verifier(roots_pem: &[&str]) -> Verifier {
        let roots = Roots::from_pem(&roots_pem.concat()).expect("roots");
        Verifier::new(
            &Trust::Roots(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .expect("verifier")
    }

    fn days(n: u64) -> Duration {
        Duration::from_secs(n * 86_400)
    }

    fn at(offset_from_now: i64) -> UnixTime {
        let now = SystemTime::now();
        let t = if offset_from_now >= 0 {
            now + days(offset_from_now.unsigned_abs())
        } else {
            now - days(offset_from_now.unsigned_abs())
        };
        UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).expect("time"))
    }

    fn rcgen_self_signed(names: &[&str], ca: bool, eku: &[ExtendedKeyUsagePurpose]) -> String {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.extended_key_usages = eku.to_vec();
        params.self_signed(&key).expect("self-signed").pem()
    }

    /// A CA and a leaf for `names` signed by it (rcgen).
    fn rcgen_chain(names: &[&str]) -> (String, String) {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        (ca.pem(), leaf.pem())
    }

    fn is_ca(pem: &str) -> bool {
        let der = der(pem);
        let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("x509");
        cert.basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca)
    }

    struct Case {
        what: &'static str,
        roots: Vec<String>,
        presented: String,
        name: &'static str,
        now: UnixTime,
        /// `None`: accepted; `Some(text)`: refused with an error whose Debug contains `text`.
        refused: Option<&'static str>,
    }

    #[test]
    fn pinned_self_signed_roots_and_normal_chains() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rsa = fixtures::self_signed(dir.path(), "global-rsa", KeyKind::Rsa2048, "IP:127.0.0.1")
            .expect("openssl")
            .cert_pem();
        let ec = fixtures::self_signed(dir.path(), "global-ec", KeyKind::EcdsaP256, "IP:127.0.0.1")
            .expect("openssl")
            .cert_pem();
        let (ossl_ca, ossl_leaf) =
            fixtures::ca_and_leaf(dir.path(), "kds", KeyKind::EcdsaP256, "DNS:global.example")
                .expect("openssl");
        let (ossl_ca, ossl_leaf) = (ossl_ca.cert_pem(), ossl_leaf.cert_pem());
        // The bug's premise: OpenSSL 3 marks `req -x509` certificates CA:TRUE.
        assert!(is_ca(&rsa) && is_ca(&ec));
        let rcgen_pinned = rcgen_self_signed(&["global.example"], true, &[]);
        let client_only = rcgen_self_signed(
            &["global.example"],
            true,
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        let (ca, leaf) = rcgen_chain(&["global.example", "127.0.0.1"]);
        let unrelated = rcgen_self_signed(&["127.0.0.1"], true, &[]);
        let now = at(0);
        let cases = vec![
            Case {
                what: "openssl RSA self-signed CA:TRUE, pinned",
                roots: vec![rsa.clone()],
                presented: rsa.clone(),
                name: "127.0.0.1",
                now,
                refused: None,
            },
            Case {
                what: "openssl ECDSA self-signed CA:TRUE, pinned among other roots",
                roots: vec![ca.clone(), ec.clone()],
                presented: ec.clone(),
                name: "127.0.0.1",
                now,
                refused: None,
            },
            Case {
                what: "rcgen self-signed CA:TRUE, pinned, DNS name",
                roots: vec![rcgen_pinned.clone()],
                presented: rcgen_pinned.clone(),
                name: "global.example",
                now,
                refused: None,
            },
            Case {
                what: "pinned, but dialled by another IP",
                roots: vec![rsa.clone()],
                presented: rsa.clone(),
                name: "127.0.0.2",
                now,
                refused: Some("NotValidForName"),
            },
            Case {
                what: "pinned, but dialled by a DNS name it does not hold (CN is not a name)",
                roots: vec![rsa.clone()],
                presented: rsa.clone(),
                name: "global",
                now,
                refused: Some("NotValidForName"),
            },
            Case {
                what: "pinned, expired (30 days)",
                roots: vec![ec.clone()],
                presented: ec.clone(),
                name: "127.0.0.1",
                now: at(31),
                refused: Some("Expired"),
            },
            Case {
                what: "pinned, not valid yet",
                roots: vec![ec.clone()],
                presented: ec.clone(),
                name: "127.0.0.1",
                now: at(-1),
                refused: Some("NotValidYet"),
            },
            Case {
                what: "pinned, but only for clients",
                roots: vec![client_only.clone()],
                presented: client_only.clone(),
                name: "global.example",
                now,
                refused: Some("InvalidPurpose"),
            },
            Case {
                what: "rcgen CA + leaf: normal path",
                roots: vec![ca.clone()],
                presented: leaf.clone(),
                name: "global.example",
                now,
                refused: None,
            },
            Case {
                what: "openssl CA + leaf: normal path",
                roots: vec![ossl_ca.clone()],
                presented: ossl_leaf.clone(),
                name: "global.example",
                now,
                refused: None,
            },
            Case {
                what: "CA + leaf, wrong name",
                roots: vec![ca.clone()],
                presented: leaf.clone(),
                name: "other.example",
                now,
                refused: Some("NotValidForName"),
            },
            Case {
                what: "CA + leaf, expired leaf (normal path checks dates too)",
                roots: vec![ossl_ca.clone()],
                presented: ossl_leaf.clone(),
                name: "global.example",
                now: at(31),
                refused: Some("Expired"),
            },
            Case {
                what: "the leaf alone as root does not make its CA trusted",
                roots: vec![rsa.clone()],
                presented: leaf.clone(),
                name: "global.example",
                now,
                refused: Some("UnknownIssuer"),
            },
            Case {
                what: "an unrelated self-signed certificate",
                roots: vec![rsa.clone()],
                presented: unrelated.clone(),
                name: "127.0.0.1",
                now,
                refused: Some("InvalidCertificate"),
            },
        ];
        for case in cases {
            let roots: Vec<&str> = case.roots.iter().map(String::as_str).collect();
            let name = ServerName::try_from(case.name).expect("name");
            let got = verifier(&roots).verify_server_cert(
                &der(&case.presented),
                &[],
                &name,
                &[],
                case.now,
            );
            match (case.refused, got) {
                (None, Ok(_)) => {}
                (Some(want), Err(e)) => {
                    assert!(format!("{e:?}").contains(want), "{}: {e:?}", case.what);
                }
                (None, Err(e)) => panic!("{}: refused: {e}", case.what),
                (Some(want), Ok(_)) => panic!("{}: accepted, wanted {want}", case.what),
            }
        }
    }

    /// Without pinning, rustls refuses the openssl certificate: the bug this crate fixes.
    #[test]
    fn plain_webpki_refuses_the_openssl_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = fixtures::self_signed(dir.path(), "global", KeyKind::Rsa2048, "IP:127.0.0.1")
            .expect("openssl")
            .cert_pem();
        let mut store = RootCertStore::empty();
        store.add(der(&pem)).expect("root");
        let plain = WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .expect("verifier");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let e = plain
            .verify_server_cert(&der(&pem), &[], &name, &[], at(0))
            .expect_err("refused");
        assert!(format!("{e:?}").contains("CaUsedAsEndEntity"), "{e:?}");
    }
}
