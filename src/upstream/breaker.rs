//! The circuit breaker of one upstream endpoint: closed → open after too
//! many consecutive failures, or when the failure rate or the slow-call
//! rate over a sliding window of recent calls passes its threshold; open for
//! a while that grows (with jitter) on repeated trips; then half-open, where
//! a few probe calls decide between closing and opening again.
//!
//! Pure state and time: the caller passes `now`, so tests drive it with
//! made-up instants. A closed breaker admits a call with one atomic load;
//! outcomes are recorded under a short per-endpoint lock.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;

/// The breaker's state, as exported: 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }
}

/// How one call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub failure: bool,
    pub slow: bool,
}

/// Permission for one call; `probe` calls are the half-open state's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub probe: bool,
}

pub struct Breaker {
    /// Swapped whole on a config reload.
    config: arc_swap::ArcSwap<BreakerConfig>,
    /// Mirrors `inner.state` for the lock-free fast path.
    state: AtomicU8,
    inner: Mutex<Inner>,
}

struct Inner {
    state: CircuitState,
    open_until: Instant,
    /// Trips in a row without closing in between, for the backoff.
    trips: u32,
    consecutive: u32,
    /// The window as a ring of (failure, slow) outcomes.
    ring: Vec<Outcome>,
    next: usize,
    failures: u32,
    slow: u32,
    probes_in_flight: u32,
    probe_successes: u32,
}

