//! TLS a cluster originates towards a server outside the mesh (an ExternalService): certificates
//! inline in the `UpstreamTlsContext` instead of the mesh's SDS secrets — a trusted CA
//! (`validation_context.trusted_ca`), the server name as an exact DNS SAN, an optional client
//! certificate, and the SNI. Every other field of the context is refused with its path, so
//! kuma-dp never connects with weaker checks than Envoy would.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use serde::Serialize;

use super::{DecodeError, err, inline_text};

/// TLS towards an external server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OriginationPlan {
    /// SNI to send (none: none is sent).
    pub sni: Option<String>,
    /// Trusted CA (PEM); `None`: the server's certificate is not verified, as in Envoy
    /// without a validation context.
    pub trusted_ca_pem: Option<String>,
    /// DNS names the server's certificate must carry one of (none: any name, when trusted).
    pub dns_sans: Vec<String>,
    /// Our client certificate chain and key (PEM), when the server asks for one.
    pub client_cert_pem: Option<String>,
    #[serde(skip)]
    pub client_key_pem: Option<String>,
}

/// Whether a context is the mesh's mTLS (SDS secrets) rather than an origination.
pub(crate) fn is_origination(u: &UpstreamTlsContext) -> bool {
    u.common_tls_context
        .as_ref()
        .is_none_or(|c| c.tls_certificate_sds_secret_configs.is_empty())
}

const CONTEXT: &str = "transport_socket.typed_config";

/// The plan of an origination context, or the first field kuma-dp does not enforce.
#[allow(deprecated)]
pub(crate) fn origination_plan(
    name: &str,
    u: &UpstreamTlsContext,
) -> Result<OriginationPlan, DecodeError> {
    let refuse = |field: &str, why: &str| err(name, format!("{CONTEXT}.{field}: {why}"));
    let refused = [
        (
            "allow_renegotiation",
            u.allow_renegotiation,
            "TLS renegotiation is not supported by kuma-dp (rustls never renegotiates)",
        ),
        ("auto_host_sni", u.auto_host_sni, "not enforced by kuma-dp"),
        (
            "auto_sni_san_validation",
            u.auto_sni_san_validation,
            "not enforced by kuma-dp",
        ),
        (
            "max_session_keys",
            u.max_session_keys.is_some(),
            "not enforced by kuma-dp",
        ),
        (
            "enforce_rsa_key_usage",
            u.enforce_rsa_key_usage.is_some(),
            "not enforced by kuma-dp",
        ),
    ];
    if let Some((field, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err(refuse(field, why));
    }
    let mut plan = OriginationPlan {
        sni: Some(u.sni.clone()).filter(|s| !s.is_empty()),
        ..Default::default()
    };
    let Some(common) = &u.common_tls_context else {
        return Ok(plan);
    };
    check_common(common)
        .map_err(|(field, why)| refuse(&format!("common_tls_context.{field}"), why))?;
    match common.tls_certificates.as_slice() {
        [] => {}
        [c] => {
            let path = format!("{CONTEXT}.common_tls_context.tls_certificates[0]");
            let other = c.watched_directory.is_some()
                || c.private_key_provider.is_some()
                || c.password.is_some()
                || c.ocsp_staple.is_some()
                || !c.signed_certificate_timestamp.is_empty();
            if other {
                return Err(err(
                    name,
                    format!("{path}: only certificate_chain and private_key are supported"),
                ));
            }
            plan.client_cert_pem = Some(pem(
                name,
                &format!("{path}.certificate_chain"),
                c.certificate_chain.as_ref(),
            )?);
            plan.client_key_pem = Some(pem(
                name,
                &format!("{path}.private_key"),
                c.private_key.as_ref(),
            )?);
        }
        _ => {
            return Err(refuse(
                "common_tls_context.tls_certificates",
                "at most one client certificate is supported",
            ));
        }
    }
    match &common.validation_context_type {
        None => {}
        Some(ValidationContextType::ValidationContext(v)) => {
            let path = "common_tls_context.validation_context";
            check_validation(v).map_err(|(field, why)| refuse(&format!("{path}.{field}"), why))?;
            plan.trusted_ca_pem = match &v.trusted_ca {
                Some(ca) => Some(pem(
                    name,
                    &format!("{CONTEXT}.{path}.trusted_ca"),
                    Some(ca),
                )?),
                None => None,
            };
            for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
                let at = format!("{path}.match_typed_subject_alt_names[{i}]");
                if m.san_type != SanType::Dns as i32 || !m.oid.is_empty() {
                    return Err(refuse(&at, "only DNS SAN matchers are supported here"));
                }
                match m.matcher.as_ref() {
                    Some(s) if !s.ignore_case => match &s.match_pattern {
                        Some(MatchPattern::Exact(n)) => plan.dns_sans.push(n.to_ascii_lowercase()),
                        _ => return Err(refuse(&at, "only exact names are supported")),
                    },
                    _ => {
                        return Err(refuse(
                            &at,
                            "only exact, case-sensitive names are supported",
                        ));
                    }
                }
            }
            if plan.trusted_ca_pem.is_none() && !plan.dns_sans.is_empty() {
                return Err(refuse(
                    &format!("{path}.match_typed_subject_alt_names"),
                    "SAN checks without a trusted_ca (Envoy refuses them too)",
                ));
            }
        }
        Some(_) => {
            return Err(refuse(
                "common_tls_context",
                "only an inline validation_context is supported for TLS to external servers",
            ));
        }
    }
    Ok(plan)
}

