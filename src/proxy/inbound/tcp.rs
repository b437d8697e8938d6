//! The inbound L4 path: the service's authorizer judges the connection as
//! a whole, then bytes are copied between the peer and the local app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::InboundConfig;
use crate::log_limit::LogLimiter;
use crate::policy::{Refusal, ServiceAuthorizer};
use crate::proxy::admission::PeerIdentity;
use crate::proxy::close::CloseReason;
use crate::proxy::copy::{CopyCounters, CopyEnd, CopyLimits, copy_bidirectional, log_copy_end};
use crate::proxy::counters::ListenerMetrics;
use crate::proxy::listener::{ListenerParts, connect_with_timeout};

/// Who spoke first on a silent `auto` connection.
pub(super) enum FirstSpeaker {
    /// The peer: its first bytes, which decide the protocol.
    Peer(BytesMut),
    /// The app, with its greeting: opaque TCP.
    App(TcpStream, Bytes),
    /// Neither, within the idle timeout (or one of them closed).
    Nobody,
}

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

    /// For an `auto` connection whose peer has said nothing: waits up to
    /// `wait` for whoever speaks first. The app only gets the chance when
    /// the policy would admit the peer at L4 (nothing is counted or
    /// audited here; [`InboundTcp::serve`] decides for real). The peer
    /// speaking first means its bytes decide the protocol; the app
    /// speaking first (a server-first protocol: MySQL, SMTP, SSH servers)
    /// is the evidence that makes the connection opaque TCP.
    pub(super) async fn first_speaker<I>(&self, io: &mut I, peer: &PeerIdentity) -> FirstSpeaker
    where
        I: AsyncRead + Unpin,
    {
        let wait = self.idle;
        let mut from_peer = BytesMut::with_capacity(512);
        let app = if self.authz.would_admit(&peer.id) {
            connect_with_timeout(self.forward, self.connect_timeout)
                .await
                .ok()
        } else {
            None
        };
        let Some(mut app) = app else {
            return match tokio::time::timeout(wait, io.read_buf(&mut from_peer)).await {
                Ok(Ok(n)) if n > 0 => FirstSpeaker::Peer(from_peer),
                _ => FirstSpeaker::Nobody,
            };
        };
        let mut from_app = BytesMut::with_capacity(512);
        tokio::select! {
            read = io.read_buf(&mut from_peer) => match read {
                Ok(n) if n > 0 => FirstSpeaker::Peer(from_peer),
                _ => FirstSpeaker::Nobody,
            },
            read = app.read_buf(&mut from_app) => match read {
                Ok(n) if n > 0 => FirstSpeaker::App(app, from_app.freeze()),
                _ => FirstSpeaker::Nobody,
            },
            _ = tokio::time::sleep(wait) => FirstSpeaker::Nobody,
        }
    }

    /// Serves an admitted, registered L4 connection until it ends. `None`
    /// when it never reached the app (refused, or the app is unreachable:
    /// counted here).
    /// `app` is a connection to the app that has already sent its
    /// greeting (see [`InboundTcp::first_speaker`]), passed on first.
    pub(super) async fn serve<I>(
        &self,
        mut io: I,
        app: Option<(TcpStream, Bytes)>,
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
        let connected = match app {
            Some((app, greeting)) => {
                if io.write_all(&greeting).await.is_err() {
                    m.closed(CloseReason::Error);
                    return None;
                }
                m.to_downstream.inc_by(greeting.len() as u64);
                Ok(app)
            }
            None => connect_with_timeout(self.forward, self.connect_timeout).await,
        };
        let mut app = match connected {
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
