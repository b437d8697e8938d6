//! Inbound: a peer sidecar connects over mTLS; we verify it, admit it
//! (identity, then policy and rate limit), and forward plaintext to the
//! local app. Admitted connections are registered so a policy reload can
//! close the ones it no longer allows.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::admission::{Denial, peer_identity};
use super::copy::{CopyCounters, CopyEnd, CopyLimits, copy_bidirectional};
use super::loglimit::LogLimiter;
use super::registry::{ConnRegistry, StopReason};
use super::{ActiveGuard, connect_with_timeout, connection_deadline, log_copy_end};
use crate::config::{ConnectionsConfig, Timeouts};
use crate::identity::SpiffeId;
use crate::metrics::{CloseReason, ListenerMetrics, Metrics};
use crate::policy::{AuditEvent, AuditLog, PolicyStore};
use crate::tls::{HandshakeFailure, TlsContext};

/// What inbound listeners share for authorization: the policy, the
/// registry of open connections, the audit log and the decision counters.
pub struct Authz {
    pub policy: Arc<PolicyStore>,
    pub registry: Arc<ConnRegistry>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
}

/// One inbound listener's fixed state, shared by its connections.
pub struct InboundListener {
    pub name: Arc<str>,
    pub forward: SocketAddr,
    pub tls: Arc<TlsContext>,
    pub metrics: ListenerMetrics,
    pub timeouts: Timeouts,
    connections: ConnectionsConfig,
    authz: Arc<Authz>,
    log_limit: LogLimiter,
}

impl InboundListener {
    pub fn new(
        name: &str,
        forward: SocketAddr,
        tls: Arc<TlsContext>,
        authz: Arc<Authz>,
        metrics: ListenerMetrics,
        timeouts: Timeouts,
        connections: ConnectionsConfig,
    ) -> Self {
        InboundListener {
            name: name.into(),
            forward,
            tls,
            metrics,
            timeouts,
            connections,
            authz,
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
            Ok(p) => {
                super::admission::check_ocsp_of(&self.tls, tls.get_ref().1.peer_certificates())
                    .await
                    .map(|certs| (p, certs))
            }
            Err(d) => Err(d),
        };
        let (peer, ocsp_certs) = match peer {
            Ok(p) => p,
            Err(denial) => {
                m.closed(if matches!(denial, Denial::Revoked) {
                    CloseReason::Revoked
                } else {
                    CloseReason::Denied
                });
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.name, %src, reason = denial.kind(), error = %denial, suppressed, "inbound connection denied");
                }
                return;
            }
        };

        // Registered before the policy is read: a reload that lands after
        // this decision will find the connection and judge it again.
        let registration =
            self.authz
                .registry
                .register_with(self.name.clone(), &peer, src, ocsp_certs);
        if !self.authorize(&peer.id, src) {
            return;
        }

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
        let (deadline, deadline_reason) = connection_deadline(&self.connections, peer.not_after);
        let (end, stats) = copy_bidirectional(
            &mut tls,
            &mut app,
            CopyCounters {
                to_upstream: &m.to_upstream,
                to_downstream: &m.to_downstream,
            },
            CopyLimits {
                idle: self.timeouts.idle.0,
                deadline,
                stop: registration.control.stopped(),
            },
        )
        .await;
        log_copy_end(&self.name, "inbound", &end, stats, Some(&peer.id));
        m.closed(match end {
            CopyEnd::Completed => CloseReason::Completed,
            CopyEnd::IdleTimeout => CloseReason::IdleTimeout,
            CopyEnd::Error(_) => CloseReason::Error,
            CopyEnd::Deadline => deadline_reason,
            CopyEnd::Stopped => match registration.control.reason() {
                Some(StopReason::Revoked) => CloseReason::Revoked,
                Some(StopReason::Policy) | None => CloseReason::Policy,
            },
        });
    }

    /// Policy and rate limit for a new connection from `peer`. Logs, audits
    /// and counts the outcome; `false` means close it.
    fn authorize(&self, peer: &SpiffeId, src: SocketAddr) -> bool {
        let m = &self.metrics;
        let active = self.authz.policy.active();
        let decision = active.table.decide(&self.name, peer, None);
        self.authz
            .metrics
            .authz(&self.name, decision.label(), &decision.rule);
        self.authz.audit.record(&AuditEvent {
            peer,
            service: &self.name,
            rule: &decision.rule,
            decision: decision.label(),
            mode: decision.mode.as_str(),
            src,
            request: None,
            cause: None,
        });
        if !decision.admitted() {
            m.closed(CloseReason::Denied);
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::info!(listener = %self.name, %src, %peer, rule = %decision.rule, suppressed, "inbound connection denied by policy");
            }
            return false;
        }
        if let Some(limiter) = active.limiter(&self.name)
            && !limiter.try_acquire(peer, std::time::Instant::now())
        {
            m.rate_limited.inc();
            m.closed(CloseReason::RateLimited);
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::info!(listener = %self.name, %src, %peer, suppressed, "inbound connection over the rate limit");
            }
            return false;
        }
        true
    }

    fn handshake_failed(&self, why: HandshakeFailure, err: &std::io::Error, src: SocketAddr) {
        self.metrics.handshake_failed(why);
        self.metrics.closed(CloseReason::HandshakeFailed);
        if let Some(suppressed) = self.log_limit.allow() {
            tracing::info!(listener = %self.name, %src, reason = why.as_str(), error = %err, suppressed, "inbound TLS handshake failed");
        }
    }
}
