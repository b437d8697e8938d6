//! Inbound: a peer sidecar connects over mTLS; we verify it, admit it
//! (identity, then policy and rate limit), and forward plaintext to the
//! local app. Admitted connections are registered so a policy reload can
//! close the ones it no longer allows.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{Denial, PeerIdentity, peer_identity};
use super::close::CloseReason;
use super::copy::{CopyCounters, CopyEnd, CopyLimits, copy_bidirectional};
use super::http::{Detected, Rewind, ServeEnd, ServeLimits, detect};
use super::listener::ListenerMetrics;
use super::listener::ListenerParts;
use super::registry::{ConnRegistry, Registration, StopReason};
use super::{ActiveGuard, connect_with_timeout, connection_deadline, log_copy_end};
use crate::config::{ConnectionsConfig, InboundConfig, Protocol, Timeouts};
use crate::identity::SpiffeId;
use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;
use crate::policy::{AuditEvent, AuditLog, PolicyStore};
use crate::tls::{ALPN_H2, ALPN_HTTP1};
use crate::tls::{HandshakeFailure, TlsContext};

/// The decrypted stream from a peer, with any bytes read to detect its
/// protocol put back in front.
/// The peer's stream, boxed so that moving it from phase to phase (which
/// each keep a slot for it in the task's future) costs a pointer, not
/// the TLS state.
pub(crate) type InboundIo = Rewind<Box<TlsStream<TcpStream>>>;

enum Mode {
    Tcp(InboundIo),
    Http { io: InboundIo, h2: bool },
}

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
    protocol: Protocol,
    connections: ConnectionsConfig,
    pub(crate) authz: Arc<Authz>,
    pub(crate) log_limit: LogLimiter,
    /// Set for `protocol: http | auto`.
    pub(crate) http: Option<Arc<super::http::InboundHttp>>,
    /// Cancelled when the sidecar drains: HTTP connections finish the
    /// request in flight and close.
    pub(crate) drain: CancellationToken,
    /// Tracks tunnels (WebSocket, CONNECT) that outlive their request.
    pub(crate) tasks: TaskTracker,
}

/// What an inbound listener is built from besides its config.
pub struct InboundParts {
    pub common: ListenerParts,
    pub authz: Arc<Authz>,
}

impl InboundListener {
    pub fn new(config: &InboundConfig, parts: InboundParts) -> Self {
        let InboundParts {
            common: parts,
            authz,
        } = parts;
        let http = config.protocol.is_http().then(|| {
            Arc::new(super::http::InboundHttp::new(
                config.forward,
                &parts.http,
                parts.timeouts,
                parts.access_log.clone(),
            ))
        });
        InboundListener {
            name: config.name.as_str().into(),
            forward: config.forward,
            tls: parts.tls,
            metrics: parts.metrics,
            timeouts: parts.timeouts,
            protocol: config.protocol,
            connections: parts.connections,
            authz,
            log_limit: LogLimiter::new(20),
            http,
            drain: parts.drain,
            tasks: parts.tasks,
        }
    }

