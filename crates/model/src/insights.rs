//! Derived views: the per-mesh service summary computed from Dataplanes and their insights.

use std::collections::{BTreeMap, BTreeSet};

use crate::specs::{
    DataplaneCounts, DataplaneInsightSpec, DataplaneSpec, InboundState, ServiceInsightSpec,
    ServiceStat, ServiceStatus, Subscriptions, ZONE_TAG,
};

/// Name of the one ServiceInsight per mesh, as Kuma names it.
pub fn service_insight_name(mesh: &str) -> String {
    format!("all-services-{mesh}")
}

/// Summarises the services of one mesh: for every `kuma.io/service` of a non-ignored inbound,
/// how many Dataplanes serve it and how many of those are online. `insights` is keyed by
/// Dataplane name; a Dataplane without an insight is offline.
pub fn compute_service_insight<'a>(
    dataplanes: impl IntoIterator<Item = (&'a str, &'a DataplaneSpec)>,
    insights: &BTreeMap<String, &DataplaneInsightSpec>,
) -> ServiceInsightSpec {
    let mut services: BTreeMap<String, ServiceStat> = BTreeMap::new();
    for (name, dp) in dataplanes {
        let online = insights.get(name).is_some_and(|i| i.is_online());
        let backend = insights
            .get(name)
            .and_then(|i| i.mtls.as_ref())
            .map(|m| m.issued_backend.clone())
            .filter(|b| !b.is_empty());
        let mut counted = BTreeSet::new();
        for inbound in &dp.networking.inbound {
            if inbound.state == Some(InboundState::Ignored) {
                continue;
            }
            let Some(service) = inbound.service() else {
                continue;
            };
            if !counted.insert(service.to_string()) {
                continue;
            }
            let stat = services.entry(service.to_string()).or_default();
            stat.dataplanes.total += 1;
            if online {
                stat.dataplanes.online += 1;
            } else {
                stat.dataplanes.offline += 1;
            }
            if let Some(b) = &backend {
                *stat.issued_backends.entry(b.clone()).or_default() += 1;
            }
            if let Some(zone) = inbound.tags.get(ZONE_TAG)
                && !stat.zones.contains(zone)
            {
                stat.zones.push(zone.clone());
                stat.zones.sort();
            }
        }
    }
    for stat in services.values_mut() {
        stat.status = status_of(&stat.dataplanes);
    }
    ServiceInsightSpec { services }
}

fn status_of(c: &DataplaneCounts) -> ServiceStatus {
    if c.total == 0 {
        ServiceStatus::NotAvailable
    } else if c.online == c.total {
        ServiceStatus::Online
    } else if c.online == 0 {
        ServiceStatus::Offline
    } else {
        ServiceStatus::PartiallyDegraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specs::{DiscoverySubscription, Inbound};
    use chrono::{TimeZone, Utc};

    fn dp(services: &[&str]) -> DataplaneSpec {
        let mut d = DataplaneSpec::default();
        d.networking.address = "10.0.0.1".into();
        for (i, s) in services.iter().enumerate() {
            let mut inb = Inbound {
                port: 8000 + i as u32,
                ..Default::default()
            };
            inb.tags.insert("kuma.io/service".into(), s.to_string());
            d.networking.inbound.push(inb);
        }
        d
    }

    #[test]
    fn counts_online_per_service_once_per_dataplane() {
        let a = dp(&["web", "web"]);
        let b = dp(&["web", "db"]);
        let online = DataplaneInsightSpec {
            subscriptions: vec![DiscoverySubscription {
                id: "1".into(),
                connect_time: Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
                ..Default::default()
            }],
            mtls: None,
        };
        let insights = BTreeMap::from([("a".to_string(), &online)]);
        let si = compute_service_insight([("a", &a), ("b", &b)], &insights);
        let web = &si.services["web"];
        assert_eq!((web.dataplanes.online, web.dataplanes.total), (1, 2));
        assert_eq!(web.status, ServiceStatus::PartiallyDegraded);
        assert_eq!(si.services["db"].status, ServiceStatus::Offline);
    }
}

/// What a zone's ingresses offer other zones: one entry per (mesh, inbound tag set) of the
/// zone's healthy inbounds, with the number of instances, sorted by mesh then tags.
pub fn available_services<'a>(
    dataplanes: impl IntoIterator<Item = (&'a str, &'a DataplaneSpec)>,
) -> Vec<crate::specs::AvailableService> {
    let mut groups: BTreeMap<(String, BTreeMap<String, String>), u32> = BTreeMap::new();
    for (mesh, dp) in dataplanes {
        for inbound in dp.networking.inbound.iter().filter(|i| i.is_healthy()) {
            if inbound.service().is_none() {
                continue;
            }
            *groups
                .entry((mesh.to_string(), inbound.tags.clone()))
                .or_default() += 1;
        }
    }
    groups
        .into_iter()
        .map(|((mesh, tags), instances)| crate::specs::AvailableService {
            tags,
            instances,
            mesh,
            external_service: false,
        })
        .collect()
}

#[cfg(test)]
mod available_tests {
    use super::*;
    use crate::specs::{Inbound, InboundState};

    #[test]
    fn groups_healthy_inbounds_by_mesh_and_tags() {
        let dp = |service: &str, state: Option<InboundState>| {
            let mut d = DataplaneSpec::default();
            d.networking.address = "10.0.0.1".into();
            let mut i = Inbound {
                port: 1,
                state,
                ..Default::default()
            };
            i.tags.insert("kuma.io/service".into(), service.into());
            d.networking.inbound.push(i);
            d
        };
        let (a, b, c, down) = (
            dp("web", None),
            dp("web", None),
            dp("api", None),
            dp("web", Some(InboundState::NotReady)),
        );
        let list = available_services([
            ("m1", &a),
            ("m1", &b),
            ("m1", &c),
            ("m1", &down),
            ("m2", &a),
        ]);
        let summary: Vec<(String, String, u32)> = list
            .iter()
            .map(|s| {
                (
                    s.mesh.clone(),
                    s.tags["kuma.io/service"].clone(),
                    s.instances,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("m1".into(), "api".into(), 1),
                ("m1".into(), "web".into(), 2),
                ("m2".into(), "web".into(), 1)
            ]
        );
    }
}
