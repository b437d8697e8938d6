//! `runtime` and `reload`: the sidecar's worker threads, and how file
//! changes are picked up.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Check, ConfigError};
use super::duration::ConfigDuration;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RuntimeConfig {
    /// Worker threads; when unset, derived from the container's CPU quota.
    pub worker_threads: Option<usize>,
}

/// How file changes are picked up.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReloadConfig {
    /// Quiet time after a file event before re-reading (writers often
    /// touch several files).
    pub debounce: ConfigDuration,
    /// Re-read everything this often even without events, as a safety net.
    pub interval: ConfigDuration,
    /// Watch the files' directories for changes; off leaves SIGHUP,
    /// `POST /reload` and the periodic re-read.
    pub watch: bool,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            debounce: ConfigDuration(Duration::from_millis(200)),
            interval: ConfigDuration(Duration::from_secs(60)),
            watch: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    worker_threads: Option<Spanned<usize>>,
}

impl RawRuntime {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<RuntimeConfig, ConfigError> {
        Ok(RuntimeConfig {
            worker_threads: c.get(self.worker_threads, "runtime.worker_threads", 1..=1024)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    watch: Option<bool>,
    debounce: Option<ConfigDuration>,
    interval: Option<Spanned<ConfigDuration>>,
}

impl RawReload {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<ReloadConfig, ConfigError> {
        let mut reload = ReloadConfig::default();
        if let Some(d) = self.debounce {
            reload.debounce = d;
        }
        if let Some(w) = self.watch {
            reload.watch = w;
        }
        c.set(
            self.interval,
            "reload.interval",
            ConfigDuration(Duration::from_secs(1))..,
            &mut reload.interval,
        )?;
        Ok(reload)
    }
}