    /// Serves one accepted connection to its end.
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, src: SocketAddr) {
        let m = &self.metrics;
        m.opened.inc();
        let _active = ActiveGuard::new(&m.active);

        // The config is loaded per connection so a trust or identity
        // reload applies to the very next handshake.
        let config = match self.http {
            Some(_) => self.tls.server_config_http(),
            None => self.tls.server_config(),
        };
        let acceptor = TlsAcceptor::from(config);
        // Each phase's state is boxed: a task's future is allocated once at
        // its largest, so inlining the handshake, the TCP copy and the HTTP
        // server side by side would make every idle connection pay for all
        // three at once.
        let handshake =
            tokio::time::timeout(self.timeouts.handshake.0, Box::pin(acceptor.accept(tcp))).await;
        let tls = match handshake {
            Ok(Ok(s)) => Box::new(s),
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
                crate::clock::unix_now(),
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

        let mode = match Box::pin(self.connection_mode(tls, src)).await {
            Some(mode) => mode,
            None => return m.closed(CloseReason::Error),
        };

        // Registered before the policy is read: a reload that lands after
        // this decision will find the connection and judge it again.
        let per_request = matches!(mode, Mode::Http { .. });
        let registration = self.authz.registry.register_with(
            self.name.clone(),
            &peer,
            src,
            ocsp_certs,
            per_request,
        );
        let (deadline, deadline_reason) = connection_deadline(&self.connections, peer.not_after);
        let stop_reason = || match registration.control.reason() {
            Some(StopReason::Revoked) => CloseReason::Revoked,
            Some(StopReason::Policy) | None => CloseReason::Policy,
        };

        let (io, h2) = match mode {
            Mode::Tcp(io) => {
                let end = Box::pin(self.serve_tcp(io, &peer, src, &registration, deadline)).await;
                return m.closed(match end {
                    None => return,
                    Some(CopyEnd::Completed) => CloseReason::Completed,
                    Some(CopyEnd::IdleTimeout) => CloseReason::IdleTimeout,
                    Some(CopyEnd::Error(_)) => CloseReason::Error,
                    Some(CopyEnd::Deadline) => deadline_reason,
                    Some(CopyEnd::Stopped) => stop_reason(),
                });
            }
            Mode::Http { io, h2 } => (io, h2),
        };
        let end = Box::pin(super::http::serve_inbound(
            self.clone(),
            io,
            h2,
            &peer,
            src,
            ServeLimits {
                stop: registration.control.stopped(),
                drain: &self.drain,
                deadline,
            },
        ))
        .await;
        m.closed(match end {
            ServeEnd::Completed => CloseReason::Completed,
            ServeEnd::Idle => CloseReason::IdleTimeout,
            ServeEnd::HeaderTimeout => CloseReason::HeaderTimeout,
            ServeEnd::Error => CloseReason::Error,
            ServeEnd::Deadline => deadline_reason,
            ServeEnd::Stopped => stop_reason(),
        });
    }

    /// Decides how to serve an admitted connection: by ALPN when the peer
    /// negotiated HTTP, else by its first bytes on `auto` listeners.
    async fn connection_mode(
        &self,
        tls: Box<TlsStream<TcpStream>>,
        src: SocketAddr,
    ) -> Option<Mode> {
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let Some(http) = &self.http else {
            return Some(Mode::Tcp(Rewind::new(Bytes::new(), tls)));
        };
        match alpn.as_deref() {
            Some(ALPN_H2) => {
                return Some(Mode::Http {
                    io: Rewind::new(Bytes::new(), tls),
                    h2: true,
                });
            }
            Some(ALPN_HTTP1) => {
                return Some(Mode::Http {
                    io: Rewind::new(Bytes::new(), tls),
                    h2: false,
                });
            }
            _ => {}
        }
        let mut tls = tls;
        let (detected, prefix) = match detect(&mut tls, http.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(listener = %self.name, %src, error = %e, "connection failed during protocol detection");
                return None;
            }
        };
        let io = Rewind::new(prefix, tls);
        Some(match (detected, self.protocol) {
            (Detected::Http2, _) => Mode::Http { io, h2: true },
            (Detected::Http1, _) => Mode::Http { io, h2: false },
            // `http` listeners answer anything else as HTTP/1.1 (a 400).
            (Detected::Tcp, Protocol::Http) => Mode::Http { io, h2: false },
            (Detected::Tcp, _) => Mode::Tcp(io),
        })
    }

    /// The L4 path: policy for the connection, then bytes both ways.
    /// `None` when the connection never reached the app.
    async fn serve_tcp(
        &self,
        mut io: InboundIo,
        peer: &PeerIdentity,
        src: SocketAddr,
        registration: &Registration<'_>,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<CopyEnd> {
        let m = &self.metrics;
        if !self.authorize(&peer.id, src) {
            return None;
        }
        let mut app = match connect_with_timeout(self.forward, self.timeouts.connect.0).await {
            Ok(s) => s,
            Err(reason) => {
                m.closed(reason);
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.name, peer = %peer.id, forward = %self.forward, reason = reason.as_str(), suppressed, "cannot reach the local app");
                }
                return None;
            }
        };

        tracing::debug!(listener = %self.name, %src, peer = %peer.id, "inbound connection admitted");
        let (end, stats) = copy_bidirectional(
            &mut io,
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
        Some(end)
    }

    /// Policy and rate limit for a new connection from `peer`. Logs, audits
    /// and counts the outcome; `false` means close it.
    fn authorize(&self, peer: &SpiffeId, src: SocketAddr) -> bool {
        let m = &self.metrics;
        let active = self.authz.policy.active();
        let decision = active.table.decide(&self.name, peer, None);
        self.authz
            .metrics
            .policy
            .decision(&self.name, decision.label(), &decision.rule);
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
