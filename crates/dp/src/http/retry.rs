//! The pure part of HTTP retries (MeshRetry as Envoy's `retry_policy`): which outcome of a try
//! is retried, how long to back off, and which endpoint the next try goes to.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::{HeaderMap, StatusCode};
use meshzone_xds::decode::{RateLimitedBackOffPlan, ResetFormat, RetryPlan};

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer: its status and, for gRPC, the `grpc-status` of a headers-only answer.
    Answered {
        status: StatusCode,
        grpc_status: Option<u32>,
    },
    /// No connection could be made: the request was not sent.
    ConnectFailure,
    /// The connection broke before an answer.
    Reset,
    /// No answer within the per-try timeout (or the cluster's max stream duration).
    Timeout,
}

/// Whether the policy retries this outcome.
pub fn retriable(plan: &RetryPlan, outcome: Outcome) -> bool {
    let on = &plan.on;
    let any_5xx = on.status_5xx || on.gateway_error;
    match outcome {
        Outcome::ConnectFailure => any_5xx || on.reset || on.connect_failure,
        Outcome::Reset => any_5xx || on.reset,
        Outcome::Timeout => any_5xx || on.reset,
        Outcome::Answered {
            status,
            grpc_status,
        } => {
            let code = status.as_u16();
            (on.status_5xx && status.is_server_error())
                || (on.gateway_error && matches!(code, 502..=504))
                || (on.retriable_4xx && code == 409)
                || (on.retriable_status_codes && plan.retriable_status_codes.contains(&code))
                || grpc_status.is_some_and(|g| {
                    (on.grpc_cancelled && g == 1)
                        || (on.grpc_deadline_exceeded && g == 4)
                        || (on.grpc_resource_exhausted && g == 8)
                        || (on.grpc_internal && g == 13)
                        || (on.grpc_unavailable && g == 14)
                })
        }
    }
}

