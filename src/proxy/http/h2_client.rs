//! The HTTP/2 client for upstream connections (the mTLS hop to the peer
//! sidecar, and apps that speak HTTP/2), on `h2` directly.
//!
//! hyper's HTTP/2 client hands each request through a channel to the
//! connection's task, which spawns one more task per request to wait for
//! the response and send it back through a oneshot. Here the request's own
//! task opens the stream and awaits the response itself: one task hop and
//! one spawn fewer per request, which was the largest single item in the
//! sidecar's user time under load. A request body that is not complete at
//! once is pumped by a task of its own (as hyper does), honouring the
//! peer's flow control.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, Reason, SendStream};
use hyper::body::Body;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::body::{BoxError, H2Body, ProxyBody};

/// Why a request did not get a response.
pub enum SendError {
    /// The connection was already closed; the request was not sent and may
    /// go out on another connection.
    /// Boxed: the rare path should not make every result large.
    NotSent(Box<Request<ProxyBody>>),
    /// The request was (perhaps partly) sent; it must not be repeated.
    Failed(BoxError),
}

/// Pings on an otherwise quiet connection find peers that went away
/// without a reset (a dead node, a dropped NAT entry).
#[derive(Clone, Copy)]
pub struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// A handle on one HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct H2Sender {
    send: SendRequest<Bytes>,
    /// Set by the connection's task when it ends, so the pool stops
    /// handing out a dead connection.
    closed: Arc<AtomicBool>,
}

impl H2Sender {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `req` and waits for the response head. A connection that is
    /// already closed gives the request back unsent. The caller has
    /// stripped the hop-by-hop headers (both directions do, once per
    /// request), which `h2` would refuse.
    pub async fn send(self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, SendError> {
        let mut send = match self.send.ready().await {
            Ok(s) => s,
            Err(_) => return Err(SendError::NotSent(Box::new(req))),
        };
        let (head, body) = req.into_parts();
        let eos = body.is_end_stream();
        // A bodyless request is kept, to be sent again if the upstream
        // turns it away unprocessed (below). Only then: the copy is a few
        // header clones, and nothing when the request has a body.
        let again = eos.then(|| {
            let mut r = Request::new(ProxyBody::empty());
            *r.method_mut() = head.method.clone();
            *r.uri_mut() = head.uri.clone();
            *r.version_mut() = head.version;
            *r.headers_mut() = head.headers.clone();
            r
        });
        let (response, stream) = send
            .send_request(Request::from_parts(head, ()), eos)
            .map_err(|e| SendError::Failed(e.into()))?;
        if !eos {
            start_pump(body, stream);
        }
        let response = match response.await {
            Ok(r) => r,
            Err(e) => {
                return Err(match again {
                    Some(req) if unprocessed(&e, req.method()) => SendError::NotSent(Box::new(req)),
                    _ => SendError::Failed(e.into()),
                });
            }
        };
        let length = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(response.map(|recv| ProxyBody::stream(H2Body::new(recv, length))))
    }
}

/// Whether the upstream turned a stream away without processing it, so it
/// is safe to send again: refused (RFC 9113 §8.7: "not processed", any
/// method), or cut by a GOAWAY (a sidecar draining, or closing peers of a
/// CA that left its bundle) for a method that may be repeated anyway.
fn unprocessed(e: &h2::Error, method: &hyper::Method) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && method.is_idempotent())
}

/// Starts HTTP/2 over `io`. The connection is driven by its own task until
/// every handle and stream is gone, a keep-alive ping goes unanswered, or
/// `stop` is cancelled (the enforcement sweep closing it); `hold` is kept
/// for as long as it is open.
pub async fn handshake<I, S>(
    builder: &h2::client::Builder,
    io: I,
    keep_alive: KeepAlive,
    hold: S,
    stop: Option<CancellationToken>,
    why: Option<crate::proxy::registry::ReasonHandle>,
) -> Result<H2Sender, h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    let (send, mut conn) = builder.handshake::<_, Bytes>(io).await?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    let ping = conn.ping_pong();
    tokio::spawn(async move {
        // Held for as long as the connection is open (the upstream's
        // connection-limit slot, its registration).
        let _hold = hold;
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            }
            _ = pings(ping, keep_alive) => {
                tracing::debug!("upstream HTTP/2 connection: keep-alive ping unanswered, closing");
            }
            _ = cancelled(stop) => {
                tracing::debug!("upstream HTTP/2 connection closed: no longer admitted");
                // An upstream whose CA left our bundle (a rotation): no new
                // request goes on it, and those in flight get a moment to
                // finish. A revoked one is cut at once.
                if why.and_then(|w| w.reason()) == Some(crate::proxy::CloseReason::Denied) {
                    flag.store(true, Ordering::Release);
                    let _ = tokio::time::timeout(super::server::STOP_GRACE, &mut conn).await;
                }
            }
        }
        flag.store(true, Ordering::Release);
    });
    Ok(H2Sender { send, closed })
}

