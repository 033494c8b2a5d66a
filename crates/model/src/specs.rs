//! Spec types: the fields that sit inline beside `type`, `name`, `mesh` and `labels` in Kuma's
//! Universal YAML/JSON. Field names follow Kuma (camelCase). Unknown fields are rejected.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Tags are string pairs; `kuma.io/service` names the service.
pub type Tags = BTreeMap<String, String>;

/// Tags from `(key, value)` pairs.
pub fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub const SERVICE_TAG: &str = "kuma.io/service";
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";
pub const ZONE_TAG: &str = "kuma.io/zone";

// ---------------------------------------------------------------------------------------------
// Mesh

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MeshMtls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<MeshRouting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<MeshNetworking>,
    /// Accepted and stored as given; not acted upon yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    /// Accepted and stored as given; not acted upon yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<serde_json::Value>,
    /// Accepted and stored as given; not acted upon yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_creating_initial_policies: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshMtls {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub enabled_backend: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<CertificateAuthorityBackend>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_validation: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateAuthorityBackend {
    pub name: String,
    #[serde(rename = "type")]
    pub backend_type: String,
    /// `strict` (default) or `permissive` (inbound also accepts plaintext). Kuma writes it in
    /// capitals (`STRICT`/`PERMISSIVE`); either spelling is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_cert: Option<DpCert>,
    /// Backend-specific configuration (for `builtin`: `caCert.RSAbits`, `caCert.expiration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DpCert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<DpCertRotation>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DpCertRotation {
    /// A duration such as `24h`, `1d`, `90m`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expiration: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshRouting {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locality_aware_load_balancing: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zone_egress: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshNetworking {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<MeshOutbound>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshOutbound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<bool>,
}

impl MeshSpec {
    /// The enabled CA backend, when mTLS is on.
    pub fn enabled_mtls_backend(&self) -> Option<&CertificateAuthorityBackend> {
        let mtls = self.mtls.as_ref()?;
        if mtls.enabled_backend.is_empty() {
            return None;
        }
        mtls.backends
            .iter()
            .find(|b| b.name == mtls.enabled_backend)
    }
}

