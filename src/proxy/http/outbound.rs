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

use tokio::time::Instant;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::net::TcpStream;

use super::access_log::{AccessEntry, AccessLog};
use super::body::{ProxyBody, response_deadline, track_sent};
use super::client::{ClientSettings, Pool, SendError, Sender, send_once};
use super::error::HttpError;
use super::headers::{self, ORIG_PROTO};
use super::server::{SeenRequest, ServeEnd, ServeLimits, ServerSettings, serve};
use crate::config::{Endpoint, HttpConfig, Timeouts};
use crate::proxy::OutboundListener;
use crate::tls::Alpn;

/// An outbound listener's HTTP settings and its pools, one per endpoint.
pub struct OutboundHttp {
    server: ServerSettings,
    client: ClientSettings,
    pools: Vec<Arc<Pool>>,
    /// For requests that name no authority (HTTP/1.0 without `Host`).
    fallback_authority: Authority,
    request_timeout: Duration,
    idle: Duration,
    pub(crate) detect_timeout: Duration,
    access_log: Arc<AccessLog>,
}

impl OutboundHttp {
    pub fn new(
        endpoints: &[Endpoint],
        http: &HttpConfig,
        timeouts: Timeouts,
        access_log: Arc<AccessLog>,
    ) -> Self {
        let pools: Vec<Arc<Pool>> = endpoints.iter().map(|_| Pool::new(256)).collect();
        super::client::spawn_sweeper(
            pools.iter().map(Arc::downgrade).collect(),
            http.pool_idle_timeout.0,
        );
        let fallback_authority = endpoints
            .first()
            .and_then(|e| Authority::try_from(e.to_string().as_str()).ok())
            .unwrap_or_else(|| Authority::from_static("localhost"));
        OutboundHttp {
            server: ServerSettings::new(http, timeouts.idle.0),
            client: ClientSettings::new(http),
            pools,
            fallback_authority,
            request_timeout: http.request_timeout.0,
            idle: timeouts.idle.0,
            detect_timeout: http.detect_timeout.0,
            access_log,
        }
    }
}

struct Conn {
    listener: Arc<OutboundListener>,
    http: Arc<OutboundHttp>,
    src: SocketAddr,
    seen: SeenRequest,
}

