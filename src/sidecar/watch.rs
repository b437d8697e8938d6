//! Noticing that files changed, so the sidecar reloads them without a
//! restart: a watch on the *directories* of the files (Kubernetes swaps a
//! `..data` symlink inside the directory, which a watch on the file itself
//! would never see), debounced because writers touch several files in a
//! row, plus a periodic re-read as a safety net for filesystems that emit
//! no events. Every trigger re-reads everything; the stores compare content
//! hashes, so a spurious trigger changes nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::control::ControlPlane;

/// The directories to watch for a set of files.
fn directories(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect()
}

/// Watches the directories of `files` and reloads `plane` on changes and
/// every `interval`, until `shutdown`. With `watch` off only the
/// periodic re-read runs here.
pub fn spawn(
    files: Vec<PathBuf>,
    watch: bool,
    debounce: Duration,
    interval: Duration,
    plane: Arc<ControlPlane>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = watch.then(|| {
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match event {
                // Our own reads show up as access events: never a reason to reload.
                Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
                // A full channel already holds a pending trigger: nothing is lost.
                Ok(_) | Err(_) => {
                    let _ = tx.try_send(());
                }
            }
        })
    });
    let mut watcher = match watcher {
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot watch files; relying on the periodic re-read, SIGHUP and POST /reload");
            None
        }
        None => None,
    };
    if let Some(w) = watcher.as_mut() {
        for dir in directories(&files) {
            if let Err(e) = w.watch(Path::new(&dir), RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on the periodic re-read");
            }
        }
    }
    tokio::spawn(async move {
        // Dropping the watcher stops it: keep it for the task's lifetime.
        let _watcher = watcher;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = rx.recv() => {
                    // Let a burst of writes settle, then take it as one change.
                    tokio::time::sleep(debounce).await;
                    while rx.try_recv().is_ok() {}
                    plane.reload("file change").await;
                }
                _ = tick.tick() => {
                    plane.reload("periodic").await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_each_directory_once() {
        let dirs = directories(&[
            PathBuf::from("/etc/p/policy.yaml"),
            PathBuf::from("/etc/p/other.yaml"),
            PathBuf::from("/run/svid/tls.crt"),
            PathBuf::from("relative.yaml"),
        ]);
        let want: BTreeSet<PathBuf> = ["/etc/p", "/run/svid", "."]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(dirs, want);
    }
}
