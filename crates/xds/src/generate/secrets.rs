//! Base builder: the SDS secrets of a proxy in a mesh with mTLS (its identity and the mesh CA).

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};

use super::TlsMaterial;
use super::common::inline;
use crate::names;

pub(crate) fn secrets(mesh: &str, tls: &TlsMaterial) -> Vec<Secret> {
    vec![
        Secret {
            name: names::identity_secret(mesh),
            r#type: Some(SecretType::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&tls.identity_cert_pem)),
                private_key: Some(inline(&tls.identity_key_pem)),
                ..Default::default()
            })),
        },
        Secret {
            name: names::ca_secret(mesh),
            r#type: Some(SecretType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(&tls.ca_cert_pem)),
                    ..Default::default()
                },
            )),
        },
    ]
}
