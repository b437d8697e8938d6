//! Connections through the listeners: opened, open, closed (by reason),
//! TLS handshakes (by result), bytes, and those the enforcement sweep
//! closed (by kind and reason).

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::register::{counter_vec, int_gauge_vec};

pub struct ConnectionFamilies {
    /// direction, listener
    pub opened: IntCounterVec,
    /// direction, listener
    pub active: IntGaugeVec,
    /// direction, listener
    pub handshaking: IntGaugeVec,
    /// direction, listener, reason
    pub closed: IntCounterVec,
    /// direction, listener, result
    pub handshakes: IntCounterVec,
    /// direction, listener, flow
    pub bytes: IntCounterVec,
    /// kind, reason
    pub swept: IntCounterVec,
    /// direction, listener, limit
    pub rejected: IntCounterVec,
    /// server (admin, probe), reason
    pub plaintext_refused: IntCounterVec,
    /// direction, reason
    pub capture_refused: IntCounterVec,
    pub capture_passthrough: prometheus::IntCounter,
    /// flow
    pub capture_passthrough_bytes: IntCounterVec,
}

impl ConnectionFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        ConnectionFamilies {
            opened: counter_vec(
                registry,
                "portcullis_connections_opened_total",
                "Connections accepted by a listener.",
                &["direction", "listener"],
            ),
            active: int_gauge_vec(
                registry,
                "portcullis_connections_active",
                "Connections currently open on a listener.",
                &["direction", "listener"],
            ),
            handshaking: int_gauge_vec(
                registry,
                "portcullis_tls_handshakes_in_progress",
                "Inbound TLS handshakes under way: connections whose client has spoken and whose handshake has not ended (limits.max_handshakes bounds it).",
                &["direction", "listener"],
            ),
            closed: counter_vec(
                registry,
                "portcullis_connections_closed_total",
                "Connections closed, by the reason they ended.",
                &["direction", "listener", "reason"],
            ),
            handshakes: counter_vec(
                registry,
                "portcullis_tls_handshakes_total",
                "TLS handshakes, by result: success or the failure reason.",
                &["direction", "listener", "result"],
            ),
            bytes: counter_vec(
                registry,
                "portcullis_bytes_total",
                "Bytes proxied; flow=to_upstream is from the listener's client onwards, to_downstream is back to it.",
                &["direction", "listener", "flow"],
            ),
            swept: counter_vec(
                registry,
                "portcullis_enforcement_closed_connections_total",
                "Open connections the enforcement sweep closed because what is admitted changed (policy, CRLs, OCSP, trust bundles, peer expiry), by connection kind and reason.",
                &["kind", "reason"],
            ),
            rejected: counter_vec(
                registry,
                "portcullis_listener_rejected_connections_total",
                "New connections a listener closed at once because a limit was reached: max_connections, max_connections_per_client, max_handshakes or max_handshakes_per_client (inbound), max_app_connections (outbound).",
                &["direction", "listener", "limit"],
            ),
            capture_refused: counter_vec(
                registry,
                "portcullis_capture_refused_total",
                "Captured (redirected) connections refused before any listener took them: unmapped_port (inbound: no listener serves the original destination port), unmatched (outbound, capture.unmatched: deny), max_passthrough (outbound, over capture.max_passthrough passed-through connections open), no_original_destination.",
                &["direction", "reason"],
            ),
            capture_passthrough: super::register::counter(
                registry,
                "portcullis_capture_passthrough_total",
                "Captured outbound connections no outbound listener claims, passed through as plain TCP (capture.unmatched: passthrough).",
            ),
            capture_passthrough_bytes: counter_vec(
                registry,
                "portcullis_capture_passthrough_bytes_total",
                "Bytes of passed-through connections; flow=to_upstream is from the app.",
                &["flow"],
            ),
            plaintext_refused: counter_vec(
                registry,
                "portcullis_plaintext_refused_total",
                "Connections and requests the admin and probe servers cut off at a bound: max_connections, max_per_client, header_timeout, request_timeout, body_too_large.",
                &["server", "reason"],
            ),
        }
    }
}
