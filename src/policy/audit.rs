//! The audit log: one JSON line per denial (and per allow when enabled),
//! written by its own thread so the data path never blocks on a write. A
//! rate limit and a bounded queue keep a flood from filling the disk or
//! memory; what they hold back is counted.

use std::net::SocketAddr;
use std::sync::mpsc::{SyncSender, TrySendError};

use prometheus::IntCounter;

use crate::config::LogSink;
use crate::identity::SpiffeId;
use crate::log_limit::LogLimiter;

/// One authorization worth recording.
pub struct AuditEvent<'a> {
    pub peer: &'a SpiffeId,
    pub service: &'a str,
    pub rule: &'a str,
    /// allow, deny or audit_deny.
    pub decision: &'a str,
    pub mode: &'a str,
    pub src: SocketAddr,
    /// Method and path, for HTTP requests.
    pub request: Option<(&'a str, &'a str)>,
    /// Why the event happened, when it is not a fresh decision (e.g.
    /// "policy_reload" for a connection closed after a reload).
    pub cause: Option<&'a str>,
}

pub struct AuditLog {
    tx: Option<SyncSender<String>>,
    log_allows: bool,
    limiter: LogLimiter,
    suppressed: IntCounter,
    dropped: IntCounter,
}

impl AuditLog {
    /// Starts the writer thread for `sink`.
    pub fn start(
        sink: &LogSink,
        log_allows: bool,
        max_per_second: u32,
        suppressed: IntCounter,
        dropped: IntCounter,
    ) -> std::io::Result<Self> {
        let tx = crate::line_writer::spawn(sink, "portcullis-audit", dropped.clone())?;
        Ok(AuditLog {
            tx,
            log_allows,
            limiter: LogLimiter::new(max_per_second.max(1)),
            suppressed,
            dropped,
        })
    }

    /// An audit log that writes nothing.
    pub fn off() -> Self {
        AuditLog {
            tx: None,
            log_allows: false,
            limiter: LogLimiter::new(1),
            suppressed: detached_counter(),
            dropped: detached_counter(),
        }
    }

    pub fn record(&self, e: &AuditEvent<'_>) {
        let Some(tx) = &self.tx else { return };
        if e.decision == "allow" && !self.log_allows {
            return;
        }
        let Some(suppressed) = self.limiter.allow() else {
            self.suppressed.inc();
            return;
        };
        let mut v = serde_json::json!({
            "time": crate::clock::now_rfc3339(),
            "type": "authz",
            "peer": e.peer.as_str(),
            "service": e.service,
            "rule": e.rule,
            "decision": e.decision,
            "mode": e.mode,
            "src": e.src.to_string(),
        });
        if let Some((method, path)) = e.request {
            v["method"] = method.into();
            v["path"] = path.into();
        }
        if let Some(cause) = e.cause {
            v["cause"] = cause.into();
        }
        if suppressed > 0 {
            v["suppressed_before"] = suppressed.into();
        }
        let mut line = v.to_string();
        line.push('\n');
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(line) {
            self.dropped.inc();
        }
    }
}

/// A counter registered nowhere, for an audit log that is off.
fn detached_counter() -> IntCounter {
    IntCounter::new("portcullis_audit_unused", "unused").expect("static metric name is valid")
}
