//! What every listener shares: the parts it is built from, the accept loop (accept until
//! shutdown, hand each connection to its handler as a tracked task, and
//! survive accept errors: a full file descriptor table must not end the
//! listener), and connecting onwards with a timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::close::CloseReason;
use super::counters::ListenerMetrics;
use super::http::access_log::AccessLog;
use super::registry::ConnRegistry;
use crate::config::{ConnectionsConfig, HttpConfig, Timeouts};
use crate::tls::TlsContext;

/// What a listener of either direction is built from, besides its own
/// config section.
pub struct ListenerParts {
    pub tls: Arc<TlsContext>,
    /// Resolved for this listener's name and direction.
    pub metrics: ListenerMetrics,
    pub timeouts: Timeouts,
    pub connections: ConnectionsConfig,
    pub http: HttpConfig,
    pub access_log: Arc<AccessLog>,
    /// Fires when the sidecar stops accepting (drain).
    pub drain: CancellationToken,
    /// Every connection task, so draining can wait for them.
    pub tasks: TaskTracker,
    /// Where connections with a verified peer register for the sweep.
    pub registry: Arc<ConnRegistry>,
}

/// Keeps a connection counted in the active gauge for as long as it lives.
pub(crate) struct ActiveGuard<'a>(&'a IntGauge);

impl<'a> ActiveGuard<'a> {
    pub(crate) fn new(g: &'a IntGauge) -> Self {
        g.inc();
        ActiveGuard(g)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accepts connections on `listener` until `shutdown` fires. Each
/// connection runs `handle` in a task tracked by `tracker`, so draining can
/// wait for them.
pub async fn accept_loop<F, Fut>(
    name: String,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Proxied traffic is latency-sensitive and already batched
                // by the apps; Nagle would only add delay.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(listener = %name, %peer, error = %e, "set TCP_NODELAY failed");
                }
                tracker.spawn(handle(stream, peer));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOMEM persist until connections close:
                // back off instead of spinning; other errors are per-connection.
                let resource = matches!(e.raw_os_error(), Some(23) | Some(24) | Some(12));
                tracing::warn!(listener = %name, error = %e, "accept failed");
                if resource {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    tracing::debug!(listener = %name, "stopped accepting");
}

/// Connects to `addr` with `TCP_NODELAY`, within `timeout`.
pub async fn connect_with_timeout(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, CloseReason> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) => Err(CloseReason::ConnectFailed),
        Err(_) => Err(CloseReason::ConnectTimeout),
    }
}
