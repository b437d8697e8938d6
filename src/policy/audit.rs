//! The audit log: one JSON line per denial (and per allow when enabled),
//! written by its own thread so the data path never blocks on a write. A
//! rate limit and a bounded queue keep a flood from filling the disk or
//! memory; what they hold back is counted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use prometheus::IntCounter;

use crate::identity::SpiffeId;
use crate::proxy::LogLimiter;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum AuditSink {
    Stdout,
    Stderr,
    File(PathBuf),
    Off,
}

impl AuditSink {
    pub fn parse(s: &str, base: &std::path::Path) -> Self {
        match s {
            "stdout" => AuditSink::Stdout,
            "stderr" => AuditSink::Stderr,
            "off" => AuditSink::Off,
            path => {
                let p = PathBuf::from(path);
                AuditSink::File(if p.is_absolute() { p } else { base.join(p) })
            }
        }
    }
}

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
        sink: &AuditSink,
        log_allows: bool,
        max_per_second: u32,
        suppressed: IntCounter,
        dropped: IntCounter,
    ) -> std::io::Result<Self> {
        let tx = spawn_line_writer(sink, "portcullis-audit")?;
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
            "time": now_rfc3339(),
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

/// Starts a thread that writes the lines sent to it to `sink` (`None` when
/// the sink is off). The queue is bounded: senders use `try_send` and count
/// what does not fit, so the data path never waits on a disk.
pub(crate) fn spawn_line_writer(
    sink: &AuditSink,
    thread_name: &str,
) -> std::io::Result<Option<SyncSender<String>>> {
    let out: Option<Box<dyn Write + Send>> = match sink {
        AuditSink::Off => None,
        AuditSink::Stdout => Some(Box::new(std::io::stdout())),
        AuditSink::Stderr => Some(Box::new(std::io::stderr())),
        AuditSink::File(p) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
    };
    let Some(w) = out else { return Ok(None) };
    let (tx, rx) = sync_channel::<String>(4096);
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            // Lines that queued up together go out in one write; the
            // buffer is flushed whenever the queue runs dry.
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, w);
            while let Ok(line) = rx.recv() {
                // A failed write has nowhere left to be reported; the
                // metrics still show what happened.
                let _ = w.write_all(line.as_bytes());
                while let Ok(more) = rx.try_recv() {
                    let _ = w.write_all(more.as_bytes());
                }
                let _ = w.flush();
            }
        })?;
    Ok(Some(tx))
}

/// A counter registered nowhere, for an audit log that is off.
fn detached_counter() -> IntCounter {
    IntCounter::new("portcullis_audit_unused", "unused").expect("static metric name is valid")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
