//! The data path: accept loops, inbound (mTLS → app) and outbound
//! (app → mTLS) connection handling, admission after the handshake, the
//! L4 byte copy, and L7 HTTP proxying (`http`).

pub mod admission;
pub mod close;
pub mod copy;
pub mod http;
mod inbound;
pub mod listener;
mod outbound;
mod probe;
pub mod registry;

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::TcpStream;

pub use close::CloseReason;
pub use inbound::{Authz, InboundListener, InboundParts};
pub use listener::{Direction, ListenerMetrics, ListenerParts, accept_loop};
pub(crate) use outbound::ConnectError;
pub use outbound::{OutboundListener, OutboundParts};
pub use probe::ProbeListener;
pub use registry::{ConnRegistry, StopReason};

use crate::config::ConnectionsConfig;
use crate::identity::SpiffeId;
use copy::{CopyEnd, CopyStats};

/// Keeps a connection counted in the active gauge for as long as it lives.
struct ActiveGuard<'a>(&'a IntGauge);

impl<'a> ActiveGuard<'a> {
    fn new(g: &'a IntGauge) -> Self {
        g.inc();
        ActiveGuard(g)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// When a connection must end regardless of traffic, and the reason to
/// give then: the peer certificate's expiry (when configured) or the
/// maximum lifetime, whichever comes first.
fn connection_deadline(
    limits: &ConnectionsConfig,
    peer_not_after: i64,
) -> (Option<tokio::time::Instant>, CloseReason) {
    let now = tokio::time::Instant::now();
    let expiry = limits.close_on_peer_expiry.then(|| {
        let left = (peer_not_after - crate::clock::unix_now()).max(0) as u64;
        now + Duration::from_secs(left)
    });
    let lifetime = limits.max_lifetime.map(|d| now + d.0);
    match (expiry, lifetime) {
        (Some(e), Some(l)) if l < e => (Some(l), CloseReason::MaxLifetime),
        (Some(e), _) => (Some(e), CloseReason::PeerExpired),
        (None, Some(l)) => (Some(l), CloseReason::MaxLifetime),
        (None, None) => (None, CloseReason::MaxLifetime),
    }
}

pub(crate) async fn connect_with_timeout(
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

fn log_copy_end(
    listener: &str,
    direction: &str,
    end: &CopyEnd,
    stats: CopyStats,
    peer: Option<&SpiffeId>,
) {
    let peer = peer.map(|p| p.as_str()).unwrap_or("");
    match end {
        CopyEnd::Error(e) => {
            tracing::debug!(%listener, direction, peer, error = %e, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection ended with an error")
        }
        CopyEnd::IdleTimeout => {
            tracing::debug!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection idle, closed")
        }
        CopyEnd::Deadline => {
            tracing::info!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection closed: peer certificate expired or maximum lifetime reached")
        }
        CopyEnd::Stopped => {
            tracing::info!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection closed: no longer allowed")
        }
        CopyEnd::Completed => {
            tracing::debug!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection closed")
        }
    }
}