/// Resolves when `stop` is cancelled; never without one.
pub(super) async fn cancelled(stop: Option<CancellationToken>) {
    match stop {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Returns when a ping goes unanswered for `timeout`.
async fn pings(ping: Option<h2::PingPong>, keep_alive: KeepAlive) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(keep_alive.interval).await;
        match tokio::time::timeout(keep_alive.timeout, ping.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            _ => return,
        }
    }
}

/// Pumps `body` into `stream`; polled once here, since a small body is
/// usually all there and then needs no task.
fn start_pump<B>(body: B, stream: SendStream<Bytes>)
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
{
    let mut pump = Box::pin(pump(body, stream));
    let waker = std::task::Waker::noop();
    if pump
        .as_mut()
        .poll(&mut Context::from_waker(waker))
        .is_pending()
    {
        tokio::spawn(pump);
    }
}

async fn pump<B>(mut body: B, mut tx: SendStream<Bytes>)
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    loop {
        let next = poll_fn(|cx| {
            // A peer that resets the stream (it answered early, or gave up)
            // needs no more of the body.
            if tx.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let frame = match next {
            None => return,
            Some(None) => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body failed; resetting the stream");
                tx.send_reset(Reason::CANCEL);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                }
                return;
            }
        };
        let end = body.is_end_stream();
        if data.is_empty() {
            if end {
                let _ = tx.send_data(data, true);
                return;
            }
            continue;
        }
        while !data.is_empty() {
            tx.reserve_capacity(data.len());
            // Capacity left over from an earlier frame is used as it is:
            // `poll_capacity` only wakes when capacity grows.
            let mut granted = tx.capacity();
            if granted == 0 {
                granted = match poll_fn(|cx| tx.poll_capacity(cx)).await {
                    Some(Ok(n)) => n,
                    _ => return,
                };
            }
            let chunk = data.split_to(granted.min(data.len()));
            if tx.send_data(chunk, end && data.is_empty()).is_err() {
                return;
            }
        }
        if end {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Frame;

    const KEEP_ALIVE: KeepAlive = KeepAlive {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
    };

    /// A client connection to an in-memory HTTP/2 server that answers
    /// pings (its connection is polled) or goes silent after the handshake.
    async fn connect(answers: bool) -> (H2Sender, tokio::task::JoinHandle<()>) {
        let (io, peer) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(peer).await.unwrap();
            if answers {
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let resp = Response::builder().status(204).body(()).unwrap();
                    respond.send_response(resp, true).unwrap();
                }
            } else {
                std::future::pending::<()>().await;
            }
        });
        let builder = h2::client::Builder::new();
        let sender = handshake(&builder, io, KEEP_ALIVE, (), None, None)
            .await
            .unwrap();
        (sender, server)
    }

    /// Request bodies arrive whole through a small flow-control window, in
    /// frames of every size, with trailers.
    #[tokio::test]
    async fn request_bodies_pass_flow_control_in_any_frame_sizes() {
        let (io, peer) = tokio::io::duplex(16 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(1000)
                .handshake::<_, Bytes>(peer)
                .await
                .unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut recv = req.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.unwrap();
                recv.flow_control().release_capacity(chunk.len()).unwrap();
                got.extend_from_slice(&chunk);
            }
            let trailers = recv.trailers().await.unwrap();
            let resp = Response::builder().status(200).body(()).unwrap();
            respond.send_response(resp, true).unwrap();
            (got, trailers)
        });
        let sender = handshake(&h2::client::Builder::new(), io, KEEP_ALIVE, (), None, None)
            .await
            .unwrap();
        let sizes = [1500usize, 10, 3000, 1, 0, 2500, 999];
        let mut want = Vec::new();
        let mut frames = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let chunk: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
            want.extend_from_slice(&chunk);
            frames.push(Frame::data(Bytes::from(chunk)));
        }
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        frames.push(Frame::trailers(trailers));
        let body = Frames {
            frames: frames.into(),
            stall: false,
        };

        let mut send = sender.send.clone().ready().await.unwrap();
        let head = Request::post("http://x/").body(()).unwrap();
        let (response, stream) = send.send_request(head, false).unwrap();
        start_pump(body, stream);
        assert_eq!(response.await.unwrap().status(), 200);
        let (got, trailers) = server.await.unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "body bytes differ");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    /// A body whose frames come one every other poll, so the pump waits
    /// on the body as well as on the window.
    struct Frames {
        frames: std::collections::VecDeque<Frame<Bytes>>,
        stall: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.stall = !self.stall;
            if self.stall {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_answering_pings_is_dropped_and_one_that_answers_is_kept() {
        let (silent, _s1) = connect(false).await;
        let (live, _s2) = connect(true).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            silent.is_closed(),
            "an unanswered ping closes the connection"
        );
        assert!(!live.is_closed());
        let req = Request::get("http://x/").body(ProxyBody::empty()).unwrap();
        let resp = live.clone().send(req).await.ok().unwrap();
        assert_eq!(resp.status(), 204);
        let req = Request::get("http://x/").body(ProxyBody::empty()).unwrap();
        assert!(matches!(silent.send(req).await, Err(SendError::NotSent(_))));
    }
}
