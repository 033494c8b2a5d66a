//! Base builder: the load assignments (EDS) of outbound services and zone-proxy routes.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::EndpointInfo;
use super::common::socket;

/// Endpoints grouped into localities by (priority, zone). The same address in a locality is one
/// endpoint with the weights added up (a remote ingress comes once per tag set it offers).
pub(crate) fn load_assignment(cluster: &str, endpoints: &[EndpointInfo]) -> ClusterLoadAssignment {
    // (priority, zone) → (address, port, weight)
    type Hosts<'a> = Vec<(&'a str, u32, u32)>;
    let mut merged: BTreeMap<(u32, Option<&str>), Hosts> = BTreeMap::new();
    for e in endpoints {
        let group = merged.entry((e.priority, e.zone.as_deref())).or_default();
        match group
            .iter_mut()
            .find(|(a, p, _)| *a == e.address && *p == e.port)
        {
            Some((_, _, w)) => *w = w.saturating_add(e.weight),
            None => group.push((&e.address, e.port, e.weight)),
        }
    }
    let groups: BTreeMap<(u32, Option<&str>), Vec<LbEndpoint>> = merged
        .into_iter()
        .map(|(k, eps)| {
            let lb = eps
                .into_iter()
                .map(|(a, p, w)| lb_endpoint(a, p, w))
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
