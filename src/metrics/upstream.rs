//! Outbound upstreams: each endpoint's circuit breaker state and
//! transitions and latency average, requests refused before reaching the
//! upstream, and retries.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Registry};

use super::register::{counter_vec, gauge_vec, int_gauge_vec};

pub struct UpstreamFamilies {
    /// upstream, endpoint
    pub circuit_state: IntGaugeVec,
    /// upstream, endpoint, to
    pub circuit_transitions: IntCounterVec,
    /// upstream, reason
    pub rejections: IntCounterVec,
    /// upstream, endpoint
    pub endpoint_ewma: GaugeVec,
    /// upstream
    pub retries: IntCounterVec,
}

impl UpstreamFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        UpstreamFamilies {
            circuit_state: int_gauge_vec(
                registry,
                "portcullis_circuit_state",
                "Circuit breaker state of an upstream endpoint: 0 closed, 1 open, 2 half-open.",
                &["upstream", "endpoint"],
            ),
            circuit_transitions: counter_vec(
                registry,
                "portcullis_circuit_transitions_total",
                "Circuit breaker state changes of an upstream endpoint, by the state entered.",
                &["upstream", "endpoint", "to"],
            ),
            rejections: counter_vec(
                registry,
                "portcullis_upstream_rejections_total",
                "Connections or requests refused before reaching an upstream: circuit_open, max_connections, max_pending_requests, max_requests.",
                &["upstream", "reason"],
            ),
            endpoint_ewma: gauge_vec(
                registry,
                "portcullis_endpoint_latency_ewma_seconds",
                "Moving average of an endpoint's latency (connect or response headers; failures count as slow), used to choose among endpoints.",
                &["upstream", "endpoint"],
            ),
            retries: counter_vec(
                registry,
                "portcullis_upstream_retries_total",
                "Requests sent again to another endpoint after a connect failure.",
                &["upstream"],
            ),
        }
    }
}
