//! Token buckets per peer identity, one set per service. A peer over its
//! rate is refused at once; buckets for quiet peers are pruned so a stream
//! of new identities cannot grow memory without bound.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use super::model::RateLimitSpec;
use crate::identity::SpiffeId;

/// Shards keep contention low when many connections arrive at once.
const SHARDS: usize = 16;
/// Past this many buckets in a shard, full (idle) ones are dropped.
const PRUNE_AT: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<SpiffeId, Bucket>>>,
}

impl RateLimiter {
    pub fn new(spec: RateLimitSpec) -> Self {
        RateLimiter {
            rate: spec.per_identity_per_second,
            burst: f64::from(spec.burst),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token for `peer`; `false` when its bucket is empty.
    pub fn try_acquire(&self, peer: &SpiffeId, now: Instant) -> bool {
        let shard = &self.shards[(self.hasher.hash_one(peer) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(peer) {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                return true;
            }
            return false;
        }
        if map.len() >= PRUNE_AT {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        map.insert(
            peer.clone(),
            Bucket {
                tokens: self.burst - 1.0,
                last: now,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let l = RateLimiter::new(RateLimitSpec {
            per_identity_per_second: 2.0,
            burst: 3,
        });
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let b = SpiffeId::parse("spiffe://td/b").unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.try_acquire(&a, t0)));
        assert!(!l.try_acquire(&a, t0), "burst exhausted");
        assert!(
            l.try_acquire(&b, t0),
            "other identities have their own bucket"
        );
        assert!(!l.try_acquire(&a, t0 + Duration::from_millis(400)));
        assert!(
            l.try_acquire(&a, t0 + Duration::from_millis(600)),
            "refilled at 2/s"
        );
        assert!(!l.try_acquire(&a, t0 + Duration::from_millis(600)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| l.try_acquire(&a, later)));
        assert!(!l.try_acquire(&a, later));
    }

    #[test]
    fn quiet_buckets_are_pruned() {
        let l = RateLimiter::new(RateLimitSpec {
            per_identity_per_second: 1000.0,
            burst: 1,
        });
        let t0 = Instant::now();
        for i in 0..(SHARDS * PRUNE_AT * 2) {
            let id = SpiffeId::parse(&format!("spiffe://td/p{i}")).unwrap();
            l.try_acquire(&id, t0 + Duration::from_millis(i as u64));
        }
        let total: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * (PRUNE_AT + 1), "{total}");
    }
}
