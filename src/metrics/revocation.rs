//! Revocation: checks of peer certificates (by method and result), the
//! loaded CRLs, open connections closed for a revoked peer, the OCSP cache
//! and responder latency, and our own staple.

use prometheus::{
    Gauge, GaugeVec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use super::register::{
    counter, counter_vec, gauge, gauge_vec, histogram, int_gauge, int_gauge_vec,
};

pub struct RevocationFamilies {
    /// method (crl, ocsp), result
    pub checks: IntCounterVec,
    crl_next_update: GaugeVec,
    crl_entries: IntGaugeVec,
    pub revoked_closed: IntCounter,
    pub ocsp_cache: IntGauge,
    pub ocsp_staple_next_update: Gauge,
    pub ocsp_latency: Histogram,
}

/// One loaded CRL as its series label it.
pub struct CrlSeries<'a> {
    pub issuer: &'a str,
    /// nextUpdate, Unix seconds, if the list has one.
    pub next_update: Option<i64>,
    pub entries: usize,
}

impl RevocationFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        RevocationFamilies {
            checks: counter_vec(
                registry,
                "portcullis_revocation_checks_total",
                "Revocation checks of peer certificates at the handshake, by method and result (good, revoked, unknown).",
                &["method", "result"],
            ),
            crl_next_update: gauge_vec(
                registry,
                "portcullis_crl_next_update_timestamp_seconds",
                "nextUpdate of each loaded CRL, as a Unix timestamp.",
                &["issuer"],
            ),
            crl_entries: int_gauge_vec(
                registry,
                "portcullis_crl_entries",
                "Revoked certificates listed by each loaded CRL.",
                &["issuer"],
            ),
            revoked_closed: counter(
                registry,
                "portcullis_revoked_connections_closed_total",
                "Open connections closed because a new CRL or OCSP answer revoked their peer.",
            ),
            ocsp_cache: int_gauge(
                registry,
                "portcullis_ocsp_cache_entries",
                "OCSP answers held in the cache.",
            ),
            ocsp_latency: histogram(
                registry,
                "portcullis_ocsp_responder_duration_seconds",
                "Time an OCSP responder took to answer (or fail).",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            ocsp_staple_next_update: gauge(
                registry,
                "portcullis_ocsp_staple_next_update_timestamp_seconds",
                "nextUpdate of the OCSP answer stapled to our SVID, as a Unix timestamp (0: none).",
            ),
        }
    }

    /// Replaces the CRL series with exactly these lists.
    pub fn set_crls<'a>(&self, crls: impl IntoIterator<Item = CrlSeries<'a>>) {
        self.crl_next_update.reset();
        self.crl_entries.reset();
        for c in crls {
            if let Some(nu) = c.next_update {
                self.crl_next_update
                    .with_label_values(&[c.issuer])
                    .set(nu as f64);
            }
            self.crl_entries
                .with_label_values(&[c.issuer])
                .set(c.entries as i64);
        }
    }
}
