//! One outbound upstream's endpoints and what guards them: a breaker per
//! endpoint, a latency EWMA for choosing (power of two choices, as Linkerd
//! does), exact limits on connections, pending and active requests (one
//! shared atomic each, not one per thread as in Envoy), and a retry budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::{Admitted, Breaker, CircuitState, Outcome, Transition};
use crate::config::{Endpoint, UpstreamConfig};
use prometheus::{Gauge, IntCounter, IntGauge};

use crate::metrics::UpstreamFamilies;

/// One upstream's series, resolved once.
pub struct UpstreamMetrics {
    pub endpoints: Vec<EndpointMetrics>,
    rejections: Vec<(&'static str, IntCounter)>,
    pub retries: IntCounter,
}

impl UpstreamMetrics {
    /// Resolves (and so exports) every series of one upstream.
    pub fn new(families: &UpstreamFamilies, name: &str, endpoints: &[String]) -> Self {
        UpstreamMetrics {
            endpoints: endpoints
                .iter()
                .map(|e| EndpointMetrics {
                    state: families.circuit_state.with_label_values(&[name, e]),
                    transitions: ["closed", "open", "half_open"].map(|to| {
                        families
                            .circuit_transitions
                            .with_label_values(&[name, e, to])
                    }),
                    ewma_seconds: families.endpoint_ewma.with_label_values(&[name, e]),
                })
                .collect(),
            rejections: [
                "circuit_open",
                "max_connections",
                "max_pending_requests",
                "max_requests",
            ]
            .into_iter()
            .map(|r| (r, families.rejections.with_label_values(&[name, r])))
            .collect(),
            retries: families.retries.with_label_values(&[name]),
        }
    }

    pub fn rejected(&self, reason: &str) {
        if let Some((_, c)) = self.rejections.iter().find(|(r, _)| *r == reason) {
            c.inc();
        }
    }
}

/// One endpoint's breaker and latency series.
pub struct EndpointMetrics {
    pub state: IntGauge,
    /// Transitions to closed, open, half_open.
    pub transitions: [IntCounter; 3],
    pub ewma_seconds: Gauge,
}

/// Why a connection or request was refused before reaching the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Every usable endpoint's breaker is open.
    CircuitOpen,
    MaxConnections,
    MaxPendingRequests,
    MaxRequests,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::CircuitOpen => "circuit_open",
            Rejection::MaxConnections => "max_connections",
            Rejection::MaxPendingRequests => "max_pending_requests",
            Rejection::MaxRequests => "max_requests",
        }
    }
}

struct EndpointState {
    endpoint: Endpoint,
    breaker: Breaker,
    /// Latency moving average in nanoseconds (0: no sample yet), as of
    /// `ewma_at`. It decays towards zero with time (see [`DECAY`]).
    ewma_ns: AtomicU64,
    /// Milliseconds after the set's `epoch` when `ewma_ns` was last set.
    ewma_at: AtomicU64,
    in_flight: AtomicUsize,
}

pub struct UpstreamSet {
    name: Arc<str>,
    endpoints: Vec<EndpointState>,
    /// Swapped whole on a config reload.
    config: arc_swap::ArcSwap<UpstreamConfig>,
    connections: AtomicUsize,
    pending: AtomicUsize,
    requests: AtomicUsize,
    /// Retry tokens in thousandths: each request adds `budget * 10`, each
    /// retry takes 1000.
    retry_tokens: AtomicI64,
    /// Connections from the local app (`limits.max_app_connections`).
    app_connections: Arc<crate::limit::Limit>,
    metrics: UpstreamMetrics,
    /// Zero point of the endpoints' `ewma_at`.
    epoch: Instant,
}

/// How fast an endpoint's latency average forgets, as Linkerd's peak-EWMA
/// balancer does: it falls by a factor e every `DECAY` with no sample, so
/// one slow answer (which sets the average at once: peaks count in full)
/// cannot keep an endpoint out of use after it has recovered. An endpoint
/// the two choices keep passing over drifts back into use and is sampled
/// again.
const DECAY: Duration = Duration::from_secs(10);

