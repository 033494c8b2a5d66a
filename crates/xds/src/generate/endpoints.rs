//! Base builder: the load assignments (EDS) of outbound services and zone-proxy routes.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::endpoint::HealthCheckConfig;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::{Struct, UInt32Value};

use super::EndpointInfo;
use super::common::socket;

/// Endpoints grouped into localities by (priority, zone). The same address in a locality is one
/// endpoint with the weights added up (a remote ingress comes once per tag set it offers).
pub(crate) fn load_assignment(cluster: &str, endpoints: &[EndpointInfo]) -> ClusterLoadAssignment {
    // (priority, zone) → (address, port, weight, via the egress)
    type Hosts<'a> = Vec<(&'a str, u32, u32, bool)>;
    let mut merged: BTreeMap<(u32, Option<&str>), Hosts> = BTreeMap::new();
    for e in endpoints {
        let group = merged.entry((e.priority, e.zone.as_deref())).or_default();
        match group
            .iter_mut()
            .find(|(a, p, _, _)| *a == e.address && *p == e.port)
        {
            Some((_, _, w, egress)) => {
                *w = w.saturating_add(e.weight);
                *egress |= e.via_egress;
            }
            None => group.push((&e.address, e.port, e.weight, e.via_egress)),
        }
    }
    let groups: BTreeMap<(u32, Option<&str>), Vec<LbEndpoint>> = merged
        .into_iter()
        .map(|(k, eps)| {
            let lb = eps
                .into_iter()
                .map(|(a, p, w, egress)| {
                    let mut lb = lb_endpoint(a, p, w);
                    if egress {
                        mark_zone_egress(&mut lb);
                    }
                    lb
                })
                .collect();
            (k, lb)
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: groups
            .into_iter()
            .map(|((priority, zone), lb_endpoints)| LocalityLbEndpoints {
                // Always present (gRPC requires it), empty without a zone.
                locality: Some(Locality {
                    zone: zone.unwrap_or_default().to_string(),
                    ..Default::default()
                }),
                // gRPC drops localities without a weight; Envoy ignores it unless
                // locality-weighted balancing is on.
                load_balancing_weight: Some(UInt32Value {
                    value: lb_endpoints
                        .iter()
                        .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
                        .sum::<u32>()
                        .max(1),
                }),
                lb_endpoints,
                priority,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Marks an endpoint that is the zone's egress (Kuma #8297): the [`super::ZONE_EGRESS_METADATA`]
/// mark, and no active checks from the sidecar. The egress carries every remote zone's share
/// and checks each remote ingress itself, so a sidecar's probe through it would judge the whole
/// egress by whichever remote zone the egress picked for that probe.
fn mark_zone_egress(lb: &mut LbEndpoint) {
    lb.metadata = Some(Metadata {
        filter_metadata: [(super::ZONE_EGRESS_METADATA.to_string(), Struct::default())]
            .into_iter()
            .collect(),
        ..Default::default()
    });
    if let Some(HostIdentifier::Endpoint(e)) = &mut lb.host_identifier {
        e.health_check_config = Some(HealthCheckConfig {
            disable_active_health_check: true,
            ..Default::default()
        });
    }
}

pub(crate) fn lb_endpoint(address: &str, port: u32, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(address, port)),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value {
            value: weight.max(1),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, zone: Option<&str>, via_egress: bool) -> EndpointInfo {
        EndpointInfo {
            address: address.into(),
            port: 10002,
            weight: 1,
            zone: zone.map(str::to_string),
            priority: 0,
            tags: Default::default(),
            via_egress,
        }
    }

    /// The egress mark survives the merge of one address's tag sets and reaches kuma-dp's plan.
    #[test]
    fn the_zone_egress_mark_goes_from_the_load_assignment_to_the_plan() {
        let cla = load_assignment(
            "backend",
            &[
                endpoint("10.0.0.1", Some("zone-1"), false),
                endpoint("10.0.0.9", None, true),
                endpoint("10.0.0.9", None, true),
            ],
        );
        let marked: Vec<bool> = cla
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| e.metadata.is_some())
            .collect();
        // Localities sort by (priority, zone): the egress's (no zone) comes first.
        assert_eq!(marked, [true, false], "one merged egress endpoint, marked");

        let plans = crate::decode::clusters::endpoints_of("backend", "", &cla).expect("decodes");
        let egress: Vec<(String, bool, bool)> = plans
            .iter()
            .map(|p| {
                (
                    p.address.to_string(),
                    p.via_zone_egress,
                    p.no_active_health_check,
                )
            })
            .collect();
        // The egress is marked and left alone by the sidecar's active checks.
        assert_eq!(
            egress,
            [
                ("10.0.0.9:10002".to_string(), true, true),
                ("10.0.0.1:10002".to_string(), false, false)
            ]
        );
    }
}
