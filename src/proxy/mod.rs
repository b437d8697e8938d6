//! The data path: accept loops, inbound (mTLS → app) and outbound
//! (app → mTLS) connection handling, admission after the handshake, and the
//! L4 byte copy.

pub mod admission;
pub mod copy;
mod inbound;
mod listener;
mod loglimit;
mod outbound;
mod probe;
pub mod registry;

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::TcpStream;

pub use inbound::{Authz, InboundListener};
pub use listener::accept_loop;
pub use loglimit::LogLimiter;
pub use outbound::OutboundListener;
pub use probe::ProbeListener;
pub use registry::{ConnRegistry, StopReason};

use crate::identity::SpiffeId;
use crate::metrics::CloseReason;
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

async fn connect_with_timeout(
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
        CopyEnd::Stopped => {
            tracing::info!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection closed: no longer allowed")
        }
        CopyEnd::Completed => {
            tracing::debug!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection closed")
        }
    }
}