/// A held unit of a limit, given back when dropped.
pub struct Slot {
    set: Arc<UpstreamSet>,
    which: Which,
}

#[derive(Clone, Copy)]
enum Which {
    Connections,
    Pending,
    Requests,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.set.counter(self.which).fetch_sub(1, Ordering::AcqRel);
    }
}

/// One call to a chosen endpoint; records its outcome once. Dropped
/// without an outcome (the caller went away), it gives its probe slot back.
pub struct Call {
    set: Arc<UpstreamSet>,
    idx: usize,
    admitted: Admitted,
    start: Instant,
    done: bool,
}

impl Call {
    pub fn index(&self) -> usize {
        self.idx
    }

    /// Records the call: `failure` as the caller judged it; slow when it
    /// took longer than the breaker's `slow_call_duration`.
    pub fn finish(mut self, failure: bool) {
        self.done = true;
        let now = Instant::now();
        let took = now.duration_since(self.start);
        let set = &self.set;
        let ep = &set.endpoints[self.idx];
        ep.in_flight.fetch_sub(1, Ordering::AcqRel);
        let slow_after = ep.breaker.config().slow_call_duration;
        // A failure counts as a slow sample, so an endpoint that fails fast
        // does not look like the fastest one.
        let sample = if failure { took.max(slow_after) } else { took };
        set.observe(self.idx, sample, now);
        let outcome = Outcome {
            failure,
            slow: took > slow_after,
        };
        if let Some(t) = ep.breaker.record(self.admitted, outcome, now) {
            set.transitioned(self.idx, t);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.done {
            let ep = &self.set.endpoints[self.idx];
            ep.in_flight.fetch_sub(1, Ordering::AcqRel);
            ep.breaker.release(self.admitted);
        }
    }
}

impl UpstreamSet {
    pub fn new(
        name: &str,
        endpoints: &[Endpoint],
        config: UpstreamConfig,
        metrics: UpstreamMetrics,
    ) -> Arc<Self> {
        Arc::new(UpstreamSet {
            name: name.into(),
            endpoints: endpoints
                .iter()
                .map(|e| EndpointState {
                    endpoint: e.clone(),
                    breaker: Breaker::new(config.breaker.clone()),
                    ewma_ns: AtomicU64::new(0),
                    ewma_at: AtomicU64::new(0),
                    in_flight: AtomicUsize::new(0),
                })
                .collect(),
            // Room for a few retries before any request has paid for them.
            retry_tokens: AtomicI64::new(10_000),
            app_connections: crate::limit::Limit::new(config.max_app_connections),
            epoch: Instant::now(),
            config: arc_swap::ArcSwap::from_pointee(config),
            connections: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            metrics,
        })
    }

    pub fn config(&self) -> arc_swap::Guard<Arc<UpstreamConfig>> {
        self.config.load()
    }

    /// Applies reloaded settings; `true` when they changed. Counters and
    /// breaker states carry over, so a reload drops nothing.
    pub fn update(&self, config: UpstreamConfig) -> bool {
        if *self.config.load_full() == config {
            return false;
        }
        for e in &self.endpoints {
            e.breaker.set_config(config.breaker.clone());
        }
        self.app_connections.set_max(config.max_app_connections);
        self.config.store(Arc::new(config));
        true
    }

    /// A place for one more connection from the local app, or `None` at
    /// `limits.max_app_connections`.
    pub fn app_connection(&self) -> Option<crate::limit::Place> {
        self.app_connections.try_take()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn endpoint(&self, idx: usize) -> &Endpoint {
        &self.endpoints[idx].endpoint
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn counter(&self, which: Which) -> &AtomicUsize {
        match which {
            Which::Connections => &self.connections,
            Which::Pending => &self.pending,
            Which::Requests => &self.requests,
        }
    }

    /// Takes one unit of a limit if it is below its maximum: exact, since
    /// every thread counts on the same atomic.
    fn acquire(
        self: &Arc<Self>,
        which: Which,
        max: usize,
        why: Rejection,
    ) -> Result<Slot, Rejection> {
        let counter = self.counter(which);
        let taken = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        });
        match taken {
            Ok(_) => Ok(Slot {
                set: self.clone(),
                which,
            }),
            Err(_) => {
                self.metrics.rejected(why.as_str());
                Err(why)
            }
        }
    }

