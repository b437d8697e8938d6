//! Outbound HTTP: requests from the local app are forwarded to an upstream
//! endpoint over a pooled mTLS connection: one shared HTTP/2 connection per
//! endpoint when the peer offers `h2`, else a pool of HTTP/1.1 ones. An
//! HTTP/1.x request crossing the HTTP/2 hop is marked so the far side
//! speaks HTTP/1.1 to its app again. Failures become 502/503/504 answers
//! with `x-portcullis-error`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::connect::{ConnectError, Connector};
use crate::config::OutboundConfig;
use crate::proxy::close::CloseReason;
use crate::proxy::copy::CopyLimits;
use crate::proxy::counters::ListenerMetrics;
use crate::proxy::http::HttpVersion;
use crate::proxy::http::access_log::{AccessEntry, AccessLog};
use crate::proxy::http::body::{ProxyBody, response_deadline, track_sent};
use crate::proxy::http::client::{ClientSettings, Held, Pool, Sender, send_once, spawn_sweeper};
use crate::proxy::http::error::HttpError;
use crate::proxy::http::exchange::{finish, tunnel};
use crate::proxy::http::h2_client::SendError;
use crate::proxy::http::headers::{self, ORIG_PROTO};
use crate::proxy::http::server::{SeenRequest, ServeEnd, ServeLimits, ServerSettings, serve};
use crate::proxy::listener::ListenerParts;
use crate::proxy::registry::ConnKind;
use crate::tls::Alpn;

/// What an outbound listener's HTTP connections share: the way to the
/// upstream, the HTTP settings, and a pool per endpoint.
pub struct OutboundHttp {
    connector: Arc<Connector>,
    metrics: ListenerMetrics,
    /// Tracks upgraded tunnels, which outlive their request.
    tasks: TaskTracker,
    server: ServerSettings,
    client: ClientSettings,
    pools: Vec<Arc<Pool>>,
    /// For requests that name no authority (HTTP/1.0 without `Host`).
    fallback_authority: Authority,
    request_timeout: Duration,
    idle: Duration,
    detect_timeout: Duration,
    access_log: Arc<AccessLog>,
}

impl OutboundHttp {
    pub fn new(config: &OutboundConfig, parts: &ListenerParts, connector: Arc<Connector>) -> Self {
        let http = &parts.http;
        let pools: Vec<Arc<Pool>> = config.endpoints.iter().map(|_| Pool::new(256)).collect();
        spawn_sweeper(
            pools.iter().map(Arc::downgrade).collect(),
            http.pool_idle_timeout.0,
        );
        let fallback_authority = config
            .endpoints
            .first()
            .and_then(|e| Authority::try_from(e.to_string().as_str()).ok())
            .unwrap_or_else(|| Authority::from_static("localhost"));
        OutboundHttp {
            connector,
            metrics: parts.metrics.clone(),
            tasks: parts.tasks.clone(),
            server: ServerSettings::new(http, parts.timeouts.idle.0),
            client: ClientSettings::new(http),
            pools,
            fallback_authority,
            request_timeout: http.request_timeout.0,
            idle: parts.timeouts.idle.0,
            detect_timeout: http.detect_timeout.0,
            access_log: parts.access_log.clone(),
        }
    }

    /// How long detection waits for the app's first byte.
    pub fn detect_timeout(&self) -> Duration {
        self.detect_timeout
    }

    /// Serves a connection from the local app as HTTP until it ends.
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        version: HttpVersion,
        src: SocketAddr,
        limits: ServeLimits<'_>,
    ) -> ServeEnd
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let seen = SeenRequest::default();
        let conn = Arc::new(AppConnection {
            http: self.clone(),
            src,
            seen: seen.clone(),
        });
        let service = hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        serve(&self.server, io, version, service, seen, limits).await
    }
}

/// One HTTP connection from the local app.
struct AppConnection {
    http: Arc<OutboundHttp>,
    src: SocketAddr,
    seen: SeenRequest,
}

/// Where a request goes: a pooled connection, and which pool it is from.
struct Target {
    sender: Sender,
    pool: usize,
}

impl AppConnection {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        self.seen.mark();
        let start = Instant::now();
        let log = self.http.access_log.enabled();
        let (method, uri, version) = (req.method().clone(), req.uri().clone(), req.version());
        let authority = log.then(|| headers::authority(&req)).flatten();

