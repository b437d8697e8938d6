//! The one body type the proxy sends, either way: a streamed body from the
//! other side (frame by frame, trailers included, never buffered whole:
//! hyper's, or an HTTP/2 stream of our own client), or a short body
//! portcullis writes itself. An enum, not a boxed trait
//! object, so forwarding a request allocates nothing for its body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::RecvStream;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::upstream::Slot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Called when a streamed body ends cleanly (e.g. to return a pooled
/// HTTP/1 connection, which can take a new request only then).
pub trait OnEnd: Send + Sync {
    fn ended(self: Box<Self>);
}

pub enum ProxyBody {
    /// Bytes portcullis wrote (error pages); `None` once sent.
    Full(Option<Bytes>),
    /// A body streamed from a peer.
    Stream(Streamed),
}

/// Where a streamed body comes from: a connection hyper serves or
/// drives, or a stream of the HTTP/2 client.
pub enum Source {
    Hyper(Incoming),
    H2(H2Body),
}

impl From<Incoming> for Source {
    fn from(b: Incoming) -> Self {
        Source::Hyper(b)
    }
}

impl From<H2Body> for Source {
    fn from(b: H2Body) -> Self {
        Source::H2(b)
    }
}

impl Body for Source {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Source::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Source::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(b) => b.is_end_stream(),
            Source::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Hyper(b) => b.size_hint(),
            Source::H2(b) => b.size_hint(),
        }
    }
}

/// A streamed body with its optional size limit and end hook.
pub struct Streamed {
    inner: Source,
    /// Bytes still allowed, when limited.
    remaining: Option<u64>,
    /// Set when the limit was crossed, so the sender can answer 413.
    exceeded: Option<Arc<AtomicBool>>,
    on_end: Option<Box<dyn OnEnd>>,
    /// An upstream's request slot (`limits.max_requests`), held until the
    /// body ends or is dropped: a streamed answer is a request in flight.
    slot: Option<Slot>,
}

/// Signals when a request body has been sent whole, so the request
/// timeout can start from there (as Envoy's route timeout does): a long
/// upload is not a slow upstream.
pub struct BodySent(pub tokio::sync::oneshot::Sender<()>);

impl OnEnd for BodySent {
    fn ended(self: Box<Self>) {
        let _ = self.0.send(());
    }
}

/// A hook for a request body that reports when it has been sent whole,
/// and the receiver to wait on; nothing when the body is already empty.
pub fn track_sent(
    body: &Incoming,
) -> (
    Option<Box<dyn OnEnd>>,
    Option<tokio::sync::oneshot::Receiver<()>>,
) {
    if body.is_end_stream() {
        return (None, None);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    (Some(Box::new(BodySent(tx))), Some(rx))
}

/// The request timeout: `timeout` from the moment `sent` fires (or from
/// `start` when there is no body to wait for, which saves a clock read per
/// request), or from when it was dropped unfinished.
pub async fn response_deadline(
    sent: Option<tokio::sync::oneshot::Receiver<()>>,
    start: tokio::time::Instant,
    timeout: std::time::Duration,
) {
    match sent {
        Some(rx) => {
            let _ = rx.await;
            tokio::time::sleep(timeout).await;
        }
        None => tokio::time::sleep_until(start + timeout).await,
    }
}

/// A response body read from an HTTP/2 stream; each chunk read gives its
/// window back to the peer.
pub struct H2Body {
    recv: RecvStream,
    /// What `content-length` says is still to come.
    length: Option<u64>,
    data_done: bool,
    done: bool,
}

impl H2Body {
    pub fn new(recv: RecvStream, length: Option<u64>) -> Self {
        let done = recv.is_end_stream();
        H2Body {
            recv,
            length,
            data_done: done,
            done,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = self.length.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => self.data_done = true,
            }
        }
        let trailers = ready!(self.recv.poll_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) if !self.data_done => SizeHint::with_exact(n),
            _ if self.is_end_stream() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds http.max_request_body")]
pub struct TooLarge;

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn text(s: &'static str) -> Self {
        ProxyBody::Full(Some(Bytes::from_static(s.as_bytes())))
    }

    pub fn stream(inner: impl Into<Source>) -> Self {
        ProxyBody::Stream(Streamed {
            inner: inner.into(),
            remaining: None,
            exceeded: None,
            on_end: None,
            slot: None,
        })
    }

    /// A streamed body that fails once more than `limit` bytes pass,
    /// setting `exceeded`.
    pub fn limited(inner: impl Into<Source>, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        ProxyBody::Stream(Streamed {
            inner: inner.into(),
            remaining: Some(limit),
            exceeded: Some(exceeded),
            on_end: None,
            slot: None,
        })
    }

    /// A streamed body with an optional size limit and end hook.
    pub fn streaming(
        inner: impl Into<Source>,
        limit: Option<(u64, Arc<AtomicBool>)>,
        on_end: Option<Box<dyn OnEnd>>,
    ) -> Self {
        let (remaining, exceeded) = match limit {
            Some((n, flag)) => (Some(n), Some(flag)),
            None => (None, None),
        };
        ProxyBody::Stream(Streamed {
            inner: inner.into(),
            remaining,
            exceeded,
            on_end,
            slot: None,
        })
    }

    /// A streamed body that calls `on_end` when it ends cleanly.
    pub fn with_end(inner: impl Into<Source>, on_end: Box<dyn OnEnd>) -> Self {
        ProxyBody::Stream(Streamed {
            inner: inner.into(),
            remaining: None,
            exceeded: None,
            on_end: Some(on_end),
            slot: None,
        })
    }

    /// Keeps `slot` until this body ends or is dropped (a body that is
    /// already over, or one portcullis wrote, lets it go at once).
    pub fn holding(mut self, slot: Slot) -> Self {
        if let ProxyBody::Stream(s) = &mut self
            && !s.inner.is_end_stream()
        {
            s.slot = Some(slot);
        }
        self
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        if self.inner.is_end_stream()
            && let Some(hook) = self.on_end.take()
        {
            hook.ended();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream(s) => {
                let polled = Pin::new(&mut s.inner).poll_frame(cx);
                match polled {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(None) => {
                        if let Some(hook) = s.on_end.take() {
                            hook.ended();
                        }
                        s.slot = None;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Some(Ok(frame))) => {
                        // A body of known length may be dropped right after
                        // its last byte, never polled to its end.
                        if s.inner.is_end_stream() {
                            if let Some(hook) = s.on_end.take() {
                                hook.ended();
                            }
                            s.slot = None;
                        }
                        if let (Some(left), Some(data)) = (s.remaining.as_mut(), frame.data_ref()) {
                            let n = data.len() as u64;
                            if n > *left {
                                if let Some(flag) = &s.exceeded {
                                    flag.store(true, Ordering::Release);
                                }
                                return Poll::Ready(Some(Err(Box::new(TooLarge))));
                            }
                            *left -= n;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            // Reporting the end early lets hyper skip a read, but then the
            // end hook would never run: only claim it when there is none.
            ProxyBody::Stream(s) => s.on_end.is_none() && s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Stream(s) => s.inner.size_hint(),
        }
    }
}