/// A state change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: CircuitState,
    /// For `Open`: how long it stays open.
    pub open_for: Option<Duration>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        let window = config.window.max(1) as usize;
        Breaker {
            config: arc_swap::ArcSwap::from_pointee(config),
            state: AtomicU8::new(CircuitState::Closed as u8),
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                open_until: Instant::now(),
                trips: 0,
                consecutive: 0,
                ring: Vec::with_capacity(window),
                next: 0,
                failures: 0,
                slow: 0,
                probes_in_flight: 0,
                probe_successes: 0,
            }),
        }
    }

    pub fn config(&self) -> arc_swap::Guard<std::sync::Arc<BreakerConfig>> {
        self.config.load()
    }

    /// Applies new settings. The window starts over (its size may have
    /// changed); the current state and any open period stay.
    pub fn set_config(&self, config: BreakerConfig) {
        if *self.config.load_full() == config {
            return;
        }
        let mut inner = self.lock();
        inner.ring.clear();
        inner.next = 0;
        inner.failures = 0;
        inner.slow = 0;
        inner.consecutive = 0;
        self.config.store(std::sync::Arc::new(config));
    }

    /// The state as last recorded (an open breaker whose time is up reads
    /// as open until a call asks).
    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Whether a call would be admitted now, without taking a probe slot:
    /// for choosing among endpoints.
    pub fn available(&self, now: Instant) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            _ => {
                let inner = self.lock();
                match inner.state {
                    CircuitState::Closed => true,
                    CircuitState::Open => now >= inner.open_until,
                    CircuitState::HalfOpen => {
                        inner.probes_in_flight < self.config.load().half_open_max_calls
                    }
                }
            }
        }
    }

    /// Asks to make a call. `None`: the circuit is open (or half-open with
    /// every probe slot taken). The transition, if asking caused one.
    pub fn try_acquire(&self, now: Instant) -> (Option<Admitted>, Option<Transition>) {
        if self.state() == CircuitState::Closed {
            return (Some(Admitted { probe: false }), None);
        }
        let mut inner = self.lock();
        let mut transition = None;
        if inner.state == CircuitState::Open {
            if now < inner.open_until {
                return (None, None);
            }
            inner.state = CircuitState::HalfOpen;
            inner.probes_in_flight = 0;
            inner.probe_successes = 0;
            self.publish(&inner);
            transition = Some(Transition {
                to: CircuitState::HalfOpen,
                open_for: None,
            });
        }
        match inner.state {
            CircuitState::Closed => (Some(Admitted { probe: false }), transition),
            CircuitState::HalfOpen
                if inner.probes_in_flight < self.config.load().half_open_max_calls =>
            {
                inner.probes_in_flight += 1;
                (Some(Admitted { probe: true }), transition)
            }
            _ => (None, transition),
        }
    }

    /// Gives back a probe slot whose call never happened.
    pub fn release(&self, admitted: Admitted) {
        if admitted.probe {
            let mut inner = self.lock();
            if inner.state == CircuitState::HalfOpen {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            }
        }
    }

    /// Records how an admitted call went.
    pub fn record(&self, admitted: Admitted, outcome: Outcome, now: Instant) -> Option<Transition> {
        let config = self.config.load();
        let mut inner = self.lock();
        match inner.state {
            CircuitState::HalfOpen if admitted.probe => {
                inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                if outcome.failure {
                    return Some(self.trip(&mut inner, now));
                }
                inner.probe_successes += 1;
                if inner.probe_successes >= config.success_threshold {
                    inner.state = CircuitState::Closed;
                    inner.trips = 0;
                    inner.consecutive = 0;
                    inner.ring.clear();
                    inner.next = 0;
                    inner.failures = 0;
                    inner.slow = 0;
                    self.publish(&inner);
                    return Some(Transition {
                        to: CircuitState::Closed,
                        open_for: None,
                    });
                }
                None
            }
            CircuitState::Closed => {
                self.push(&mut inner, outcome);
                inner.consecutive = if outcome.failure {
                    inner.consecutive + 1
                } else {
                    0
                };
                let calls = inner.ring.len() as f64;
                let rate_ready = inner.ring.len() as u32 >= config.minimum_calls;
                let trip = inner.consecutive >= config.consecutive_failures
                    || (rate_ready && f64::from(inner.failures) / calls > config.failure_rate)
                    || (rate_ready && f64::from(inner.slow) / calls > config.slow_call_rate);
                trip.then(|| self.trip(&mut inner, now))
            }
            // Calls admitted before a trip that end after it say nothing
            // about the endpoint's state now.
            _ => None,
        }
    }

    fn push(&self, inner: &mut Inner, outcome: Outcome) {
        let cap = self.config.load().window.max(1) as usize;
        if inner.ring.len() < cap {
            inner.ring.push(outcome);
        } else {
            let i = inner.next;
            let old = std::mem::replace(&mut inner.ring[i], outcome);
            inner.failures -= u32::from(old.failure);
            inner.slow -= u32::from(old.slow);
            inner.next = (i + 1) % cap;
        }
        inner.failures += u32::from(outcome.failure);
        inner.slow += u32::from(outcome.slow);
    }

    fn trip(&self, inner: &mut Inner, now: Instant) -> Transition {
        let config = self.config.load();
        let base = config.open_duration;
        let grown = base
            .checked_mul(1u32 << inner.trips.min(20))
            .unwrap_or(config.max_open_duration)
            .min(config.max_open_duration);
        // Down-jitter only, so the cap holds and endpoints that tripped
        // together do not all probe at once.
        let jitter = 1.0 - rand::random::<f64>() * 0.2;
        let open_for = grown.mul_f64(jitter).max(Duration::from_millis(1));
        inner.state = CircuitState::Open;
        inner.open_until = now + open_for;
        inner.trips = inner.trips.saturating_add(1);
        inner.probes_in_flight = 0;
        inner.probe_successes = 0;
        inner.consecutive = 0;
        self.publish(inner);
        Transition {
            to: CircuitState::Open,
            open_for: Some(open_for),
        }
    }

    fn publish(&self, inner: &Inner) {
        self.state.store(inner.state as u8, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: Outcome = Outcome {
        failure: true,
        slow: false,
    };
    const OK: Outcome = Outcome {
        failure: false,
        slow: false,
    };
    const SLOW: Outcome = Outcome {
        failure: false,
        slow: true,
    };

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            open_duration: Duration::from_secs(10),
            max_open_duration: Duration::from_secs(25),
            minimum_calls: 10,
            window: 10,
            ..BreakerConfig::default()
        })
    }

    fn call(b: &Breaker, outcome: Outcome, now: Instant) -> Option<Transition> {
        let (admitted, _) = b.try_acquire(now);
        b.record(admitted.expect("admitted"), outcome, now)
    }

    #[test]
    fn opens_after_consecutive_failures_and_not_before() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..4 {
            assert_eq!(call(&b, FAIL, t), None);
        }
        call(&b, OK, t);
        for _ in 0..4 {
            assert_eq!(call(&b, FAIL, t), None);
        }
        let tr = call(&b, FAIL, t).expect("fifth failure in a row trips");
        assert_eq!(tr.to, CircuitState::Open);
        let open_for = tr.open_for.unwrap();
        assert!(open_for <= Duration::from_secs(10) && open_for >= Duration::from_secs(8));
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.try_acquire(t + Duration::from_secs(1)).0, None);
        assert!(!b.available(t + Duration::from_secs(1)));
    }

    #[test]
    fn opens_on_failure_rate_once_the_window_has_enough_calls() {
        let b = breaker();
        let t = Instant::now();
        // Alternating: never 5 in a row, 50 % is not above 50 %.
        for i in 0..10 {
            assert_eq!(call(&b, if i % 2 == 1 { FAIL } else { OK }, t), None);
        }
        // The window slides: replacing an OK with a failure makes 60 %.
        let tr = call(&b, FAIL, t);
        assert_eq!(tr.map(|t| t.to), Some(CircuitState::Open));
    }

    #[test]
    fn opens_on_slow_call_rate() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(call(&b, OK, t), None);
        }
        for _ in 0..5 {
            assert_eq!(call(&b, SLOW, t), None);
        }
        assert_eq!(call(&b, SLOW, t).map(|t| t.to), Some(CircuitState::Open));
    }

    #[test]
    fn half_opens_after_the_open_duration_and_closes_on_successes() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..5 {
            call(&b, FAIL, t);
        }
        let later = t + Duration::from_secs(11);
        assert!(b.available(later));
        let (a1, tr) = b.try_acquire(later);
        assert_eq!(tr.map(|t| t.to), Some(CircuitState::HalfOpen));
        let (a2, _) = b.try_acquire(later);
        let (a3, _) = b.try_acquire(later);
        assert_eq!(b.try_acquire(later).0, None, "only 3 probes at a time");
        assert!(!b.available(later));
        assert_eq!(b.record(a1.unwrap(), OK, later), None);
        let tr = b.record(a2.unwrap(), OK, later);
        assert_eq!(tr.map(|t| t.to), Some(CircuitState::Closed));
        // The straggler probe changes nothing.
        assert_eq!(b.record(a3.unwrap(), FAIL, later), None);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let b = breaker();
        let mut t = Instant::now();
        for _ in 0..5 {
            call(&b, FAIL, t);
        }
        let mut last = Duration::from_secs(10);
        for round in 0..4 {
            t += Duration::from_secs(26);
            let (a, _) = b.try_acquire(t);
            let tr = b.record(a.unwrap(), FAIL, t).expect("reopens");
            let open_for = tr.open_for.unwrap();
            assert!(open_for <= Duration::from_secs(25), "capped: {open_for:?}");
            if round == 0 {
                assert!(open_for >= Duration::from_secs(16), "doubled: {open_for:?}");
            }
            assert!(open_for >= last.mul_f64(0.79).min(Duration::from_secs(20)));
            last = open_for;
        }
    }

    #[test]
    fn released_probe_slots_are_reusable() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..5 {
            call(&b, FAIL, t);
        }
        let later = t + Duration::from_secs(11);
        let probes: Vec<_> = (0..3).map(|_| b.try_acquire(later).0.unwrap()).collect();
        assert_eq!(b.try_acquire(later).0, None);
        b.release(probes[0]);
        assert!(b.try_acquire(later).0.is_some());
    }
}
