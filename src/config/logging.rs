//! `log` and `audit`: the sidecar's own logs, the authorization audit log,
//! and where such lines go.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Check, ConfigError};

/// Where audit or access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum LogSink {
    Stdout,
    Stderr,
    File(PathBuf),
    Off,
}

impl LogSink {
    /// `stdout`, `stderr`, `off`, or a file path (relative to `base`).
    pub fn parse(s: &str, base: &Path) -> Self {
        match s {
            "stdout" => LogSink::Stdout,
            "stderr" => LogSink::Stderr,
            "off" => LogSink::Off,
            path => {
                let p = PathBuf::from(path);
                LogSink::File(if p.is_absolute() { p } else { base.join(p) })
            }
        }
    }

    /// A sink setting from the file; empty is an error at its place.
    pub(super) fn read(
        c: &Check<'_>,
        value: Spanned<String>,
        name: &str,
    ) -> Result<Self, ConfigError> {
        if value.value.is_empty() {
            return Err(c.at(
                value.referenced,
                format!("{name} must be stdout, stderr, off or a file path"),
            ));
        }
        Ok(LogSink::parse(&value.value, c.base))
    }
}

/// The authorization audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditConfig {
    pub sink: LogSink,
    /// Also log allowed decisions (denials are always logged).
    pub log_allows: bool,
    /// Lines per second at most; the rest are counted, not written.
    pub max_per_second: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sink: LogSink::Stdout,
            log_allows: false,
            max_per_second: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LogConfig {
    /// A tracing filter (`info`, `portcullis=debug,warn`); `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    /// stdout | stderr | off | a file path
    sink: Option<Spanned<String>>,
    #[serde(default)]
    log_allows: bool,
    max_per_second: Option<Spanned<u32>>,
}

impl RawAudit {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<AuditConfig, ConfigError> {
        let mut audit = AuditConfig::default();
        if let Some(sink) = self.sink {
            audit.sink = LogSink::read(c, sink, "audit.sink")?;
        }
        audit.log_allows = self.log_allows;
        c.set(
            self.max_per_second,
            "audit.max_per_second",
            1..,
            &mut audit.max_per_second,
        )?;
        Ok(audit)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

impl RawLog {
    pub(super) fn validate(self) -> LogConfig {
        let mut log = LogConfig::default();
        if let Some(level) = self.level {
            log.level = level;
        }
        if let Some(format) = self.format {
            log.format = format;
        }
        log
    }
}
