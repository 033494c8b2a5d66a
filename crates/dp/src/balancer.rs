//! Which endpoint of a cluster takes a request, as Envoy decides it (`decode::balancing`):
//!
//! 1. **Priority.** Without an overprovisioning factor, the lowest priority with a healthy
//!    endpoint takes everything (kuma-dp's behaviour before policies; see
//!    `AssignmentBalancing::overprovisioning_factor`). With one, each priority's health is
//!    `min(100, factor × healthy / total)` percent, it keeps that share of the load and the rest
//!    spills to the next priority; shares are normalised when the health of all priorities adds
//!    up to less than 100. Everything ejected: all endpoints of the lowest priority (panic).
//! 2. **Locality** (with `locality_weighted`): a locality of that priority by
//!    `weight × min(1, factor × healthy / total)`.
//! 3. **Endpoint**, among the healthy ones there: weighted round robin; weighted random;
//!    least request (the fewest in-flight among `choice_count` samples, or with unequal weights
//!    the highest `weight / (active + 1)^bias`); ring hash (each endpoint owns points on a ring
//!    of `min_ring_size`..`max_ring_size` points in proportion to its weight, a key goes to the
//!    first point at or after its hash); maglev (a lookup table of `table_size` slots filled by
//!    the Maglev permutations, weighted). A hashing balancer without a key picks at random.
//!
//! Hashes are FNV-1a 64 finished with a SplitMix64 mix (fixed, so keys keep their endpoint
//! across restarts and proxies, but not the endpoint Envoy's xxHash would give); "random" draws
//! come from a SplitMix64 sequence.
//! Rings and tables are rebuilt only when the set of healthy endpoints changes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use meshzone_xds::decode::EndpointPlan;
use meshzone_xds::decode::balancing::{BalancerPlan, BalancingPlan};

/// FNV-1a, 64 bit.
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A ring or table, with the healthy endpoints (and weights) it was built from.
type Lookup = Option<(Vec<(SocketAddr, u32)>, Arc<Vec<SocketAddr>>, Arc<Vec<u64>>)>;

/// The per-cluster balancing state, kept while the cluster's plan is unchanged.
pub struct Balancer {
    plan: BalancingPlan,
    cursor: AtomicUsize,
    draws: AtomicU64,
    /// In-flight requests per endpoint (least request).
    active: HashMap<SocketAddr, Arc<AtomicUsize>>,
    lookup: Mutex<Lookup>,
    /// The weight of every endpoint, healthy or not: a ring gives each endpoint as many points
    /// whichever others are healthy, so an ejection moves only the ejected endpoint's keys.
    all_weight: u64,
}

