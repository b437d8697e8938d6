//! Connecting to an upstream: the one endpoint-selection-and-fallback loop
//! every outbound path uses (L4 connections, HTTP requests, upgrade hops),
//! and one verified connection to a chosen endpoint: TCP, the TLS 1.3
//! handshake presenting our SVID, and admission of the upstream (the
//! identity the config expects, its revocation status).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::resolve::Addresses;
use crate::config::{Endpoint, OutboundConfig, Timeouts};
use crate::log_limit::LogLimiter;
use crate::proxy::admission::{Denial, OcspCerts, PeerIdentity, admit};
use crate::proxy::close::CloseReason;
use crate::proxy::counters::ListenerMetrics;
use crate::proxy::http::{HttpError, HttpVersion};
use crate::proxy::listener::{ListenerParts, connect_with_timeout};
use crate::proxy::registry::{ConnInfo, ConnKind, ConnRegistry, Registration};
use crate::tls::{ALPN_H2, Alpn, HandshakeFailure, OutboundTls, TlsContext};
use crate::upstream::{Call, UpstreamMetrics, UpstreamSet};

/// Why no verified connection to an upstream endpoint could be made.
#[derive(Debug)]
pub enum ConnectError {
    /// Every usable endpoint's circuit breaker is open.
    CircuitOpen,
    /// The endpoint's name does not resolve.
    Unresolvable,
    /// TCP connect failed or timed out.
    Connect(CloseReason),
    Handshake(HandshakeFailure),
    /// The upstream is not who it must be, or is revoked.
    Refused(Denial),
    /// Over one of the upstream's limits: ours, not the endpoint's fault.
    Overloaded,
}

impl ConnectError {
    /// Whether another endpoint may be tried: nothing was said to this one.
    /// A handshake the endpoint dropped (a sidecar stopping, its accept
    /// queue reset) carried nothing of the app's either; one it refused
    /// (a certificate problem) is not retried elsewhere.
    pub fn try_next(&self) -> bool {
        matches!(
            self,
            ConnectError::Unresolvable
                | ConnectError::Connect(_)
                | ConnectError::Handshake(HandshakeFailure::Io)
        )
    }

    /// Whether the endpoint's breaker should count this as its failure.
    fn endpoint_failed(&self) -> bool {
        !matches!(self, ConnectError::Overloaded | ConnectError::CircuitOpen)
    }

    pub fn close_reason(&self) -> CloseReason {
        match self {
            ConnectError::CircuitOpen => CloseReason::CircuitOpen,
            ConnectError::Unresolvable => CloseReason::ConnectFailed,
            ConnectError::Connect(r) => *r,
            ConnectError::Handshake(_) => CloseReason::HandshakeFailed,
            ConnectError::Refused(Denial::Revoked) => CloseReason::Revoked,
            ConnectError::Refused(_) => CloseReason::Denied,
            ConnectError::Overloaded => CloseReason::Overloaded,
        }
    }

