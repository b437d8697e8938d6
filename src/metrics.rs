//! Every Prometheus metric family the proxy exports, declared in one place.
//!
//! Each running sidecar owns a [`Metrics`] (and its registry), so several
//! sidecars can live in one process, as they do in `portcullis demo` and the
//! tests. Hot paths never look labels up: listeners resolve their label
//! sets once, at start, into a [`ListenerMetrics`] of plain counters.

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::tls::{CertSummary, HandshakeFailure};

/// The decision counter a connection used last (see
/// [`Metrics::authz_cached`]). A policy reload makes new rule names, so a
/// cached entry never outlives the rule it counts.
#[derive(Default)]
pub struct AuthzCache(arc_swap::ArcSwapOption<AuthzEntry>);

pub struct AuthzEntry {
    rule: std::sync::Arc<str>,
    decision: &'static str,
    counter: IntCounter,
}

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

/// Why a proxied connection ended; the `reason` label of
/// `portcullis_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished normally.
    Completed,
    IdleTimeout,
    /// The TLS handshake failed (the handshake counter says why).
    HandshakeFailed,
    /// Admission refused the peer after the handshake.
    Denied,
    /// The local app or upstream could not be reached.
    ConnectFailed,
    ConnectTimeout,
    /// A read or write failed mid-stream (reset, broken pipe).
    Error,
    /// The peer went over its service's rate limit.
    RateLimited,
    /// A policy reload no longer allows the peer.
    Policy,
    /// The peer's certificate expired (with `connections.close_on_peer_expiry`).
    PeerExpired,
    /// The connection reached `connections.max_lifetime`.
    MaxLifetime,
    /// A new CRL revoked the peer's certificate.
    Revoked,
    /// An HTTP client did not send a whole request head in time (slowloris).
    HeaderTimeout,
    /// Every usable upstream endpoint's circuit breaker is open.
    CircuitOpen,
    /// Over the upstream's `max_connections`.
    Overloaded,
}

