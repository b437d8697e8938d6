//! A thread that writes lines (the audit log, the access log) to their
//! sink, so the data path never waits on a disk. Its queue is bounded:
//! senders use `try_send` and count what does not fit.

use std::io::Write;
use std::sync::mpsc::{SyncSender, sync_channel};

use crate::config::LogSink;

/// Starts a thread that writes the lines sent to it to `sink` (`None` when
/// the sink is off).
pub fn spawn(sink: &LogSink, thread_name: &str) -> std::io::Result<Option<SyncSender<String>>> {
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
