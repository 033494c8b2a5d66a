//! What the resilience configurers (MeshCircuitBreaker, MeshHealthCheck) share: reading their
//! merged JSON confs (durations, counts, percentages) and finding the service an outbound
//! cluster belongs to.

use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::Duration;
use serde_json::Value;

/// A Kuma duration string (`10s`, `500ms`) as a protobuf Duration.
pub(crate) fn duration(v: &Value) -> Option<Duration> {
    let d = meshzone_model::policies::duration::parse_non_negative(v.as_str()?)?;
    Some(Duration {
        seconds: i64::try_from(d.as_secs()).ok()?,
        nanos: i32::try_from(d.subsec_nanos()).ok()?,
    })
}

/// A non-negative integer field.
pub(crate) fn u32_at(v: &Value, field: &str) -> Option<u32> {
    u32::try_from(v.get(field)?.as_u64()?).ok()
}

/// A percentage given as an integer or a decimal string.
pub(crate) fn panic_threshold(v: &Value) -> Option<Percent> {
    let value = match v {
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        other => other.as_f64()?,
    };
    Some(Percent { value })
}

/// Calls `edit(service, cluster)` for every EDS cluster of an outbound service (the service's
/// own and its route subsets).
pub(crate) fn for_each_outbound_cluster(
    resources: &mut crate::generate::Resources,
    mut edit: impl FnMut(&str, &mut envoy_types::pb::envoy::config::cluster::v3::Cluster),
) {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    for cluster in &mut resources.clusters {
        let eds = cluster.cluster_discovery_type
            == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        if !eds {
            continue;
        }
        if let Some(service) = outbound_service(&cluster.name).map(str::to_string) {
            edit(&service, cluster);
        }
    }
}

/// The service of an outbound cluster: its own name, or `<service>` of a route subset's
/// `<service>_<h>` (`h`: 8 lowercase hex digits, `backend_refs::tags_hash`).
pub(crate) fn outbound_service(cluster: &str) -> Option<&str> {
    if cluster.contains(':') {
        return None; // `localhost:<port>` application clusters, `outbound:passthrough`
    }
    match cluster.rsplit_once('_') {
        Some((service, h))
            if h.len() == 8
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Some(service)
        }
        _ => Some(cluster),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backend_refs::subset_cluster;
    use meshzone_model::specs::tags;

    #[test]
    fn a_subset_cluster_belongs_to_its_service() {
        let subset = subset_cluster("backend_api", &tags(&[("version", "v2")]));
        assert_eq!(outbound_service(&subset), Some("backend_api"));
        assert_eq!(outbound_service("backend_api"), Some("backend_api"));
        assert_eq!(outbound_service("localhost:8080"), None);
        assert_eq!(outbound_service("outbound:passthrough"), None);
    }

    #[test]
    fn confs_read_durations_and_percentages() {
        assert_eq!(
            duration(&serde_json::json!("1m500ms")),
            Some(Duration {
                seconds: 60,
                nanos: 500_000_000
            })
        );
        assert_eq!(duration(&serde_json::json!("soon")), None);
        assert_eq!(
            panic_threshold(&serde_json::json!("30.5")).map(|p| p.value),
            Some(30.5)
        );
        assert_eq!(
            panic_threshold(&serde_json::json!(40)).map(|p| p.value),
            Some(40.0)
        );
    }
}
