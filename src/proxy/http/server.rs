//! Serving one downstream HTTP connection with hyper, HTTP/1.1 or HTTP/2,
//! under the connection's limits: header size and count, the slowloris
//! guards (a whole request head within `header_read_timeout`, and a first
//! request within it too), the idle timeout, a deadline, a hard stop
//! (policy, revocation) and a graceful one (drain: HTTP/2 GOAWAY, HTTP/1.1
//! `Connection: close` after the request in flight).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::HttpVersion;
use super::body::ProxyBody;
use crate::config::HttpConfig;
use crate::proxy::close::CloseReason;

/// hyper's builders for downstream connections, made once per listener.
#[derive(Clone)]
pub struct ServerSettings {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle: Duration,
}

impl ServerSettings {
    pub fn new(http: &HttpConfig, idle: Duration) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(http.header_read_timeout.0)
            .max_header_size(http.max_header_bytes)
            .max_buf_size(http.max_header_bytes.max(8192) * 2)
            .keep_alive(true);
        // Any explicit value moves hyper's header array to the heap for
        // every request; hyper's own default is 100.
        if http.max_headers != 100 {
            h1.max_headers(http.max_headers);
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(http.max_concurrent_streams)
            .max_header_list_size(http.max_header_bytes as u32)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_frame_size(64 * 1024);
        ServerSettings {
            h1,
            h2,
            header_read_timeout: http.header_read_timeout.0,
            idle,
        }
    }
}

/// How a served connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    Completed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// No complete request head in time (slowloris).
    HeaderTimeout,
    /// Closed from outside (policy, revocation).
    Stopped,
    /// The connection deadline (peer expiry, maximum lifetime) passed.
    Deadline,
    Error,
}

impl ServeEnd {
    /// How this end is counted; `deadline` is what the connection's
    /// deadline meant, `stopped` why it was closed from outside.
    pub fn close_reason(self, deadline: CloseReason, stopped: CloseReason) -> CloseReason {
        match self {
            ServeEnd::Completed => CloseReason::Completed,
            ServeEnd::Idle => CloseReason::IdleTimeout,
            ServeEnd::HeaderTimeout => CloseReason::HeaderTimeout,
            ServeEnd::Error => CloseReason::Error,
            ServeEnd::Deadline => deadline,
            ServeEnd::Stopped => stopped,
        }
    }
}

/// What may end a connection besides its peer.
pub struct ServeLimits<'a> {
    pub stop: &'a CancellationToken,
    /// Whether the stop just given may let the requests in flight finish
    /// (see [`STOP_GRACE`]) rather than cut them.
    pub stop_is_graceful: &'a (dyn Fn() -> bool + Send + Sync),
    pub drain: &'a CancellationToken,
    pub deadline: Option<Instant>,
}

/// How long a graceful stop lets requests in flight finish: no new request
/// is taken once it begins (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`).
/// A CA leaving the bundle mid-rotation closes its peers' connections this
/// way, so a request admitted a moment before is not lost.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// For connections no sweep stops gracefully.
pub fn never_graceful() -> bool {
    false
}

/// Marks that a connection has seen a request; handed to the service.
#[derive(Clone, Default)]
pub struct SeenRequest(Arc<AtomicBool>);

impl SeenRequest {
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Serves `io` as `version` with `service` until the connection ends or a
/// limit ends it.
pub async fn serve<I, S>(
    settings: &ServerSettings,
    io: I,
    version: HttpVersion,
    service: S,
    seen: SeenRequest,
    limits: ServeLimits<'_>,
) -> ServeEnd
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: activity.clone(),
    });
    match version {
        HttpVersion::Http2 => {
            let conn = settings.h2.serve_connection(io, service);
            drive(conn, settings, &activity, &seen, limits).await
        }
        HttpVersion::Http1 => {
            let conn = settings.h1.serve_connection(io, service).with_upgrades();
            drive(conn, settings, &activity, &seen, limits).await
        }
    }
}

/// The two hyper connection types, as far as driving them goes.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = ProxyBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> Graceful for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = ProxyBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

