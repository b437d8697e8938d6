//! Our certificates and trust: every loaded certificate's expiry (the
//! series SREs alert on) and certificate reloads.

use prometheus::{GaugeVec, IntCounterVec, Registry};

use super::register::{counter_vec, gauge_vec};

pub struct IdentityFamilies {
    cert_expiration: GaugeVec,
    cert_not_before: GaugeVec,
    cert_reloads: IntCounterVec,
    /// Workload API updates by result, and whether the stream is up.
    pub workload_api_updates: IntCounterVec,
    pub workload_api_up: prometheus::IntGauge,
    pub workload_api_errors: prometheus::IntCounter,
    /// Bundle endpoint fetches by trust domain and result, and when each
    /// last succeeded (its age is `time() -` that).
    pub bundle_fetches: IntCounterVec,
    pub bundle_fetched: GaugeVec,
}

/// One certificate as the expiry series labels it.
pub struct CertExpiry<'a> {
    /// leaf, intermediate or root.
    pub kind: &'a str,
    pub spiffe_id: &'a str,
    pub serial: &'a str,
    /// file, workload_api or bundle_endpoint.
    pub source: &'a str,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// notBefore, Unix seconds: with notAfter, how much of its life a
    /// certificate has used (alerts fire at a fraction, as issuers renew).
    pub not_before: i64,
}

impl IdentityFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        let cert_reloads = counter_vec(
            registry,
            "portcullis_cert_reloads_total",
            "Certificate reloads: kind is identity (our SVID and key), bundle, or crl (a CRL file or download, or revocation.intermediates); result is success, pending (a certificate waiting for its key) or error.",
            &["kind", "result"],
        );
        for kind in ["identity", "bundle"] {
            for result in ["success", "error"] {
                cert_reloads.with_label_values(&[kind, result]);
            }
        }
        // A refused CRL is an error of its own (a good one is a bundle
        // success): present from the start for alerts.
        cert_reloads.with_label_values(&["crl", "error"]);
        IdentityFamilies {
            cert_expiration: gauge_vec(
                registry,
                "portcullis_cert_expiration_timestamp_seconds",
                "notAfter of each loaded certificate (our chain and every trust bundle root), as a Unix timestamp; source is file, workload_api or bundle_endpoint.",
                &["kind", "spiffe_id", "serial", "source"],
            ),
            cert_not_before: gauge_vec(
                registry,
                "portcullis_cert_not_before_timestamp_seconds",
                "notBefore of each loaded certificate, as a Unix timestamp (same labels as the expiry series).",
                &["kind", "spiffe_id", "serial", "source"],
            ),
            cert_reloads,
            workload_api_updates: {
                let c = counter_vec(
                    registry,
                    "portcullis_workload_api_updates_total",
                    "Updates received from the SPIFFE Workload API: applied (validated and in force), unchanged, or refused (malformed or invalid; the last good set keeps serving).",
                    &["result"],
                );
                for r in ["applied", "unchanged", "refused"] {
                    c.with_label_values(&[r]);
                }
                c
            },
            workload_api_up: super::register::int_gauge(
                registry,
                "portcullis_workload_api_stream_up",
                "1 while the Workload API stream is open, 0 while it is being reconnected (the last good identity keeps serving).",
            ),
            workload_api_errors: super::register::counter(
                registry,
                "portcullis_workload_api_stream_errors_total",
                "Workload API connections that failed or ended; each is retried with backoff.",
            ),
            bundle_fetches: counter_vec(
                registry,
                "portcullis_trust_bundle_fetches_total",
                "Fetches from SPIFFE bundle endpoints by trust domain: applied, unchanged, or error (unreachable, not authenticated, or an invalid bundle; the last good bundle keeps serving).",
                &["trust_domain", "result"],
            ),
            bundle_fetched: gauge_vec(
                registry,
                "portcullis_trust_bundle_fetched_timestamp_seconds",
                "When each bundle endpoint's bundle was last fetched successfully, as a Unix timestamp: the bundle's age is time() minus this.",
                &["trust_domain"],
            ),
        }
    }

    /// Replaces the expiry series with exactly these certificates, so a
    /// certificate that went away stops being exported.
    pub fn set_certificates<'a>(&self, certs: impl IntoIterator<Item = CertExpiry<'a>>) {
        self.cert_expiration.reset();
        self.cert_not_before.reset();
        for c in certs {
            let labels = [c.kind, c.spiffe_id, c.serial, c.source];
            self.cert_expiration
                .with_label_values(&labels)
                .set(c.not_after as f64);
            self.cert_not_before
                .with_label_values(&labels)
                .set(c.not_before as f64);
        }
    }

    /// Counts one reload of `kind` (identity, bundle, crl) with `result`.
    pub fn cert_reload(&self, kind: &str, result: &str) {
        self.cert_reloads.with_label_values(&[kind, result]).inc();
    }
}