/// Counts one request in flight on an endpoint until dropped.
pub struct InFlight(Option<Arc<AtomicUsize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(a) = &self.0 {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Balancer {
    pub fn new(plan: BalancingPlan, endpoints: &[EndpointPlan]) -> Self {
        Balancer {
            active: endpoints
                .iter()
                .map(|e| (e.address, Arc::default()))
                .collect(),
            plan,
            cursor: AtomicUsize::new(0),
            draws: AtomicU64::new(0),
            lookup: Mutex::new(None),
            all_weight: endpoints.iter().map(|e| u64::from(e.weight.max(1))).sum(),
        }
    }

    /// Whether a request's hash key matters.
    pub fn hashes(&self) -> bool {
        self.plan.balancer.hashes()
    }

    /// Marks a request in flight on `endpoint`.
    pub fn begin(&self, endpoint: SocketAddr) -> InFlight {
        let a = self.active.get(&endpoint).cloned();
        if let Some(a) = &a {
            a.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(a)
    }

    pub fn active(&self, endpoint: SocketAddr) -> usize {
        self.active
            .get(&endpoint)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// A uniform draw in [0, 1).
    fn draw(&self) -> f64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        (splitmix(n) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The endpoint for one request among `endpoints` (`healthy` says which are not ejected),
    /// with the request's hash `key` when the route computed one.
    pub fn choose(
        &self,
        endpoints: &[EndpointPlan],
        healthy: &dyn Fn(SocketAddr) -> bool,
        key: Option<u64>,
    ) -> Option<SocketAddr> {
        if endpoints.is_empty() {
            return None;
        }
        let pool = self.pool(endpoints, healthy);
        if pool.is_empty() {
            return None;
        }
        Some(self.endpoint(&pool, key))
    }

    /// Step 1 and 2: the endpoints the balancer chooses among.
    fn pool<'a>(
        &self,
        endpoints: &'a [EndpointPlan],
        healthy: &dyn Fn(SocketAddr) -> bool,
    ) -> Vec<&'a EndpointPlan> {
        let mut priorities: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let healthy_in = |p: u32| -> Vec<&'a EndpointPlan> {
            endpoints
                .iter()
                .filter(|e| e.priority == p && healthy(e.address))
                .collect()
        };
        let chosen = match self.plan.overprovisioning_factor {
            None => priorities
                .iter()
                .copied()
                .find(|p| !healthy_in(*p).is_empty()),
            Some(factor) => {
                let health: Vec<f64> = priorities
                    .iter()
                    .map(|p| {
                        let total = endpoints.iter().filter(|e| e.priority == *p).count();
                        let up = healthy_in(*p).len();
                        (f64::from(factor) * up as f64 / total.max(1) as f64).min(100.0)
                    })
                    .collect();
                let loads = priority_loads(&health);
                if loads.iter().all(|l| *l == 0.0) {
                    None
                } else {
                    let u = self.draw() * 100.0;
                    let mut acc = 0.0;
                    let mut pick = None;
                    for (i, l) in loads.iter().enumerate() {
                        acc += l;
                        if *l > 0.0 {
                            pick = Some(priorities[i]);
                            if u < acc {
                                break;
                            }
                        }
                    }
                    pick
                }
            }
        };
        let Some(p) = chosen else {
            // Panic: everything of the lowest priority.
            let lowest = priorities[0];
            return endpoints.iter().filter(|e| e.priority == lowest).collect();
        };
        let pool = healthy_in(p);
        if !self.plan.locality_weighted {
            return pool;
        }
        let factor = f64::from(self.plan.overprovisioning_factor.unwrap_or(140));
        let localities: Vec<(f64, Vec<&EndpointPlan>)> = self
            .plan
            .localities
            .iter()
            .filter(|l| l.priority == p && l.weight > 0)
            .map(|l| {
                let members: Vec<&EndpointPlan> = pool
                    .iter()
                    .copied()
                    .filter(|e| l.endpoints.contains(&e.address))
                    .collect();
                let availability = (factor / 100.0 * members.len() as f64
                    / l.endpoints.len().max(1) as f64)
                    .min(1.0);
                (f64::from(l.weight) * availability, members)
            })
            .filter(|(w, m)| *w > 0.0 && !m.is_empty())
            .collect();
        let total: f64 = localities.iter().map(|(w, _)| w).sum();
        if total <= 0.0 {
            return pool;
        }
        let u = self.draw() * total;
        let mut acc = 0.0;
        for (w, members) in &localities {
            acc += w;
            if u < acc {
                return members.clone();
            }
        }
        localities.last().map(|(_, m)| m.clone()).unwrap_or(pool)
    }

    /// Step 3.
    fn endpoint(&self, pool: &[&EndpointPlan], key: Option<u64>) -> SocketAddr {
        let weight = |e: &EndpointPlan| u64::from(e.weight.max(1));
        let weighted = |u: f64| {
            let total: u64 = pool.iter().map(|e| weight(e)).sum();
            let mut n = (u * total as f64) as u64;
            for e in pool {
                if n < weight(e) {
                    return e.address;
                }
                n -= weight(e);
            }
            pool[pool.len() - 1].address
        };
        match &self.plan.balancer {
            BalancerPlan::RoundRobin => {
                let total: usize = pool.iter().map(|e| weight(e) as usize).sum();
                let mut n = self.cursor.fetch_add(1, Ordering::Relaxed) % total.max(1);
                for e in pool {
                    let w = weight(e) as usize;
                    if n < w {
                        return e.address;
                    }
                    n -= w;
                }
                pool[0].address
            }
            BalancerPlan::Random => weighted(self.draw()),
            BalancerPlan::LeastRequest {
                choice_count,
                bias_milli,
            } => {
                let equal = pool.iter().all(|e| e.weight == pool[0].weight);
                if equal {
                    let mut best = pool[(self.draw() * pool.len() as f64) as usize % pool.len()];
                    for _ in 1..*choice_count {
                        let c = pool[(self.draw() * pool.len() as f64) as usize % pool.len()];
                        if self.active(c.address) < self.active(best.address) {
                            best = c;
                        }
                    }
                    best.address
                } else {
                    let bias = f64::from(*bias_milli) / 1000.0;
                    let score = |e: &EndpointPlan| {
                        weight(e) as f64 / ((self.active(e.address) + 1) as f64).powf(bias)
                    };
                    pool.iter()
                        .copied()
                        .fold(pool[0], |b, e| if score(e) > score(b) { e } else { b })
                        .address
                }
            }
            BalancerPlan::RingHash { .. } | BalancerPlan::Maglev { .. } => {
                let Some(key) = key else {
                    return weighted(self.draw());
                };
                // FNV spreads similar inputs poorly; a final mix spreads them over the ring.
                let key = splitmix(key);
                let (points, owners) = self.lookup_for(pool);
                match &self.plan.balancer {
                    BalancerPlan::Maglev { .. } => owners[(key % owners.len() as u64) as usize],
                    _ => {
                        let i = points.partition_point(|p| *p < key);
                        owners[if i == points.len() { 0 } else { i }]
                    }
                }
            }
        }
    }

    /// The ring (sorted points with their owners) or the maglev table (owners by slot) of
    /// the pool, cached while the pool is the same.
    fn lookup_for(&self, pool: &[&EndpointPlan]) -> (Arc<Vec<u64>>, Arc<Vec<SocketAddr>>) {
        let members: Vec<(SocketAddr, u32)> =
            pool.iter().map(|e| (e.address, e.weight.max(1))).collect();
        let mut cache = self.lookup.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, owners, points)) = cache.as_ref()
            && *m == members
        {
            return (points.clone(), owners.clone());
        }
        let (points, owners) = match self.plan.balancer {
            BalancerPlan::Maglev { table_size } => (Vec::new(), maglev(&members, table_size)),
            BalancerPlan::RingHash {
                min_ring_size,
                max_ring_size,
                ..
            } => ring(&members, min_ring_size, max_ring_size, self.all_weight),
            _ => (Vec::new(), Vec::new()),
        };
        let (points, owners) = (Arc::new(points), Arc::new(owners));
        *cache = Some((members, owners.clone(), points.clone()));
        (points, owners)
    }
}