    pub fn connection(self: &Arc<Self>) -> Result<Slot, Rejection> {
        self.acquire(
            Which::Connections,
            self.config.load().max_connections,
            Rejection::MaxConnections,
        )
    }

    pub fn pending(self: &Arc<Self>) -> Result<Slot, Rejection> {
        self.acquire(
            Which::Pending,
            self.config.load().max_pending_requests,
            Rejection::MaxPendingRequests,
        )
    }

    pub fn request(self: &Arc<Self>) -> Result<Slot, Rejection> {
        // Every request pays into the retry budget.
        let config = self.config.load();
        let add = i64::from(config.retry_budget_percent) * 10;
        let _ = self
            .retry_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + add).min(100_000))
            });
        self.acquire(Which::Requests, config.max_requests, Rejection::MaxRequests)
    }

    /// Takes a retry from the budget, if there is one left.
    pub fn take_retry(&self) -> bool {
        let ok = self
            .retry_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok();
        if ok {
            self.metrics.retries.inc();
        }
        ok
    }

    /// Chooses an endpoint for one call, avoiding `exclude` (the one that
    /// just failed) when another will do: among endpoints whose breaker
    /// admits calls, the cheaper of two picked at random, by latency EWMA
    /// times outstanding calls. When every endpoint is open the call is
    /// refused at once, with no connect attempt.
    pub fn pick(self: &Arc<Self>, exclude: Option<usize>) -> Result<Call, Rejection> {
        let now = Instant::now();
        let n = self.endpoints.len();
        let max_ejection = self.config.load().max_ejection_percent;
        let usable = |i: usize| Some(i) != exclude && self.endpoints[i].breaker.available(now);
        // Past the ejection cap, breakers stop deciding who is used.
        let floor = max_ejection < 100 && {
            let out = (0..n)
                .filter(|&i| !self.endpoints[i].breaker.available(now))
                .count();
            out * 100 > n * max_ejection as usize
        };
        let candidate = |i: usize| (floor && Some(i) != exclude) || usable(i);
        let chosen = match n {
            0 => None,
            1 => candidate(0).then_some(0),
            _ => {
                let a = rand::random_range(0..n);
                let b = (a + 1 + rand::random_range(0..n - 1)) % n;
                match (candidate(a), candidate(b)) {
                    (true, true) => Some(if self.cost(b, now) < self.cost(a, now) {
                        b
                    } else {
                        a
                    }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => (0..n).map(|k| (a + k) % n).find(|&i| candidate(i)),
                }
            }
        };
        let Some(idx) = chosen.or_else(|| {
            // Only the excluded endpoint is left: better it than nothing.
            exclude.filter(|&i| self.endpoints[i].breaker.available(now))
        }) else {
            self.metrics.rejected(Rejection::CircuitOpen.as_str());
            return Err(Rejection::CircuitOpen);
        };
        let ep = &self.endpoints[idx];
        let (admitted, transition) = ep.breaker.try_acquire(now);
        if let Some(t) = transition {
            self.transitioned(idx, t);
        }
        let admitted = match admitted {
            Some(a) => a,
            None if floor => Admitted { probe: false },
            None => {
                self.metrics.rejected(Rejection::CircuitOpen.as_str());
                return Err(Rejection::CircuitOpen);
            }
        };
        ep.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Call {
            set: self.clone(),
            idx,
            admitted,
            start: now,
            done: false,
        })
    }

    fn cost(&self, i: usize, now: Instant) -> f64 {
        let ep = &self.endpoints[i];
        let pending = ep.in_flight.load(Ordering::Relaxed) as f64;
        self.latency(ep, now) * (pending + 1.0)
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The endpoint's latency average as of `now`, in nanoseconds: what
    /// was last recorded, decayed for the time since.
    fn latency(&self, ep: &EndpointState, now: Instant) -> f64 {
        let ewma = ep.ewma_ns.load(Ordering::Relaxed) as f64;
        let elapsed = self
            .millis(now)
            .saturating_sub(ep.ewma_at.load(Ordering::Relaxed));
        ewma * (-(elapsed as f64) / DECAY.as_millis() as f64).exp()
    }

    fn observe(&self, i: usize, sample: Duration, now: Instant) {
        let ep = &self.endpoints[i];
        let sample = sample.as_nanos().min(u128::from(u64::MAX)) as f64;
        // The decayed average is also the weight the past keeps: samples
        // close together move it a little each, a sample after a long
        // quiet spell almost replaces it. A peak replaces it at once.
        let at = ep.ewma_at.load(Ordering::Relaxed);
        let elapsed = self.millis(now).saturating_sub(at) as f64;
        let keep = (-elapsed / DECAY.as_millis() as f64).exp();
        let old = ep.ewma_ns.load(Ordering::Relaxed) as f64 * keep;
        let next = if sample >= old {
            sample
        } else {
            old + sample * (1.0 - keep)
        };
        // Two calls finishing at once may each write their own result;
        // either is a fair average, and the balancer needs no more.
        ep.ewma_ns.store(next as u64, Ordering::Relaxed);
        ep.ewma_at.store(self.millis(now), Ordering::Relaxed);
        if let Some(m) = self.metrics.endpoints.get(i) {
            m.ewma_seconds.set(next / 1e9);
        }
    }

    fn transitioned(&self, i: usize, t: Transition) {
        let ep = &self.endpoints[i];
        if let Some(m) = self.metrics.endpoints.get(i) {
            m.state.set(t.to as i64);
            let k = match t.to {
                CircuitState::Closed => 0,
                CircuitState::Open => 1,
                CircuitState::HalfOpen => 2,
            };
            m.transitions[k].inc();
        }
        match t.to {
            CircuitState::Open => {
                tracing::warn!(upstream = %self.name, endpoint = %ep.endpoint, open_for = ?t.open_for, "circuit opened")
            }
            CircuitState::HalfOpen => {
                tracing::info!(upstream = %self.name, endpoint = %ep.endpoint, "circuit half-open: probing")
            }
            CircuitState::Closed => {
                tracing::info!(upstream = %self.name, endpoint = %ep.endpoint, "circuit closed")
            }
        }
    }

    /// Each endpoint's breaker state and latency, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let endpoints: Vec<_> = self
            .endpoints
            .iter()
            .map(|e| {
                serde_json::json!({
                    "endpoint": e.endpoint.to_string(),
                    "circuit": e.breaker.state().as_str(),
                    "latency_ewma_ms": self.latency(e, Instant::now()) / 1e6,
                    "in_flight": e.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "upstream": &*self.name,
            "endpoints": endpoints,
            "connections": self.connections.load(Ordering::Relaxed),
            "pending_requests": self.pending.load(Ordering::Relaxed),
            "requests": self.requests.load(Ordering::Relaxed),
            "settings": &**self.config.load(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn set(n: usize, config: UpstreamConfig) -> Arc<UpstreamSet> {
        let endpoints: Vec<Endpoint> = (0..n)
            .map(|i| Endpoint::parse(&format!("127.0.0.1:{}", 1000 + i)).unwrap())
            .collect();
        let names: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
        let metrics = UpstreamMetrics::new(&Metrics::new().upstream, "u", &names);
        UpstreamSet::new("u", &endpoints, config, metrics)
    }

    #[test]
    fn limits_are_exact() {
        let s = set(
            1,
            UpstreamConfig {
                max_requests: 3,
                ..UpstreamConfig::default()
            },
        );
        let held: Vec<_> = (0..3).map(|_| s.request().unwrap()).collect();
        assert_eq!(s.request().err(), Some(Rejection::MaxRequests));
        drop(held);
        assert!(s.request().is_ok());
    }

    fn trip(s: &UpstreamSet, i: usize) {
        for _ in 0..5 {
            let now = Instant::now();
            let (a, _) = s.endpoints[i].breaker.try_acquire(now);
            let failure = Outcome {
                failure: true,
                slow: false,
            };
            s.endpoints[i].breaker.record(a.unwrap(), failure, now);
        }
        assert_eq!(s.endpoints[i].breaker.state(), CircuitState::Open);
    }

    #[tokio::test]
    async fn picks_avoid_open_breakers_and_refuse_when_all_are_open() {
        let s = set(3, UpstreamConfig::default());
        trip(&s, 1);
        for _ in 0..100 {
            let c = s.pick(None).unwrap();
            assert_ne!(c.index(), 1);
            c.finish(false);
        }
        trip(&s, 0);
        trip(&s, 2);
        assert_eq!(s.pick(None).err(), Some(Rejection::CircuitOpen));
    }

    #[tokio::test]
    async fn a_failing_endpoint_loses_its_traffic() {
        let s = set(3, UpstreamConfig::default());
        let mut to_bad = 0;
        for _ in 0..300 {
            let c = s.pick(None).unwrap();
            let bad = c.index() == 1;
            to_bad += usize::from(bad);
            c.finish(bad);
        }
        assert!(
            to_bad < 10,
            "the failing endpoint still got {to_bad} of 300"
        );
    }

    #[tokio::test]
    async fn the_ejection_cap_keeps_endpoints_in_use() {
        let s = set(
            2,
            UpstreamConfig {
                max_ejection_percent: 50,
                ..UpstreamConfig::default()
            },
        );
        trip(&s, 0);
        trip(&s, 1);
        assert!(s.pick(None).is_ok(), "past the cap, breakers stop deciding");
    }

    #[test]
    fn retries_stay_within_the_budget() {
        let s = set(1, UpstreamConfig::default());
        // The initial allowance, then one retry per five requests.
        let mut free = 0;
        while s.take_retry() {
            free += 1;
        }
        assert_eq!(free, 10);
        for _ in 0..50 {
            let _ = s.request();
        }
        let mut paid = 0;
        while s.take_retry() {
            paid += 1;
        }
        assert_eq!(paid, 10);
    }

    #[tokio::test]
    async fn lower_latency_wins_the_two_choices() {
        let s = set(2, UpstreamConfig::default());
        let now = Instant::now();
        s.observe(0, Duration::from_millis(50), now);
        s.observe(1, Duration::from_millis(1), now);
        for _ in 0..20 {
            let c = s.pick(None).unwrap();
            assert_eq!(c.index(), 1);
            drop(c);
        }
    }

    #[tokio::test]
    async fn one_slow_answer_does_not_keep_an_endpoint_out_forever() {
        let s = set(2, UpstreamConfig::default());
        let t0 = Instant::now();
        // Endpoint 0 answers once in 5 s; endpoint 1 keeps answering in
        // 10 ms, once a second, as the traffic it wins would make it.
        s.observe(0, Duration::from_secs(5), t0);
        s.observe(1, Duration::from_millis(10), t0);
        assert!(s.cost(0, t0) > s.cost(1, t0));
        let mut t = t0;
        let mut back_after = None;
        for sec in 1..=120 {
            t = t0 + Duration::from_secs(sec);
            s.observe(1, Duration::from_millis(10), t);
            if s.cost(0, t) < s.cost(1, t) {
                back_after = Some(sec);
                break;
            }
        }
        // ln(5 s / 10 ms) * 10 s: about 62 s.
        let back_after = back_after.expect("endpoint 0 never came back");
        assert!((55..=70).contains(&back_after), "{back_after}");
        // A peak counts in full at once; a fast sample after it only
        // moves the average by the time that passed.
        s.observe(1, Duration::from_secs(2), t);
        assert!(s.latency(&s.endpoints[1], t) >= 2e9);
        s.observe(1, Duration::from_millis(10), t + Duration::from_millis(100));
        assert!(s.latency(&s.endpoints[1], t + Duration::from_millis(100)) > 1.9e9);
    }
}
