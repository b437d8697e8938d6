//! A listener's counters: every series of one listener (connections,
//! handshakes, bytes, HTTP requests), labels resolved once at start so the
//! hot path never looks one up.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::close::CloseReason;
use crate::metrics::Metrics;
use crate::tls::HandshakeFailure;

/// Which way traffic flows through a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Peer sidecar → us (mTLS) → local app.
    Inbound,
    /// Local app → us → upstream sidecar (mTLS).
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The counters of one listener, with labels already applied.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub opened: IntCounter,
    pub rate_limited: IntCounter,
    pub policy_closed: IntCounter,
    pub active: IntGauge,
    /// Bytes from the listener's client towards the far side.
    pub to_upstream: IntCounter,
    /// Bytes from the far side back to the listener's client.
    pub to_downstream: IntCounter,
    /// New connections closed at once at a listener limit: over
    /// `max_connections` (or outbound `max_app_connections`), and over
    /// `max_handshakes`.
    pub rejected_connections: IntCounter,
    /// Inbound handshakes under way.
    pub handshaking: prometheus::IntGauge,
    pub rejected_handshakes: IntCounter,
    /// The same, for one client address's share (inbound).
    pub rejected_client_connections: IntCounter,
    pub rejected_client_handshakes: IntCounter,
    handshake_ok: IntCounter,
    handshake_failed: Vec<(HandshakeFailure, IntCounter)>,
    closed: Vec<(CloseReason, IntCounter)>,
    /// HTTP requests answered, by status class 1xx..5xx.
    requests: [IntCounter; 5],
    pub request_duration: prometheus::Histogram,
    request_errors: IntCounterVec,
    direction: &'static str,
    name: std::sync::Arc<str>,
}

impl ListenerMetrics {
    /// Resolves (and so exports, at zero) every series of one listener.
    pub fn new(metrics: &Metrics, direction: Direction, name: &str) -> Self {
        let d = direction.as_str();
        let c = &metrics.connections;
        // Outbound listeners have no handshakes to take and no client but
        // the app: their series would only ever read 0.
        let inbound_only = |limit: &str| match direction {
            Direction::Inbound => c.rejected.with_label_values(&[d, name, limit]),
            Direction::Outbound => prometheus::IntCounter::new("unexported", "unexported")
                .unwrap_or_else(|_| c.rejected.with_label_values(&[d, name, limit])),
        };
        ListenerMetrics {
            opened: c.opened.with_label_values(&[d, name]),
            rate_limited: metrics.policy.rate_limited.with_label_values(&[name]),
            policy_closed: metrics.policy.closed.with_label_values(&[name]),
            active: c.active.with_label_values(&[d, name]),
            to_upstream: c.bytes.with_label_values(&[d, name, "to_upstream"]),
            to_downstream: c.bytes.with_label_values(&[d, name, "to_downstream"]),
            rejected_connections: c.rejected.with_label_values(&[
                d,
                name,
                match direction {
                    Direction::Inbound => "max_connections",
                    Direction::Outbound => "max_app_connections",
                },
            ]),
            handshaking: c.handshaking.with_label_values(&[d, name]),
            rejected_handshakes: inbound_only("max_handshakes"),
            rejected_client_connections: inbound_only("max_connections_per_client"),
            rejected_client_handshakes: inbound_only("max_handshakes_per_client"),
            handshake_ok: c.handshakes.with_label_values(&[d, name, "success"]),
            handshake_failed: HandshakeFailure::ALL
                .iter()
                .map(|f| (*f, c.handshakes.with_label_values(&[d, name, f.as_str()])))
                .collect(),
            closed: CloseReason::ALL
                .iter()
                .map(|r| (*r, c.closed.with_label_values(&[d, name, r.as_str()])))
                .collect(),
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| metrics.http.requests.with_label_values(&[d, name, class])),
            request_duration: metrics.http.duration.with_label_values(&[d, name]),
            request_errors: metrics.http.errors.clone(),
            direction: d,
            name: name.into(),
        }
    }

    pub fn handshake_ok(&self) {
        self.handshake_ok.inc();
    }

    pub fn handshake_failed(&self, why: HandshakeFailure) {
        if let Some((_, c)) = self.handshake_failed.iter().find(|(f, _)| *f == why) {
            c.inc();
        }
    }

    pub fn closed(&self, why: CloseReason) {
        if let Some((_, c)) = self.closed.iter().find(|(r, _)| *r == why) {
            c.inc();
        }
    }

    /// Counts one answered HTTP request and how long its response headers
    /// took.
    pub fn request(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
        self.request_duration.observe(seconds);
    }

    /// Counts a request portcullis answered itself, by reason. Off the
    /// hot path, so the label lookup happens here.
    pub fn request_error(&self, reason: &str) {
        self.request_errors
            .with_label_values(&[self.direction, &self.name, reason])
            .inc();
    }
}
