//! Load balancing as kuma-dp runs it, decoded from a cluster (`lb_policy`, `lb_config`,
//! `common_lb_config`) and from a load assignment (`policy.overprovisioning_factor`, locality
//! weights and priorities). What kuma-dp does for each, in `dp/src/balancer.rs`:
//!
//! - `ROUND_ROBIN` (weighted), `RANDOM` (weighted), `LEAST_REQUEST` (the fewest in-flight
//!   requests among `choice_count` sampled endpoints; with unequal weights, the highest
//!   `weight / (active + 1)^bias`), `RING_HASH` (a ring of `minimum_ring_size`..`maximum_ring_size`
//!   points, scaled by weight) and `MAGLEV` (a lookup table of `table_size` entries, a prime);
//! - a priority's share of the load is Envoy's: `min(100, factor/100 × healthy %)`, the rest
//!   spilling to the next priority, normalised when the priorities' health adds up to less;
//! - with `locality_weighted_lb_config`, a locality is chosen by its `load_balancing_weight`
//!   times its availability, then an endpoint inside it.
//!
//! Every other field of `common_lb_config` and of the LB configs is refused with its path.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{LbConfig, LbPolicy};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use meshzone_model::policies::mesh_load_balancing_strategy::is_prime;
use serde::Serialize;

use super::{DecodeError, err, socket_addr, unpack};

/// Envoy's defaults.
pub const DEFAULT_CHOICE_COUNT: u32 = 2;
pub const DEFAULT_MIN_RING: u64 = 1024;
pub const DEFAULT_MAX_RING: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAGLEV_TABLE: u64 = 65537;

/// The balancer of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub enum BalancerPlan {
    #[default]
    RoundRobin,
    Random,
    LeastRequest {
        choice_count: u32,
        /// `active_request_bias` in thousandths (Envoy's default 1.0 is 1000).
        bias_milli: u32,
    },
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
        /// Envoy's `XX_HASH` or `MURMUR_HASH_2`; kuma-dp places points with its own stable
        /// hash either way (which endpoint a key lands on is not Envoy's, the stickiness is).
        murmur: bool,
    },
    Maglev {
        table_size: u64,
    },
}

impl BalancerPlan {
    pub fn hashes(&self) -> bool {
        matches!(
            self,
            BalancerPlan::RingHash { .. } | BalancerPlan::Maglev { .. }
        )
    }
}

/// What a cluster says about balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterBalancing {
    pub balancer: BalancerPlan,
    /// `common_lb_config.locality_weighted_lb_config`.
    pub locality_weighted: bool,
}

/// One locality of a load assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalityPlan {
    pub priority: u32,
    pub weight: u32,
    pub endpoints: Vec<SocketAddr>,
}

/// What a load assignment says about balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AssignmentBalancing {
    /// `policy.overprovisioning_factor`; `None`: not given. kuma-dp then keeps a priority's
    /// whole load while it has any healthy endpoint (Envoy's default factor, 140, would start
    /// spilling below 72 % healthy; a known difference kept so that an unconfigured proxy never
    /// sends traffic to another zone while its own has a healthy instance).
    pub overprovisioning_factor: Option<u32>,
    pub localities: Vec<LocalityPlan>,
}

/// Both, for one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BalancingPlan {
    pub balancer: BalancerPlan,
    pub locality_weighted: bool,
    pub overprovisioning_factor: Option<u32>,
    pub localities: Vec<LocalityPlan>,
}

/// A refused field: its path below the cluster and why.
type Refusal = (String, String);

fn refuse(field: impl Into<String>, what: impl Into<String>) -> Refusal {
    (field.into(), what.into())
}

