//! The inbound L4 path: the service's authorizer judges the connection as
//! a whole, then bytes are copied between the peer and the local app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::InboundConfig;
use crate::log_limit::LogLimiter;
use crate::policy::{Refusal, ServiceAuthorizer};
use crate::proxy::admission::PeerIdentity;
use crate::proxy::close::CloseReason;
use crate::proxy::copy::{CopyCounters, CopyEnd, CopyLimits, copy_bidirectional, log_copy_end};
use crate::proxy::counters::ListenerMetrics;
use crate::proxy::listener::{ListenerParts, connect_with_timeout};

/// What an inbound listener's L4 connections share.
pub(super) struct InboundTcp {
    service: Arc<str>,
    forward: SocketAddr,
    authz: Arc<ServiceAuthorizer>,
    metrics: ListenerMetrics,
    connect_timeout: Duration,
    idle: Duration,
    log_limit: LogLimiter,
}

impl InboundTcp {
    pub(super) fn new(
        config: &InboundConfig,
        parts: &ListenerParts,
        authz: Arc<ServiceAuthorizer>,
    ) -> Self {
        InboundTcp {
            service: config.name.as_str().into(),
            forward: config.forward,
            authz,
            metrics: parts.metrics.clone(),
            connect_timeout: parts.timeouts.connect.0,
            idle: parts.timeouts.idle.0,
            log_limit: LogLimiter::new(20),
        }
    }

    /// Serves an admitted, registered L4 connection until it ends. `None`
    /// when it never reached the app (refused, or the app is unreachable:
    /// counted here).
    pub(super) async fn serve<I>(
        &self,
        mut io: I,
        peer: &PeerIdentity,
        src: SocketAddr,
        stop: &CancellationToken,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<CopyEnd>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let m = &self.metrics;
        if let Err(refusal) = self.authz.connection(&peer.id, src) {
            m.closed(match refusal {
                Refusal::Denied { .. } => CloseReason::Denied,
                Refusal::RateLimited => CloseReason::RateLimited,
            });
            return None;
        }
        let mut app = match connect_with_timeout(self.forward, self.connect_timeout).await {
            Ok(s) => s,
            Err(reason) => {
                m.closed(reason);
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.service, peer = %peer.id, forward = %self.forward, reason = reason.as_str(), suppressed, "cannot reach the local app");
                }
                return None;
            }
        };

        tracing::debug!(listener = %self.service, %src, peer = %peer.id, "inbound connection admitted");
        let (end, stats) = copy_bidirectional(
            &mut io,
            &mut app,
            CopyCounters {
                to_upstream: &m.to_upstream,
                to_downstream: &m.to_downstream,
            },
            CopyLimits {
                idle: self.idle,
                deadline,
                stop,
            },
        )
        .await;
        log_copy_end(&self.service, "inbound", &end, stats, Some(&peer.id));
        Some(end)
    }
}
