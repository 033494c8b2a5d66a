//! MeshFaultInjection's configurer (Kuma's `plugin/xds/configurer.go`, reference §2.9): on
//! every HTTP chain of every inbound, one `envoy.filters.http.fault` per `http[]` entry of each
//! `from` rule (most specific subset first), before the router, matching the rule's clients by
//! the caller header (`inbound_http`: written from the peer certificate by a
//! `header_mutation` filter put before the faults when any rule names tags).
//!
//! An entry becomes `abort.http_status`, `delay.fixed_delay` and
//! `response_rate_limit.fixed_limit.limit_kbps`, each with its percentage as a
//! `FractionalPercent` per million. TCP inbounds get nothing (faults are HTTP only).

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_rate_limit::{
    FixedLimit, LimitType,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, FaultRateLimit};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use meshzone_model::policies::duration::parse_non_negative as parse_duration;
use meshzone_model::policies::inbound_from::Percentage;
use meshzone_model::policies::mesh_fault_injection::{self as mfi, FaultConf};
use meshzone_model::policy::Rule;

use super::inbound_http::{
    HEADER_MUTATION_FILTER, caller_header_filter, caller_matchers, edit_hcm, inbound_rules,
    insert_before_router,
};
use crate::generate::{ListenerOrigin, ProxyInput, Resources};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

fn percent(p: Option<&Percentage>) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator: p?.per_million()?,
        denominator: DenominatorType::Million as i32,
    })
}

/// One `http[]` entry as a fault filter for the clients of `rule`; `None` when it injects
/// nothing (validation keeps such entries out).
fn fault(mesh: &str, rule: &Rule, entry: &mfi::HttpFault) -> Option<HttpFault> {
    let abort = entry.abort.as_ref().and_then(|a| {
        Some(FaultAbort {
            error_type: Some(ErrorType::HttpStatus(u32::try_from(a.http_status?).ok()?)),
            percentage: percent(a.percentage.as_ref()),
            ..Default::default()
        })
    });
    let delay = entry.delay.as_ref().and_then(|d| {
        let value = parse_duration(d.value.as_deref()?)?;
        Some(FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(PbDuration {
                seconds: i64::try_from(value.as_secs()).ok()?,
                nanos: i32::try_from(value.subsec_nanos()).ok()?,
            })),
            percentage: percent(d.percentage.as_ref()),
        })
    });
    let response_rate_limit = entry.response_bandwidth.as_ref().and_then(|b| {
        Some(FaultRateLimit {
            limit_type: Some(LimitType::FixedLimit(FixedLimit {
                limit_kbps: mfi::limit_kbps(b.limit.as_deref()?)?,
            })),
            percentage: percent(b.percentage.as_ref()),
        })
    });
    if abort.is_none() && delay.is_none() && response_rate_limit.is_none() {
        return None;
    }
    Some(HttpFault {
        abort,
        delay,
        response_rate_limit,
        headers: caller_matchers(mesh, &rule.matchers),
        ..Default::default()
    })
}

/// The fault filters of one inbound, in order.
pub(crate) fn faults(mesh: &str, rules: &[Rule]) -> Vec<HttpFault> {
    rules
        .iter()
        .flat_map(|rule| {
            let conf: FaultConf = serde_json::from_value(rule.conf.clone()).unwrap_or_default();
            conf.http
                .unwrap_or_default()
                .iter()
                .filter_map(|entry| fault(mesh, rule, entry))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The configurer: fault filters on every HTTP inbound chain the policy's rules cover.
pub fn configure(input: &ProxyInput<'_>, resources: &mut Resources) {
    let inbounds = &input.dataplane.networking.inbound;
    for generated in &mut resources.listeners {
        let ListenerOrigin::Inbound { index } = generated.origin else {
            continue;
        };
        let Some(inbound) = inbounds.get(index) else {
            continue;
        };
        let faults = faults(
            input.mesh,
            inbound_rules(&input.policies.fault_injection, inbound),
        );
        if faults.is_empty() {
            continue;
        }
        let by_caller = faults.iter().any(|f| !f.headers.is_empty());
        for chain in &mut generated.listener.filter_chains {
            edit_hcm(chain, |hcm| {
                if by_caller {
                    insert_before_router(hcm, HEADER_MUTATION_FILTER, caller_header_filter());
                }
                for f in &faults {
                    insert_before_router(hcm, FAULT_FILTER, pack_any(f.clone()));
                }
            });
        }
    }
}
