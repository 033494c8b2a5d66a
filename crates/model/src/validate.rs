//! Validation: every rule violation of a resource, each with its field path, in one pass.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;

use crate::descriptor::ResourceType;
use crate::resource::{Resource, Spec};
use crate::specs::*;

/// One broken rule: the field path (`networking.inbound[0].tags`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// All violations found in a resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Violations {
    pub violations: Vec<Violation>,
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.violations.iter().map(|v| v.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

impl Violations {
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        Violations {
            violations: vec![Violation::new(field, message)],
        }
    }

    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.violations.push(Violation::new(field, message));
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn into_result(self) -> Result<(), Violations> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// Checks every rule of the resource's type. Meta (name, mesh, labels) is checked too.
pub fn validate(resource: &Resource) -> Result<(), Violations> {
    let mut v = Violations::default();
    let rt = resource.resource_type();
    validate_meta(rt, resource, &mut v);
    match &resource.spec {
        Spec::Mesh(s) => validate_mesh(s, &mut v),
        Spec::Dataplane(s) => validate_dataplane(s, &mut v),
        Spec::ZoneIngress(s) => validate_zone_ingress(s, &mut v),
        Spec::ZoneEgress(s) => validate_zone_egress(s, &mut v),
        Spec::Secret(s) | Spec::GlobalSecret(s) => validate_secret(s, &mut v),
        Spec::Zone(_) => {}
        Spec::ZoneInsight(s) => {
            for (i, sub) in s.subscriptions.iter().enumerate() {
                if sub.id.is_empty() {
                    v.push(format!("subscriptions[{i}].id"), "cannot be empty");
                }
            }
        }
        Spec::DataplaneInsight(s) => validate_subscriptions(&s.subscriptions, &mut v),
        Spec::ZoneIngressInsight(s) | Spec::ZoneEgressInsight(s) => {
            validate_subscriptions(&s.subscriptions, &mut v)
        }
        Spec::ServiceInsight(_) | Spec::Config(_) => {}
        Spec::VirtualOutbound(s) => s.validate(&mut v),
        Spec::ExternalService(s) => s.validate(&mut v),
        Spec::Policy(p) => p.validate(&mut v),
    }
    v.into_result()
}

fn validate_subscriptions(subscriptions: &[DiscoverySubscription], v: &mut Violations) {
    for (i, sub) in subscriptions.iter().enumerate() {
        if sub.id.is_empty() {
            v.push(format!("subscriptions[{i}].id"), "cannot be empty");
        }
    }
}

fn validate_meta(rt: ResourceType, r: &Resource, v: &mut Violations) {
    let name = &r.meta.name;
    if name.is_empty() {
        v.push("name", "cannot be empty");
    } else if matches!(rt, ResourceType::Mesh | ResourceType::Zone) {
        if !is_dns_label(name) {
            v.push(
                "name",
                "must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
            );
        }
    } else if name.len() > 253 {
        v.push("name", "must be at most 253 characters");
    } else if !is_resource_name(name) {
        v.push(
            "name",
            "must consist of letters, digits, '.', '-' and '_', starting and ending with a letter or digit",
        );
    }
    if rt.is_mesh_scoped() {
        if r.meta.mesh.is_empty() {
            v.push("mesh", "cannot be empty");
        } else if !is_dns_label(&r.meta.mesh) {
            v.push("mesh", "must be the name of a mesh (a DNS label)");
        }
    } else if !r.meta.mesh.is_empty() {
        v.push("mesh", format!("must not be set: {rt} is not mesh-scoped"));
    }
    for key in r.meta.labels.keys() {
        if key.is_empty() || key.len() > 253 || key.chars().any(char::is_whitespace) {
            v.push(
                format!("labels[{key:?}]"),
                "label key must be 1 to 253 characters without whitespace",
            );
        }
    }
}

fn validate_mesh(m: &MeshSpec, v: &mut Violations) {
    let Some(mtls) = &m.mtls else { return };
    let mut seen = BTreeMap::new();
    for (i, b) in mtls.backends.iter().enumerate() {
        let path = format!("mtls.backends[{i}]");
        if b.name.is_empty() {
            v.push(format!("{path}.name"), "cannot be empty");
        } else if let Some(first) = seen.insert(b.name.as_str(), i) {
            v.push(
                format!("{path}.name"),
                format!(
                    "backend name {:?} is already used by mtls.backends[{first}]",
                    b.name
                ),
            );
        }
        if !matches!(b.backend_type.as_str(), "builtin" | "provided") {
            v.push(
                format!("{path}.type"),
                format!(
                    "unknown backend type {:?}; expected builtin or provided",
                    b.backend_type
                ),
            );
        }
        if let Some(mode) = &b.mode
            && !matches!(mode.to_ascii_lowercase().as_str(), "strict" | "permissive")
        {
            v.push(
                format!("{path}.mode"),
                format!("unknown mode {mode:?}; expected strict or permissive"),
            );
        }
        if let Some(exp) = b
            .dp_cert
            .as_ref()
            .and_then(|d| d.rotation.as_ref())
            .map(|r| r.expiration.as_str())
            .filter(|e| !e.is_empty())
            && parse_duration(exp).is_none()
        {
            v.push(
                format!("{path}.dpCert.rotation.expiration"),
                format!("{exp:?} is not a duration (examples: 24h, 1d, 90m)"),
            );
        }
    }
    if !mtls.enabled_backend.is_empty() && !seen.contains_key(mtls.enabled_backend.as_str()) {
        v.push(
            "mtls.enabledBackend",
            format!(
                "has to be set to one of the backends in the mesh; {:?} is not among them",
                mtls.enabled_backend
            ),
        );
    }
}

fn validate_dataplane(d: &DataplaneSpec, v: &mut Violations) {
    let n = &d.networking;
    if n.address.is_empty() {
        v.push("networking.address", "address can't be empty");
    } else {
        check_address("networking.address", &n.address, v);
    }
    if let Some(a) = &n.advertised_address {
        check_address("networking.advertisedAddress", a, v);
    }
    if n.inbound.is_empty() && n.gateway.is_none() {
        v.push(
            "networking",
            "has to contain at least one inbound interface or gateway",
        );
    }
    if !n.inbound.is_empty() && n.gateway.is_some() {
        v.push(
            "networking.gateway",
            "cannot be defined together with inbound interfaces",
        );
    }
    let mut used: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for (i, inb) in n.inbound.iter().enumerate() {
        let path = format!("networking.inbound[{i}]");
        check_port(&format!("{path}.port"), inb.port, v);
        if let Some(p) = inb.service_port {
            check_port(&format!("{path}.servicePort"), p, v);
        }
        if let Some(a) = &inb.service_address {
            check_ip(&format!("{path}.serviceAddress"), a, v);
        }
        if let Some(a) = &inb.address {
            check_ip(&format!("{path}.address"), a, v);
        }
        check_service_tags(&format!("{path}.tags"), &inb.tags, v);
        let addr = inb.address.clone().unwrap_or_else(|| n.address.clone());
        if inb.port != 0
            && let Some(first) = used.insert((addr, inb.port), i)
        {
            v.push(
                format!("{path}.port"),
                format!(
                    "port {} is already used by networking.inbound[{first}]",
                    inb.port
                ),
            );
        }
    }
    let mut used: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for (i, out) in n.outbound.iter().enumerate() {
        let path = format!("networking.outbound[{i}]");
        check_port(&format!("{path}.port"), out.port, v);
        if let Some(a) = &out.address {
            check_ip(&format!("{path}.address"), a, v);
        }
        check_service_tags(&format!("{path}.tags"), &out.tags, v);
        if out.port != 0
            && let Some(first) = used.insert((out.address().to_string(), out.port), i)
        {
            v.push(
                format!("{path}.port"),
                format!(
                    "{}:{} is already used by networking.outbound[{first}]",
                    out.address(),
                    out.port
                ),
            );
        }
    }
    if let Some(g) = &n.gateway {
        check_service_tags("networking.gateway.tags", &g.tags, v);
        if let Some(t) = &g.gateway_type
            && !matches!(t.as_str(), "DELEGATED" | "BUILTIN")
        {
            v.push(
                "networking.gateway.type",
                format!("unknown gateway type {t:?}; expected DELEGATED or BUILTIN"),
            );
        }
    }
    if let Some(tp) = &n.transparent_proxying {
        for (field, port) in [
            ("redirectPortInbound", tp.redirect_port_inbound),
            ("redirectPortOutbound", tp.redirect_port_outbound),
        ] {
            if let Some(p) = port {
                check_port(&format!("networking.transparentProxying.{field}"), p, v);
            }
        }
    }
    if let Some(admin) = &n.admin {
        check_port("networking.admin.port", admin.port, v);
    }
}

fn validate_zone_ingress(z: &ZoneIngressSpec, v: &mut Violations) {
    let n = &z.networking;
    if n.address.is_empty() {
        v.push("networking.address", "address can't be empty");
    } else {
        check_address("networking.address", &n.address, v);
    }
    check_port("networking.port", n.port, v);
    match (&n.advertised_address, n.advertised_port) {
        (Some(a), Some(p)) => {
            check_address("networking.advertisedAddress", a, v);
            check_port("networking.advertisedPort", p, v);
        }
        (Some(_), None) => v.push(
            "networking.advertisedPort",
            "has to be set together with advertisedAddress",
        ),
        (None, Some(_)) => v.push(
            "networking.advertisedAddress",
            "has to be set together with advertisedPort",
        ),
        (None, None) => {}
    }
    for (i, s) in z.available_services.iter().enumerate() {
        let path = format!("availableServices[{i}]");
        check_service_tags(&format!("{path}.tags"), &s.tags, v);
        if s.mesh.is_empty() {
            v.push(format!("{path}.mesh"), "cannot be empty");
        }
    }
}

fn validate_zone_egress(z: &ZoneEgressSpec, v: &mut Violations) {
    let n = &z.networking;
    if n.address.is_empty() {
        v.push("networking.address", "address can't be empty");
    } else {
        check_address("networking.address", &n.address, v);
    }
    check_port("networking.port", n.port, v);
}

fn validate_secret(s: &SecretSpec, v: &mut Violations) {
    if s.data.is_empty() {
        v.push("data", "cannot be empty");
    } else if base64::engine::general_purpose::STANDARD
        .decode(s.data.as_bytes())
        .is_err()
    {
        v.push("data", "must be valid base64");
    }
}

fn check_port(field: &str, port: u32, v: &mut Violations) {
    if !(1..=65535).contains(&port) {
        v.push(field, "port must be in the range from 1 to 65535");
    }
}

fn check_ip(field: &str, value: &str, v: &mut Violations) {
    if value.parse::<IpAddr>().is_err() {
        v.push(field, format!("{value:?} is not a valid IP address"));
    }
}

fn check_address(field: &str, value: &str, v: &mut Violations) {
    if value.parse::<IpAddr>().is_err() && !is_hostname(value) {
        v.push(
            field,
            format!("{value:?} is not a valid IP address or hostname"),
        );
    }
}

pub(crate) fn check_service_tags(field: &str, tags: &Tags, v: &mut Violations) {
    match tags.get(SERVICE_TAG) {
        None => v.push(field, format!("tag {SERVICE_TAG:?} is required")),
        Some(s) if s.is_empty() => v.push(
            format!("{field}[{SERVICE_TAG:?}]"),
            "tag value cannot be empty",
        ),
        Some(_) => {}
    }
    for (key, value) in tags {
        let path = format!("{field}[{key:?}]");
        if key.is_empty() || !key.chars().all(is_tag_char) {
            v.push(
                &path,
                "tag name must consist of letters, digits, '.', '-', '_', ':' and '/'",
            );
        }
        if value.is_empty() {
            if key != SERVICE_TAG {
                v.push(&path, "tag value cannot be empty");
            }
        } else if !value.chars().all(is_tag_char) {
            v.push(
                &path,
                "tag value must consist of letters, digits, '.', '-', '_', ':' and '/'",
            );
        }
    }
    if let Some(p) = tags.get(PROTOCOL_TAG)
        && !matches!(p.as_str(), "tcp" | "http" | "http2" | "grpc" | "kafka")
    {
        v.push(
            format!("{field}[{PROTOCOL_TAG:?}]"),
            format!("unknown protocol {p:?}; expected one of tcp, http, http2, grpc, kafka"),
        );
    }
}

fn is_tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/')
}

/// RFC 1123 label: lowercase letters, digits and '-', at most 63, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_resource_name(s: &str) -> bool {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && ok_end(s.chars().next())
        && ok_end(s.chars().last())
}

/// RFC 1123 hostname (letters of either case are accepted).
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // A name of only digits and dots is a malformed IP, not a hostname.
        && !s.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Parses durations such as `24h`, `1d`, `90m`, `1h30m`, `10y`, `500ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => {
                total += Duration::from_millis(n);
                rest = &rest[unit_len..];
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "y" => 365 * 86_400,
            _ => return None,
        };
        total += Duration::from_secs(n.checked_mul(secs)?);
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_duration("10y"),
            Some(Duration::from_secs(315_360_000))
        );
        for bad in ["", "h", "12", "1w", "-1h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_and_addresses() {
        assert!(is_dns_label("default"));
        assert!(!is_dns_label("Default"));
        assert!(!is_dns_label("-a"));
        assert!(is_hostname("ingress.zone-1.example.com"));
        assert!(!is_hostname("300.1.1.1"));
        assert!(!is_hostname("bad_host"));
        assert!(is_resource_name("dp-1.zone_a"));
        assert!(!is_resource_name("dp 1"));
    }
}
