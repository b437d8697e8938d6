//! The opt-in access log: one JSON line per HTTP request, written by its own
//! thread (the audit log's writer) so the data path never waits on a disk.
//! Lines that do not fit the queue are counted, not waited for.

use std::net::SocketAddr;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use prometheus::IntCounter;

use crate::config::LogSink;

pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: IntCounter,
}

/// One request, as logged.
pub struct AccessEntry<'a> {
    pub direction: &'static str,
    pub service: &'a str,
    /// The peer's SPIFFE ID (inbound) or the upstream's (outbound).
    pub peer: Option<&'a str>,
    pub src: SocketAddr,
    pub method: &'a str,
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub version: hyper::Version,
    pub status: u16,
    /// Time to the response headers.
    pub duration: Duration,
    /// Set when portcullis answered itself.
    pub error: Option<&'static str>,
}

impl AccessLog {
    pub fn start(sink: &LogSink, dropped: IntCounter) -> std::io::Result<Self> {
        Ok(AccessLog {
            tx: crate::line_writer::spawn(sink, "portcullis-access", dropped.clone())?,
            dropped,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, e: &AccessEntry<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut v = serde_json::json!({
            "time": crate::clock::now_rfc3339(),
            "type": "access",
            "direction": e.direction,
            "service": e.service,
            "src": e.src.to_string(),
            "method": e.method,
            "path": e.path,
            "protocol": format!("{:?}", e.version),
            "status": e.status,
            "duration_ms": (e.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        });
        if let Some(p) = e.peer {
            v["peer"] = p.into();
        }
        if let Some(a) = e.authority {
            v["authority"] = a.into();
        }
        if let Some(err) = e.error {
            v["error"] = err.into();
        }
        let mut line = v.to_string();
        line.push('\n');
        if tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}