    pub fn http(&self) -> HttpError {
        match self {
            ConnectError::CircuitOpen => HttpError::CircuitOpen,
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
pub struct Upstream {
    pub tls: TlsStream<TcpStream>,
    pub peer: Arc<PeerIdentity>,
    pub ocsp_certs: Option<OcspCerts>,
    pub addr: SocketAddr,
    /// What the endpoint chose by ALPN (HTTP/1.1 when it chose nothing).
    pub version: HttpVersion,
}

/// One outbound listener's way to its upstream: the endpoints and what
/// guards them (breakers, limits, retry budget), and the TLS that proves
/// who each endpoint is.
pub struct Connector {
    listener: Arc<str>,
    endpoints: Vec<Addresses>,
    tls: Arc<TlsContext>,
    upstream: Arc<OutboundTls>,
    set: Arc<UpstreamSet>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    metrics: ListenerMetrics,
    registry: Arc<ConnRegistry>,
    log_limit: LogLimiter,
}

impl Connector {
    pub fn new(
        config: &OutboundConfig,
        parts: &ListenerParts,
        upstream: Arc<OutboundTls>,
        upstream_metrics: UpstreamMetrics,
    ) -> Self {
        let Timeouts {
            connect, handshake, ..
        } = parts.timeouts;
        Connector {
            listener: config.name.as_str().into(),
            endpoints: config
                .endpoints
                .iter()
                .map(|e| Addresses::new(e.clone(), config.dns_refresh.0))
                .collect(),
            tls: parts.tls.clone(),
            upstream,
            set: UpstreamSet::new(
                &config.name,
                &config.endpoints,
                config.upstream.clone(),
                upstream_metrics,
            ),
            connect_timeout: connect.0,
            handshake_timeout: handshake.0,
            metrics: parts.metrics.clone(),
            registry: parts.registry.clone(),
            log_limit: LogLimiter::new(20),
        }
    }

    pub fn listener(&self) -> &Arc<str> {
        &self.listener
    }

    /// The upstream's endpoints, breakers, limits and retry budget.
    pub fn set(&self) -> &Arc<UpstreamSet> {
        &self.set
    }

    pub fn log_limit(&self) -> &LogLimiter {
        &self.log_limit
    }

    /// The one endpoint-selection-and-fallback loop. Picks an endpoint
    /// (breakers, then the cheaper of two by latency), avoiding `avoid`
    /// when another will do, and runs `attempt` on it. When the attempt
    /// fails before anything was said to the endpoint (it does not
    /// resolve, or TCP failed), and `may_retry` agrees, another endpoint is
    /// tried, each failed one left out of the next pick. Returns the
    /// attempt's result with its [`Call`], whose outcome the caller records
    /// when the exchange is over; a failed attempt is recorded here.
    pub async fn with_fallback<T, F, Fut>(
        &self,
        avoid: Option<usize>,
        mut may_retry: impl FnMut() -> bool,
        mut attempt: F,
    ) -> Result<(Call, T), ConnectError>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, ConnectError>>,
    {
        let set = &self.set;
        let mut exclude = avoid;
        let mut last = None;
        for tried in 0..set.len() {
            let call = match set.pick(exclude) {
                Ok(c) => c,
                // Every endpoint still worth trying has its breaker open.
                Err(_) => return Err(last.unwrap_or(ConnectError::CircuitOpen)),
            };
            let idx = call.index();
            match attempt(idx).await {
                Ok(t) => return Ok((call, t)),
                Err(e) => {
                    if e.endpoint_failed() {
                        call.finish(true);
                    }
                    let again = e.try_next() && tried + 1 < set.len() && may_retry();
                    if !again {
                        return Err(e);
                    }
                    last = Some(e);
                    exclude = Some(idx);
                }
            }
        }
        Err(last.unwrap_or(ConnectError::CircuitOpen))
    }

    /// A verified connection to some endpoint, offering `alpn`: another
    /// endpoint after each connect failure, as long as there is one.
    pub async fn connect_any(&self, alpn: Alpn) -> Result<Upstream, ConnectError> {
        // Boxed: the handshake's state is dropped once it is done.
        let (call, up) = self
            .with_fallback(
                None,
                || true,
                |idx| Box::pin(self.connect_endpoint(idx, alpn)),
            )
            .await?;
        call.finish(false);
        Ok(up)
    }

    /// Registers a connection to `up` with the sweep.
    pub fn register(&self, kind: ConnKind, up: &Upstream) -> Registration {
        self.registry.register(ConnInfo {
            kind,
            listener: self.listener.clone(),
            peer: up.peer.clone(),
            remote: up.addr,
            request: None,
            ocsp_certs: up.ocsp_certs.clone(),
        })
    }

    /// Connects to endpoint `idx`, handshakes offering `alpn`, and admits
    /// the upstream: the identity the config expects (a resumed session
    /// skipped the verifier, so it is checked here as for a fresh one), not
    /// revoked. Logs and counts what went wrong.
    pub async fn connect_endpoint(&self, idx: usize, alpn: Alpn) -> Result<Upstream, ConnectError> {
        let addresses = &self.endpoints[idx];
        let endpoint = addresses.endpoint();
        let Some(attempts) = addresses.attempts().await else {
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::warn!(listener = %self.listener, %endpoint, suppressed, "endpoint name does not resolve");
            }
            return Err(ConnectError::Unresolvable);
        };
        // Each of the name's addresses in turn, until one takes the TCP
        // connection: one that is gone costs a connect, not the request.
        let mut connected = Err(CloseReason::ConnectFailed);
        for addr in attempts.iter() {
            match connect_with_timeout(addr, self.connect_timeout).await {
                Ok(s) => {
                    connected = Ok((s, addr));
                    break;
                }
                Err(reason) => {
                    if let Some(suppressed) = self.log_limit.allow() {
                        tracing::warn!(listener = %self.listener, %endpoint, %addr, reason = reason.as_str(), suppressed, "cannot reach upstream endpoint");
                    }
                    connected = Err(reason);
                }
            }
        }
        let (tcp, addr) = connected.map_err(ConnectError::Connect)?;
        let connector = TlsConnector::from(self.upstream.config_for(alpn));
        let handshake = tokio::time::timeout(
            self.handshake_timeout,
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

        let session = tls.get_ref().1;
        let admitted = admit(
            &self.tls,
            session.peer_certificates(),
            Some(self.upstream.expected()),
        )
        .await;
        match admitted {
            Ok((peer, ocsp_certs)) => {
                let version = if session.alpn_protocol() == Some(ALPN_H2) {
                    HttpVersion::Http2
                } else {
                    HttpVersion::Http1
                };
                Ok(Upstream {
                    tls,
                    peer: Arc::new(peer),
                    ocsp_certs,
                    addr,
                    version,
                })
            }
            Err(denial) => {
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.listener, %endpoint, error = %denial, suppressed, "upstream refused after handshake");
                }
                Err(ConnectError::Refused(denial))
            }
        }
    }

    fn handshake_failed(&self, why: HandshakeFailure, err: &std::io::Error, endpoint: &Endpoint) {
        self.metrics.handshake_failed(why);
        if let Some(suppressed) = self.log_limit.allow() {
            tracing::warn!(listener = %self.listener, %endpoint, expected = %self.upstream.expected(), reason = why.as_str(), error = %err, suppressed, "outbound TLS handshake failed");
        }
    }
}
