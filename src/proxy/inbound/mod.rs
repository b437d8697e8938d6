//! Inbound: a peer sidecar connects over mTLS. The handshake verifies its
//! certificate chain and SVID (`tls/verifier.rs`), admission checks the
//! identity it proved and its revocation status (`admission.rs`), and the
//! connection is registered with the enforcement sweep (`registry.rs`).
//! Then it is served as opaque bytes (`tcp.rs`) or as HTTP (`http.rs`),
//! either way authorized by the service's authorizer before a byte reaches
//! the local app.

mod http;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::admission::{Denial, PeerIdentity, admit};
use super::close::{self, CloseReason};
use super::counters::ListenerMetrics;
use super::detect::{Detected, Rewind, detect, detect_from};
use super::http::{HttpVersion, ServeLimits};
use super::listener::{ActiveGuard, ListenerParts};
use super::registry::{ConnInfo, ConnKind, ConnRegistry};
use crate::config::{ConnectionsConfig, InboundConfig, InboundLimits, Protocol};
use crate::limit::{Limit, PerClient};
use crate::log_limit::LogLimiter;
use crate::policy::ServiceAuthorizer;
use crate::tls::{ALPN_H2, ALPN_HTTP1, HandshakeFailure, TlsContext};
use http::{AdmittedPeer, InboundHttp};
use tcp::{FirstSpeaker, InboundTcp};

/// The peer's stream, boxed so that moving it from phase to phase (which
/// each keep a slot for it in the task's future) costs a pointer, not the
/// TLS state; any bytes read to detect its protocol are put back in front.
type InboundIo = Rewind<Box<TlsStream<TcpStream>>>;

enum Mode {
    /// Opaque TCP; with the app's connection when the app spoke first.
    Tcp(InboundIo, Option<(TcpStream, Bytes)>),
    Http(InboundIo, HttpVersion),
}

/// One inbound listener's fixed state, shared by its connections.
pub struct InboundListener {
    name: Arc<str>,
    tls: Arc<TlsContext>,
    metrics: ListenerMetrics,
    handshake_timeout: std::time::Duration,
    protocol: Protocol,
    connections: ConnectionsConfig,
    registry: Arc<ConnRegistry>,
    log_limit: LogLimiter,
    tcp: InboundTcp,
    /// Open connections and handshakes in progress, each with its ceiling.
    connections_open: Arc<Limit>,
    handshakes: Arc<Limit>,
    /// The same per client address, with their ceilings.
    client_connections: Arc<PerClient>,
    client_handshakes: Arc<PerClient>,
    limits: InboundLimits,
    /// Set for `protocol: http | auto`.
    http: Option<Arc<InboundHttp>>,
    /// Cancelled when the sidecar drains: HTTP connections finish the
    /// request in flight and close.
    drain: tokio_util::sync::CancellationToken,
}

/// What an inbound listener is built from besides its config.
pub struct InboundParts {
    pub common: ListenerParts,
    /// The authorizer of this listener's service.
    pub authz: Arc<ServiceAuthorizer>,
}

impl InboundListener {
    pub fn new(config: &InboundConfig, parts: InboundParts) -> Self {
        let InboundParts {
            common: parts,
            authz,
        } = parts;
        let http = config
            .protocol
            .is_http()
            .then(|| Arc::new(InboundHttp::new(config, &parts, authz.clone())));
        InboundListener {
            name: config.name.as_str().into(),
            tcp: InboundTcp::new(config, &parts, authz),
            connections_open: Limit::new(config.limits.max_connections),
            handshakes: Limit::new(config.limits.max_handshakes),
            client_connections: PerClient::new(),
            client_handshakes: PerClient::new(),
            limits: config.limits,
            tls: parts.tls,
            metrics: parts.metrics,
            handshake_timeout: parts.timeouts.handshake.0,
            protocol: config.protocol,
            connections: parts.connections,
            registry: parts.registry,
            log_limit: LogLimiter::new(20),
            http,
            drain: parts.drain,
        }
    }

