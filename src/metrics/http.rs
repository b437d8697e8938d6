//! HTTP requests: answered (by status class), how long their response
//! headers took, the ones portcullis answered itself, and the access log.

use prometheus::{HistogramVec, IntCounter, IntCounterVec, Registry};

use super::register::{counter, counter_vec, histogram_vec};

pub struct HttpFamilies {
    /// direction, service, code_class
    pub requests: IntCounterVec,
    /// direction, service
    pub duration: HistogramVec,
    /// direction, service, reason
    pub errors: IntCounterVec,
    pub access_log_dropped: IntCounter,
}

impl HttpFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        HttpFamilies {
            requests: counter_vec(
                registry,
                "portcullis_requests_total",
                "HTTP requests answered, by status class (1xx..5xx), whoever answered them.",
                &["direction", "service", "code_class"],
            ),
            duration: histogram_vec(
                registry,
                "portcullis_request_duration_seconds",
                "Time from receiving an HTTP request to sending its response headers.",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ],
                &["direction", "service"],
            ),
            errors: counter_vec(
                registry,
                "portcullis_request_errors_total",
                "HTTP requests portcullis answered itself, by the x-portcullis-error reason.",
                &["direction", "service", "reason"],
            ),
            access_log_dropped: counter(
                registry,
                "portcullis_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind or the sink refused them (a full disk).",
            ),
        }
    }
}
