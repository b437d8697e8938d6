//! Inbound HTTP: requests from an admitted peer sidecar are authorized one
//! by one (method and path rules, rate limit), given the peer's verified
//! identity headers (any copies the client sent are removed first), and
//! forwarded to the local app over pooled connections, in the HTTP version
//! the original client spoke.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, StatusCode};

use super::access_log::{AccessEntry, AccessLog};
use super::body::{ProxyBody, response_deadline, track_sent};
use super::client::{ClientSettings, Pool, SendError, Sender, send_once};
use super::error::HttpError;
use super::headers::{self, ORIG_PROTO, PEER_ID, XFCC};
use super::server::{SeenRequest, ServeEnd, ServeLimits, ServerSettings, serve};
use crate::config::{HttpConfig, Timeouts};
use crate::identity::SpiffeId;
use crate::policy::{AuditEvent, PeerRulesCache};
use crate::proxy::InboundListener;
use crate::proxy::admission::PeerIdentity;
use crate::proxy::connect_with_timeout;
use crate::proxy::inbound::InboundIo;

/// An inbound listener's HTTP settings and its pool to the app.
pub struct InboundHttp {
    server: ServerSettings,
    client: ClientSettings,
    app: Arc<Pool>,
    forward: SocketAddr,
    forward_authority: Authority,
    request_timeout: Duration,
    connect_timeout: Duration,
    idle: Duration,
    max_body: Option<u64>,
    forward_client_cert: bool,
    pub(crate) detect_timeout: Duration,
    access_log: Arc<AccessLog>,
}

impl InboundHttp {
    pub fn new(
        forward: SocketAddr,
        http: &HttpConfig,
        timeouts: Timeouts,
        access_log: Arc<AccessLog>,
    ) -> Self {
        let app = Pool::new(256);
        super::client::spawn_sweeper(vec![Arc::downgrade(&app)], http.pool_idle_timeout.0);
        InboundHttp {
            server: ServerSettings::new(http, timeouts.idle.0),
            client: ClientSettings::new(http),
            app,
            forward,
            forward_authority: Authority::try_from(forward.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("localhost")),
            request_timeout: http.request_timeout.0,
            connect_timeout: timeouts.connect.0,
            idle: timeouts.idle.0,
            max_body: http.max_request_body,
            forward_client_cert: http.forward_client_cert,
            detect_timeout: http.detect_timeout.0,
            access_log,
        }
    }
}

/// One admitted HTTP connection from a peer sidecar.
struct Conn {
    listener: Arc<InboundListener>,
    http: Arc<InboundHttp>,
    peer: SpiffeId,
    peer_header: HeaderValue,
    xfcc: Option<HeaderValue>,
    src: SocketAddr,
    /// The hop is HTTP/2: requests without the original-protocol marker
    /// came from an HTTP/2 client and go to the app as HTTP/2.
    hop_h2: bool,
    seen: SeenRequest,
    authz_counter: crate::metrics::DecisionCounterCache,
    /// The policy rules this peer matches, looked up once, not per request.
    peer_rules: PeerRulesCache,
}

