//! The sidecar as a whole: readiness, build information, and the tasks
//! alive on its runtime (a count that only grows is a leak).

use prometheus::{IntGauge, Registry};

use super::register::{int_gauge, int_gauge_vec};

pub struct ProcessFamilies {
    ready: IntGauge,
    tasks: IntGauge,
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
            tasks: int_gauge(
                registry,
                "portcullis_runtime_alive_tasks",
                "Tasks alive on the sidecar's runtime when scraped: one per open connection and a few per listener and background job.",
            ),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Reads the runtime's live task count (at scrape time, not per task).
    pub(super) fn sample_tasks(&self) {
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            self.tasks.set(h.metrics().num_alive_tasks() as i64);
        }
    }
}