    /// Serves one accepted connection to its end.
    pub async fn serve(self: Arc<Self>, tcp: TcpStream, src: SocketAddr) {
        let m = &self.metrics;
        m.opened.inc();
        // Before anything costs memory or CPU: a flood of connections or
        // of slow handshakes is turned away here, and the sidecar keeps
        // serving what it already holds.
        let Some(_open) = self.connections_open.try_take() else {
            return self.rejected(&m.rejected_connections, "max_connections", src);
        };
        let Some(_client_open) = self
            .client_connections
            .try_take(src.ip(), self.limits.max_connections_per_client)
        else {
            return self.rejected(
                &m.rejected_client_connections,
                "max_connections_per_client",
                src,
            );
        };
        let _active = ActiveGuard::new(&m.active);
        let handshake_by = tokio::time::Instant::now() + self.handshake_timeout;

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
        //
        // A connection takes a handshake place only once its client speaks:
        // silence costs a connection place and nothing else, so idle
        // connections cannot crowd out the handshakes of real peers.
        // (`readable()` may wake without data; a peek waits for a byte or
        // the end.)
        let mut first = [0u8; 1];
        if tokio::time::timeout_at(handshake_by, tcp.peek(&mut first))
            .await
            .is_err()
        {
            let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
            return self.handshake_failed(HandshakeFailure::Timeout, &e, src);
        }
        let Some(handshaking) = self.handshakes.try_take() else {
            return self.rejected(&m.rejected_handshakes, "max_handshakes", src);
        };
        let Some(client_handshaking) = self
            .client_handshakes
            .try_take(src.ip(), self.limits.max_handshakes_per_client)
        else {
            return self.rejected(
                &m.rejected_client_handshakes,
                "max_handshakes_per_client",
                src,
            );
        };
        let in_progress = ActiveGuard::new(&m.handshaking);
        let handshake = tokio::time::timeout_at(handshake_by, Box::pin(acceptor.accept(tcp))).await;
        drop((handshaking, client_handshaking, in_progress));
        let tls = match handshake {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => return self.handshake_failed(HandshakeFailure::classify(&e), &e, src),
            Err(_) => {
                let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
                return self.handshake_failed(HandshakeFailure::Timeout, &e, src);
            }
        };
        m.handshake_ok();

        let admitted = admit(&self.tls, tls.get_ref().1.peer_certificates(), None).await;
        let (peer, ocsp_certs) = match admitted {
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

        let mode = match Box::pin(self.connection_mode(tls, &peer, src)).await {
            Ok(mode) => mode,
            Err(reason) => return m.closed(reason),
        };

        // Registered before the policy is read: a reload that lands after
        // this connection's decision will find it and judge it again.
        let peer = Arc::new(peer);
        let registration = self.registry.register(ConnInfo {
            kind: match mode {
                Mode::Tcp(..) => ConnKind::InboundTcp,
                Mode::Http(..) => ConnKind::InboundHttp,
            },
            listener: self.name.clone(),
            peer: peer.clone(),
            remote: src,
            request: None,
            ocsp_certs: ocsp_certs.clone(),
        });
        let deadline = close::lifetime_deadline(&self.connections);
        let stopped = || registration.reason().unwrap_or(CloseReason::Policy);

        match mode {
            Mode::Tcp(io, app) => {
                let end =
                    Box::pin(
                        self.tcp
                            .serve(io, app, &peer, src, registration.stopped(), deadline),
                    )
                    .await;
                if let Some(end) = end {
                    m.closed(close::copy_end(&end, CloseReason::MaxLifetime, stopped()));
                }
            }
            Mode::Http(io, version) => {
                let Some(http) = self.http.clone() else {
                    return m.closed(CloseReason::Error);
                };
                let leaf = http.forwards_client_cert().then(|| {
                    let certs = io.inner().get_ref().1.peer_certificates();
                    certs.and_then(|c| c.first()).map(|c| c.as_ref().to_vec())
                });
                let from = AdmittedPeer {
                    peer,
                    leaf: leaf.flatten(),
                    ocsp_certs,
                    src,
                };
                // A peer whose CA left the bundle (a rotation) may finish
                // the requests it has in flight; a revoked one may not.
                let graceful = || registration.reason() == Some(CloseReason::Denied);
                let end = Box::pin(http.serve(
                    io,
                    version,
                    from,
                    ServeLimits {
                        stop: registration.stopped(),
                        stop_is_graceful: &graceful,
                        drain: &self.drain,
                        deadline,
                    },
                ))
                .await;
                m.closed(end.close_reason(CloseReason::MaxLifetime, stopped()));
            }
        }
    }

    /// Decides how to serve an admitted connection: by ALPN when the peer
    /// negotiated HTTP, else by its first bytes on `auto` listeners.
    async fn connection_mode(
        &self,
        tls: Box<TlsStream<TcpStream>>,
        peer: &PeerIdentity,
        src: SocketAddr,
    ) -> Result<Mode, CloseReason> {
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let Some(http) = &self.http else {
            return Ok(Mode::Tcp(Rewind::new(Bytes::new(), tls), None));
        };
        match alpn.as_deref() {
            Some(ALPN_H2) => {
                return Ok(Mode::Http(
                    Rewind::new(Bytes::new(), tls),
                    HttpVersion::Http2,
                ));
            }
            Some(ALPN_HTTP1) => {
                return Ok(Mode::Http(
                    Rewind::new(Bytes::new(), tls),
                    HttpVersion::Http1,
                ));
            }
            _ => {}
        }
        let mut tls = tls;
        let failed = |e: std::io::Error| {
            tracing::debug!(listener = %self.name, %src, error = %e, "connection failed during protocol detection");
        };
        let (mut detected, mut prefix) = match detect(&mut tls, http.detect_timeout()).await {
            Ok(d) => d,
            Err(e) => {
                failed(e);
                return Err(CloseReason::Error);
            }
        };
        let mut app = None;
        if detected == Detected::Silent && self.protocol == Protocol::Auto {
            // Silence proves nothing: whoever speaks first decides.
            match self.tcp.first_speaker(&mut tls, peer).await {
                FirstSpeaker::Peer(first) => {
                    (detected, prefix) =
                        match detect_from(&mut tls, first, http.detect_timeout()).await {
                            Ok(d) => d,
                            Err(e) => {
                                failed(e);
                                return Err(CloseReason::Error);
                            }
                        };
                }
                FirstSpeaker::App(stream, greeting) => {
                    detected = Detected::Tcp;
                    app = Some((stream, greeting));
                }
                FirstSpeaker::Nobody => return Err(CloseReason::IdleTimeout),
            }
        }
        let io = Rewind::new(prefix, tls);
        Ok(match (detected, self.protocol) {
            (Detected::Http2, _) => Mode::Http(io, HttpVersion::Http2),
            (Detected::Tcp, Protocol::Auto) => Mode::Tcp(io, app),
            // Everything else is HTTP/1.1: on `http` listeners whatever
            // came (hyper answers it or times it out), and on `auto` ones
            // anything that is not evidence of another protocol.
            _ => Mode::Http(io, HttpVersion::Http1),
        })
    }

    /// A new connection closed at once at `limit`: counted twice (by the
    /// limit, and as closed `overloaded`) and logged under a rate limit.
    fn rejected(&self, counter: &prometheus::IntCounter, limit: &str, src: SocketAddr) {
        counter.inc();
        self.metrics.closed(CloseReason::Overloaded);
        if let Some(suppressed) = self.log_limit.allow() {
            tracing::warn!(listener = %self.name, %src, limit, suppressed, "inbound connection refused: listener limit reached");
        }
    }

    fn handshake_failed(&self, why: HandshakeFailure, err: &std::io::Error, src: SocketAddr) {
        self.metrics.handshake_failed(why);
        self.metrics.closed(CloseReason::HandshakeFailed);
        if let Some(suppressed) = self.log_limit.allow() {
            tracing::info!(listener = %self.name, %src, reason = why.as_str(), error = %err, suppressed, "inbound TLS handshake failed");
        }
    }
}
