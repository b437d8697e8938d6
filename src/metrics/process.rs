//! The sidecar as a whole: readiness and build information.

use prometheus::{IntGauge, Registry};

use super::register::{int_gauge, int_gauge_vec};

pub struct ProcessFamilies {
    ready: IntGauge,
}

impl ProcessFamilies {
    pub(super) fn new(registry: &Registry) -> Self {
        int_gauge_vec(
            registry,
            "portcullis_build_info",
            "Build information; always 1.",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        ProcessFamilies {
            ready: int_gauge(
                registry,
                "portcullis_ready",
                "1 when the sidecar is ready to serve (identity loaded, listeners bound, not draining).",
            ),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }
}
