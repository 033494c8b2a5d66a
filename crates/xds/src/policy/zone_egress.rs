//! What policies configure on a zone egress's SNI routes (Kuma #8297: the egress keeps the
//! health of each remote zone, so that a sidecar never has to judge every remote zone at once
//! through its one egress endpoint). Kuma supports only top-level `targetRef: Mesh` policies on
//! a zone egress; their `to` rule for a route's service configures the route's cluster:
//! - MeshTimeout's `connectionTimeout` becomes the cluster's `connect_timeout`, so a remote
//!   ingress that stopped answering is given up on (and ejected by the egress's passive
//!   health) as fast as the sidecars give up on it;
//! - MeshHealthCheck's timing (interval, timeout, thresholds, jitters, panic threshold) with a
//!   TCP connect check of each remote ingress. The egress passes the mesh's TLS through
//!   untouched, so it cannot speak the application's protocol to an instance: a connection to
//!   the remote zone's ingress is what it can judge, and it judges each zone on its own.
//!   Whatever kind the policy asks for (http, grpc or tcp), a disabled or missing kind runs no
//!   check, as on a sidecar.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::health_check::{HealthChecker, TcpHealthCheck};
use meshzone_model::policies::mesh_timeout::TimeoutConf;
use serde_json::Value;

use super::filters::{pb, typed};
use super::mesh_health_check;

/// The `to` confs, for one route's service, of the policies a zone egress takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressRouteRules {
    /// MeshHealthCheck's merged `default`.
    pub health_check: Option<Value>,
    /// MeshTimeout's merged `default` (a `TimeoutConf`).
    pub timeout: Option<Value>,
}

/// Applies `rules` to the cluster of one SNI route of a zone egress.
pub fn configure_route_cluster(rules: &EgressRouteRules, cluster: &mut Cluster) {
    if let Some(conf) = rules.timeout.as_ref().and_then(typed::<TimeoutConf>)
        && let Some(d) = conf
            .connection_timeout
            .as_deref()
            .and_then(meshzone_model::policies::duration::parse_non_negative)
    {
        cluster.connect_timeout = Some(pb(d));
    }
    if let Some(conf) = &rules.health_check {
        let kind = ["http", "grpc", "tcp"]
            .into_iter()
            .find(|k| mesh_health_check::check_kind(conf, Some(k)).is_some());
        // The conf's own kind for a protocol it names: its timing is what the egress keeps.
        if let Some(mut check) = kind.and_then(|k| mesh_health_check::health_check(conf, Some(k))) {
            check.health_checker = Some(HealthChecker::TcpHealthCheck(TcpHealthCheck::default()));
            check.reuse_connection = None;
            cluster.health_checks = vec![check];
            mesh_health_check::apply_panic(conf, cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Duration;
    use serde_json::json;

    use super::*;

    fn cluster() -> Cluster {
        Cluster {
            name: "echo.default.mesh".into(),
            connect_timeout: Some(Duration {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_health_check_of_any_kind_becomes_a_tcp_connect_check_with_its_timing() {
        for conf in [
            json!({"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 1, "http": {"path": "/health", "expectedStatuses": [200]}}),
            json!({"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 1, "grpc": {}}),
            json!({"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 1, "tcp": {"send": "cGluZw==", "receive": ["cG9uZw=="]}}),
        ] {
            let mut c = cluster();
            configure_route_cluster(
                &EgressRouteRules {
                    health_check: Some(conf.clone()),
                    timeout: None,
                },
                &mut c,
            );
            assert_eq!(c.health_checks.len(), 1, "{conf}");
            let check = &c.health_checks[0];
            assert_eq!(
                check.health_checker,
                Some(HealthChecker::TcpHealthCheck(TcpHealthCheck::default())),
                "connect only, no payloads: {conf}"
            );
            assert_eq!(
                check.interval,
                Some(Duration {
                    seconds: 1,
                    nanos: 0
                })
            );
            assert_eq!(
                check.timeout,
                Some(Duration {
                    seconds: 0,
                    nanos: 500_000_000
                })
            );
            assert_eq!(check.unhealthy_threshold.as_ref().map(|v| v.value), Some(1));
        }
    }

    #[test]
    fn disabled_kinds_and_no_policy_leave_the_cluster_alone() {
        for rules in [
            EgressRouteRules::default(),
            EgressRouteRules {
                health_check: Some(json!({"interval": "1s", "http": {"disabled": true}})),
                timeout: None,
            },
            EgressRouteRules {
                health_check: None,
                timeout: Some(json!({"idleTimeout": "1m"})),
            },
        ] {
            let mut c = cluster();
            configure_route_cluster(&rules, &mut c);
            assert_eq!(c, cluster(), "{rules:?}");
        }
    }

    #[test]
    fn the_connection_timeout_becomes_the_connect_timeout() {
        let mut c = cluster();
        configure_route_cluster(
            &EgressRouteRules {
                health_check: None,
                timeout: Some(json!({"connectionTimeout": "250ms"})),
            },
            &mut c,
        );
        assert_eq!(
            c.connect_timeout,
            Some(Duration {
                seconds: 0,
                nanos: 250_000_000
            })
        );
    }
}