impl CloseReason {
    pub const ALL: [CloseReason; 15] = [
        CloseReason::Completed,
        CloseReason::IdleTimeout,
        CloseReason::HandshakeFailed,
        CloseReason::Denied,
        CloseReason::ConnectFailed,
        CloseReason::ConnectTimeout,
        CloseReason::Error,
        CloseReason::RateLimited,
        CloseReason::Policy,
        CloseReason::PeerExpired,
        CloseReason::MaxLifetime,
        CloseReason::Revoked,
        CloseReason::HeaderTimeout,
        CloseReason::CircuitOpen,
        CloseReason::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::Denied => "denied",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::Error => "error",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Policy => "policy",
            CloseReason::PeerExpired => "peer_expired",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::Revoked => "revoked",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::CircuitOpen => "circuit_open",
            CloseReason::Overloaded => "overloaded",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    connections_opened: IntCounterVec,
    connections_active: IntGaugeVec,
    connections_closed: IntCounterVec,
    handshakes: IntCounterVec,
    bytes: IntCounterVec,
    cert_expiration: GaugeVec,
    ready: IntGauge,
    authz_decisions: IntCounterVec,
    cert_reloads: IntCounterVec,
    revocation_checks: IntCounterVec,
    crl_next_update: GaugeVec,
    crl_entries: IntGaugeVec,
    revoked_closed: IntCounter,
    ocsp_cache: IntGauge,
    pub ocsp_staple_next_update: Gauge,
    ocsp_latency: prometheus::Histogram,
    policy_reloads: IntCounterVec,
    policy_info: IntGaugeVec,
    policy_last_success: Gauge,
    policy_closed: IntCounterVec,
    rate_limited: IntCounterVec,
    pub audit_suppressed: IntCounter,
    pub audit_dropped: IntCounter,
    requests: IntCounterVec,
    request_duration: prometheus::HistogramVec,
    request_errors: IntCounterVec,
    pub access_log_dropped: IntCounter,
    circuit_state: IntGaugeVec,
    circuit_transitions: IntCounterVec,
    upstream_rejections: IntCounterVec,
    endpoint_ewma: GaugeVec,
    upstream_retries: IntCounterVec,
}

/// One upstream's series, resolved once.
pub struct UpstreamMetrics {
    pub endpoints: Vec<EndpointMetrics>,
    rejections: Vec<(&'static str, IntCounter)>,
    pub retries: IntCounter,
}

impl UpstreamMetrics {
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

/// Registers a collector. The definitions are static, so a failure here is
/// a programming error that every test building a sidecar would catch.
fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric registered twice: {e}"));
    c
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(opts(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(registry, v)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(opts(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(registry, v)
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let connections_opened = counter_vec(
            &registry,
            "portcullis_connections_opened_total",
            "Connections accepted by a listener.",
            &["direction", "listener"],
        );
        let connections_active = gauge_vec(
            &registry,
            "portcullis_connections_active",
            "Connections currently open on a listener.",
            &["direction", "listener"],
        );
        let connections_closed = counter_vec(
            &registry,
            "portcullis_connections_closed_total",
            "Connections closed, by the reason they ended.",
            &["direction", "listener", "reason"],
        );
        let handshakes = counter_vec(
            &registry,
            "portcullis_tls_handshakes_total",
            "TLS handshakes, by result: success or the failure reason.",
            &["direction", "listener", "result"],
        );
        let bytes = counter_vec(
            &registry,
            "portcullis_bytes_total",
            "Bytes proxied; flow=to_upstream is from the listener's client onwards, to_downstream is back to it.",
            &["direction", "listener", "flow"],
        );
        let cert_expiration = register(
            &registry,
            GaugeVec::new(
                opts(
                    "portcullis_cert_expiration_timestamp_seconds",
                    "notAfter of each loaded certificate (our chain and every trust bundle root), as a Unix timestamp.",
                ),
                &["kind", "spiffe_id", "serial"],
            )
            .unwrap_or_else(|e| panic!("cert expiration metric is malformed: {e}")),
        );
        let ready = register(
            &registry,
            IntGauge::new(
                "portcullis_ready",
                "1 when the sidecar is ready to serve (identity loaded, listeners bound, not draining).",
            )
            .unwrap_or_else(|e| panic!("ready metric is malformed: {e}")),
        );
        let cert_reloads = counter_vec(
            &registry,
            "portcullis_cert_reloads_total",
            "Certificate reloads: kind is identity (our SVID and key) or bundle; result is success, pending (a certificate waiting for its key) or error.",
            &["kind", "result"],
        );
        for kind in ["identity", "bundle"] {
            for result in ["success", "error"] {
                cert_reloads.with_label_values(&[kind, result]);
            }
        }
        let revocation_checks = counter_vec(
            &registry,
            "portcullis_revocation_checks_total",
            "Revocation checks of peer certificates at the handshake, by method and result (good, revoked, unknown).",
            &["method", "result"],
        );
        let crl_next_update = register(
            &registry,
            GaugeVec::new(
                opts(
                    "portcullis_crl_next_update_timestamp_seconds",
                    "nextUpdate of each loaded CRL, as a Unix timestamp.",
                ),
                &["issuer"],
            )
            .unwrap_or_else(|e| panic!("CRL metric is malformed: {e}")),
        );
        let crl_entries = gauge_vec(
            &registry,
            "portcullis_crl_entries",
            "Revoked certificates listed by each loaded CRL.",
            &["issuer"],
        );
        let revoked_closed = register(
            &registry,
            IntCounter::new(
                "portcullis_revoked_connections_closed_total",
                "Open connections closed because a new CRL revoked their peer.",
            )
            .unwrap_or_else(|e| panic!("revocation metric is malformed: {e}")),
        );
        let ocsp_cache = register(
            &registry,
            IntGauge::new(
                "portcullis_ocsp_cache_entries",
                "OCSP answers held in the cache.",
            )
            .unwrap_or_else(|e| panic!("OCSP metric is malformed: {e}")),
        );
        let ocsp_latency = register(
            &registry,
            prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "portcullis_ocsp_responder_duration_seconds",
                    "Time an OCSP responder took to answer (or fail).",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .unwrap_or_else(|e| panic!("OCSP metric is malformed: {e}")),
        );
        let ocsp_staple_next_update = register(
            &registry,
            Gauge::new(
                "portcullis_ocsp_staple_next_update_timestamp_seconds",
                "nextUpdate of the OCSP answer stapled to our SVID, as a Unix timestamp (0: none).",
            )
            .unwrap_or_else(|e| panic!("OCSP metric is malformed: {e}")),
        );
        let authz_decisions = counter_vec(
            &registry,
            "portcullis_authz_decisions_total",
            "Authorization decisions: decision is allow, deny, or audit_deny (denied by policy, let through in audit mode); rule is the rule that decided, or default.",
            &["service", "decision", "rule"],
        );
        let policy_reloads = counter_vec(
            &registry,
            "portcullis_policy_reloads_total",
            "Policy reload attempts by result: success, unchanged or error.",
            &["result"],
        );
        let policy_info = gauge_vec(
            &registry,
            "portcullis_policy_info",
            "The active policy: its file's SHA-256 (none when no policy file is configured); always 1.",
            &["sha256"],
        );
        let policy_last_success = register(
            &registry,
            Gauge::new(
                "portcullis_policy_last_reload_success_timestamp_seconds",
                "When the active policy was loaded, as a Unix timestamp.",
            )
            .unwrap_or_else(|e| panic!("policy reload metric is malformed: {e}")),
        );
        let policy_closed = counter_vec(
            &registry,
            "portcullis_policy_closed_connections_total",
            "Open connections closed because a policy reload no longer allows their peer.",
            &["service"],
        );
        let rate_limited = counter_vec(
            &registry,
            "portcullis_rate_limited_total",
            "Connections or requests refused because their peer was over the service's rate limit.",
            &["service"],
        );
        let audit_suppressed = register(
            &registry,
            IntCounter::new(
                "portcullis_audit_log_suppressed_total",
                "Audit log lines not written because of the audit rate limit.",
            )
            .unwrap_or_else(|e| panic!("audit metric is malformed: {e}")),
        );
        let audit_dropped = register(
            &registry,
            IntCounter::new(
                "portcullis_audit_log_dropped_total",
                "Audit log lines dropped because the writer fell behind.",
            )
            .unwrap_or_else(|e| panic!("audit metric is malformed: {e}")),
        );
        let requests = counter_vec(
            &registry,
            "portcullis_requests_total",
            "HTTP requests answered, by status class (1xx..5xx), whoever answered them.",
            &["direction", "service", "code_class"],
        );
        let request_duration = register(
            &registry,
            prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(
                    "portcullis_request_duration_seconds",
                    "Time from receiving an HTTP request to sending its response headers.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ]),
                &["direction", "service"],
            )
            .unwrap_or_else(|e| panic!("request metric is malformed: {e}")),
        );
        let request_errors = counter_vec(
            &registry,
            "portcullis_request_errors_total",
            "HTTP requests portcullis answered itself, by the x-portcullis-error reason.",
            &["direction", "service", "reason"],
        );
        let access_log_dropped = register(
            &registry,
            IntCounter::new(
                "portcullis_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            )
            .unwrap_or_else(|e| panic!("access log metric is malformed: {e}")),
        );
        let circuit_state = gauge_vec(
            &registry,
            "portcullis_circuit_state",
            "Circuit breaker state of an upstream endpoint: 0 closed, 1 open, 2 half-open.",
            &["upstream", "endpoint"],
        );
        let circuit_transitions = counter_vec(
            &registry,
            "portcullis_circuit_transitions_total",
            "Circuit breaker state changes of an upstream endpoint, by the state entered.",
            &["upstream", "endpoint", "to"],
        );
        let upstream_rejections = counter_vec(
            &registry,
            "portcullis_upstream_rejections_total",
            "Connections or requests refused before reaching an upstream: circuit_open, max_connections, max_pending_requests, max_requests.",
            &["upstream", "reason"],
        );
        let endpoint_ewma = register(
            &registry,
            GaugeVec::new(
                opts(
                    "portcullis_endpoint_latency_ewma_seconds",
                    "Moving average of an endpoint's latency (connect or response headers; failures count as slow), used to choose among endpoints.",
                ),
                &["upstream", "endpoint"],
            )
            .unwrap_or_else(|e| panic!("upstream metric is malformed: {e}")),
        );
        let upstream_retries = counter_vec(
            &registry,
            "portcullis_upstream_retries_total",
            "Requests sent again to another endpoint after a connect failure.",
            &["upstream"],
        );
        gauge_vec(
            &registry,
            "portcullis_build_info",
            "Build information; always 1.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);

        Metrics {
            registry,
            connections_opened,
            connections_active,
            connections_closed,
            handshakes,
            bytes,
            cert_expiration,
            ready,
            authz_decisions,
            cert_reloads,
            revocation_checks,
            crl_next_update,
            crl_entries,
            revoked_closed,
            ocsp_cache,
            ocsp_staple_next_update,
            ocsp_latency,
            policy_reloads,
            policy_info,
            policy_last_success,
            policy_closed,
            rate_limited,
            audit_suppressed,
            audit_dropped,
            requests,
            request_duration,
            request_errors,
            access_log_dropped,
            circuit_state,
            circuit_transitions,
            upstream_rejections,
            endpoint_ewma,
            upstream_retries,
        }
    }

    /// Resolves (and so exports) every series of one upstream.
    pub fn upstream(&self, name: &str, endpoints: &[String]) -> UpstreamMetrics {
        UpstreamMetrics {
            endpoints: endpoints
                .iter()
                .map(|e| EndpointMetrics {
                    state: self.circuit_state.with_label_values(&[name, e]),
                    transitions: ["closed", "open", "half_open"]
                        .map(|to| self.circuit_transitions.with_label_values(&[name, e, to])),
                    ewma_seconds: self.endpoint_ewma.with_label_values(&[name, e]),
                })
                .collect(),
            rejections: [
                "circuit_open",
                "max_connections",
                "max_pending_requests",
                "max_requests",
            ]
            .into_iter()
            .map(|r| (r, self.upstream_rejections.with_label_values(&[name, r])))
            .collect(),
            retries: self.upstream_retries.with_label_values(&[name]),
        }
    }

    pub fn authz(&self, service: &str, decision: &str, rule: &str) {
        self.authz_decisions
            .with_label_values(&[service, decision, rule])
            .inc();
    }

    /// Counts a per-request decision through `cache`: the requests of one
    /// connection nearly always meet the same rule, and the labelled lookup
    /// (three strings hashed under a lock) is then skipped.
    pub fn authz_cached(
        &self,
        cache: &AuthzCache,
        service: &str,
        decision: &'static str,
        rule: &std::sync::Arc<str>,
    ) {
        if let Some(last) = &*cache.0.load()
            && std::sync::Arc::ptr_eq(&last.rule, rule)
            && last.decision == decision
        {
            last.counter.inc();
            return;
        }
        let counter = self
            .authz_decisions
            .with_label_values(&[service, decision, rule]);
        counter.inc();
        cache.0.store(Some(std::sync::Arc::new(AuthzEntry {
            rule: rule.clone(),
            decision,
            counter,
        })));
    }

    pub fn policy_closed(&self, service: &str) {
        self.policy_closed.with_label_values(&[service]).inc();
    }

    /// Counters for the verifiers, resolved once.
    pub fn revocation_counters(&self) -> crate::tls::RevocationCounters {
        crate::tls::RevocationCounters {
            good: self.revocation_checks.with_label_values(&["crl", "good"]),
            revoked: self
                .revocation_checks
                .with_label_values(&["crl", "revoked"]),
            unknown: self
                .revocation_checks
                .with_label_values(&["crl", "unknown"]),
        }
    }

    /// Counters for the OCSP checker, resolved once.
    pub fn ocsp_metrics(&self) -> crate::revocation::OcspMetrics {
        let r = |result| self.revocation_checks.with_label_values(&["ocsp", result]);
        crate::revocation::OcspMetrics {
            good: r("good"),
            revoked: r("revoked"),
            unknown: r("unknown"),
            error: r("error"),
            cache_size: self.ocsp_cache.clone(),
            latency: self.ocsp_latency.clone(),
        }
    }

    /// Replaces the CRL series with exactly these lists.
    pub fn set_crls(&self, crls: &[crate::revocation::CrlInfo]) {
        self.crl_next_update.reset();
        self.crl_entries.reset();
        for c in crls {
            if let Some(nu) = c.next_update {
                self.crl_next_update
                    .with_label_values(&[&c.issuer])
                    .set(nu as f64);
            }
            self.crl_entries
                .with_label_values(&[&c.issuer])
                .set(c.entries as i64);
        }
    }

    pub fn revoked_closed(&self) {
        self.revoked_closed.inc();
    }

    pub fn cert_reload(&self, kind: &str, result: &str) {
        self.cert_reloads.with_label_values(&[kind, result]).inc();
    }

    pub fn policy_reload(&self, result: &str) {
        self.policy_reloads.with_label_values(&[result]).inc();
    }

    /// Records the policy now in force.
    pub fn policy_active(&self, sha256: Option<&str>, loaded_at: i64) {
        self.policy_info.reset();
        self.policy_info
            .with_label_values(&[sha256.unwrap_or("none")])
            .set(1);
        self.policy_last_success.set(loaded_at as f64);
    }

    /// Resolves (and so exports, at zero) every series of one listener.
    pub fn listener(&self, direction: Direction, name: &str) -> ListenerMetrics {
        let d = direction.as_str();
        ListenerMetrics {
            opened: self.connections_opened.with_label_values(&[d, name]),
            rate_limited: self.rate_limited.with_label_values(&[name]),
            policy_closed: self.policy_closed.with_label_values(&[name]),
            active: self.connections_active.with_label_values(&[d, name]),
            to_upstream: self.bytes.with_label_values(&[d, name, "to_upstream"]),
            to_downstream: self.bytes.with_label_values(&[d, name, "to_downstream"]),
            handshake_ok: self.handshakes.with_label_values(&[d, name, "success"]),
            handshake_failed: HandshakeFailure::ALL
                .iter()
                .map(|f| {
                    (
                        *f,
                        self.handshakes.with_label_values(&[d, name, f.as_str()]),
                    )
                })
                .collect(),
            closed: CloseReason::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        self.connections_closed
                            .with_label_values(&[d, name, r.as_str()]),
                    )
                })
                .collect(),
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.requests.with_label_values(&[d, name, c])),
            request_duration: self.request_duration.with_label_values(&[d, name]),
            request_errors: self.request_errors.clone(),
            direction: d,
            name: name.into(),
        }
    }

    /// Replaces the expiry series with exactly these certificates, so a
    /// certificate that went away stops being exported.
    pub fn set_certificates<'a>(&self, certs: impl IntoIterator<Item = &'a CertSummary>) {
        self.cert_expiration.reset();
        for c in certs {
            self.cert_expiration
                .with_label_values(&[c.kind.as_str(), &c.spiffe_id, &c.serial])
                .set(c.not_after as f64);
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn series(m: &Metrics, decision: &str, rule: &str) -> Option<u64> {
        let want = format!(
            "portcullis_authz_decisions_total{{decision=\"{decision}\",rule=\"{rule}\",service=\"web\"}} "
        );
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(want.as_str())?.parse().ok())
    }

    #[test]
    fn cached_authz_counts_each_decision_in_its_own_series() {
        let m = Metrics::new();
        let cache = AuthzCache::default();
        let read: Arc<str> = Arc::from("read");
        for _ in 0..3 {
            m.authz_cached(&cache, "web", "allow", &read);
        }
        assert_eq!(series(&m, "allow", "read"), Some(3));
        // Another decision by the same rule, and another rule, each get
        // their own series, and switching back still counts.
        m.authz_cached(&cache, "web", "audit_deny", &read);
        let write: Arc<str> = Arc::from("write");
        m.authz_cached(&cache, "web", "deny", &write);
        m.authz_cached(&cache, "web", "allow", &read);
        assert_eq!(series(&m, "allow", "read"), Some(4));
        assert_eq!(series(&m, "audit_deny", "read"), Some(1));
        assert_eq!(series(&m, "deny", "write"), Some(1));
        // A reloaded policy names its rules anew: same name, same series.
        let reloaded: Arc<str> = Arc::from("read");
        m.authz_cached(&cache, "web", "allow", &reloaded);
        assert_eq!(series(&m, "allow", "read"), Some(5));
    }
}
