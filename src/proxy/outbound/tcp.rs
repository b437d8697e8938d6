//! The outbound L4 path: a verified connection to some endpoint of the
//! upstream, registered with the sweep, then bytes both ways.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::connect::Connector;
use crate::proxy::close::{self, CloseReason};
use crate::proxy::copy::{CopyCounters, CopyLimits, copy_bidirectional, log_copy_end};
use crate::proxy::counters::ListenerMetrics;
use crate::proxy::registry::ConnKind;
use crate::tls::Alpn;

/// Serves one L4 connection from the local app until it ends; returns how
/// it ended.
pub(super) async fn serve<S>(
    connector: &Connector,
    metrics: &ListenerMetrics,
    app: &mut S,
    src: SocketAddr,
    idle: Duration,
    deadline: Option<tokio::time::Instant>,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(_slot) = connector.set().connection() else {
        return CloseReason::Overloaded;
    };
    let mut up = match connector.connect_any(Alpn::None).await {
        Ok(up) => up,
        Err(e) => return e.close_reason(),
    };
    let registration = connector.register(ConnKind::OutboundTcp, &up);
    tracing::debug!(listener = %connector.listener(), %src, endpoint = %up.addr, peer = %up.peer.id, "outbound connection established");
    let (end, stats) = copy_bidirectional(
        app,
        &mut up.tls,
        CopyCounters {
            to_upstream: &metrics.to_upstream,
            to_downstream: &metrics.to_downstream,
        },
        CopyLimits {
            idle,
            deadline,
            stop: registration.stopped(),
        },
    )
    .await;
    log_copy_end(
        connector.listener(),
        "outbound",
        &end,
        stats,
        Some(&up.peer.id),
    );
    let stopped = registration.reason().unwrap_or(CloseReason::Policy);
    close::copy_end(&end, CloseReason::MaxLifetime, stopped)
}