/// Inline PEM text, or an error naming the field.
fn pem(
    name: &str,
    path: &str,
    ds: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>,
) -> Result<String, DecodeError> {
    inline_text(name, ds).map_err(|e| err(name, format!("{path}: {}", e.reason)))
}

type Refusal = (&'static str, &'static str);

#[allow(deprecated)]
fn check_common(c: &CommonTlsContext) -> Result<(), Refusal> {
    let refused: [(&'static str, bool); 8] = [
        ("tls_params", c.tls_params.is_some()),
        (
            "tls_certificate_provider_instance",
            c.tls_certificate_provider_instance.is_some(),
        ),
        (
            "custom_tls_certificate_selector",
            c.custom_tls_certificate_selector.is_some(),
        ),
        (
            "tls_certificate_certificate_provider",
            c.tls_certificate_certificate_provider.is_some(),
        ),
        (
            "tls_certificate_certificate_provider_instance",
            c.tls_certificate_certificate_provider_instance.is_some(),
        ),
        ("alpn_protocols", !c.alpn_protocols.is_empty()),
        ("custom_handshaker", c.custom_handshaker.is_some()),
        ("key_log", c.key_log.is_some()),
    ];
    match refused.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err((field, "not enforced by kuma-dp")),
        None => Ok(()),
    }
}

