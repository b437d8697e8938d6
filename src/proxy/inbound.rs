//! Inbound: a peer sidecar connects over mTLS; we verify it, admit it, and
//! forward plaintext to the local app.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::admission::peer_identity;
use super::copy::{CopyCounters, CopyEnd, copy_bidirectional};
use super::loglimit::LogLimiter;
use super::{ActiveGuard, connect_with_timeout, log_copy_end};
use crate::config::Timeouts;
use crate::metrics::{CloseReason, ListenerMetrics};
use crate::tls::{HandshakeFailure, TlsContext};

/// One inbound listener's fixed state, shared by its connections.
pub struct InboundListener {
    pub name: String,
    pub forward: SocketAddr,
    pub tls: Arc<TlsContext>,
    pub metrics: ListenerMetrics,
    pub timeouts: Timeouts,
    log_limit: LogLimiter,
}

impl InboundListener {
    pub fn new(
        name: String,
        forward: SocketAddr,
        tls: Arc<TlsContext>,
        metrics: ListenerMetrics,
        timeouts: Timeouts,
    ) -> Self {
        InboundListener {
            name,
            forward,
            tls,
            metrics,
            timeouts,
            log_limit: LogLimiter::new(20),
        }
    }

    /// Serves one accepted connection to its end.
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, src: SocketAddr) {
        let m = &self.metrics;
        m.opened.inc();
        let _active = ActiveGuard::new(&m.active);

        // The config is loaded per connection so a trust or identity
        // reload applies to the very next handshake.
        let acceptor = TlsAcceptor::from(self.tls.server_config());
        let handshake = tokio::time::timeout(self.timeouts.handshake.0, acceptor.accept(tcp)).await;
        let mut tls = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.handshake_failed(HandshakeFailure::classify(&e), &e, src),
            Err(_) => {
                let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
                return self.handshake_failed(HandshakeFailure::Timeout, &e, src);
            }
        };
        m.handshake_ok();

        let peer = {
            let (_, session) = tls.get_ref();
            peer_identity(
                session.peer_certificates(),
                &self.tls.trust(),
                crate::tls::unix_now(),
            )
        };
        let peer = match peer {
            Ok(p) => p,
            Err(denial) => {
                m.closed(CloseReason::Denied);
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.name, %src, reason = denial.kind(), error = %denial, suppressed, "inbound connection denied");
                }
                return;
            }
        };

        let mut app = match connect_with_timeout(self.forward, self.timeouts.connect.0).await {
            Ok(s) => s,
            Err(reason) => {
                m.closed(reason);
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.name, peer = %peer.id, forward = %self.forward, reason = reason.as_str(), suppressed, "cannot reach the local app");
                }
                return;
            }
        };

        tracing::debug!(listener = %self.name, %src, peer = %peer.id, "inbound connection admitted");
        let (end, stats) = copy_bidirectional(
            &mut tls,
            &mut app,
            self.timeouts.idle.0,
            CopyCounters {
                to_upstream: &m.to_upstream,
                to_downstream: &m.to_downstream,
            },
        )
        .await;
        log_copy_end(&self.name, "inbound", &end, stats, Some(&peer.id));
        m.closed(match end {
            CopyEnd::Completed => CloseReason::Completed,
            CopyEnd::IdleTimeout => CloseReason::IdleTimeout,
            CopyEnd::Error(_) => CloseReason::Error,
        });
    }

    fn handshake_failed(&self, why: HandshakeFailure, err: &std::io::Error, src: SocketAddr) {
        self.metrics.handshake_failed(why);
        self.metrics.closed(CloseReason::HandshakeFailed);
        if let Some(suppressed) = self.log_limit.allow() {
            tracing::info!(listener = %self.name, %src, reason = why.as_str(), error = %err, suppressed, "inbound TLS handshake failed");
        }
    }
}
