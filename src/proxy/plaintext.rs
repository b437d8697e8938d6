//! The small plaintext HTTP/1.1 server loop behind the probe listener and
//! the admin server: accept until shutdown, serve each connection with
//! hyper, and survive accept errors.
//!
//! The probe port is reachable from the pod network (kubelet must reach
//! it), and the admin port may be, so neither may be a slowloris target:
//! connections are capped (in total and per client address), a request
//! head (and an idle keep-alive gap) must arrive within a deadline, each
//! request is answered within one, and no request body is ever read:
//! a declared body over the limit is answered 413, and any request with a
//! body closes its connection after the answer, so its unread bytes are
//! never taken for a next request.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounterVec;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::limit::{ClientPlace, Limit, PerClient, Place};
use crate::log_limit::LogLimiter;

/// What one plaintext server lets a client hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections open at once; over it a new one is closed at once.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_per_client: usize,
    /// For a request head, and for the next one on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// From the head to the answer; over it, 503.
    pub request_timeout: Duration,
    /// Request heads larger than this are refused (hyper answers 431).
    pub max_head_bytes: usize,
    /// A declared request body over this is answered 413.
    pub max_body: u64,
}

impl Bounds {
    /// Sized for kubelet probes and Prometheus scrapes, with room to spare.
    pub const DEFAULT: Bounds = Bounds {
        max_connections: 128,
        max_per_client: 32,
        header_read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        max_head_bytes: 16 * 1024,
        max_body: 64 * 1024,
    };
}

/// Counted refusals of one server (`portcullis_plaintext_refused_total`).
#[derive(Clone)]
pub struct Refusals {
    family: IntCounterVec,
    server: &'static str,
}

impl Refusals {
    pub fn new(family: IntCounterVec, server: &'static str) -> Self {
        // Every label set exists from the start, so rates work at once.
        for reason in Refusal::ALL {
            family.with_label_values(&[server, reason.as_str()]);
        }
        Refusals { family, server }
    }

    fn count(&self, why: Refusal) {
        self.family
            .with_label_values(&[self.server, why.as_str()])
            .inc();
    }
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    MaxConnections,
    MaxPerClient,
    HeaderTimeout,
    RequestTimeout,
    BodyTooLarge,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::MaxConnections,
        Refusal::MaxPerClient,
        Refusal::HeaderTimeout,
        Refusal::RequestTimeout,
        Refusal::BodyTooLarge,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxPerClient => "max_per_client",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::BodyTooLarge => "body_too_large",
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` fires, within `bounds`.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    what: &'static str,
    bounds: Bounds,
    refusals: Refusals,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let open = Limit::new(bounds.max_connections);
    let per_client = PerClient::new();
    let log_limit = Arc::new(LogLimiter::new(10));
    loop {
        let (stream, src) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(server = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(place) = open.try_take() else {
            refused(
                &refusals,
                Refusal::MaxConnections,
                what,
                src.ip(),
                &log_limit,
            );
            continue;
        };
        // Taken here, in accept order, not in the connection's task.
        let Some(client) = per_client.try_take(src.ip(), bounds.max_per_client) else {
            refused(&refusals, Refusal::MaxPerClient, what, src.ip(), &log_limit);
            continue;
        };
        let handler = handler.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let _held: (Place, ClientPlace) = (place, client);
            let counted = refusals.clone();
            let service = hyper::service::service_fn(move |req| {
                let (handler, refusals) = (handler.clone(), counted.clone());
                async move { Ok::<_, Infallible>(bounded(req, handler, bounds, &refusals).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read_timeout)
                .max_buf_size(bounds.max_head_bytes.max(8192));
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                if e.is_timeout() {
                    refusals.count(Refusal::HeaderTimeout);
                }
                tracing::debug!(server = what, error = %e, "connection error");
            }
        });
    }
}

/// One request within the body limit and the request timeout.
async fn bounded<H, Fut>(
    req: Request<Incoming>,
    handler: H,
    bounds: Bounds,
    refusals: &Refusals,
) -> Response<Full<Bytes>>
where
    H: Fn(Request<Incoming>) -> Fut,
    Fut: Future<Output = Response<Full<Bytes>>>,
{
    let body = req.body().size_hint();
    let has_body = body.upper() != Some(0);
    if body.lower() > bounds.max_body {
        refusals.count(Refusal::BodyTooLarge);
        return closing(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        ));
    }
    let answer = match tokio::time::timeout(bounds.request_timeout, handler(req)).await {
        Ok(r) => r,
        Err(_) => {
            refusals.count(Refusal::RequestTimeout);
            return closing(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "request timed out\n",
            ));
        }
    };
    // Handlers never read a body; closing keeps its bytes from being
    // parsed as the next request.
    if has_body { closing(answer) } else { answer }
}

fn refused(refusals: &Refusals, why: Refusal, what: &str, ip: IpAddr, log_limit: &LogLimiter) {
    refusals.count(why);
    if let Some(suppressed) = log_limit.allow() {
        tracing::warn!(server = what, client = %ip, limit = why.as_str(), suppressed, "connection refused: limit reached");
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn closing(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}