// ---------------------------------------------------------------------------------------------
// Dataplane

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneSpec {
    pub networking: DataplaneNetworking,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneNetworking {
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Inbound>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Outbound>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Gateway>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_proxying: Option<TransparentProxying>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<EnvoyAdmin>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InboundState {
    #[default]
    Ready,
    NotReady,
    Ignored,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inbound {
    #[serde(default)]
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<InboundState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_probe: Option<ServiceProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<InboundHealth>,
}

impl Inbound {
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }

    /// Ready unless marked otherwise, by `state` or by the legacy `health.ready: false`.
    pub fn is_healthy(&self) -> bool {
        match self.state {
            Some(InboundState::NotReady) | Some(InboundState::Ignored) => false,
            Some(InboundState::Ready) => true,
            None => self.health.as_ref().is_none_or(|h| h.ready),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundHealth {
    #[serde(default)]
    pub ready: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceProbe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Outbound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub port: u32,
    #[serde(default)]
    pub tags: Tags,
}

impl Outbound {
    pub const DEFAULT_ADDRESS: &'static str = "127.0.0.1";

    pub fn address(&self) -> &str {
        self.address.as_deref().unwrap_or(Self::DEFAULT_ADDRESS)
    }

    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    #[serde(default)]
    pub tags: Tags,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub gateway_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransparentProxying {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_port_inbound: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_port_outbound: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direct_access_services: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reachable_services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyAdmin {
    #[serde(default)]
    pub port: u32,
}

// ---------------------------------------------------------------------------------------------
// Zone proxies

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneIngressSpec {
    /// Empty in the zone that owns the ingress; global fills in the zone it came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    pub networking: ZoneIngressNetworking,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_services: Vec<AvailableService>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneIngressNetworking {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<EnvoyAdmin>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AvailableService {
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub instances: u32,
    #[serde(default)]
    pub mesh: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external_service: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneEgressSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    pub networking: ZoneEgressNetworking,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneEgressNetworking {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<EnvoyAdmin>,
}

// ---------------------------------------------------------------------------------------------
// Zone and insights

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneSpec {
    /// Unset means enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl ZoneSpec {
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// Counters of one stream (xDS or KDS): what was sent and how the peer answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseCounters {
    #[serde(default)]
    pub responses_sent: u64,
    #[serde(default)]
    pub responses_acknowledged: u64,
    #[serde(default)]
    pub responses_rejected: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubscriptionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub total: ResponseCounters,
    /// Per resource type (xDS type URL or KDS type name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stat: BTreeMap<String, ResponseCounters>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneInsightSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<KdsSubscription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KdsSubscription {
    pub id: String,
    #[serde(default)]
    pub global_instance_id: String,
    #[serde(default)]
    pub zone_instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub status: SubscriptionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ComponentVersions>,
    #[serde(default)]
    pub generation: u32,
    /// The zone CP's configuration, as JSON text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auth_token_provided: bool,
}

/// Versions of the components on the other end of a subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ComponentVersions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kuma_cp: Option<BuildVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kuma_dp: Option<BuildVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy: Option<BuildVersion>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildVersion {
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub git_tag: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub git_commit: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build_date: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneInsightSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<DiscoverySubscription>,
    #[serde(default, rename = "mTLS", skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsInsight>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiscoverySubscription {
    pub id: String,
    #[serde(default)]
    pub control_plane_instance_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub status: SubscriptionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ComponentVersions>,
    #[serde(default)]
    pub generation: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MtlsInsight {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expiration_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_certificate_regeneration: Option<DateTime<Utc>>,
    #[serde(default)]
    pub certificate_regenerations: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issued_backend: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_backends: Vec<String>,
}

/// Status of a zone ingress or egress proxy: its ADS subscriptions (ZoneIngressInsight,
/// ZoneEgressInsight).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneProxyInsightSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<DiscoverySubscription>,
}

/// When a subscription connected and, if it has ended, when it disconnected.
pub type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Something with subscriptions that may still be open.
pub trait Subscriptions {
    /// Connect/disconnect times of every subscription, oldest first.
    fn windows(&self) -> Vec<Window>;

    /// Online iff some subscription connected and has not disconnected.
    fn is_online(&self) -> bool {
        self.windows()
            .iter()
            .any(|(connect, disconnect)| connect.is_some() && disconnect.is_none())
    }
}

impl Subscriptions for ZoneInsightSpec {
    fn windows(&self) -> Vec<Window> {
        self.subscriptions
            .iter()
            .map(|s| (s.connect_time, s.disconnect_time))
            .collect()
    }
}

impl Subscriptions for ZoneProxyInsightSpec {
    fn windows(&self) -> Vec<Window> {
        self.subscriptions
            .iter()
            .map(|s| (s.connect_time, s.disconnect_time))
            .collect()
    }
}

impl Subscriptions for DataplaneInsightSpec {
    fn windows(&self) -> Vec<Window> {
        self.subscriptions
            .iter()
            .map(|s| (s.connect_time, s.disconnect_time))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets and service insights

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSpec {
    /// Base64 of the secret bytes.
    #[serde(default)]
    pub data: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceInsightSpec {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceStat>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Online,
    #[default]
    Offline,
    PartiallyDegraded,
    NotAvailable,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceStat {
    pub status: ServiceStatus,
    pub dataplanes: DataplaneCounts,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub issued_backends: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataplaneCounts {
    #[serde(default)]
    pub online: u32,
    #[serde(default)]
    pub offline: u32,
    #[serde(default)]
    pub total: u32,
}

/// State a control plane keeps for itself (e.g. the DNS virtual IPs), as text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigSpec {
    #[serde(default)]
    pub config: String,
}
