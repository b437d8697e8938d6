//! Outbound: the local app connects in plaintext. An opaque connection
//! (`tcp.rs`) gets a verified mTLS connection of its own to the upstream;
//! HTTP (`http.rs`) is served request by request over pooled connections.
//! Either way `connect.rs` picks the endpoint (breakers, balancing,
//! fallback), originates mTLS with our SVID and admits the upstream only
//! if it is the identity the config expects.

mod connect;
mod http;
pub mod resolve;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::close::{self, CloseReason};
use super::counters::ListenerMetrics;
use super::detect::{Detected, Rewind, detect};
use super::http::{HttpVersion, ServeLimits};
use super::listener::{ActiveGuard, ListenerParts};
use crate::config::{ConnectionsConfig, OutboundConfig, Protocol};
use crate::tls::OutboundTls;
use crate::upstream::{UpstreamMetrics, UpstreamSet};
use connect::Connector;
use http::OutboundHttp;

/// One outbound listener's fixed state, shared by its connections.
pub struct OutboundListener {
    metrics: ListenerMetrics,
    idle: Duration,
    protocol: Protocol,
    connections: ConnectionsConfig,
    connector: Arc<Connector>,
    /// Set for `protocol: http | auto`.
    http: Option<Arc<OutboundHttp>>,
    drain: tokio_util::sync::CancellationToken,
    /// Outbound connections from the app are not subject to the inbound
    /// policy: nothing cancels this. (The connections they make upstream
    /// are registered with the sweep.)
    never: tokio_util::sync::CancellationToken,
    log_limit: crate::log_limit::LogLimiter,
}

/// What an outbound listener is built from besides its config.
pub struct OutboundParts {
    pub common: ListenerParts,
    /// Verifies that the upstream is the identity it must be.
    pub upstream: Arc<OutboundTls>,
    pub upstream_metrics: UpstreamMetrics,
}

impl OutboundListener {
    pub fn new(config: &OutboundConfig, parts: OutboundParts) -> Self {
        let OutboundParts {
            common: parts,
            upstream,
            upstream_metrics,
        } = parts;
        let connector = Arc::new(Connector::new(config, &parts, upstream, upstream_metrics));
        let http = config
            .protocol
            .is_http()
            .then(|| Arc::new(OutboundHttp::new(config, &parts, connector.clone())));
        OutboundListener {
            metrics: parts.metrics,
            idle: parts.timeouts.idle.0,
            protocol: config.protocol,
            connections: parts.connections,
            connector,
            http,
            drain: parts.drain,
            never: Default::default(),
            log_limit: crate::log_limit::LogLimiter::new(20),
        }
    }

    /// The upstream's breakers and limits, for `/config_dump` and reloads.
    pub fn upstream_set(&self) -> &Arc<UpstreamSet> {
        self.connector.set()
    }

    /// Serves one connection from the local app to its end.
    pub async fn serve(self: Arc<Self>, mut app: TcpStream, src: SocketAddr) {
        let m = &self.metrics;
        m.opened.inc();
        let Some(_place) = self.connector.set().app_connection() else {
            m.rejected_connections.inc();
            m.closed(CloseReason::Overloaded);
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::warn!(listener = %self.connector.listener(), %src, suppressed, "app connection refused: limits.max_app_connections reached");
            }
            return;
        };
        let _active = ActiveGuard::new(&m.active);
        let deadline = close::lifetime_deadline(&self.connections);

        // Each path's state is boxed: a task's future is allocated once at
        // its largest, and idle connections should not pay for the paths
        // they do not take.
        let Some(http) = self.http.clone() else {
            let end = Box::pin(tcp::serve(
                &self.connector,
                m,
                &mut app,
                src,
                self.idle,
                deadline,
            ))
            .await;
            return m.closed(end);
        };
        let (detected, prefix) = match detect(&mut app, http.detect_timeout()).await {
            Ok(d) => d,
            Err(_) => return m.closed(CloseReason::Error),
        };
        let mut io = Rewind::new(prefix, app);
        let version = match (detected, self.protocol) {
            (Detected::Http2, _) => HttpVersion::Http2,
            (Detected::Http1, _) => HttpVersion::Http1,
            // `http` listeners answer anything else as HTTP/1.1 (a 400).
            (Detected::Tcp | Detected::Silent, Protocol::Http) => HttpVersion::Http1,
            // The local app is what it is: silence is a server-first protocol.
            (Detected::Tcp | Detected::Silent, _) => {
                let end = Box::pin(tcp::serve(
                    &self.connector,
                    m,
                    &mut io,
                    src,
                    self.idle,
                    deadline,
                ))
                .await;
                return m.closed(end);
            }
        };
        let end = Box::pin(http.serve(
            io,
            version,
            src,
            ServeLimits {
                stop: &self.never,
                stop_is_graceful: &crate::proxy::http::server::never_graceful,
                drain: &self.drain,
                deadline,
            },
        ))
        .await;
        m.closed(end.close_reason(CloseReason::MaxLifetime, CloseReason::Policy));
    }
}
