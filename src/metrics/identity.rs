//! Our certificates and trust: every loaded certificate's expiry (the
//! series SREs alert on) and certificate reloads.

use prometheus::{GaugeVec, IntCounterVec, Registry};

use super::register::{counter_vec, gauge_vec};

pub struct IdentityFamilies {
    cert_expiration: GaugeVec,
    cert_not_before: GaugeVec,
    cert_reloads: IntCounterVec,
}

/// One certificate as the expiry series labels it.
pub struct CertExpiry<'a> {
    /// leaf, intermediate or root.
    pub kind: &'a str,
    pub spiffe_id: &'a str,
    pub serial: &'a str,
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
                "notAfter of each loaded certificate (our chain and every trust bundle root), as a Unix timestamp.",
                &["kind", "spiffe_id", "serial"],
            ),
            cert_not_before: gauge_vec(
                registry,
                "portcullis_cert_not_before_timestamp_seconds",
                "notBefore of each loaded certificate, as a Unix timestamp (same labels as the expiry series).",
                &["kind", "spiffe_id", "serial"],
            ),
            cert_reloads,
        }
    }

    /// Replaces the expiry series with exactly these certificates, so a
    /// certificate that went away stops being exported.
    pub fn set_certificates<'a>(&self, certs: impl IntoIterator<Item = CertExpiry<'a>>) {
        self.cert_expiration.reset();
        self.cert_not_before.reset();
        for c in certs {
            let labels = [c.kind, c.spiffe_id, c.serial];
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