#[allow(deprecated)]
fn check_validation(v: &CertificateValidationContext) -> Result<(), Refusal> {
    let refused: [(&'static str, bool); 14] = [
        (
            "ca_certificate_provider_instance",
            v.ca_certificate_provider_instance.is_some(),
        ),
        ("system_root_certs", v.system_root_certs.is_some()),
        ("watched_directory", v.watched_directory.is_some()),
        (
            "verify_certificate_spki",
            !v.verify_certificate_spki.is_empty(),
        ),
        (
            "verify_certificate_hash",
            !v.verify_certificate_hash.is_empty(),
        ),
        (
            "match_subject_alt_names",
            !v.match_subject_alt_names.is_empty(),
        ),
        (
            "require_signed_certificate_timestamp",
            v.require_signed_certificate_timestamp.is_some(),
        ),
        ("crl", v.crl.is_some()),
        ("allow_expired_certificate", v.allow_expired_certificate),
        ("trust_chain_verification", v.trust_chain_verification != 0),
        (
            "custom_validator_config",
            v.custom_validator_config.is_some(),
        ),
        ("only_verify_leaf_cert_crl", v.only_verify_leaf_cert_crl),
        ("max_verify_depth", v.max_verify_depth.is_some()),
        ("suppress_client_ca_list", v.suppress_client_ca_list),
    ];
    match refused.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err((field, "not enforced by kuma-dp")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        SubjectAltNameMatcher, TlsCertificate,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
    use envoy_types::pb::google::protobuf::UInt32Value;

    use super::*;

    fn inline(text: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(
                text.as_bytes().to_vec(),
            )),
            ..Default::default()
        })
    }

    fn dns(name: &str) -> SubjectAltNameMatcher {
        SubjectAltNameMatcher {
            san_type: SanType::Dns as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(name.into())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn full() -> UpstreamTlsContext {
        UpstreamTlsContext {
            sni: "api.example".into(),
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: inline("CERT"),
                    private_key: inline("KEY"),
                    ..Default::default()
                }],
                validation_context_type: Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: inline("CA"),
                        match_typed_subject_alt_names: vec![dns("api.example")],
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn inline_certificates_sni_and_dns_names_become_the_plan() {
        let u = full();
        assert!(is_origination(&u));
        assert_eq!(
            origination_plan("api", &u),
            Ok(OriginationPlan {
                sni: Some("api.example".into()),
                trusted_ca_pem: Some("CA".into()),
                dns_sans: vec!["api.example".into()],
                client_cert_pem: Some("CERT".into()),
                client_key_pem: Some("KEY".into()),
            })
        );
        // Plain TLS with nothing to check: Envoy verifies nothing, nor does kuma-dp.
        assert_eq!(
            origination_plan("api", &UpstreamTlsContext::default()),
            Ok(OriginationPlan::default())
        );
    }

    #[test]
    fn what_kuma_dp_does_not_enforce_is_refused_with_its_path() {
        let mut renegotiate = full();
        renegotiate.allow_renegotiation = true;
        let mut spki = full();
        if let Some(ValidationContextType::ValidationContext(v)) = spki
            .common_tls_context
            .as_mut()
            .and_then(|c| c.validation_context_type.as_mut())
        {
            v.verify_certificate_spki = vec!["x".into()];
            v.max_verify_depth = Some(UInt32Value { value: 2 });
        }
        let mut uri_san = full();
        if let Some(ValidationContextType::ValidationContext(v)) = uri_san
            .common_tls_context
            .as_mut()
            .and_then(|c| c.validation_context_type.as_mut())
        {
            v.match_typed_subject_alt_names[0].san_type = SanType::Uri as i32;
        }
        let mut no_ca = full();
        if let Some(ValidationContextType::ValidationContext(v)) = no_ca
            .common_tls_context
            .as_mut()
            .and_then(|c| c.validation_context_type.as_mut())
        {
            v.trusted_ca = None;
        }
        let mut alpn = full();
        if let Some(c) = alpn.common_tls_context.as_mut() {
            c.alpn_protocols = vec!["h2".into()];
        }
        let table = [
            (
                renegotiate,
                "transport_socket.typed_config.allow_renegotiation: TLS renegotiation is not supported by kuma-dp (rustls never renegotiates)",
            ),
            (
                spki,
                "transport_socket.typed_config.common_tls_context.validation_context.verify_certificate_spki: not enforced by kuma-dp",
            ),
            (
                uri_san,
                "transport_socket.typed_config.common_tls_context.validation_context.match_typed_subject_alt_names[0]: only DNS SAN matchers are supported here",
            ),
            (
                no_ca,
                "transport_socket.typed_config.common_tls_context.validation_context.match_typed_subject_alt_names: SAN checks without a trusted_ca (Envoy refuses them too)",
            ),
            (
                alpn,
                "transport_socket.typed_config.common_tls_context.alpn_protocols: not enforced by kuma-dp",
            ),
        ];
        for (u, reason) in table {
            let e = origination_plan("api", &u).expect_err(reason);
            assert_eq!((e.name.as_str(), e.reason.as_str()), ("api", reason));
        }
    }
}
