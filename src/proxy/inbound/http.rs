//! Inbound HTTP: requests from an admitted peer sidecar are authorized one
//! by one (method and path rules, rate limit), given the peer's verified
//! identity headers (any copies the client sent are removed first), and
//! forwarded to the local app over pooled connections, in the HTTP version
//! the original client spoke.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::{AppProtocol, InboundConfig};
use crate::log_limit::LogLimiter;
use crate::policy::{ConnectionAuthz, Refusal, ServiceAuthorizer};
use crate::proxy::admission::{OcspCerts, PeerIdentity};
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
use crate::proxy::http::headers::{self, ORIG_PROTO, PEER_ID, XFCC};
use crate::proxy::http::path;
use crate::proxy::http::server::{SeenRequest, ServeEnd, ServeLimits, ServerSettings, serve};
use crate::proxy::listener::{ListenerParts, connect_with_timeout};
use crate::proxy::registry::{ConnInfo, ConnKind, ConnRegistry, TunnelRequest};
use crate::tls::IdentityStore;

/// What an inbound listener's HTTP connections share: the service's
/// authorizer and counters, the HTTP settings, and the pool to the app.
pub struct InboundHttp {
    service: Arc<str>,
    authz: Arc<ServiceAuthorizer>,
    metrics: ListenerMetrics,
    log_limit: LogLimiter,
    /// Our own identity, named in `x-forwarded-client-cert`.
    identity: Arc<IdentityStore>,
    /// Where upgraded tunnels register, and what tracks their tasks.
    registry: Arc<ConnRegistry>,
    tasks: TaskTracker,
    server: ServerSettings,
    client: ClientSettings,
    app: Arc<Pool>,
    /// Places among the connections to the app (`limits.max_app_connections`):
    /// each connection holds one while it is open, pooled or not.
    app_slots: Arc<tokio::sync::Semaphore>,
    forward: SocketAddr,
    forward_authority: Authority,
    request_timeout: Duration,
    connect_timeout: Duration,
    idle: Duration,
    max_body: Option<u64>,
    forward_client_cert: bool,
    detect_timeout: Duration,
    escaped_slashes: crate::config::EscapedSlashes,
    app_protocol: AppProtocol,
    /// When we last warned that the app may not speak HTTP/2 (Unix
    /// seconds): once per app per [`H2_WARN_EVERY`], not per request.
    h2_warned_at: AtomicI64,
    access_log: Arc<AccessLog>,
}

const H2_WARN_EVERY: i64 = 600;

impl InboundHttp {
    pub fn new(
        config: &InboundConfig,
        parts: &ListenerParts,
        authz: Arc<ServiceAuthorizer>,
    ) -> Self {
        let http = &parts.http;
        let app = Pool::new(256);
        spawn_sweeper(vec![Arc::downgrade(&app)], http.pool_idle_timeout.0);
        InboundHttp {
            service: config.name.as_str().into(),
            authz,
            metrics: parts.metrics.clone(),
            log_limit: LogLimiter::new(20),
            identity: parts.tls.identity().clone(),
            registry: parts.registry.clone(),
            tasks: parts.tasks.clone(),
            server: ServerSettings::new(http, parts.timeouts.idle.0),
            client: ClientSettings::new(http),
            app,
            app_slots: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_app_connections,
            )),
            forward: config.forward,
            forward_authority: Authority::try_from(config.forward.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("localhost")),
            request_timeout: http.request_timeout.0,
            connect_timeout: parts.timeouts.connect.0,
            idle: parts.timeouts.idle.0,
            max_body: http.max_request_body,
            forward_client_cert: http.forward_client_cert,
            detect_timeout: http.detect_timeout.0,
            escaped_slashes: http.escaped_slashes,
            app_protocol: config.app_protocol,
            h2_warned_at: AtomicI64::new(i64::MIN),
            access_log: parts.access_log.clone(),
        }
    }

    /// A place for one more connection to the app, waiting up to the
    /// connect timeout for one to free up; past it the request is answered
    /// 503 `overloaded` rather than queued without bound.
    async fn app_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, HttpError> {
        let wait = self.app_slots.clone().acquire_owned();
        match tokio::time::timeout(self.connect_timeout, wait).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(listener = %self.service, suppressed, "no connection to the local app free within the connect timeout (limits.max_app_connections)");
                }
                Err(HttpError::Overloaded)
            }
        }
    }

    /// How long `auto` detection waits for a first byte.
    pub fn detect_timeout(&self) -> Duration {
        self.detect_timeout
    }

    /// Whether requests carry `x-forwarded-client-cert`, which needs the
    /// peer's certificate.
    pub fn forwards_client_cert(&self) -> bool {
        self.forward_client_cert
    }

    /// Serves an admitted peer connection as HTTP until it ends.
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        version: HttpVersion,
        from: AdmittedPeer,
        limits: ServeLimits<'_>,
    ) -> ServeEnd
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let AdmittedPeer {
            peer,
            leaf,
            ocsp_certs,
            src,
        } = from;
        let xfcc = match (self.forward_client_cert, &leaf) {
            (true, Some(leaf)) => {
                let ours = self.identity.current().leaf.id.clone();
                headers::xfcc_value(ours.as_str(), leaf, peer.id.as_str())
            }
            _ => None,
        };
        let Ok(peer_header) = HeaderValue::from_str(peer.id.as_str()) else {
            return ServeEnd::Error;
        };
        let seen = SeenRequest::default();
        let conn = Arc::new(PeerConnection {
            http: self.clone(),
            peer,
            ocsp_certs,
            peer_header,
            xfcc,
            src,
            hop: version,
            seen: seen.clone(),
            authz: ConnectionAuthz::default(),
            deadline: limits.deadline,
        });
        let service = hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        serve(&self.server, io, version, service, seen, limits).await
    }
}