/// Serves an admitted peer connection as HTTP until it ends.
pub async fn serve_inbound(
    listener: Arc<InboundListener>,
    io: InboundIo,
    h2: bool,
    peer: &PeerIdentity,
    src: SocketAddr,
    limits: ServeLimits<'_>,
) -> ServeEnd {
    let Some(http) = listener.http.clone() else {
        return ServeEnd::Error;
    };
    let xfcc = if http.forward_client_cert {
        let ours = listener.tls.identity().current().leaf.id.clone();
        io.inner()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| headers::xfcc_value(ours.as_str(), leaf, peer.id.as_str()))
    } else {
        None
    };
    let Ok(peer_header) = HeaderValue::from_str(peer.id.as_str()) else {
        return ServeEnd::Error;
    };
    let seen = SeenRequest::default();
    let conn = Arc::new(Conn {
        listener: listener.clone(),
        http: http.clone(),
        peer: peer.id.clone(),
        peer_header,
        xfcc,
        src,
        hop_h2: h2,
        seen: seen.clone(),
        authz_counter: Default::default(),
        peer_rules: Default::default(),
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    serve(&http.server, io, h2, service, seen, limits).await
}

impl Conn {
    fn http(&self) -> &InboundHttp {
        &self.http
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        self.seen.mark();
        let start = Instant::now();
        let log = self.http().access_log.enabled();
        let (method, uri, version) = (req.method().clone(), req.uri().clone(), req.version());

        let resp = match self.authorize(&mut req) {
            Err(e) => Err(e),
            Ok(()) => self.forward(req, start).await,
        };
        let (resp, error) = super::finish(resp, version, &self.listener.metrics, start);
        let status = resp.status().as_u16();
        if log {
            self.http().access_log.record(&AccessEntry {
                direction: "inbound",
                service: &self.listener.name,
                peer: Some(self.peer.as_str()),
                src: self.src,
                method: method.as_str(),
                authority: uri.authority().map(|a| a.as_str()),
                path: uri.path(),
                version,
                status,
                duration: start.elapsed(),
                error,
            });
        }
        resp
    }

    /// Policy and rate limit for one request; on success the request
    /// carries the normalized path that was judged.
    fn authorize(&self, req: &mut Request<Incoming>) -> Result<(), HttpError> {
        let l = &self.listener;
        // CONNECT names a host, not a path: rules see the authority, which
        // no path rule (they start with '/') can match.
        let connect = req.method() == Method::CONNECT;
        let path = if connect {
            std::borrow::Cow::Owned(
                req.uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            )
        } else {
            headers::normalize_path(req.uri().path())
        };
        let active = l.authz.policy.active();
        let decision = active.table.decide_cached(
            &self.peer_rules,
            &l.name,
            &self.peer,
            Some(&crate::policy::Request {
                method: req.method().as_str(),
                path: &path,
            }),
        );
        l.authz.metrics.policy.count_decision(
            &self.authz_counter,
            &l.name,
            decision.label(),
            &decision.rule,
        );
        l.authz.audit.record(&AuditEvent {
            peer: &self.peer,
            service: &l.name,
            rule: &decision.rule,
            decision: decision.label(),
            mode: decision.mode.as_str(),
            src: self.src,
            request: Some((req.method().as_str(), &path)),
            cause: None,
        });
        if !decision.admitted() {
            if let Some(suppressed) = l.log_limit.allow() {
                tracing::info!(listener = %l.name, src = %self.src, peer = %self.peer, method = %req.method(), path = %path, rule = %decision.rule, suppressed, "request denied by policy");
            }
            return Err(HttpError::Forbidden);
        }
        if let Some(limiter) = active.limiter(&l.name)
            && !limiter.try_acquire(&self.peer, std::time::Instant::now())
        {
            l.metrics.rate_limited.inc();
            return Err(HttpError::RateLimited);
        }
        if !connect && let std::borrow::Cow::Owned(p) = &path {
            let Some(uri) = headers::with_path(req.uri(), p) else {
                return Err(HttpError::BadRequest);
            };
            *req.uri_mut() = uri;
        }
        Ok(())
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        start: Instant,
    ) -> Result<Response<ProxyBody>, HttpError> {
        let http = self.http();
        let upgrade = headers::is_upgrade(&req);
        let marked_h1 = req.headers_mut().remove(ORIG_PROTO).is_some();
        let to_h1 = marked_h1 || !self.hop_h2 || upgrade;
        let h = req.headers_mut();
        headers::strip_hop_by_hop(h, upgrade);
        headers::strip_identity(h);
        h.insert(PEER_ID, self.peer_header.clone());
        if let Some(x) = &self.xfcc {
            h.insert(XFCC, x.clone());
        }

        let body_limit = http.max_body;
        let exceeded = body_limit.map(|_| Arc::new(AtomicBool::new(false)));
        if let Some(limit) = body_limit
            && content_length(&req).is_some_and(|n| n > limit)
        {
            return Err(HttpError::BodyTooLarge);
        }
        let fixed = if to_h1 {
            headers::to_h1(&mut req, &http.forward_authority)
        } else {
            headers::to_h2(&mut req, &http.forward_authority)
        };
        if fixed.is_err() {
            return Err(HttpError::BadRequest);
        }

        if upgrade {
            return self.upgrade(req).await;
        }
        let (sent_tx, sent_rx) = track_sent(req.body());
        let limit = body_limit.zip(exceeded.clone());
        let req = req.map(|b| ProxyBody::streaming(b, limit, sent_tx));
        let sent = tokio::select! {
            r = self.send(req, to_h1) => Ok(r),
            _ = response_deadline(sent_rx, start, http.request_timeout) => Err(()),
        };
        let over = || exceeded.as_ref().is_some_and(|f| f.load(Ordering::Acquire));
        match sent {
            Err(_) => Err(HttpError::RequestTimeout),
            // The app may answer a body cut short at the limit; the client
            // must still learn that its body was too large.
            Ok(Ok(_)) if over() => Err(HttpError::BodyTooLarge),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) if over() => Err(HttpError::BodyTooLarge),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Sends on a pooled connection to the app; a request that a stale
    /// pooled connection refused goes once more on a fresh one.
    async fn send(
        &self,
        req: Request<ProxyBody>,
        h1: bool,
    ) -> Result<Response<ProxyBody>, HttpError> {
        let pool = &self.http().app;
        let sender = match self.pooled(h1) {
            Some(s) => s,
            None => self.connect(h1).await?,
        };
        let req = match pool.send(sender, req).await {
            Ok(resp) => return Ok(resp),
            Err(SendError::NotSent(req)) => *req,
            Err(SendError::Failed(e)) => return Err(self.failed(&e)),
        };
        let sender = self.connect(h1).await?;
        match pool.send(sender, req).await {
            Ok(resp) => Ok(resp),
            Err(SendError::NotSent(_)) => Err(HttpError::UpstreamReset),
            Err(SendError::Failed(e)) => Err(self.failed(&e)),
        }
    }

    fn pooled(&self, h1: bool) -> Option<Sender> {
        let pool = &self.http().app;
        if h1 { pool.take_h1() } else { pool.h2() }
    }

    async fn connect(&self, h1: bool) -> Result<Sender, HttpError> {
        let http = self.http();
        let pool = &http.app;
        let _guard = if h1 {
            None
        } else {
            let g = pool.lock_connect().await;
            if let Some(s) = pool.h2() {
                return Ok(s);
            }
            Some(g)
        };
        let tcp = connect_with_timeout(http.forward, http.connect_timeout)
            .await
            .map_err(|reason| {
                if let Some(suppressed) = self.listener.log_limit.allow() {
                    tracing::warn!(listener = %self.listener.name, forward = %http.forward, reason = reason.as_str(), suppressed, "cannot reach the local app");
                }
                match reason {
                    crate::proxy::close::CloseReason::ConnectTimeout => HttpError::ConnectTimeout,
                    _ => HttpError::ConnectFailed,
                }
            })?;
        let sender = http
            .client
            .handshake(tcp, !h1, None)
            .await
            .map_err(|_| HttpError::UpstreamReset)?;
        if let Sender::H2(s) = &sender {
            pool.set_h2(s);
        }
        Ok(sender)
    }

    fn failed(&self, e: &dyn std::fmt::Display) -> HttpError {
        if let Some(suppressed) = self.listener.log_limit.allow() {
            tracing::info!(listener = %self.listener.name, error = %e, suppressed, "the local app failed a request");
        }
        HttpError::UpstreamReset
    }

    /// A WebSocket upgrade or `CONNECT`: on a connection of its own to the
    /// app, then bytes both ways once both sides have switched.
    async fn upgrade(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, HttpError> {
        let http = self.http();
        let down = hyper::upgrade::on(&mut req);
        let is_connect = req.method() == Method::CONNECT;
        let tcp = connect_with_timeout(http.forward, http.connect_timeout)
            .await
            .map_err(|_| HttpError::ConnectFailed)?;
        let sender = http
            .client
            .handshake_h1(tcp, None)
            .await
            .map_err(|_| HttpError::UpstreamReset)?;
        let req = req.map(ProxyBody::stream);
        let mut resp = tokio::time::timeout(http.request_timeout, send_once(sender, req))
            .await
            .map_err(|_| HttpError::RequestTimeout)?
            .map_err(|e| self.failed(&e))?;
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (is_connect && resp.status().is_success());
        if switched {
            let up = hyper::upgrade::on(&mut resp);
            let listener = self.listener.clone();
            let idle = http.idle;
            self.listener.tasks.spawn(async move {
                super::tunnel(down, up, &listener.metrics, idle, &listener.name).await;
            });
            headers::strip_hop_by_hop(resp.headers_mut(), true);
        }
        Ok(resp.map(ProxyBody::stream))
    }
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
