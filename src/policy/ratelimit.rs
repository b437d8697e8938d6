//! Token buckets per peer identity, one set per service. A peer over its
//! rate is refused at once.
//!
//! Memory is bounded without ever scanning: each shard keeps two
//! generations of buckets. New buckets go into the current one; a bucket
//! found in the previous one moves forward when used. When the current
//! generation is full the previous one is dropped whole and the current
//! takes its place, so a bucket is forgotten only after a full generation
//! of other identities went by without it being used (and a forgotten
//! bucket comes back full, which is what a quiet one would be).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use super::model::RateLimitSpec;
use crate::identity::SpiffeId;

/// Shards keep contention low when many connections arrive at once.
const SHARDS: usize = 16;
/// Buckets per generation and shard: at most `2 * SHARDS * GENERATION`
/// buckets are held (about 131,000).
const GENERATION: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
struct Shard {
    current: HashMap<SpiffeId, Bucket>,
    previous: HashMap<SpiffeId, Bucket>,
}

pub struct RateLimiter {
    spec: RateLimitSpec,
    rate: f64,
    burst: f64,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl RateLimiter {
    pub fn new(spec: RateLimitSpec) -> Self {
        RateLimiter {
            spec,
            rate: spec.per_identity_per_second,
            burst: f64::from(spec.burst),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// The limit this limiter enforces: a policy reload keeps the limiter
    /// (and so every peer's spent budget) when it is unchanged.
    pub fn spec(&self) -> RateLimitSpec {
        self.spec
    }

    /// Takes one token for `peer`; `false` when its bucket is empty.
    pub fn try_acquire(&self, peer: &SpiffeId, now: Instant) -> bool {
        let shard = &self.shards[(self.hasher.hash_one(peer) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = shard.current.get_mut(peer) {
            return self.take(b, now);
        }
        let mut bucket = shard.previous.remove(peer).unwrap_or(Bucket {
            tokens: self.burst,
            last: now,
        });
        let admitted = self.take(&mut bucket, now);
        if shard.current.len() >= GENERATION {
            shard.previous = std::mem::take(&mut shard.current);
        }
        shard.current.insert(peer.clone(), bucket);
        admitted
    }

    fn take(&self, b: &mut Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum()
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
    fn memory_is_bounded_and_a_busy_peer_keeps_its_spent_budget() {
        let l = RateLimiter::new(RateLimitSpec {
            per_identity_per_second: 0.001,
            burst: 2,
        });
        let busy = SpiffeId::parse("spiffe://td/busy").unwrap();
        let t0 = Instant::now();
        assert!(l.try_acquire(&busy, t0) && l.try_acquire(&busy, t0));
        // Many more identities than the limiter holds go by; the busy
        // peer keeps asking now and then, and is never given a new burst.
        for i in 0..(SHARDS * GENERATION * 4) {
            let id = SpiffeId::parse(&format!("spiffe://td/p{i}")).unwrap();
            l.try_acquire(&id, t0);
            if i % 1000 == 0 {
                assert!(!l.try_acquire(&busy, t0), "reset after {i} others");
            }
        }
        assert!(l.held() <= 2 * SHARDS * GENERATION, "{}", l.held());
    }
}
