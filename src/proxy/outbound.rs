//! Outbound: the local app connects in plaintext; we pick an endpoint,
//! originate mTLS with our SVID, check the upstream is who the config says
//! it must be, and copy bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{Denial, PeerIdentity, peer_identity};
use super::close::CloseReason;
use super::copy::{CopyCounters, CopyEnd, CopyLimits, copy_bidirectional};
use super::http::{Detected, Rewind, ServeEnd, ServeLimits, detect};
use super::listener::ListenerMetrics;
use super::listener::ListenerParts;
use super::{ActiveGuard, connect_with_timeout, connection_deadline, log_copy_end};
use crate::config::{ConnectionsConfig, Endpoint, OutboundConfig, Protocol, Timeouts};
use crate::log_limit::LogLimiter;
use crate::tls::{ALPN_H2, Alpn, HandshakeFailure, OutboundTls, TlsContext};
use crate::upstream::UpstreamSet;

/// One outbound listener's fixed state, shared by its connections.
pub struct OutboundListener {
    pub name: Arc<str>,
    endpoints: Vec<Endpoint>,
    tls: Arc<TlsContext>,
    upstream: Arc<OutboundTls>,
    pub metrics: ListenerMetrics,
    pub timeouts: Timeouts,
    protocol: Protocol,
    connections: ConnectionsConfig,
    pub(crate) log_limit: LogLimiter,
    /// Never cancelled today; outbound connections have no policy yet.
    stop: CancellationToken,
    /// Set for `protocol: http | auto`.
    pub(crate) http: Option<Arc<super::http::OutboundHttp>>,
    pub(crate) drain: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Breakers, balancing, limits and retry budget of the upstream.
    pub(crate) set: Arc<UpstreamSet>,
}

/// What an outbound listener is built from besides its config.
pub struct OutboundParts {
    pub common: ListenerParts,
    /// Verifies that the upstream is the identity it must be.
    pub upstream: Arc<OutboundTls>,
    pub upstream_metrics: crate::upstream::UpstreamMetrics,
}

/// Why no verified connection to an upstream endpoint could be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The endpoint's name does not resolve.
    Unresolvable,
    /// TCP connect failed or timed out.
    Connect(CloseReason),
    Handshake(HandshakeFailure),
    /// The upstream is not who it must be, or is revoked.
    Refused(Denial),
    /// Over the upstream's `max_connections`.
    Overloaded,
}

impl ConnectError {
    /// Whether another endpoint may be tried: nothing was said to this one.
    pub(crate) fn try_next(&self) -> bool {
        matches!(self, ConnectError::Unresolvable | ConnectError::Connect(_))
    }

    fn close_reason(&self) -> CloseReason {
        match self {
            ConnectError::Unresolvable => CloseReason::ConnectFailed,
            ConnectError::Connect(r) => *r,
            ConnectError::Handshake(_) => CloseReason::HandshakeFailed,
            ConnectError::Refused(Denial::Revoked) => CloseReason::Revoked,
            ConnectError::Refused(_) => CloseReason::Denied,
            ConnectError::Overloaded => CloseReason::Overloaded,
        }
    }

    pub(crate) fn http(&self) -> super::http::HttpError {
        use super::http::HttpError;
        match self {
            ConnectError::Unresolvable => HttpError::NoEndpoint,
            ConnectError::Connect(CloseReason::ConnectTimeout) => HttpError::ConnectTimeout,
            ConnectError::Connect(_) => HttpError::ConnectFailed,
            ConnectError::Handshake(HandshakeFailure::Timeout) => HttpError::ConnectTimeout,
            // The handshake worked as TLS, but the upstream's certificate
            // is not one we accept (most often: not the expected identity).
            ConnectError::Handshake(
                HandshakeFailure::WrongIdentity
                | HandshakeFailure::UnknownCa
                | HandshakeFailure::Expired
                | HandshakeFailure::NotYetValid
                | HandshakeFailure::BadSvid
                | HandshakeFailure::UntrustedDomain
                | HandshakeFailure::BadSignature
                | HandshakeFailure::Revoked
                | HandshakeFailure::RevocationUnknown
                | HandshakeFailure::BadCertificate,
            ) => HttpError::UpstreamRefused,
            ConnectError::Handshake(_) => HttpError::TlsFailed,
            ConnectError::Refused(_) => HttpError::UpstreamRefused,
            ConnectError::Overloaded => HttpError::Overloaded,
        }
    }
}

