//! An outbound listener's upstream settings: its circuit breaker, limits
//! and retry budget (the parts that reload live).

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Check, ConfigError};
use super::duration::ConfigDuration;

/// How an outbound upstream is protected: breakers, limits, retries.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UpstreamConfig {
    pub breaker: BreakerConfig,
    /// HTTP statuses from the upstream that count as failures.
    pub failure_statuses: Vec<u16>,
    /// At most this share (percent) of endpoints may be out of use for an
    /// open breaker; past it, breakers are ignored for choosing.
    pub max_ejection_percent: u32,
    /// Open connections to the upstream (L4: app connections; HTTP: hop
    /// connections).
    pub max_connections: usize,
    /// HTTP requests waiting for a connection to the upstream.
    pub max_pending_requests: usize,
    /// HTTP requests in flight to the upstream.
    pub max_requests: usize,
    /// Connections from the local app open at once, whatever the protocol
    /// (over it a new one is closed at once).
    pub max_app_connections: usize,
    /// Retries may add at most this share (percent) of requests.
    pub retry_budget_percent: u32,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            breaker: BreakerConfig::default(),
            failure_statuses: vec![502, 503, 504],
            max_ejection_percent: 100,
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_app_connections: 10_000,
            retry_budget_percent: 20,
        }
    }
}

/// The breaker's settings (per upstream, shared by its endpoints).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BreakerConfig {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Open when this share of the window's calls failed...
    pub failure_rate: f64,
    /// ...or this share was slower than `slow_call_duration`...
    pub slow_call_rate: f64,
    pub slow_call_duration: Duration,
    /// ...once the window holds at least this many calls.
    pub minimum_calls: u32,
    /// The sliding window: the last this-many calls.
    pub window: u32,
    /// How long the first trip stays open; each further trip in a row
    /// doubles it, up to `max_open_duration`, less up to 20 % jitter.
    pub open_duration: Duration,
    pub max_open_duration: Duration,
    /// Probe calls let through while half-open...
    pub half_open_max_calls: u32,
    /// ...of which this many must succeed to close.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            slow_call_rate: 0.5,
            slow_call_duration: Duration::from_secs(1),
            minimum_calls: 20,
            window: 100,
            open_duration: Duration::from_secs(60),
            max_open_duration: Duration::from_secs(600),
            half_open_max_calls: 3,
            success_threshold: 2,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    consecutive_failures: Option<Spanned<u32>>,
    /// Percent.
    failure_rate: Option<Spanned<u32>>,
    minimum_calls: Option<Spanned<u32>>,
    window: Option<Spanned<u32>>,
    slow_call_duration: Option<Spanned<ConfigDuration>>,
    /// Percent.
    slow_call_rate: Option<Spanned<u32>>,
    open_duration: Option<Spanned<ConfigDuration>>,
    max_open_duration: Option<Spanned<ConfigDuration>>,
    half_open_max_calls: Option<Spanned<u32>>,
    success_threshold: Option<Spanned<u32>>,
    failure_statuses: Option<Spanned<Vec<Spanned<u16>>>>,
    max_ejection_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_connections: Option<Spanned<usize>>,
    max_pending_requests: Option<Spanned<usize>>,
    max_requests: Option<Spanned<usize>>,
    max_app_connections: Option<Spanned<usize>>,
}

/// Validates an outbound listener's `circuit_breaker`, `limits` and
/// `retry_budget` into its upstream settings.
pub(super) fn validate(
    c: &Check<'_>,
    breaker: Option<RawBreaker>,
    limits: Option<RawLimits>,
    retry_budget: Option<Spanned<u32>>,
) -> Result<UpstreamConfig, ConfigError> {
    let mut u = UpstreamConfig::default();
    if let Some(b) = breaker {
        b.validate(c, &mut u)?;
    }
    if let Some(l) = limits {
        c.set(
            l.max_connections,
            "limits.max_connections",
            1..,
            &mut u.max_connections,
        )?;
        c.set(
            l.max_pending_requests,
            "limits.max_pending_requests",
            1..,
            &mut u.max_pending_requests,
        )?;
        c.set(
            l.max_requests,
            "limits.max_requests",
            1..,
            &mut u.max_requests,
        )?;
        c.set(
            l.max_app_connections,
            "limits.max_app_connections",
            1..,
            &mut u.max_app_connections,
        )?;
    }
    c.set(
        retry_budget,
        "retry_budget",
        0..=100,
        &mut u.retry_budget_percent,
    )
    .map_err(|e| e.note("a percentage of requests"))?;
    Ok(u)
}

impl RawBreaker {
    fn validate(self, c: &Check<'_>, u: &mut UpstreamConfig) -> Result<(), ConfigError> {
        let b = &mut u.breaker;
        c.set(
            self.consecutive_failures,
            "circuit_breaker.consecutive_failures",
            1..=1_000_000,
            &mut b.consecutive_failures,
        )?;
        if let Some(r) = c.percent(self.failure_rate, "circuit_breaker.failure_rate")? {
            b.failure_rate = r;
        }
        if let Some(r) = c.percent(self.slow_call_rate, "circuit_breaker.slow_call_rate")? {
            b.slow_call_rate = r;
        }
        c.set(
            self.window,
            "circuit_breaker.window",
            1..=100_000,
            &mut b.window,
        )?;
        let minimum_at = self.minimum_calls.as_ref().map(|m| m.referenced);
        c.set(
            self.minimum_calls,
            "circuit_breaker.minimum_calls",
            1..=100_000,
            &mut b.minimum_calls,
        )?;
        c.set(
            self.half_open_max_calls,
            "circuit_breaker.half_open_max_calls",
            1..=1000,
            &mut b.half_open_max_calls,
        )?;
        if let Some(s) = &self.success_threshold
            && s.value > b.half_open_max_calls
        {
            return Err(c.at(
                s.referenced,
                "circuit_breaker.success_threshold cannot be more than half_open_max_calls",
            ));
        }
        c.set(
            self.success_threshold,
            "circuit_breaker.success_threshold",
            1..=1000,
            &mut b.success_threshold,
        )?;
        for (value, name, slot) in [
            (
                self.slow_call_duration,
                "circuit_breaker.slow_call_duration",
                &mut b.slow_call_duration,
            ),
            (
                self.open_duration,
                "circuit_breaker.open_duration",
                &mut b.open_duration,
            ),
            (
                self.max_open_duration,
                "circuit_breaker.max_open_duration",
                &mut b.max_open_duration,
            ),
        ] {
            if let Some(d) = c.positive(value, name)? {
                *slot = d.0;
            }
        }
        if b.max_open_duration < b.open_duration {
            // The cap is at least the first open period.
            b.max_open_duration = b.open_duration;
        }
        if let Some(at) = minimum_at
            && b.minimum_calls > b.window
        {
            return Err(c.at(
                at,
                "circuit_breaker.minimum_calls cannot be more than the window",
            ));
        }
        if let Some(list) = self.failure_statuses {
            let mut statuses = Vec::with_capacity(list.value.len());
            for s in list.value {
                if !(500..=599).contains(&s.value) {
                    return Err(c.at(
                        s.referenced,
                        format!("failure status {} is not a 5xx status", s.value),
                    ));
                }
                statuses.push(s.value);
            }
            u.failure_statuses = statuses;
        }
        c.set(
            self.max_ejection_percent,
            "circuit_breaker.max_ejection_percent",
            0..=100,
            &mut u.max_ejection_percent,
        )
        .map_err(|e| e.note("a percentage"))?;
        Ok(())
    }
}