/// The pause before retry number `n` (0 for the first): exponential from the base, capped at
/// the max, jittered uniformly between the base and that cap (`jitter` in `[0, 1)`).
pub fn back_off(plan: &RetryPlan, n: u32, jitter: f64) -> Duration {
    let base = plan.base_interval;
    let cap = base
        .checked_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(plan.max_interval)
        .min(plan.max_interval)
        .max(base);
    let spread = cap.saturating_sub(base);
    base + spread.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The pause a rate-limited answer asks for (Envoy's `rate_limited_retry_back_off`): the first
/// reset header whose value parses — whole seconds to wait, or a Unix time in the future — to
/// an interval within `max_interval`, jittered up to half again (`jitter` in `[0, 1)`), as
/// Envoy's lower-bound jitter does. `None`: no header applies; the exponential back-off does.
pub fn reset_back_off(
    plan: &RateLimitedBackOffPlan,
    headers: &HeaderMap,
    now_unix_secs: u64,
    jitter: f64,
) -> Option<Duration> {
    plan.reset_headers.iter().find_map(|(name, format)| {
        let value: u64 = headers
            .get(name.as_str())?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let secs = match format {
            ResetFormat::Seconds => value,
            ResetFormat::UnixTimestamp => value.checked_sub(now_unix_secs).filter(|s| *s > 0)?,
        };
        let interval = Duration::from_secs(secs);
        (interval <= plan.max_interval)
            .then(|| interval + interval.mul_f64(jitter.clamp(0.0, 1.0) / 2.0))
    })
}

/// The endpoint of try `n` (0 for the first): the candidates in order, so a retry goes to an
/// endpoint not tried yet while there is one (another endpoint, then the next priority: another
/// zone), then around again.
pub fn endpoint_for(candidates: &[SocketAddr], n: usize) -> Option<SocketAddr> {
    (!candidates.is_empty()).then(|| candidates[n % candidates.len()])
}

/// A cheap jitter source in `[0, 1)` (not for cryptography): the clock's sub-second nanos mixed
/// with a counter.
pub fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let mut x = COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ nanos;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use meshzone_xds::decode::RetryOn;

    use super::*;

    fn plan(on: RetryOn) -> RetryPlan {
        RetryPlan {
            on,
            num_retries: 3,
            per_try_timeout: None,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            retriable_status_codes: vec![418],
            retriable_request_headers: vec![],
            omit_previous_hosts: true,
            rate_limited: None,
        }
    }

    fn answered(code: u16) -> Outcome {
        Outcome::Answered {
            status: StatusCode::from_u16(code).expect("status"),
            grpc_status: None,
        }
    }

    #[test]
    fn each_condition_retries_what_envoy_does() {
        let gateway = plan(RetryOn {
            gateway_error: true,
            ..Default::default()
        });
        let five = plan(RetryOn {
            status_5xx: true,
            ..Default::default()
        });
        let codes = plan(RetryOn {
            retriable_status_codes: true,
            retriable_4xx: true,
            ..Default::default()
        });
        let connect = plan(RetryOn {
            connect_failure: true,
            ..Default::default()
        });
        let grpc = plan(RetryOn {
            grpc_unavailable: true,
            ..Default::default()
        });
        let cases = [
            (&gateway, answered(503), true),
            (&gateway, answered(500), false),
            (&gateway, Outcome::Timeout, true),
            (&gateway, Outcome::ConnectFailure, true),
            (&five, answered(500), true),
            (&five, answered(404), false),
            (&five, Outcome::Reset, true),
            (&codes, answered(418), true),
            (&codes, answered(409), true),
            (&codes, answered(503), false),
            (&connect, Outcome::ConnectFailure, true),
            (&connect, Outcome::Reset, false),
            (&connect, answered(503), false),
            (
                &grpc,
                Outcome::Answered {
                    status: StatusCode::OK,
                    grpc_status: Some(14),
                },
                true,
            ),
            (
                &grpc,
                Outcome::Answered {
                    status: StatusCode::OK,
                    grpc_status: Some(2),
                },
                false,
            ),
        ];
        for (i, (p, outcome, want)) in cases.iter().enumerate() {
            assert_eq!(retriable(p, *outcome), *want, "case {i}: {outcome:?}");
        }
    }

    #[test]
    fn back_off_grows_from_the_base_to_the_cap_with_jitter() {
        let p = plan(RetryOn::default());
        let ms = Duration::from_millis;
        assert_eq!(back_off(&p, 0, 0.99), ms(25));
        assert_eq!(back_off(&p, 1, 0.0), ms(25));
        assert_eq!(back_off(&p, 1, 1.0), ms(50));
        assert_eq!(back_off(&p, 3, 1.0), ms(200));
        assert_eq!(back_off(&p, 10, 1.0), ms(250));
        assert_eq!(back_off(&p, 40, 1.0), ms(250));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
            let d = back_off(&p, 5, j);
            assert!(d >= ms(25) && d <= ms(250), "{d:?}");
        }
    }

    #[test]
    fn a_reset_header_sets_the_pause_when_it_parses_within_the_max() {
        use hyper::header::HeaderValue;
        let plan = RateLimitedBackOffPlan {
            reset_headers: vec![
                ("retry-after".into(), ResetFormat::Seconds),
                ("x-ratelimit-reset".into(), ResetFormat::UnixTimestamp),
            ],
            max_interval: Duration::from_secs(10),
        };
        let now = 1_700_000_000u64;
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let s = Duration::from_secs;
        // (headers, jitter, the pause)
        type Case<'a> = (&'a [(&'a str, &'a str)], f64, Option<Duration>);
        let cases: [Case; 8] = [
            (&[("retry-after", "2")], 0.0, Some(s(2))),
            (
                &[("retry-after", "2")],
                0.99,
                Some(s(2) + s(2).mul_f64(0.495)),
            ),
            // Too long: the next header is tried.
            (
                &[("retry-after", "60"), ("x-ratelimit-reset", "1700000003")],
                0.0,
                Some(s(3)),
            ),
            (&[("retry-after", "60")], 0.0, None),
            // Not a number, or a time already past: not used.
            (&[("retry-after", "soon")], 0.0, None),
            (&[("x-ratelimit-reset", "1699999999")], 0.0, None),
            (&[("x-ratelimit-reset", "1700000010")], 0.0, Some(s(10))),
            (&[], 0.0, None),
        ];
        for (i, (pairs, jitter, want)) in cases.iter().enumerate() {
            assert_eq!(
                reset_back_off(&plan, &headers(pairs), now, *jitter),
                *want,
                "case {i}: {pairs:?}"
            );
        }
    }

    #[test]
    fn a_retry_goes_to_the_next_endpoint() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        assert_eq!(endpoint_for(&[a, b], 0), Some(a));
        assert_eq!(endpoint_for(&[a, b], 1), Some(b));
        assert_eq!(endpoint_for(&[a, b], 2), Some(a));
        assert_eq!(endpoint_for(&[], 0), None);
    }
}