/// A verified mTLS connection to an upstream endpoint.
pub(crate) struct Upstream {
    pub tls: TlsStream<TcpStream>,
    pub peer: PeerIdentity,
    /// The endpoint chose `h2` by ALPN.
    pub h2: bool,
}

impl OutboundListener {
    pub fn new(config: &OutboundConfig, parts: OutboundParts) -> Self {
        let OutboundParts {
            common: parts,
            upstream,
            upstream_metrics,
        } = parts;
        let http = config.protocol.is_http().then(|| {
            Arc::new(super::http::OutboundHttp::new(
                &config.endpoints,
                &parts.http,
                parts.timeouts,
                parts.access_log.clone(),
            ))
        });
        let set = UpstreamSet::new(
            &config.name,
            &config.endpoints,
            config.upstream.clone(),
            upstream_metrics,
        );
        OutboundListener {
            set,
            name: config.name.as_str().into(),
            endpoints: config.endpoints.clone(),
            tls: parts.tls,
            upstream,
            metrics: parts.metrics,
            timeouts: parts.timeouts,
            protocol: config.protocol,
            connections: parts.connections,
            log_limit: LogLimiter::new(20),
            stop: Default::default(),
            http,
            drain: parts.drain,
            tasks: parts.tasks,
        }
    }

    /// Serves one connection from the local app to its end.
    pub async fn serve(self: Arc<Self>, mut app: TcpStream, src: SocketAddr) {
        let m = &self.metrics;
        m.opened.inc();
        let _active = ActiveGuard::new(&m.active);

        // Each path's state is boxed: a task's future is allocated once at
        // its largest, and idle connections should not pay for the paths
        // they do not take.
        let Some(http) = self.http.clone() else {
            let end = Box::pin(self.serve_tcp(&mut app, src)).await;
            return m.closed(end);
        };
        let (detected, prefix) = match detect(&mut app, http.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return m.closed(CloseReason::Error),
        };
        let mut io = Rewind::new(prefix, app);
        let h2 = match (detected, self.protocol) {
            (Detected::Http2, _) => true,
            (Detected::Http1, _) => false,
            // `http` listeners answer anything else as HTTP/1.1 (a 400).
            (Detected::Tcp, Protocol::Http) => false,
            (Detected::Tcp, _) => {
                let end = Box::pin(self.serve_tcp(&mut io, src)).await;
                return m.closed(end);
            }
        };
        let end = Box::pin(super::http::serve_outbound(
            self.clone(),
            http,
            io,
            h2,
            src,
            ServeLimits {
                stop: &self.stop,
                drain: &self.drain,
                deadline: self
                    .connections
                    .max_lifetime
                    .map(|d| tokio::time::Instant::now() + d.0),
            },
        ))
        .await;
        m.closed(match end {
            ServeEnd::Completed => CloseReason::Completed,
            ServeEnd::Idle => CloseReason::IdleTimeout,
            ServeEnd::HeaderTimeout => CloseReason::HeaderTimeout,
            ServeEnd::Error => CloseReason::Error,
            ServeEnd::Deadline => CloseReason::MaxLifetime,
            ServeEnd::Stopped => CloseReason::Policy,
        });
    }