/// Who an HTTP connection comes from, as admission found.
pub struct AdmittedPeer {
    pub peer: Arc<PeerIdentity>,
    /// The peer's certificate (DER), when `x-forwarded-client-cert` needs it.
    pub leaf: Option<Vec<u8>>,
    pub ocsp_certs: Option<OcspCerts>,
    pub src: SocketAddr,
}

/// One admitted HTTP connection from a peer sidecar.
struct PeerConnection {
    http: Arc<InboundHttp>,
    peer: Arc<PeerIdentity>,
    /// Kept for the OCSP re-checks of tunnels this connection opens.
    ocsp_certs: Option<OcspCerts>,
    peer_header: HeaderValue,
    xfcc: Option<HeaderValue>,
    src: SocketAddr,
    /// The hop's version: requests without the original-protocol marker
    /// came from an HTTP/2 client and go to the app as HTTP/2.
    hop: HttpVersion,
    seen: SeenRequest,
    /// The rules this peer matches and the last decision's counter, looked
    /// up once, not per request.
    authz: ConnectionAuthz,
    /// The connection's maximum lifetime, which tunnels it opens keep.
    deadline: Option<Instant>,
}

impl PeerConnection {
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
        let (resp, error) = finish(resp, version, &self.http.metrics, start);
        let status = resp.status().as_u16();
        if log {
            self.http().access_log.record(&AccessEntry {
                direction: "inbound",
                service: &self.http.service,
                peer: Some(self.peer.id.as_str()),
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
        // CONNECT names a host, not a path: rules see the authority, which
        // no path rule (they start with '/') can match. `OPTIONS *` asks
        // about the server, not a resource: rules see `*`, which no path
        // rule matches either, and it goes on as it came.
        let connect = req.method() == Method::CONNECT;
        let asterisk = req.method() == Method::OPTIONS && req.uri().path() == "*";
        let authority;
        let mut normal = None;
        let path = if connect {
            authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            authority.as_str()
        } else if asterisk {
            "*"
        } else {
            let n = path::normalize(req.uri().path(), self.http.escaped_slashes).map_err(|e| {
                if let Some(suppressed) = self.http.log_limit.allow() {
                    tracing::info!(listener = %self.http.service, peer = %self.peer.id, error = ?e, path = req.uri().path(), suppressed, "request path refused");
                }
                HttpError::BadRequest
            })?;
            normal.insert(n).judged()
        };
        let request = crate::policy::Request {
            method: req.method().as_str(),
            path,
        };
        if let Err(refusal) =
            self.http
                .authz
                .request(&self.authz, &self.peer.id, self.src, &request)
        {
            return Err(match refusal {
                Refusal::Denied { .. } => HttpError::Forbidden,
                Refusal::RateLimited => HttpError::RateLimited,
            });
        }
        if let Some(path::NormalPath {
            forward: std::borrow::Cow::Owned(p),
            ..
        }) = &normal
        {
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
        let to = match http.app_protocol {
            // Upgrades exist only in HTTP/1.1.
            _ if upgrade => HttpVersion::Http1,
            AppProtocol::Http1 => HttpVersion::Http1,
            AppProtocol::Http2 => HttpVersion::Http2,
            AppProtocol::Auto if marked_h1 || self.hop == HttpVersion::Http1 => HttpVersion::Http1,
            AppProtocol::Auto => HttpVersion::Http2,
        };
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
        let fixed = match to {
            HttpVersion::Http1 => headers::to_h1(&mut req, &http.forward_authority),
            HttpVersion::Http2 => headers::to_h2(&mut req, &http.forward_authority),
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
            r = self.send(req, to) => Ok(r),
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
        version: HttpVersion,
    ) -> Result<Response<ProxyBody>, HttpError> {
        let pool = &self.http().app;
        let (sender, fresh) = match self.pooled(version) {
            Some(s) => (s, false),
            None => (self.connect(version).await?, true),
        };
        let req = match pool.send(sender, req).await {
            Ok(resp) => return Ok(resp),
            Err(SendError::NotSent(req)) => *req,
            Err(SendError::Failed(e)) => return Err(self.failed(&e, version, fresh)),
        };
        let sender = self.connect(version).await?;
        match pool.send(sender, req).await {
            Ok(resp) => Ok(resp),
            Err(SendError::NotSent(_)) => {
                Err(self.failed(&"the app closed a new connection", version, true))
            }
            Err(SendError::Failed(e)) => Err(self.failed(&e, version, true)),
        }
    }

    fn pooled(&self, version: HttpVersion) -> Option<Sender> {
        let pool = &self.http().app;
        match version {
            HttpVersion::Http1 => pool.take_h1(),
            HttpVersion::Http2 => pool.h2(),
        }
    }

    async fn connect(&self, version: HttpVersion) -> Result<Sender, HttpError> {
        let http = self.http();
        let pool = &http.app;
        let _guard = if version == HttpVersion::Http1 {
            None
        } else {
            let g = pool.lock_connect().await;
            if let Some(s) = pool.h2() {
                return Ok(s);
            }
            Some(g)
        };
        let app_slot = http.app_slot().await?;
        let tcp = connect_with_timeout(http.forward, http.connect_timeout)
            .await
            .map_err(|reason| {
                if let Some(suppressed) = http.log_limit.allow() {
                    tracing::warn!(listener = %http.service, forward = %http.forward, reason = reason.as_str(), suppressed, "cannot reach the local app");
                }
                match reason {
                    CloseReason::ConnectTimeout => HttpError::ConnectTimeout,
                    _ => HttpError::ConnectFailed,
                }
            })?;
        let sender = http
            .client
            .handshake(
                tcp,
                version,
                Held {
                    app_slot: Some(app_slot),
                    ..Held::default()
                },
            )
            .await
            .map_err(|e| self.failed(&e, version, true))?;
        if let Sender::H2(s) = &sender {
            pool.set_h2(s);
        }
        Ok(sender)
    }

    /// A request the app failed. On a new HTTP/2 connection that is what
    /// an app speaking only HTTP/1.1 does with our preface, so that case
    /// gets a warning that says what to change (once per app every ten
    /// minutes: one per request would drown the log).
    fn failed(&self, e: &dyn std::fmt::Display, version: HttpVersion, fresh: bool) -> HttpError {
        let http = &self.http;
        if version == HttpVersion::Http2 && fresh && http.app_protocol == AppProtocol::Auto {
            let now = crate::clock::unix_now();
            let last = http.h2_warned_at.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= H2_WARN_EVERY
                && http
                    .h2_warned_at
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(listener = %http.service, forward = %http.forward, error = %e, "the local app broke a new HTTP/2 connection on its first request: if it speaks only HTTP/1.1, set `app_protocol: http1` on this inbound listener");
                return HttpError::UpstreamReset;
            }
        }
        if let Some(suppressed) = http.log_limit.allow() {
            tracing::info!(listener = %http.service, error = %e, suppressed, "the local app failed a request");
        }
        HttpError::UpstreamReset
    }

    /// A WebSocket upgrade or `CONNECT`: on a connection of its own to the
    /// app, then bytes both ways once both sides have switched. The tunnel
    /// is registered with the request that opened it, so the sweep can
    /// judge it again.
    async fn upgrade(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, HttpError> {
        let http = self.http();
        let down = hyper::upgrade::on(&mut req);
        let is_connect = req.method() == Method::CONNECT;
        // What was authorized: the normalized path, or CONNECT's authority.
        let opened_by = TunnelRequest {
            method: req.method().as_str().to_string(),
            path: if is_connect {
                req.uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            } else {
                req.uri().path().to_string()
            },
        };
        let app_slot = http.app_slot().await?;
        let tcp = connect_with_timeout(http.forward, http.connect_timeout)
            .await
            .map_err(|_| HttpError::ConnectFailed)?;
        // The place is kept by the tunnel's task, not the HTTP/1.1
        // connection's: that one ends when the upgrade happens.
        let sender = http
            .client
            .handshake_h1(tcp, Held::default())
            .await
            .map_err(|_| HttpError::UpstreamReset)?;
        let req = req.map(ProxyBody::stream);
        let mut resp = tokio::time::timeout(http.request_timeout, send_once(sender, req))
            .await
            .map_err(|_| HttpError::RequestTimeout)?
            .map_err(|e| self.failed(&e, HttpVersion::Http1, true))?;
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
            || (is_connect && resp.status().is_success());
        if switched {
            let up = hyper::upgrade::on(&mut resp);
            let registration = http.registry.register(ConnInfo {
                kind: ConnKind::InboundTunnel,
                listener: http.service.clone(),
                peer: self.peer.clone(),
                remote: self.src,
                request: Some(Box::new(opened_by)),
                ocsp_certs: self.ocsp_certs.clone(),
            });
            let (http, deadline) = (self.http.clone(), self.deadline);
            self.http.tasks.spawn(async move {
                let _app_slot = app_slot;
                let limits = CopyLimits {
                    idle: http.idle,
                    deadline,
                    stop: registration.stopped(),
                };
                tunnel(down, up, &http.metrics, limits, &http.service).await;
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
