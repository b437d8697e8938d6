//! Copying bytes both ways between two streams, the L4 data path.
//!
//! One future drives both directions (no task or lock per direction),
//! counts bytes into the listener's counters as they move, propagates a
//! half-close (EOF on one side becomes a shutdown of the other side's write
//! half, a TLS close_notify on TLS streams), and ends the connection when
//! no byte has moved either way for the idle timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::identity::SpiffeId;

/// Four TLS records' worth: a bulk transfer moves 64 KiB per read and
/// rustls seals it into four records sent with one `writev`, a quarter of
/// the syscalls of one record at a time. Idle connections hold none (see
/// [`POOL_MAX`]), so the size costs nothing at rest.
const BUF_SIZE: usize = 64 * 1024;

/// Buffers a thread keeps for reuse. A direction holds a buffer only while
/// bytes flow and hands it back here when its reader runs dry, so an idle
/// connection holds none: 10,000 idle connections cost no copy buffers,
/// and a busy one takes and returns the same buffer without malloc.
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    if buf.len() != BUF_SIZE {
        return;
    }
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

/// How a bidirectional copy ended.
#[derive(Debug)]
pub enum CopyEnd {
    /// Both directions reached EOF and were shut down.
    Completed,
    IdleTimeout,
    /// Closed from outside (policy change, revocation): see the registry.
    Stopped,
    /// The connection reached its deadline (peer certificate expiry or
    /// maximum lifetime).
    Deadline,
    Error(io::Error),
}

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub to_upstream: u64,
    pub to_downstream: u64,
}

/// Counters a copy adds to as bytes move.
pub struct CopyCounters<'a> {
    pub to_upstream: &'a IntCounter,
    pub to_downstream: &'a IntCounter,
}

/// When a copy must end besides both sides finishing.
pub struct CopyLimits<'a> {
    /// End when nothing moves either way for this long.
    pub idle: Duration,
    /// End at this instant, whatever is happening.
    pub deadline: Option<Instant>,
    /// End when cancelled from outside.
    pub stop: &'a CancellationToken,
}

/// Copies `downstream` ↔ `upstream` until both directions finish, an error
/// occurs, or one of `limits` is reached.
pub async fn copy_bidirectional<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    counters: CopyCounters<'_>,
    limits: CopyLimits<'_>,
) -> (CopyEnd, CopyStats)
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut transfer = Transfer {
        downstream,
        upstream,
        up: Half::new(counters.to_upstream),
        down: Half::new(counters.to_downstream),
        last_activity: Instant::now(),
    };
    let idle = limits.idle;
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    let stopped = limits.stop.cancelled();
    tokio::pin!(stopped);
    let mut deadline = limits
        .deadline
        .map(|d| Box::pin(tokio::time::sleep_until(d)));
    let end = std::future::poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(CopyEnd::Stopped);
        }
        if let Some(d) = deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(CopyEnd::Deadline);
        }
        if let Poll::Ready(result) = Pin::new(&mut transfer).poll(cx) {
            return Poll::Ready(match result {
                Ok(()) => CopyEnd::Completed,
                Err(e) => CopyEnd::Error(e),
            });
        }
        // The timer is only re-armed when it fires, not on every read, so
        // activity costs one clock read instead of a timer-wheel update.
        while sleep.as_mut().poll(cx).is_ready() {
            let deadline = transfer.last_activity + idle;
            if deadline <= Instant::now() {
                return Poll::Ready(CopyEnd::IdleTimeout);
            }
            sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;
    let stats = CopyStats {
        to_upstream: transfer.up.total,
        to_downstream: transfer.down.total,
    };
    (end, stats)
}

struct Transfer<'a, D: ?Sized, U: ?Sized> {
    downstream: &'a mut D,
    upstream: &'a mut U,
    up: Half<'a>,
    down: Half<'a>,
    last_activity: Instant,
}

