//! MeshLoadBalancingStrategy (reference §2.6): how the selected proxies spread requests over the
//! endpoints of a destination. `to[].default` holds `localityAwareness` (off with `disabled`;
//! `localZone.affinityTags` weighting local endpoints; `crossZone.failover` ordering the other
//! zones, `failoverThreshold` when to spill over), `loadBalancer` (RoundRobin, LeastRequest,
//! RingHash, Random, Maglev with their settings) and `hashPolicies` for the hashing balancers.
//! The deprecated forms Kuma still accepts are kept: `ringHash.hashPolicies` and
//! `maglev.hashPolicies` (used when the top-level `hashPolicies` is absent) and the hash type
//! `SourceIP` (the same as `Connection{sourceIP: true}`).

use serde::{Deserialize, Serialize};

use super::duration::parse_non_negative as parse_duration;
use super::{PolicyKind, check_target_ref, check_top_level, to_items};
use crate::descriptor::ResourceType;
use crate::policy::{PolicySpec, Section, TargetRef, TargetRefKind};
use crate::validate::Violations;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshLoadBalancingStrategy {
    /// The client proxies; `{kind: Mesh}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<LbTo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LbTo {
    pub target_ref: TargetRef,
    #[serde(default)]
    pub default: LbConf,
}

/// The conf of one `to` item, also the merged conf a proxy's outbound gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LbConf {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_awareness: Option<LocalityAwareness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityAwareness {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_zone: Option<LocalZone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<CrossZone>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalZone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_tags: Option<Vec<AffinityTag>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AffinityTag {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CrossZone {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Vec<Failover>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_threshold: Option<FailoverThreshold>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failover {
    /// The rule applies only to proxies of these zones; every proxy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FromZones>,
    pub to: ToZones,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FromZones {
    #[serde(default)]
    pub zones: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToZones {
    #[serde(rename = "type")]
    pub to_type: ToZoneType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToZoneType {
    Any,
    Only,
    AnyExcept,
    None,
}

impl ToZones {
    /// Whether traffic may go to `zone` under this rule.
    pub fn covers(&self, zone: &str) -> bool {
        let listed = self
            .zones
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|z| z == zone);
        match self.to_type {
            ToZoneType::Any => true,
            ToZoneType::Only => listed,
            ToZoneType::AnyExcept => !listed,
            ToZoneType::None => false,
        }
    }
}

/// `percentage`: an integer or a decimal string (Kubernetes' IntOrString), in (0, 100].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverThreshold {
    pub percentage: IntOrString,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl IntOrString {
    /// The value as a number; `None` when the string is not a decimal number.
    pub fn value(&self) -> Option<f64> {
        match self {
            IntOrString::Int(n) => Some(*n as f64),
            IntOrString::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        }
    }
}

impl FailoverThreshold {
    /// Envoy's `overprovisioning_factor`: `100 / percentage × 100` (percentage 50 → 200).
    pub fn overprovisioning_factor(&self) -> Option<u32> {
        let p = self
            .percentage
            .value()
            .filter(|p| *p > 0.0 && *p <= 100.0)?;
        Some((100.0 / p * 100.0).round() as u32)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(rename = "type")]
    pub lb_type: LbType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_robin: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request: Option<LeastRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LbType {
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
    Maglev,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeastRequest {
    /// How many random endpoints are compared (default 2, at least 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u32>,
    /// Envoy's `active_request_bias` (default 1.0, at least 0): with unequal weights, an
    /// endpoint's weight is divided by `(active requests + 1)^bias`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_request_bias: Option<IntOrString>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_function: Option<HashFunction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ring_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ring_size: Option<u32>,
    /// Deprecated: use the conf's `hashPolicies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashFunction {
    XXHash,
    MurmurHash2,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Maglev {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// Deprecated: use the conf's `hashPolicies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_policies: Option<Vec<HashPolicy>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashPolicy {
    #[serde(rename = "type")]
    pub hash_type: HashPolicyType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Cookie>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<NamedKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_state: Option<FilterStateKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashPolicyType {
    Header,
    Cookie,
    /// Deprecated since 2.10: `Connection{sourceIP: true}`.
    SourceIP,
    Connection,
    QueryParameter,
    FilterState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedKey {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cookie {
    pub name: String,
    /// With a ttl, a request without the cookie gets one set on its response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Connection {
    #[serde(rename = "sourceIP", default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterStateKey {
    pub key: String,
}

/// Envoy's largest maglev table.
pub const MAX_MAGLEV_TABLE: u32 = 5_000_011;
/// Envoy's ring size bound (both min and max).
pub const MAX_RING_SIZE: u32 = 8_388_608;

const TO_KINDS: [TargetRefKind; 2] = [TargetRefKind::Mesh, TargetRefKind::MeshService];

/// Whether `n` is prime (Maglev table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

impl LbConf {
    /// The hash policies in force: the conf's own, else (deprecated) the balancer's.
    pub fn effective_hash_policies(&self) -> &[HashPolicy] {
        if let Some(h) = &self.hash_policies {
            return h;
        }
        let lb = self.load_balancer.as_ref();
        let per_lb = match lb.map(|l| l.lb_type) {
            Some(LbType::RingHash) => lb
                .and_then(|l| l.ring_hash.as_ref())
                .and_then(|r| r.hash_policies.as_deref()),
            Some(LbType::Maglev) => lb
                .and_then(|l| l.maglev.as_ref())
                .and_then(|m| m.hash_policies.as_deref()),
            _ => None,
        };
        per_lb.unwrap_or_default()
    }

    fn validate(&self, path: &str, v: &mut Violations) {
        if let Some(la) = &self.locality_awareness {
            validate_locality(la, &format!("{path}.localityAwareness"), v);
        }
        if let Some(lb) = &self.load_balancer {
            validate_load_balancer(lb, &format!("{path}.loadBalancer"), v);
        }
        if let Some(h) = &self.hash_policies {
            validate_hash_policies(h, &format!("{path}.hashPolicies"), v);
        }
    }
}

fn validate_locality(la: &LocalityAwareness, path: &str, v: &mut Violations) {
    if let Some(tags) = la
        .local_zone
        .as_ref()
        .and_then(|l| l.affinity_tags.as_ref())
    {
        let path = format!("{path}.localZone.affinityTags");
        let weighted = tags.iter().filter(|t| t.weight.is_some()).count();
        if weighted != 0 && weighted != tags.len() {
            v.push(
                path.clone(),
                "all or none affinity tags should have a weight",
            );
        }
        for (i, t) in tags.iter().enumerate() {
            if t.key.is_empty() {
                v.push(format!("{path}[{i}].key"), "must not be empty");
            }
            if t.weight == Some(0) {
                v.push(format!("{path}[{i}].weight"), "must be greater than 0");
            }
        }
    }
    let Some(cz) = &la.cross_zone else { return };
    let path = format!("{path}.crossZone");
    for (i, f) in cz.failover.iter().flatten().enumerate() {
        let path = format!("{path}.failover[{i}]");
        if let Some(from) = &f.from {
            if from.zones.is_empty() {
                v.push(format!("{path}.from.zones"), "must not be empty");
            }
            for (j, z) in from.zones.iter().enumerate() {
                if z.is_empty() {
                    v.push(format!("{path}.from.zones[{j}]"), "must not be empty");
                }
            }
        }
        let zones = f.to.zones.as_deref();
        match f.to.to_type {
            ToZoneType::Only | ToZoneType::AnyExcept => {
                if zones.is_none_or(<[String]>::is_empty) {
                    v.push(
                        format!("{path}.to.zones"),
                        "must not be empty when type is Only or AnyExcept",
                    );
                }
            }
            ToZoneType::Any | ToZoneType::None => {
                if zones.is_some_and(|z| !z.is_empty()) {
                    v.push(
                        format!("{path}.to.zones"),
                        "must be empty when type is Any or None",
                    );
                }
            }
        }
        for (j, z) in zones.unwrap_or_default().iter().enumerate() {
            if z.is_empty() {
                v.push(format!("{path}.to.zones[{j}]"), "must not be empty");
            }
        }
    }
    if let Some(t) = &cz.failover_threshold
        && t.overprovisioning_factor().is_none()
    {
        v.push(
            format!("{path}.failoverThreshold.percentage"),
            "must be a number greater than 0 and at most 100",
        );
    }
}

fn validate_load_balancer(lb: &LoadBalancer, path: &str, v: &mut Violations) {
    let set = [
        (LbType::RoundRobin, "roundRobin", lb.round_robin.is_some()),
        (
            LbType::LeastRequest,
            "leastRequest",
            lb.least_request.is_some(),
        ),
        (LbType::RingHash, "ringHash", lb.ring_hash.is_some()),
        (LbType::Random, "random", lb.random.is_some()),
        (LbType::Maglev, "maglev", lb.maglev.is_some()),
    ];
    for (t, field, present) in set {
        if present && t != lb.lb_type {
            v.push(
                format!("{path}.{field}"),
                format!("must not be set when type is {:?}", lb.lb_type),
            );
        }
    }
    if let Some(lr) = &lb.least_request {
        if lr.choice_count.is_some_and(|c| c < 2) {
            v.push(
                format!("{path}.leastRequest.choiceCount"),
                "must be greater than or equal to 2",
            );
        }
        if let Some(b) = &lr.active_request_bias
            && b.value().is_none_or(|b| b < 0.0)
        {
            v.push(
                format!("{path}.leastRequest.activeRequestBias"),
                "must be a number greater than or equal to 0",
            );
        }
    }
    if let Some(rh) = &lb.ring_hash {
        let p = format!("{path}.ringHash");
        for (field, value) in [
            ("minRingSize", rh.min_ring_size),
            ("maxRingSize", rh.max_ring_size),
        ] {
            if value.is_some_and(|n| n == 0 || n > MAX_RING_SIZE) {
                v.push(
                    format!("{p}.{field}"),
                    format!("must be in the range 1..={MAX_RING_SIZE}"),
                );
            }
        }
        if let (Some(min), Some(max)) = (rh.min_ring_size, rh.max_ring_size)
            && min > max
        {
            v.push(
                format!("{p}.minRingSize"),
                "must not be greater than maxRingSize",
            );
        }
        if let Some(h) = &rh.hash_policies {
            validate_hash_policies(h, &format!("{p}.hashPolicies"), v);
        }
    }
    if let Some(m) = &lb.maglev {
        let p = format!("{path}.maglev");
        if let Some(size) = m.table_size {
            if size > MAX_MAGLEV_TABLE {
                v.push(
                    format!("{p}.tableSize"),
                    format!("must not be greater than {MAX_MAGLEV_TABLE}"),
                );
            } else if !is_prime(size) {
                v.push(format!("{p}.tableSize"), "must be a prime number");
            }
        }
        if let Some(h) = &m.hash_policies {
            validate_hash_policies(h, &format!("{p}.hashPolicies"), v);
        }
    }
}

fn validate_hash_policies(policies: &[HashPolicy], path: &str, v: &mut Violations) {
    for (i, h) in policies.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let fields = [
            (HashPolicyType::Header, "header", h.header.is_some()),
            (HashPolicyType::Cookie, "cookie", h.cookie.is_some()),
            (
                HashPolicyType::Connection,
                "connection",
                h.connection.is_some(),
            ),
            (
                HashPolicyType::QueryParameter,
                "queryParameter",
                h.query_parameter.is_some(),
            ),
            (
                HashPolicyType::FilterState,
                "filterState",
                h.filter_state.is_some(),
            ),
        ];
        for (t, field, present) in fields {
            if present && t != h.hash_type {
                v.push(
                    format!("{path}.{field}"),
                    format!("must not be set when type is {:?}", h.hash_type),
                );
            }
            if !present && t == h.hash_type {
                v.push(
                    format!("{path}.{field}"),
                    format!("must be set when type is {:?}", h.hash_type),
                );
            }
        }
        let empty = |name: &str| name.is_empty();
        if h.header.as_ref().is_some_and(|x| empty(&x.name)) {
            v.push(format!("{path}.header.name"), "must not be empty");
        }
        if h.query_parameter.as_ref().is_some_and(|x| empty(&x.name)) {
            v.push(format!("{path}.queryParameter.name"), "must not be empty");
        }
        if h.filter_state.as_ref().is_some_and(|x| empty(&x.key)) {
            v.push(format!("{path}.filterState.key"), "must not be empty");
        }
        if let Some(c) = &h.cookie {
            if c.name.is_empty() {
                v.push(format!("{path}.cookie.name"), "must not be empty");
            }
            if let Some(ttl) = &c.ttl
                && parse_duration(ttl).is_none()
            {
                v.push(
                    format!("{path}.cookie.ttl"),
                    "must be a duration such as 30s or 1h",
                );
            }
        }
    }
}

impl PolicyKind for MeshLoadBalancingStrategy {
    const TYPE: ResourceType = ResourceType::MeshLoadBalancingStrategy;

    fn validate(&self, v: &mut Violations) {
        check_top_level(self.target_ref.as_ref(), Self::TYPE, v);
        if self.to.is_empty() {
            v.push("spec.to", "must have at least one item");
        }
        for (i, to) in self.to.iter().enumerate() {
            let path = format!("spec.to[{i}]");
            check_target_ref(
                &to.target_ref,
                Section::To,
                &TO_KINDS,
                Self::TYPE,
                &format!("{path}.targetRef"),
                v,
            );
            to.default.validate(&format!("{path}.default"), v);
        }
    }

    fn to_engine(&self) -> PolicySpec {
        PolicySpec {
            target_ref: self.target_ref.clone(),
            to: to_items(self.to.iter().map(|t| (&t.target_ref, &t.default))),
            ..PolicySpec::default()
        }
    }
}

#[cfg(test)]
mod tests;