/// Envoy's priority loads (percent) from each priority's health (percent, capped at 100).
pub fn priority_loads(health: &[f64]) -> Vec<f64> {
    let total: f64 = health.iter().sum::<f64>().min(100.0);
    if total <= 0.0 {
        return vec![0.0; health.len()];
    }
    let mut remaining = 100.0;
    health
        .iter()
        .map(|h| {
            let l = (h * 100.0 / total).min(remaining);
            remaining -= l;
            l
        })
        .collect()
}

/// A hash ring: every member owns points in proportion to its weight (at least one), as many
/// as it would have in a ring of all `all_weight` endpoints of `min`..`max` points.
fn ring(
    members: &[(SocketAddr, u32)],
    min: u64,
    max: u64,
    all_weight: u64,
) -> (Vec<u64>, Vec<SocketAddr>) {
    let all_weight = all_weight.max(1);
    let min_weight = u64::from(members.iter().map(|(_, w)| *w).min().unwrap_or(1).max(1));
    // Enough points that the lightest member gets one, within the bounds.
    let size = (all_weight / min_weight).max(min).min(max);
    let mut points: Vec<(u64, SocketAddr)> = Vec::with_capacity(size as usize);
    for (addr, w) in members {
        let n = (size * u64::from(*w)).div_ceil(all_weight).max(1);
        for i in 0..n {
            points.push((splitmix(fnv64(format!("{addr}_{i}").as_bytes())), *addr));
        }
    }
    points.sort_unstable();
    points.into_iter().unzip()
}

/// A Maglev lookup table of `size` slots (a prime), weighted.
fn maglev(members: &[(SocketAddr, u32)], size: u64) -> Vec<SocketAddr> {
    if members.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = size as usize;
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|(addr, _)| {
            let name = addr.to_string();
            let offset = fnv64(name.as_bytes()) % size;
            let skip = splitmix(fnv64(name.as_bytes())) % (size - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = f64::from(members.iter().map(|(_, w)| *w).max().unwrap_or(1));
    let mut next = vec![0u64; members.len()];
    let mut credit = vec![0f64; members.len()];
    let mut table: Vec<Option<usize>> = vec![None; m];
    let mut filled = 0usize;
    while filled < m {
        for i in 0..members.len() {
            credit[i] += f64::from(members[i].1) / max_w;
            if credit[i] < 1.0 {
                continue;
            }
            credit[i] -= 1.0;
            let (offset, skip) = perms[i];
            loop {
                let slot = ((offset + next[i] * skip) % size) as usize;
                next[i] += 1;
                if table[slot].is_none() {
                    table[slot] = Some(i);
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
        .into_iter()
        .map(|i| members[i.unwrap_or(0)].0)
        .collect()
}

#[cfg(test)]
mod tests;