impl<D, U> Future for Transfer<'_, D, U>
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut moved = false;
        let up = this
            .up
            .poll_copy(cx, &mut *this.downstream, &mut *this.upstream, &mut moved)?;
        let down =
            this.down
                .poll_copy(cx, &mut *this.upstream, &mut *this.downstream, &mut moved)?;
        if moved {
            this.last_activity = Instant::now();
        }
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// One direction: read into a buffer, write it all out, repeat; on EOF,
/// flush and shut the writer down.
struct Half<'a> {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    total: u64,
    counter: &'a IntCounter,
}

impl Drop for Half<'_> {
    fn drop(&mut self) {
        give_buf(std::mem::take(&mut self.buf));
    }
}

impl<'a> Half<'a> {
    fn new(counter: &'a IntCounter) -> Self {
        Half {
            buf: Box::new([]),
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            done: false,
            total: 0,
            counter,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.read_done {
                if self.buf.is_empty() {
                    self.buf = take_buf();
                }
                let mut rb = ReadBuf::new(&mut self.buf[..]);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        // Everything read has been written: the buffer
                        // goes back to the pool until bytes come again.
                        give_buf(std::mem::take(&mut self.buf));
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            self.total += n as u64;
                            self.counter.inc_by(n as u64);
                            *moved = true;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
                *moved = true;
            }
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                give_buf(std::mem::take(&mut self.buf));
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Logs how a copy ended, at the level its end deserves.
pub fn log_copy_end(
    listener: &str,
    direction: &str,
    end: &CopyEnd,
    stats: CopyStats,
    peer: Option<&SpiffeId>,
) {
    let peer = peer.map(|p| p.as_str()).unwrap_or("");
    match end {
        CopyEnd::Error(e) => {
            tracing::debug!(%listener, direction, peer, error = %e, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection ended with an error")
        }
        CopyEnd::IdleTimeout => {
            tracing::debug!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection idle, closed")
        }
        CopyEnd::Deadline => {
            tracing::info!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection closed: peer certificate expired or maximum lifetime reached")
        }
        CopyEnd::Stopped => {
            tracing::info!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection closed: no longer allowed")
        }
        CopyEnd::Completed => {
            tracing::debug!(%listener, direction, peer, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "connection closed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(idle: Duration, stop: &CancellationToken) -> CopyLimits<'_> {
        CopyLimits {
            idle,
            deadline: None,
            stop,
        }
    }

    fn counters() -> (IntCounter, IntCounter) {
        (
            IntCounter::new("up", "up").unwrap(),
            IntCounter::new("down", "down").unwrap(),
        )
    }

    #[tokio::test]
    async fn idle_direction_holds_no_buffer() {
        let counter = IntCounter::new("t", "t").unwrap();
        let mut half = Half::new(&counter);
        let (mut app, mut reader) = tokio::io::duplex(64 * 1024);
        let (mut writer, mut peer) = tokio::io::duplex(64 * 1024);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut moved = false;
        // Nothing to read yet: no buffer is kept while waiting.
        assert!(
            half.poll_copy(&mut cx, &mut reader, &mut writer, &mut moved)
                .is_pending()
        );
        assert!(half.buf.is_empty());
        app.write_all(b"hello").await.unwrap();
        assert!(
            half.poll_copy(&mut cx, &mut reader, &mut writer, &mut moved)
                .is_pending()
        );
        assert!(moved);
        assert!(
            half.buf.is_empty(),
            "the buffer went back once the reader ran dry"
        );
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // The same buffer serves the next burst, from this thread's pool.
        let pooled = POOL.with(|p| p.borrow().len());
        assert!(pooled >= 1);
        app.write_all(b"again").await.unwrap();
        assert!(
            half.poll_copy(&mut cx, &mut reader, &mut writer, &mut moved)
                .is_pending()
        );
        assert_eq!(POOL.with(|p| p.borrow().len()), pooled);
    }

    #[tokio::test]
    async fn copies_both_ways_and_propagates_half_close() {
        let (mut client, mut proxy_down) = tokio::io::duplex(1024);
        let (mut proxy_up, mut server) = tokio::io::duplex(1024);
        let (up, down) = counters();
        let proxy = tokio::spawn(async move {
            copy_bidirectional(
                &mut proxy_down,
                &mut proxy_up,
                CopyCounters {
                    to_upstream: &up,
                    to_downstream: &down,
                },
                limits(Duration::from_secs(30), &CancellationToken::new()),
            )
            .await
        });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        // The server can still answer after the client half-closed.
        server.write_all(b"pong!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        let (end, stats) = proxy.await.unwrap();
        assert!(matches!(end, CopyEnd::Completed), "{end:?}");
        assert_eq!(
            stats,
            CopyStats {
                to_upstream: 4,
                to_downstream: 5
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_end() {
        let (_client, mut proxy_down) = tokio::io::duplex(64);
        let (mut proxy_up, _server) = tokio::io::duplex(64);
        let (up, down) = counters();
        let (end, _) = copy_bidirectional(
            &mut proxy_down,
            &mut proxy_up,
            CopyCounters {
                to_upstream: &up,
                to_downstream: &down,
            },
            limits(Duration::from_secs(5), &CancellationToken::new()),
        )
        .await;
        assert!(matches!(end, CopyEnd::IdleTimeout), "{end:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_the_idle_timeout() {
        let (mut client, mut proxy_down) = tokio::io::duplex(64);
        let (mut proxy_up, mut server) = tokio::io::duplex(64);
        let (up, down) = counters();
        let proxy = tokio::spawn(async move {
            copy_bidirectional(
                &mut proxy_down,
                &mut proxy_up,
                CopyCounters {
                    to_upstream: &up,
                    to_downstream: &down,
                },
                limits(Duration::from_secs(5), &CancellationToken::new()),
            )
            .await
        });
        let mut b = [0u8; 1];
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut b).await.unwrap();
        }
        assert!(
            !proxy.is_finished(),
            "12 s of traffic every 3 s must not idle out"
        );
        let (end, stats) = proxy.await.unwrap();
        assert!(matches!(end, CopyEnd::IdleTimeout));
        assert_eq!(stats.to_upstream, 4);
    }

    #[tokio::test]
    async fn a_cancelled_token_stops_the_copy() {
        let (_client, mut proxy_down) = tokio::io::duplex(64);
        let (mut proxy_up, _server) = tokio::io::duplex(64);
        let (up, down) = counters();
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move { stopper.cancel() });
        let (end, _) = copy_bidirectional(
            &mut proxy_down,
            &mut proxy_up,
            CopyCounters {
                to_upstream: &up,
                to_downstream: &down,
            },
            limits(Duration::from_secs(3600), &stop),
        )
        .await;
        assert!(matches!(end, CopyEnd::Stopped), "{end:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_ends_a_busy_connection() {
        let (mut client, mut proxy_down) = tokio::io::duplex(64);
        let (mut proxy_up, mut server) = tokio::io::duplex(64);
        let (up, down) = counters();
        let proxy = tokio::spawn(async move {
            let stop = CancellationToken::new();
            copy_bidirectional(
                &mut proxy_down,
                &mut proxy_up,
                CopyCounters {
                    to_upstream: &up,
                    to_downstream: &down,
                },
                CopyLimits {
                    idle: Duration::from_secs(3600),
                    deadline: Some(Instant::now() + Duration::from_secs(10)),
                    stop: &stop,
                },
            )
            .await
        });
        let mut b = [0u8; 1];
        // Busy all along: only the deadline can end it.
        while !proxy.is_finished() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if client.write_all(b"x").await.is_err() || server.read_exact(&mut b).await.is_err() {
                break;
            }
        }
        let (end, _) = proxy.await.unwrap();
        assert!(matches!(end, CopyEnd::Deadline), "{end:?}");
    }
}