    /// The L4 path: a verified upstream, then bytes both ways.
    async fn serve_tcp<S>(&self, app: &mut S, src: SocketAddr) -> CloseReason
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let m = &self.metrics;
        let Ok(_slot) = self.set.connection() else {
            return CloseReason::Overloaded;
        };
        // Each endpoint at most once; open breakers are skipped, and when
        // every endpoint is open nothing is tried at all.
        let mut exclude = None;
        let mut upstream = None;
        let mut last = CloseReason::ConnectFailed;
        for _ in 0..self.set.len() {
            let call = match self.set.pick(exclude) {
                Ok(c) => c,
                Err(_) if upstream.is_none() && exclude.is_none() => {
                    return CloseReason::CircuitOpen;
                }
                Err(_) => break,
            };
            let idx = call.index();
            // Boxed: the handshake's state is dropped once it is done.
            match Box::pin(self.connect_endpoint(idx, Alpn::None)).await {
                Ok(u) => {
                    call.finish(false);
                    upstream = Some((idx, u));
                    break;
                }
                Err(e) => {
                    call.finish(true);
                    if !e.try_next() {
                        return e.close_reason();
                    }
                    last = e.close_reason();
                    exclude = Some(idx);
                }
            }
        }
        let Some((idx, mut up)) = upstream else {
            return last;
        };
        let endpoint = &self.endpoints[idx];
        tracing::debug!(listener = %self.name, %src, %endpoint, peer = %up.peer.id, "outbound connection established");
        let (deadline, deadline_reason) = connection_deadline(&self.connections, up.peer.not_after);
        let (end, stats) = copy_bidirectional(
            app,
            &mut up.tls,
            CopyCounters {
                to_upstream: &m.to_upstream,
                to_downstream: &m.to_downstream,
            },
            CopyLimits {
                idle: self.timeouts.idle.0,
                deadline,
                stop: &self.stop,
            },
        )
        .await;
        log_copy_end(&self.name, "outbound", &end, stats, Some(&up.peer.id));
        match end {
            CopyEnd::Completed => CloseReason::Completed,
            CopyEnd::IdleTimeout => CloseReason::IdleTimeout,
            CopyEnd::Error(_) => CloseReason::Error,
            CopyEnd::Stopped => CloseReason::Policy,
            CopyEnd::Deadline => deadline_reason,
        }
    }

    /// The upstream's breakers and limits, for `/config_dump`.
    pub fn upstream_set(&self) -> &Arc<UpstreamSet> {
        &self.set
    }

    /// Connects to endpoint `idx`, handshakes offering `alpn`, and checks
    /// the upstream is the identity the config expects (a resumed session
    /// skipped the verifier, so its identity is checked here as for a fresh
    /// one) and not revoked. Logs and counts what went wrong.
    pub(crate) async fn connect_endpoint(
        &self,
        idx: usize,
        alpn: Alpn,
    ) -> Result<Upstream, ConnectError> {
        let endpoint = &self.endpoints[idx];
        let Some(addr) = resolve(endpoint).await else {
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::warn!(listener = %self.name, %endpoint, suppressed, "endpoint name does not resolve");
            }
            return Err(ConnectError::Unresolvable);
        };
        let tcp = match connect_with_timeout(addr, self.timeouts.connect.0).await {
            Ok(s) => s,
            Err(reason) => {
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.name, %endpoint, reason = reason.as_str(), suppressed, "cannot reach upstream endpoint");
                }
                return Err(ConnectError::Connect(reason));
            }
        };
        let connector = TlsConnector::from(self.upstream.config_for(alpn));
        let handshake = tokio::time::timeout(
            self.timeouts.handshake.0,
            connector.connect(endpoint.server_name().clone(), tcp),
        )
        .await;
        let tls = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let why = HandshakeFailure::classify(&e);
                self.handshake_failed(why, &e, endpoint);
                return Err(ConnectError::Handshake(why));
            }
            Err(_) => {
                let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
                self.handshake_failed(HandshakeFailure::Timeout, &e, endpoint);
                return Err(ConnectError::Handshake(HandshakeFailure::Timeout));
            }
        };
        self.metrics.handshake_ok();

        let checked = {
            let (_, session) = tls.get_ref();
            peer_identity(
                session.peer_certificates(),
                &self.tls.trust(),
                crate::clock::unix_now(),
            )
            .and_then(|p| {
                if &p.id == self.upstream.expected() {
                    Ok(p)
                } else {
                    Err(Denial::WrongIdentity {
                        expected: self.upstream.expected().clone(),
                        got: p.id,
                    })
                }
            })
        };
        let checked = match checked {
            Ok(p) => {
                super::admission::check_ocsp_of(&self.tls, tls.get_ref().1.peer_certificates())
                    .await
                    .map(|_| p)
            }
            Err(d) => Err(d),
        };
        match checked {
            Ok(peer) => {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                Ok(Upstream { tls, peer, h2 })
            }
            Err(denial) => {
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.name, %endpoint, error = %denial, suppressed, "upstream refused after handshake");
                }
                Err(ConnectError::Refused(denial))
            }
        }
    }

    fn handshake_failed(&self, why: HandshakeFailure, err: &std::io::Error, endpoint: &Endpoint) {
        self.metrics.handshake_failed(why);
        if let Some(suppressed) = self.log_limit.allow() {
            tracing::warn!(listener = %self.name, %endpoint, expected = %self.upstream.expected(), reason = why.as_str(), error = %err, suppressed, "outbound TLS handshake failed");
        }
    }
}

async fn resolve(endpoint: &Endpoint) -> Option<SocketAddr> {
    if let Some(a) = endpoint.addr() {
        return Some(a);
    }
    tokio::net::lookup_host((endpoint.host(), endpoint.port()))
        .await
        .ok()?
        .next()
}
