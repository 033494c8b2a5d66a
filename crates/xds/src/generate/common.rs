//! Helpers shared by the base builders: addresses, config sources, TLS contexts, protocols.

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, SocketAddress,
    TransportSocket, data_source,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::Any;

use crate::names;

pub(crate) fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn sds(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads()),
    }
}

/// How traffic of a service is carried: bytes (tcp) or HTTP requests (L7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Tcp,
    Http1,
    /// `http2` and `grpc`: HTTP/2 towards the application too.
    Http2,
}

pub(crate) fn protocol(tag: Option<&str>) -> Protocol {
    match tag {
        Some("http") => Protocol::Http1,
        Some("http2") | Some("grpc") => Protocol::Http2,
        _ => Protocol::Tcp,
    }
}

/// TLS settings shared by both directions: our identity, the mesh CA, and which peer SANs pass.
pub(crate) fn common_tls(mesh: &str, san: StringMatcher) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(names::identity_secret(mesh))],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                        san_type: SanType::Uri as i32,
                        matcher: Some(san),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds(names::ca_secret(mesh))),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

pub(crate) fn transport_socket(config: Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfigType::TypedConfig(config)),
    }
}

pub(crate) fn inline(text: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(
            text.as_bytes().to_vec(),
        )),
        ..Default::default()
    }
}

/// SNI a client sends for a service of a mesh (DNS-safe; see docs/adr/0002).
pub fn sni(service: &str, mesh: &str) -> String {
    format!("{service}.{mesh}.mesh")
}

/// The SPIFFE ID of a service of a mesh (what its certificates carry).
pub(crate) fn spiffe(mesh: &str, service: &str) -> String {
    format!("spiffe://{mesh}/{service}")
}

/// The URI SAN of a client's tag (`kuma://<tag>/<value>`, as `meshzone_pki::tag_uri` issues
/// it), which traffic permissions match.
pub(crate) fn tag_uri(tag: &str, value: &str) -> String {
    format!("kuma://{tag}/{value}")
}

/// A listener or filter name as a stats prefix: every character other than ASCII letters,
/// digits, `_` and `-` becomes `_` (Kuma's `SanitizeMetric`).
pub(crate) fn sanitize_stat(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