async fn drive<C: Graceful>(
    conn: C,
    settings: &ServerSettings,
    activity: &Activity,
    seen: &SeenRequest,
    limits: ServeLimits<'_>,
) -> ServeEnd {
    let mut conn = std::pin::pin!(conn);
    let first_request_by = Instant::now() + settings.header_read_timeout;
    let mut draining = false;
    let deadline = async {
        match limits.deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let mut deadline = std::pin::pin!(deadline);
    let mut first = std::pin::pin!(tokio::time::sleep_until(first_request_by));
    let mut first_done = false;
    let idle = activity.idle_timer(settings.idle);
    let mut idle = std::pin::pin!(idle);
    let mut stopping = false;
    let grace = tokio::time::sleep(Duration::ZERO);
    let mut grace = std::pin::pin!(grace);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                return match r {
                    // Stopped gracefully: the sweep's reason is what ended it.
                    Ok(()) if stopping => ServeEnd::Stopped,
                    Ok(()) => ServeEnd::Completed,
                    Err(e) if e.is_timeout() => ServeEnd::HeaderTimeout,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                        ServeEnd::Error
                    }
                };
            }
            _ = limits.stop.cancelled(), if !stopping => {
                if !(limits.stop_is_graceful)() {
                    return ServeEnd::Stopped;
                }
                stopping = true;
                grace.as_mut().reset(Instant::now() + STOP_GRACE);
                if !draining {
                    draining = true;
                    conn.as_mut().shut_down();
                }
            }
            _ = &mut grace, if stopping => return ServeEnd::Stopped,
            _ = &mut deadline => return ServeEnd::Deadline,
            _ = &mut idle => return ServeEnd::Idle,
            _ = &mut first, if !first_done => {
                first_done = true;
                // HTTP/1.1 has hyper's own header timer; this also covers
                // an HTTP/2 client that connects and never asks anything.
                if !seen.0.load(Ordering::Relaxed) {
                    return ServeEnd::HeaderTimeout;
                }
            }
            _ = limits.drain.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().shut_down();
            }
        }
    }
}

/// Whether a connection is moving bytes, shared by the stream wrapper and
/// the idle timer. The wrapper only bumps a counter (no clock read per read
/// or write, which a busy connection makes twice per request); the timer
/// looks at it a few times per timeout instead.
struct Activity {
    ops: AtomicU64,
}

/// How many times per idle timeout the timer looks: a connection ends
/// between `idle` and `idle + idle / CHECKS` after its last byte.
const CHECKS: u32 = 4;

impl Activity {
    fn new() -> Self {
        Activity {
            ops: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle` (checked every
    /// `idle / CHECKS`, so never early and at most a check late).
    async fn idle_timer(&self, idle: Duration) {
        let step = (idle / CHECKS).max(Duration::from_millis(1));
        let mut seen = self.ops.load(Ordering::Relaxed);
        let mut quiet = 0;
        let mut tick = tokio::time::interval_at(Instant::now() + step, step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.ops.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet >= CHECKS {
                return;
            }
        }
    }
}

/// A stream that records its activity.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn settings() -> ServerSettings {
        let http = HttpConfig {
            header_read_timeout: crate::config::ConfigDuration(Duration::from_secs(3600)),
            ..HttpConfig::default()
        };
        ServerSettings::new(&http, IDLE)
    }

    /// Serves HTTP/1.1 on one end of an in-memory pipe, answering every
    /// request `200`; returns the other end and how the connection ended,
    /// with when.
    fn start() -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<(ServeEnd, Instant)>,
    ) {
        let (client, server) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(ProxyBody::text("ok")))
            });
            let (stop, drain) = (CancellationToken::new(), CancellationToken::new());
            let limits = ServeLimits {
                stop: &stop,
                stop_is_graceful: &never_graceful,
                drain: &drain,
                deadline: None,
            };
            let end = serve(
                &settings(),
                server,
                HttpVersion::Http1,
                service,
                SeenRequest::default(),
                limits,
            )
            .await;
            (end, Instant::now())
        });
        (client, task)
    }

    async fn request(client: &mut tokio::io::DuplexStream) {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_after_the_idle_timeout_not_before() {
        let (mut client, task) = start();
        request(&mut client).await;
        let last = Instant::now();
        let (end, at) = task.await.unwrap();
        assert_eq!(end, ServeEnd::Idle);
        let quiet = at - last;
        assert!(quiet >= IDLE, "ended {quiet:?} after the last byte");
        assert!(
            quiet <= IDLE + IDLE / CHECKS,
            "ended {quiet:?} after the last byte"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_in_use_is_not_idle() {
        let (mut client, task) = start();
        // A request every 40 s for 5 minutes: never 60 s without a byte.
        for _ in 0..8 {
            request(&mut client).await;
            tokio::time::sleep(Duration::from_secs(40)).await;
            assert!(!task.is_finished(), "a busy connection was ended");
        }
        let last = Instant::now();
        let (end, at) = task.await.unwrap();
        assert_eq!(end, ServeEnd::Idle);
        assert!(at - last >= IDLE - Duration::from_secs(40));
    }
}
