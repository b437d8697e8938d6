//! Outbound: the local app connects in plaintext; we pick an endpoint,
//! originate mTLS with our SVID, check the upstream is who the config says
//! it must be, and copy bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::admission::{Denial, peer_identity};
use super::copy::{CopyCounters, CopyEnd, CopyLimits, copy_bidirectional};
use super::loglimit::LogLimiter;
use super::{ActiveGuard, connect_with_timeout, connection_deadline, log_copy_end};
use crate::config::{ConnectionsConfig, Endpoint, Timeouts};
use crate::metrics::{CloseReason, ListenerMetrics};
use crate::tls::{HandshakeFailure, OutboundTls, TlsContext};

/// One outbound listener's fixed state, shared by its connections.
pub struct OutboundListener {
    pub name: String,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    tls: Arc<TlsContext>,
    upstream: Arc<OutboundTls>,
    pub metrics: ListenerMetrics,
    pub timeouts: Timeouts,
    connections: ConnectionsConfig,
    log_limit: LogLimiter,
    /// Never cancelled today; outbound connections have no policy yet.
    stop: tokio_util::sync::CancellationToken,
}

impl OutboundListener {
    pub fn new(
        name: String,
        endpoints: Vec<Endpoint>,
        tls: Arc<TlsContext>,
        upstream: Arc<OutboundTls>,
        metrics: ListenerMetrics,
        timeouts: Timeouts,
        connections: ConnectionsConfig,
    ) -> Self {
        OutboundListener {
            name,
            endpoints,
            next: AtomicUsize::new(0),
            tls,
            upstream,
            metrics,
            timeouts,
            connections,
            log_limit: LogLimiter::new(20),
            stop: Default::default(),
        }
    }

    /// Serves one connection from the local app to its end.
    pub async fn serve(self: Arc<Self>, mut app: TcpStream, src: SocketAddr) {
        let m = &self.metrics;
        m.opened.inc();
        let _active = ActiveGuard::new(&m.active);

        let (tcp, endpoint) = match self.connect_any().await {
            Ok(c) => c,
            Err(reason) => {
                m.closed(reason);
                return;
            }
        };
        let server_name = endpoint.server_name().clone();
        let connector = TlsConnector::from(self.upstream.config());
        let handshake = tokio::time::timeout(
            self.timeouts.handshake.0,
            connector.connect(server_name, tcp),
        )
        .await;
        let mut tls = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return self.handshake_failed(HandshakeFailure::classify(&e), &e, &endpoint);
            }
            Err(_) => {
                let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
                return self.handshake_failed(HandshakeFailure::Timeout, &e, &endpoint);
            }
        };
        m.handshake_ok();

        // A resumed session skipped the verifier: check the identity the
        // session carries, as for a fresh one.
        let checked = {
            let (_, session) = tls.get_ref();
            peer_identity(
                session.peer_certificates(),
                &self.tls.trust(),
                crate::tls::unix_now(),
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
        let peer = match checked {
            Ok(p) => p,
            Err(denial) => {
                m.closed(if matches!(denial, Denial::Revoked) {
                    CloseReason::Revoked
                } else {
                    CloseReason::Denied
                });
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.name, %endpoint, error = %denial, suppressed, "upstream refused after handshake");
                }
                return;
            }
        };

        tracing::debug!(listener = %self.name, %src, %endpoint, peer = %peer.id, "outbound connection established");
        let (deadline, deadline_reason) = connection_deadline(&self.connections, peer.not_after);
        let (end, stats) = copy_bidirectional(
            &mut app,
            &mut tls,
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
        log_copy_end(&self.name, "outbound", &end, stats, Some(&peer.id));
        m.closed(match end {
            CopyEnd::Completed => CloseReason::Completed,
            CopyEnd::IdleTimeout => CloseReason::IdleTimeout,
            CopyEnd::Error(_) => CloseReason::Error,
            CopyEnd::Stopped => CloseReason::Policy,
            CopyEnd::Deadline => deadline_reason,
        });
    }

    /// Tries the endpoints in round-robin order, each once, until one
    /// accepts the TCP connection.
    async fn connect_any(&self) -> Result<(TcpStream, Endpoint), CloseReason> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = CloseReason::ConnectFailed;
        for i in 0..n {
            let endpoint = &self.endpoints[(start + i) % n];
            let addr = match resolve(endpoint).await {
                Some(a) => a,
                None => {
                    if let Some(suppressed) = self.log_limit.allow() {
                        tracing::warn!(listener = %self.name, %endpoint, suppressed, "endpoint name does not resolve");
                    }
                    continue;
                }
            };
            match connect_with_timeout(addr, self.timeouts.connect.0).await {
                Ok(s) => return Ok((s, endpoint.clone())),
                Err(reason) => {
                    last = reason;
                    if let Some(suppressed) = self.log_limit.allow() {
                        tracing::warn!(listener = %self.name, %endpoint, reason = reason.as_str(), suppressed, "cannot reach upstream endpoint");
                    }
                }
            }
        }
        Err(last)
    }

    fn handshake_failed(&self, why: HandshakeFailure, err: &std::io::Error, endpoint: &Endpoint) {
        self.metrics.handshake_failed(why);
        self.metrics.closed(CloseReason::HandshakeFailed);
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