/// Serves a connection from the local app as HTTP until it ends.
pub async fn serve_outbound<I>(
    listener: Arc<OutboundListener>,
    http: Arc<OutboundHttp>,
    io: I,
    h2: bool,
    src: SocketAddr,
    limits: ServeLimits<'_>,
) -> ServeEnd
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let seen = SeenRequest::default();
    let conn = Arc::new(Conn {
        listener,
        http: http.clone(),
        src,
        seen: seen.clone(),
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    serve(&http.server, io, h2, service, seen, limits).await
}

/// Where a request goes: a pooled connection, and which pool it is from.
struct Target {
    sender: Sender,
    pool: usize,
}

impl Conn {
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
        let (resp, error) = super::finish(forwarded, version, &self.listener.metrics, start);
        let status = resp.status().as_u16();
        if log {
            self.http.access_log.record(&AccessEntry {
                direction: "outbound",
                service: &self.listener.name,
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
    /// never left, so an idempotent one may go to another endpoint, within
    /// the retry budget. Each attempt's outcome feeds the endpoint's
    /// breaker: connect, TLS and identity failures, resets, timeouts and the
    /// configured 5xx statuses count against it.
    async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        sent: Option<tokio::sync::oneshot::Receiver<()>>,
        start: Instant,
    ) -> Result<Response<ProxyBody>, HttpError> {
        let set = &self.listener.set;
        let _request = set.request().map_err(|_| HttpError::Overloaded)?;
        let from_h1 = req.version() < Version::HTTP_2;
        headers::strip_hop_by_hop(req.headers_mut(), false);
        req.headers_mut().remove(ORIG_PROTO);
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let deadline = response_deadline(sent, start, self.http.request_timeout);
        let mut deadline = std::pin::pin!(deadline);

        let mut exclude = None;
        for attempt in 0..set.len() {
            let call = set.pick(exclude).map_err(|_| HttpError::CircuitOpen)?;
            let idx = call.index();
            let target = {
                let _pending = set.pending().map_err(|_| HttpError::Overloaded)?;
                self.target(idx).await
            };
            let target = match target {
                Ok(t) => t,
                Err(e) => {
                    call.finish(true);
                    let again =
                        e.try_next() && idempotent && attempt + 1 < set.len() && set.take_retry();
                    if again {
                        exclude = Some(idx);
                        continue;
                    }
                    return Err(e.http());
                }
            };
            let sent = tokio::select! {
                r = self.send_once_more(target, req, from_h1) => r,
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
                    Ok(resp)
                }
                Err(e) => {
                    call.finish(true);
                    Err(e)
                }
            };
        }
        Err(HttpError::ConnectFailed)
    }

    /// Sends on `target`; a pooled connection that had already closed gets
    /// the request back unsent, and it goes once more on a fresh one.
    async fn send_once_more(
        &self,
        target: Target,
        req: Request<ProxyBody>,
        from_h1: bool,
    ) -> Result<Response<ProxyBody>, HttpError> {
        let idx = target.pool;
        match self.send(target, req, from_h1).await {
            Ok(resp) => Ok(resp),
            Err(Retry::No(e)) => Err(e),
            Err(Retry::Fresh(r)) => {
                let target = self.fresh(idx).await.map_err(|e| e.http())?;
                match self.send(target, *r, from_h1).await {
                    Ok(resp) => Ok(resp),
                    Err(Retry::No(e)) => Err(e),
                    Err(Retry::Fresh(_)) => Err(HttpError::UpstreamReset),
                }
            }
        }
    }

    async fn send(
        &self,
        target: Target,
        mut req: Request<ProxyBody>,
        from_h1: bool,
    ) -> Result<Response<ProxyBody>, Retry> {
        let fixed = match &target.sender {
            Sender::H2(_) => {
                if from_h1 {
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
            Err(SendError::NotSent(r)) => Err(Retry::Fresh(r)),
            Err(SendError::Failed(e)) => {
                if let Some(suppressed) = self.listener.log_limit.allow() {
                    tracing::info!(listener = %self.listener.name, error = %e, suppressed, "upstream failed a request");
                }
                Err(Retry::No(HttpError::UpstreamReset))
            }
        }
    }

    /// A pooled connection to endpoint `idx`, or a new one.
    async fn target(&self, idx: usize) -> Result<Target, crate::proxy::ConnectError> {
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

    /// A new connection to endpoint `idx`; ALPN decides its HTTP version
    /// and teaches the pool what the endpoint speaks.
    async fn fresh(&self, idx: usize) -> Result<Target, crate::proxy::ConnectError> {
        let slot = self
            .listener
            .set
            .connection()
            .map_err(|_| crate::proxy::ConnectError::Overloaded)?;
        let up = self.listener.connect_endpoint(idx, Alpn::Http).await?;
        let pool = &self.http.pools[idx];
        pool.learn(up.h2);
        let sender = self.handshake(up.tls, up.h2, Some(slot)).await?;
        if let Sender::H2(s) = &sender {
            pool.set_h2(s);
        }
        Ok(Target { sender, pool: idx })
    }

    async fn handshake(
        &self,
        tls: tokio_rustls::client::TlsStream<TcpStream>,
        h2: bool,
        slot: Option<crate::upstream::Slot>,
    ) -> Result<Sender, crate::proxy::ConnectError> {
        self.http.client.handshake(tls, h2, slot).await.map_err(|e| {
            tracing::debug!(listener = %self.listener.name, error = %e, "HTTP handshake with upstream failed");
            crate::proxy::ConnectError::Connect(crate::proxy::close::CloseReason::Error)
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
        let set = &self.listener.set;
        let mut last = HttpError::ConnectFailed;
        let mut up = None;
        let mut exclude = None;
        for _ in 0..set.len() {
            let call = match set.pick(exclude) {
                Ok(c) => c,
                Err(_) if exclude.is_none() => return Err(HttpError::CircuitOpen),
                Err(_) => break,
            };
            let idx = call.index();
            match self.listener.connect_endpoint(idx, Alpn::Http1).await {
                Ok(u) => {
                    call.finish(false);
                    up = Some(u);
                    break;
                }
                Err(e) => {
                    call.finish(true);
                    if !e.try_next() {
                        return Err(e.http());
                    }
                    last = e.http();
                    exclude = Some(idx);
                }
            }
        }
        let up = up.ok_or(last)?;
        let slot = self
            .listener
            .set
            .connection()
            .map_err(|_| HttpError::Overloaded)?;
        let sender = self
            .http
            .client
            .handshake_h1(up.tls, Some(slot))
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
            let listener = self.listener.clone();
            let idle = self.http.idle;
            self.listener.tasks.spawn(async move {
                super::tunnel(down, upgraded, &listener.metrics, idle, &listener.name).await;
            });
            headers::strip_hop_by_hop(resp.headers_mut(), true);
        }
        Ok(resp.map(ProxyBody::stream))
    }
}

enum Retry {
    No(HttpError),
    /// Not sent: may go out on a fresh connection.
    Fresh(Box<Request<ProxyBody>>),
}