/// Checks and reads the balancing fields of a cluster (`lb_policy`, `lb_config`,
/// `common_lb_config`); `original_dst` clusters must say `CLUSTER_PROVIDED`.
pub(crate) fn cluster_balancing(
    c: &Cluster,
    original_dst: bool,
) -> Result<ClusterBalancing, Refusal> {
    let policy =
        LbPolicy::try_from(c.lb_policy).map_err(|_| refuse("lb_policy", "unknown value"))?;
    if original_dst {
        if policy != LbPolicy::ClusterProvided {
            return Err(refuse(
                "lb_policy",
                format!(
                    "{} is not enforced by kuma-dp here (only CLUSTER_PROVIDED)",
                    policy.as_str_name()
                ),
            ));
        }
        if c.lb_config.is_some() || c.common_lb_config.is_some() {
            return Err(refuse(
                "lb_config",
                "not enforced by kuma-dp on ORIGINAL_DST clusters",
            ));
        }
        return Ok(ClusterBalancing::default());
    }
    let balancer = match (policy, &c.lb_config) {
        (LbPolicy::RoundRobin, None) => BalancerPlan::RoundRobin,
        (LbPolicy::RoundRobin, Some(LbConfig::RoundRobinLbConfig(rr))) => {
            if rr.slow_start_config.is_some() {
                return Err(refuse(
                    "round_robin_lb_config.slow_start_config",
                    "not enforced by kuma-dp",
                ));
            }
            BalancerPlan::RoundRobin
        }
        (LbPolicy::Random, None) => BalancerPlan::Random,
        (LbPolicy::LeastRequest, None) => BalancerPlan::LeastRequest {
            choice_count: DEFAULT_CHOICE_COUNT,
            bias_milli: 1000,
        },
        (LbPolicy::LeastRequest, Some(LbConfig::LeastRequestLbConfig(lr))) => {
            let at = |f: &str| format!("least_request_lb_config.{f}");
            if lr.slow_start_config.is_some() {
                return Err(refuse(at("slow_start_config"), "not enforced by kuma-dp"));
            }
            let choice_count = lr.choice_count.map_or(DEFAULT_CHOICE_COUNT, |c| c.value);
            if choice_count < 2 {
                return Err(refuse(at("choice_count"), "must be at least 2"));
            }
            let bias = lr
                .active_request_bias
                .as_ref()
                .map_or(1.0, |b| b.default_value);
            if !(0.0..=1000.0).contains(&bias) {
                return Err(refuse(at("active_request_bias"), "must be in 0..=1000"));
            }
            BalancerPlan::LeastRequest {
                choice_count,
                bias_milli: (bias * 1000.0).round() as u32,
            }
        }
        (LbPolicy::RingHash, rh) => {
            let rh = match rh {
                None => Default::default(),
                Some(LbConfig::RingHashLbConfig(rh)) => *rh,
                Some(_) => return Err(refuse("lb_config", "does not match lb_policy RING_HASH")),
            };
            let min_ring_size = rh.minimum_ring_size.map_or(DEFAULT_MIN_RING, |v| v.value);
            let max_ring_size = rh.maximum_ring_size.map_or(DEFAULT_MAX_RING, |v| v.value);
            if min_ring_size == 0
                || min_ring_size > max_ring_size
                || max_ring_size > DEFAULT_MAX_RING
            {
                return Err(refuse(
                    "ring_hash_lb_config",
                    format!(
                        "ring sizes must satisfy 1 <= minimum <= maximum <= {DEFAULT_MAX_RING}"
                    ),
                ));
            }
            let murmur = HashFunction::try_from(rh.hash_function)
                .map_err(|_| refuse("ring_hash_lb_config.hash_function", "unknown value"))?
                == HashFunction::MurmurHash2;
            BalancerPlan::RingHash {
                min_ring_size,
                max_ring_size,
                murmur,
            }
        }
        (LbPolicy::Maglev, m) => {
            let table_size = match m {
                None => DEFAULT_MAGLEV_TABLE,
                Some(LbConfig::MaglevLbConfig(m)) => {
                    m.table_size.map_or(DEFAULT_MAGLEV_TABLE, |v| v.value)
                }
                Some(_) => return Err(refuse("lb_config", "does not match lb_policy MAGLEV")),
            };
            if u32::try_from(table_size).map_or(true, |n| n > 5_000_011 || !is_prime(n)) {
                return Err(refuse(
                    "maglev_lb_config.table_size",
                    "must be a prime of at most 5000011",
                ));
            }
            BalancerPlan::Maglev { table_size }
        }
        (p, None) => {
            return Err(refuse(
                "lb_policy",
                format!("{} is not enforced by kuma-dp", p.as_str_name()),
            ));
        }
        (p, Some(_)) => {
            return Err(refuse(
                "lb_config",
                format!("does not match lb_policy {}", p.as_str_name()),
            ));
        }
    };
    let mut locality_weighted = false;
    if let Some(common) = &c.common_lb_config {
        // Its other fields (the panic threshold, `fail_traffic_on_panic`) are read, and the rest
        // refused with their paths, by `resilience::common_lb`.
        if let Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) =
            &common.locality_config_specifier
        {
            locality_weighted = true;
        }
    }
    Ok(ClusterBalancing {
        balancer,
        locality_weighted,
    })
}

/// The balancing of a cluster, decoded (after `decode_cluster` accepted it), with a STATIC
/// cluster's own load assignment.
pub fn decode_cluster_balancing(
    any: &Any,
) -> Result<(String, ClusterBalancing, Option<AssignmentBalancing>), DecodeError> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    let c: Cluster = unpack(any).map_err(|e| err("cluster", e))?;
    let original_dst = matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32
    );
    let b =
        cluster_balancing(&c, original_dst).map_err(|(f, w)| err(&c.name, format!("{f}: {w}")))?;
    let own = c
        .load_assignment
        .as_ref()
        .map(assignment_balancing)
        .transpose()?;
    Ok((c.name, b, own))
}