        let upgrade = headers::is_upgrade(&req);
        let forwarded = if upgrade {
            self.upgrade(req).await
        } else {
            let (sent_tx, sent_rx) = track_sent(req.body());
            let req = req.map(|b| ProxyBody::streaming(b, None, sent_tx));
            self.forward(req, sent_rx, start).await
        };
        let (resp, error) = finish(forwarded, version, &self.http.metrics, start);
        let status = resp.status().as_u16();
        if log {
            self.http.access_log.record(&AccessEntry {
                direction: "outbound",
                service: self.http.connector.listener(),
                peer: None,
                src: self.src,
                method: method.as_str(),
                authority: authority.as_ref().map(|a| a.as_str()),
                path: uri.path(),
                version,
                status,
                duration: start.elapsed(),
                error,
            });
        }
        resp
    }

    /// Forwards to an endpoint chosen by the upstream set (breakers, then
    /// the cheaper of two by latency). A connect failure means the request
    /// never left, so it may go to another endpoint whatever its method,
    /// within the retry budget. Each attempt's outcome feeds the endpoint's
    /// breaker: connect, TLS and identity failures, resets, timeouts and the
    /// configured 5xx statuses count against it.
    async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        sent: Option<tokio::sync::oneshot::Receiver<()>>,
        start: Instant,
    ) -> Result<Response<ProxyBody>, HttpError> {
        let set = self.http.connector.set();
        // Held until the answer's body ends, not just its head: a
        // streamed answer is still a request the upstream is serving.
        let request = set.request().map_err(|_| HttpError::Overloaded)?;
        // The version the app spoke: an HTTP/1.x request crossing an HTTP/2
        // hop is marked so the far side speaks HTTP/1.1 to its app again.
        let from = if req.version() < Version::HTTP_2 {
            HttpVersion::Http1
        } else {
            HttpVersion::Http2
        };
        headers::strip_hop_by_hop(req.headers_mut(), false);
        req.headers_mut().remove(ORIG_PROTO);
        let deadline = response_deadline(sent, start, self.http.request_timeout);
        let mut deadline = std::pin::pin!(deadline);

        // A connect failure means the request never left: whatever its
        // method (as gRPC's transparent retries), it may go to another
        // endpoint, within the retry budget. A request the endpoint gave
        // back unsent (a pooled connection that had closed, a stream
        // refused unprocessed: most often an endpoint draining) goes once
        // more, to another endpoint when there is one: the one that gave it
        // back is likely on its way out.
        let mut avoid = None;
        loop {
            let picked = self
                .http
                .connector
                .with_fallback(
                    avoid,
                    || set.take_retry(),
                    |idx| async move {
                        let _pending = set.pending().map_err(|_| ConnectError::Overloaded)?;
                        self.target(idx).await
                    },
                )
                .await;
            let (call, target) = picked.map_err(|e| e.http())?;
            let idx = target.pool;
            let sent = tokio::select! {
                r = self.send(target, req, from) => r,
                _ = &mut deadline => {
                    call.finish(true);
                    return Err(HttpError::RequestTimeout);
                }
            };
            return match sent {
                Ok(resp) => {
                    let failed = set
                        .config()
                        .failure_statuses
                        .contains(&resp.status().as_u16());
                    call.finish(failed);
                    Ok(resp.map(|body| body.holding(request)))
                }
                Err(Retry::Unsent(r)) if avoid.is_none() => {
                    // Neither a success nor the endpoint's failure: the
                    // call is released unrecorded.
                    drop(call);
                    req = *r;
                    avoid = Some(idx);
                    continue;
                }
                Err(Retry::Unsent(_)) => {
                    call.finish(true);
                    Err(HttpError::UpstreamReset)
                }
                Err(Retry::No(e)) => {
                    call.finish(true);
                    Err(e)
                }
            };
        }
    }

    async fn send(
        &self,
        target: Target,
        mut req: Request<ProxyBody>,
        from: HttpVersion,
    ) -> Result<Response<ProxyBody>, Retry> {
        let fixed = match &target.sender {
            Sender::H2(_) => {
                if from == HttpVersion::Http1 {
                    let v = HeaderValue::from_static("HTTP/1.1");
                    req.headers_mut().insert(ORIG_PROTO, v);
                }
                headers::to_h2(&mut req, &self.http.fallback_authority)
            }
            Sender::H1(_) => {
                req.headers_mut().remove(ORIG_PROTO);
                headers::to_h1(&mut req, &self.http.fallback_authority)
            }
        };
        if fixed.is_err() {
            return Err(Retry::No(HttpError::BadRequest));
        }
        let pool = &self.http.pools[target.pool];
        match pool.send(target.sender, req).await {
            Ok(resp) => Ok(resp),
            Err(SendError::NotSent(r)) => Err(Retry::Unsent(r)),
            Err(SendError::Failed(e)) => {
                let connector = &self.http.connector;
                if let Some(suppressed) = connector.log_limit().allow() {
                    tracing::info!(listener = %connector.listener(), error = %e, suppressed, "upstream failed a request");
                }
                Err(Retry::No(HttpError::UpstreamReset))
            }
        }
    }

    /// A pooled connection to endpoint `idx`, or a new one.
    async fn target(&self, idx: usize) -> Result<Target, ConnectError> {
        let pool = &self.http.pools[idx];
        if pool.is_h1_only() {
            if let Some(sender) = pool.take_h1() {
                return Ok(Target { sender, pool: idx });
            }
            return self.fresh(idx).await;
        }
        if let Some(sender) = pool.h2() {
            return Ok(Target { sender, pool: idx });
        }
        // One new HTTP/2 connection for a burst of requests, not one each.
        let _guard = pool.lock_connect().await;
        if let Some(sender) = pool.h2() {
            return Ok(Target { sender, pool: idx });
        }
        if pool.is_h1_only()
            && let Some(sender) = pool.take_h1()
        {
            return Ok(Target { sender, pool: idx });
        }
        self.fresh(idx).await
    }

    /// A new connection to endpoint `idx`, registered with the sweep; ALPN
    /// decides its HTTP version and teaches the pool what the endpoint
    /// speaks.
    async fn fresh(&self, idx: usize) -> Result<Target, ConnectError> {
        let connector = &self.http.connector;
        let slot = connector
            .set()
            .connection()
            .map_err(|_| ConnectError::Overloaded)?;
        let up = connector.connect_endpoint(idx, Alpn::Http).await?;
        let pool = &self.http.pools[idx];
        pool.learn(up.version);
        let registration = connector.register(ConnKind::UpstreamPooled, &up);
        let held = Held::registered(Some(slot), registration);
        let sender = self.handshake(up.tls, up.version, held).await?;
        if let Sender::H2(s) = &sender {
            pool.set_h2(s);
        }
        Ok(Target { sender, pool: idx })
    }

    async fn handshake(
        &self,
        tls: tokio_rustls::client::TlsStream<TcpStream>,
        version: HttpVersion,
        held: Held,
    ) -> Result<Sender, ConnectError> {
        self.http.client.handshake(tls, version, held).await.map_err(|e| {
            tracing::debug!(listener = %self.http.connector.listener(), error = %e, "HTTP handshake with upstream failed");
            ConnectError::Connect(CloseReason::Error)
        })
    }

    /// A WebSocket upgrade or `CONNECT`: an HTTP/1.1 hop of its own (only
    /// `http/1.1` offered by ALPN), then bytes both ways.
    async fn upgrade(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, HttpError> {
        let down = hyper::upgrade::on(&mut req);
        let is_connect = req.method() == Method::CONNECT;
        headers::strip_hop_by_hop(req.headers_mut(), true);
        req.headers_mut().remove(ORIG_PROTO);
        if headers::to_h1(&mut req, &self.http.fallback_authority).is_err() {
            return Err(HttpError::BadRequest);
        }
        let connector = &self.http.connector;
        let up = connector
            .connect_any(Alpn::Http1)
            .await
            .map_err(|e| e.http())?;
        let slot = connector
            .set()
            .connection()
            .map_err(|_| HttpError::Overloaded)?;
        let registration = connector.register(ConnKind::OutboundTunnel, &up);
        let held = Held {
            slot: Some(slot),
            registration: None,
            stop: Some(registration.stopped().clone()),
            app_slot: None,
        };
        let sender = self
            .http
            .client
            .handshake_h1(up.tls, held)
            .await
            .map_err(|_| HttpError::UpstreamReset)?;
        let req = req.map(ProxyBody::stream);
        let mut resp = tokio::time::timeout(self.http.request_timeout, send_once(sender, req))
            .await
            .map_err(|_| HttpError::RequestTimeout)?
            .map_err(|_| HttpError::UpstreamReset)?;
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (is_connect && resp.status().is_success());
        if switched {
            let upgraded = hyper::upgrade::on(&mut resp);
            let http = self.http.clone();
            self.http.tasks.spawn(async move {
                let limits = CopyLimits {
                    idle: http.idle,
                    deadline: None,
                    stop: registration.stopped(),
                };
                let listener = http.connector.listener();
                tunnel(down, upgraded, &http.metrics, limits, listener).await;
            });
            headers::strip_hop_by_hop(resp.headers_mut(), true);
        }
        Ok(resp.map(ProxyBody::stream))
    }
}

enum Retry {
    No(HttpError),
    /// Given back unsent: may go out once more, through another pick.
    Unsent(Box<Request<ProxyBody>>),
}
