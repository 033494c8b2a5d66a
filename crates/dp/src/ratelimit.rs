//! MeshRateLimit in kuma-dp: Envoy's token buckets, one per limited inbound listener (HTTP
//! requests, TCP connections), kept with the listener's runtime across updates that do not
//! change the listener (a change starts a full bucket, as Envoy's new filter config does).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use meshzone_xds::decode::{ListenerPlan, TokenBucketPlan};

/// A token bucket: starts full with `max_tokens`; every `fill_interval` adds
/// `tokens_per_fill`, up to `max_tokens`.
pub struct TokenBucket {
    plan: TokenBucketPlan,
    state: Mutex<State>,
}

struct State {
    tokens: u32,
    last_fill: Instant,
}

impl TokenBucket {
    pub fn new(plan: TokenBucketPlan, now: Instant) -> Self {
        TokenBucket {
            plan,
            state: Mutex::new(State {
                tokens: plan.max_tokens,
                last_fill: now,
            }),
        }
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn take_at(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let interval = self.plan.fill_interval.max(Duration::from_nanos(1));
        let elapsed = now.saturating_duration_since(s.last_fill);
        let fills = elapsed.as_nanos() / interval.as_nanos();
        if fills > 0 {
            let added = u64::try_from(fills)
                .unwrap_or(u64::MAX)
                .saturating_mul(u64::from(self.plan.tokens_per_fill));
            s.tokens = u64::from(s.tokens)
                .saturating_add(added)
                .min(u64::from(self.plan.max_tokens)) as u32;
            // Keep the phase of the fills: the next one is due a whole interval after this one.
            let advance = interval.saturating_mul(u32::try_from(fills).unwrap_or(u32::MAX));
            s.last_fill = s.last_fill.checked_add(advance).unwrap_or(now);
        }
        if s.tokens == 0 {
            return false;
        }
        s.tokens -= 1;
        true
    }

    pub fn take(&self) -> bool {
        self.take_at(Instant::now())
    }
}

/// The buckets of one listener.
#[derive(Default)]
pub struct Limits {
    pub http: Option<TokenBucket>,
    pub connections: Option<TokenBucket>,
}

impl Limits {
    pub fn of(plan: &ListenerPlan) -> Limits {
        let now = Instant::now();
        Limits {
            http: plan
                .inbound_http
                .rate_limit
                .as_ref()
                .map(|r| TokenBucket::new(r.bucket, now)),
            connections: plan
                .connection_limit
                .as_ref()
                .map(|c| TokenBucket::new(c.bucket, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_spends_its_tokens_then_refills_per_interval_up_to_its_maximum() {
        let t0 = Instant::now();
        let b = TokenBucket::new(
            TokenBucketPlan {
                max_tokens: 3,
                tokens_per_fill: 2,
                fill_interval: Duration::from_secs(10),
            },
            t0,
        );
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!((0..3).all(|_| b.take_at(at(0))), "starts full");
        assert!(!b.take_at(at(9)), "empty until the first fill");
        assert!(b.take_at(at(10)) && b.take_at(at(10)), "one fill: 2 tokens");
        assert!(!b.take_at(at(19)));
        // Five intervals later the bucket is full again, not 10 tokens deep.
        assert_eq!((0..10).filter(|_| b.take_at(at(70))).count(), 3);
        // The fill phase is kept: the next fill is at 80 s, not 70 s + 10 s after a late take.
        assert!(!b.take_at(at(79)));
        assert!(b.take_at(at(80)));
    }
}