/// The balancing of an EDS load assignment.
pub fn decode_assignment_balancing(
    any: &Any,
) -> Result<(String, AssignmentBalancing), DecodeError> {
    let cla: ClusterLoadAssignment = unpack(any).map_err(|e| err("cluster load assignment", e))?;
    let b = assignment_balancing(&cla)?;
    Ok((cla.cluster_name, b))
}

/// The overprovisioning factor and localities of a load assignment (its other fields are
/// checked by `decode_assignment`).
pub fn assignment_balancing(
    cla: &ClusterLoadAssignment,
) -> Result<AssignmentBalancing, DecodeError> {
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let name = &cla.cluster_name;
    let overprovisioning_factor = cla
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref())
        .map(|f| f.value);
    if overprovisioning_factor == Some(0) {
        return Err(err(
            name,
            "policy.overprovisioning_factor: must be greater than 0",
        ));
    }
    let mut localities = Vec::new();
    for l in &cla.endpoints {
        let mut endpoints = Vec::new();
        for e in &l.lb_endpoints {
            if let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier {
                endpoints.push(socket_addr(name, ep.address.as_ref())?);
            }
        }
        localities.push(LocalityPlan {
            priority: l.priority,
            weight: l.load_balancing_weight.as_ref().map_or(0, |w| w.value),
            endpoints,
        });
    }
    Ok(AssignmentBalancing {
        overprovisioning_factor,
        localities,
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        CommonLbConfig, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
    };
    use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};

    use super::*;

    fn cluster(policy: LbPolicy, config: Option<LbConfig>) -> Cluster {
        Cluster {
            name: "c".into(),
            lb_policy: policy as i32,
            lb_config: config,
            ..Default::default()
        }
    }

    #[test]
    fn each_balancer_is_read_and_the_rest_refused_with_its_path() {
        let ok = |c: &Cluster| cluster_balancing(c, false).map(|b| b.balancer);
        assert_eq!(
            ok(&cluster(LbPolicy::RoundRobin, None)),
            Ok(BalancerPlan::RoundRobin)
        );
        assert_eq!(
            ok(&cluster(LbPolicy::Random, None)),
            Ok(BalancerPlan::Random)
        );
        assert_eq!(
            ok(&cluster(
                LbPolicy::LeastRequest,
                Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    choice_count: Some(UInt32Value { value: 4 }),
                    ..Default::default()
                }))
            )),
            Ok(BalancerPlan::LeastRequest {
                choice_count: 4,
                bias_milli: 1000
            })
        );
        assert_eq!(
            ok(&cluster(LbPolicy::RingHash, None)),
            Ok(BalancerPlan::RingHash {
                min_ring_size: DEFAULT_MIN_RING,
                max_ring_size: DEFAULT_MAX_RING,
                murmur: false
            })
        );
        assert_eq!(
            ok(&cluster(
                LbPolicy::Maglev,
                Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: Some(UInt64Value { value: 65536 })
                }))
            ))
            .map_err(|e| e.0),
            Err("maglev_lb_config.table_size".into())
        );
        assert_eq!(
            ok(&cluster(
                LbPolicy::RingHash,
                Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: Some(UInt64Value { value: 10 }),
                    maximum_ring_size: Some(UInt64Value { value: 5 }),
                    ..Default::default()
                }))
            ))
            .map_err(|e| e.0),
            Err("ring_hash_lb_config".into())
        );
        assert_eq!(
            ok(&cluster(
                LbPolicy::Random,
                Some(LbConfig::MaglevLbConfig(Default::default()))
            ))
            .map_err(|e| e.0),
            Err("lb_config".into())
        );
        assert_eq!(
            ok(&cluster(LbPolicy::ClusterProvided, None)).map_err(|e| e.0),
            Err("lb_policy".into())
        );
        let mut c = cluster(LbPolicy::RoundRobin, None);
        c.common_lb_config = Some(CommonLbConfig {
            locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                Default::default(),
            )),
            ..Default::default()
        });
        assert_eq!(
            cluster_balancing(&c, false).map(|b| b.locality_weighted),
            Ok(true)
        );
        // The other `common_lb_config` fields are `resilience::common_lb`'s to read or refuse.
        c.common_lb_config = Some(CommonLbConfig {
            ignore_new_hosts_until_first_hc: true,
            ..Default::default()
        });
        assert_eq!(
            cluster_balancing(&c, false).map(|b| b.locality_weighted),
            Ok(false)
        );
        assert!(cluster_balancing(&cluster(LbPolicy::ClusterProvided, None), true).is_ok());
        assert!(cluster_balancing(&cluster(LbPolicy::RoundRobin, None), true).is_err());
    }
}
