//! A thread that writes lines (the audit log, the access log) to their
//! sink, so the data path never waits on a disk. Its queue is bounded:
//! senders use `try_send` and count what does not fit. Lines the sink
//! refuses (a full disk, a file made unwritable) are counted the same way
//! and said once per failure streak on the sidecar's own log; the proxy
//! keeps serving, and writing resumes when the sink takes lines again.

use std::io::Write;
use std::sync::mpsc::{SyncSender, sync_channel};

use crate::config::LogSink;

/// Starts a thread that writes the lines sent to it to `sink` (`None` when
/// the sink is off).
pub fn spawn(
    sink: &LogSink,
    thread_name: &str,
    dropped: prometheus::IntCounter,
) -> std::io::Result<Option<SyncSender<String>>> {
    let out: Option<Box<dyn Write + Send>> = match sink {
        LogSink::Off => None,
        LogSink::Stdout => Some(Box::new(std::io::stdout())),
        LogSink::Stderr => Some(Box::new(std::io::stderr())),
        LogSink::File(p) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
    };
    let Some(w) = out else { return Ok(None) };
    let (tx, rx) = sync_channel::<String>(4096);
    let name = thread_name.to_string();
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            // Lines that queued up together go out in one write.
            let mut w = w;
            let mut batch = String::with_capacity(64 * 1024);
            let mut failing = false;
            while let Ok(line) = rx.recv() {
                batch.clear();
                batch.push_str(&line);
                let mut lines = 1u64;
                while batch.len() < 64 * 1024
                    && let Ok(more) = rx.try_recv()
                {
                    batch.push_str(&more);
                    lines += 1;
                }
                match w.write_all(batch.as_bytes()).and_then(|()| w.flush()) {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(writer = %name, "log sink writable again");
                    }
                    Ok(()) => {}
                    Err(e) => {
                        dropped.inc_by(lines);
                        if !failing {
                            failing = true;
                            tracing::error!(writer = %name, error = %e, "cannot write to the log sink; lines are dropped and counted until it takes them again");
                        }
                    }
                }
            }
        })?;
    Ok(Some(tx))
}
