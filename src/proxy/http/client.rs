//! Upstream HTTP connections and their pool, for both directions: to the
//! peer sidecar (the mTLS hop) and to the local app.
//!
//! An HTTP/2 upstream gets one shared connection that every request
//! multiplexes over (as Linkerd does); an HTTP/1.1 upstream gets a stack of
//! idle keep-alive connections, one request at a time each. A connection
//! goes back to the stack only when its response body has ended, since
//! HTTP/1.1 can take the next request only then.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::HttpVersion;
use super::body::{BoxError, OnEnd, ProxyBody};
use super::h2_client::{self, H2Sender, KeepAlive, SendError};
use crate::config::HttpConfig;
use crate::proxy::registry::Registration;
use crate::upstream::Slot;
use tokio_util::sync::CancellationToken;

/// A connection ready to take a request.
pub enum Sender {
    H2(H2Sender),
    H1(http1::SendRequest<ProxyBody>),
}

/// What an upstream connection keeps for as long as it is open: its slot in
/// the upstream's connection limit, its registration with the sweep, and
/// the token through which the sweep closes it.
#[derive(Default)]
pub struct Held {
    pub slot: Option<Slot>,
    pub registration: Option<Registration>,
    pub stop: Option<CancellationToken>,
    /// Inbound: the connection's place among the listener's connections
    /// to the local app.
    pub app_slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Held {
    /// A connection registered with the sweep, closed when it says so.
    pub fn registered(slot: Option<Slot>, registration: Registration) -> Self {
        Held {
            slot,
            stop: Some(registration.stopped().clone()),
            registration: Some(registration),
            app_slot: None,
        }
    }
}

/// Builders for upstream connections, made once per listener.
#[derive(Clone)]
pub struct ClientSettings {
    h1: http1::Builder,
    h2: h2::client::Builder,
    keep_alive: KeepAlive,
}

impl ClientSettings {
    pub fn new(http: &HttpConfig) -> Self {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(http.max_header_bytes.max(8192) * 2);
        let mut h2 = h2::client::Builder::new();
        h2
            // Large windows let one busy stream use the link instead of
            // waiting on WINDOW_UPDATEs; bounded, so memory stays flat.
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_frame_size(64 * 1024)
            .max_send_buffer_size(1 << 20)
            // Until the peer's SETTINGS say otherwise (as hyper does).
            .initial_max_send_streams(100)
            .max_header_list_size(http.max_header_bytes as u32)
            .enable_push(false);
        ClientSettings {
            h1,
            h2,
            // Dead peers that never reset the connection are found by
            // pings instead of by hanging requests.
            keep_alive: KeepAlive {
                interval: Duration::from_secs(20),
                timeout: Duration::from_secs(10),
            },
        }
    }

    /// Starts `version` over `io`; the connection is driven by its own
    /// task until every sender is gone, or the sweep closes it.
    pub async fn handshake<I>(
        &self,
        io: I,
        version: HttpVersion,
        held: Held,
    ) -> Result<Sender, BoxError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match version {
            HttpVersion::Http2 => {
                let stop = held.stop.clone();
                let why = held.registration.as_ref().map(|r| r.reason_handle());
                let sender =
                    h2_client::handshake(&self.h2, io, self.keep_alive, held, stop, why).await?;
                Ok(Sender::H2(sender))
            }
            HttpVersion::Http1 => Ok(Sender::H1(self.handshake_h1(io, held).await?)),
        }
    }

    /// Starts HTTP/1.1 over `io` (also for upgrades, which HTTP/1.1 hops
    /// carry).
    pub async fn handshake_h1<I>(
        &self,
        io: I,
        held: Held,
    ) -> Result<http1::SendRequest<ProxyBody>, hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = self.h1.handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let stop = held.stop.clone();
            let _held = held;
            tokio::select! {
                r = conn.with_upgrades() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                    }
                }
                _ = h2_client::cancelled(stop) => {
                    tracing::debug!("upstream HTTP/1.1 connection closed: no longer admitted");
                }
            }
        });
        Ok(sender)
    }
}

const UNKNOWN: u8 = 0;
const H2: u8 = 1;
const H1: u8 = 2;

/// The connections to one upstream address.
pub struct Pool {
    h2: ArcSwapOption<H2Sender>,
    /// Held while a new HTTP/2 connection is made, so a burst of requests
    /// opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// Idle HTTP/1.1 connections, each with the sweep it went idle in.
    idle_h1: Mutex<Vec<(http1::SendRequest<ProxyBody>, u64)>>,
    /// What the upstream answered by ALPN: unknown until the first
    /// connection, then h2 or http/1.1.
    learned: AtomicU8,
    /// Idle time is counted in sweeps, not read from the clock on every
    /// request: the sweeper bumps this every half `max_idle_time`.
    sweeps: AtomicU64,
    /// The sweep the shared connection was last used in.
    h2_used: AtomicU64,
    max_idle: usize,
}

impl Pool {
    pub fn new(max_idle: usize) -> Arc<Self> {
        Arc::new(Pool {
            h2: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            idle_h1: Mutex::new(Vec::new()),
            learned: AtomicU8::new(UNKNOWN),
            sweeps: AtomicU64::new(0),
            h2_used: AtomicU64::new(0),
            max_idle,
        })
    }

    /// Whether the upstream is known to speak only HTTP/1.1.
    pub fn is_h1_only(&self) -> bool {
        self.learned.load(Ordering::Relaxed) == H1
    }

    pub fn learn(&self, version: HttpVersion) {
        let v = match version {
            HttpVersion::Http2 => H2,
            HttpVersion::Http1 => H1,
        };
        self.learned.store(v, Ordering::Relaxed);
    }

    /// The shared HTTP/2 connection, if it is open.
    pub fn h2(&self) -> Option<Sender> {
        let guard = self.h2.load();
        let s = guard.as_ref()?;
        if s.is_closed() {
            return None;
        }
        self.touch();
        Some(Sender::H2((**s).clone()))
    }

    /// Serializes making the shared HTTP/2 connection; re-check [`Pool::h2`]
    /// after taking it.
    pub async fn lock_connect(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.connecting.lock().await
    }

    pub fn set_h2(&self, s: &H2Sender) {
        self.touch();
        self.h2.store(Some(Arc::new(s.clone())));
    }

    /// Forgets the shared connection if it is still `closed` one.
    pub fn drop_h2(&self) {
        self.h2.store(None);
    }

    /// An idle HTTP/1.1 connection, if one is open.
    pub fn take_h1(&self) -> Option<Sender> {
        let mut idle = self.idle_h1.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((s, _)) = idle.pop() {
            if !s.is_closed() {
                return Some(Sender::H1(s));
            }
        }
        None
    }

    fn put_h1(&self, s: http1::SendRequest<ProxyBody>) {
        let mut idle = self.idle_h1.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((s, self.sweeps.load(Ordering::Relaxed)));
        }
    }

    fn touch(&self) {
        let now = self.sweeps.load(Ordering::Relaxed);
        self.h2_used.store(now, Ordering::Relaxed);
    }

    /// Closes what has been unused for `max_idle_time`, given that sweeps
    /// come every half of it: three sweeps after the one a connection was
    /// last used in, it has been idle for at least `max_idle_time` (and at
    /// most half as long again).
    fn sweep(&self) {
        const IDLE_SWEEPS: u64 = 3;
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        self.idle_h1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(s, since)| !s.is_closed() && now.saturating_sub(*since) < IDLE_SWEEPS);
        let last = self.h2_used.load(Ordering::Relaxed);
        if self.h2.load().is_some() && now.saturating_sub(last) >= IDLE_SWEEPS {
            // Open streams keep the connection until they end; it closes
            // once the last handle and stream are gone.
            self.h2.store(None);
        }
    }

    /// Sends `req` on `sender`. An HTTP/1.1 connection goes back to this
    /// pool once the response body ends.
    pub async fn send(
        self: &Arc<Self>,
        sender: Sender,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, SendError> {
        match sender {
            Sender::H2(s) => match s.send(req).await {
                Err(SendError::NotSent(req)) => {
                    self.drop_h2();
                    Err(SendError::NotSent(req))
                }
                r => r,
            },
            Sender::H1(mut s) => {
                if s.ready().await.is_err() {
                    return Err(SendError::NotSent(Box::new(req)));
                }
                match s.try_send_request(req).await {
                    Ok(resp) => {
                        let back = Box::new(ReturnH1 {
                            sender: s,
                            pool: Arc::downgrade(self),
                        });
                        Ok(resp.map(|b| ProxyBody::with_end(b, back)))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(req) => Err(SendError::NotSent(Box::new(req))),
                        None => Err(SendError::Failed(e.into_error().into())),
                    },
                }
            }
        }
    }
}

/// Sends a request on a connection used once (upgrades), without pooling.
pub async fn send_once(
    mut sender: http1::SendRequest<ProxyBody>,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(req).await
}

struct ReturnH1 {
    sender: http1::SendRequest<ProxyBody>,
    pool: Weak<Pool>,
}

impl OnEnd for ReturnH1 {
    fn ended(self: Box<Self>) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put_h1(self.sender);
        }
    }
}

/// Sweeps `pools` every half `max_idle_time` until they are all dropped.
pub fn spawn_sweeper(pools: Vec<Weak<Pool>>, max_idle_time: Duration) {
    let every = (max_idle_time / 2).max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut alive = false;
            for p in pools.iter().filter_map(Weak::upgrade) {
                alive = true;
                p.sweep();
            }
            if !alive {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_h1(pool: &Pool) -> usize {
        pool.idle_h1.lock().unwrap().len()
    }

    #[tokio::test]
    async fn idle_connections_close_after_three_sweeps_unused_and_dead_ones_are_not_handed_out() {
        let settings = ClientSettings::new(&HttpConfig::default());
        let pool = Pool::new(8);

        let (h1_io, _h1_peer) = tokio::io::duplex(1024);
        pool.put_h1(settings.handshake_h1(h1_io, Held::default()).await.unwrap());
        pool.sweep();
        pool.sweep();
        assert_eq!(idle_h1(&pool), 1, "idle for less than max_idle_time");
        pool.sweep();
        assert_eq!(idle_h1(&pool), 0, "idle for max_idle_time");

        let (h2_io, h2_peer) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(h2_peer).await.unwrap();
            while conn.accept().await.is_some() {}
        });
        let sender = h2_client::handshake(&settings.h2, h2_io, settings.keep_alive, (), None, None)
            .await
            .unwrap();
        pool.set_h2(&sender);
        drop(sender);
        pool.sweep();
        pool.sweep();
        assert!(pool.h2().is_some(), "a use counts as activity");
        pool.sweep();
        pool.sweep();
        assert!(pool.h2.load().is_some(), "two sweeps after its last use");
        pool.sweep();
        assert!(pool.h2.load().is_none(), "three sweeps after its last use");

        // A connection whose peer went away is not handed out.
        let (h2_io, h2_peer) = tokio::io::duplex(64 * 1024);
        let sender = h2_client::handshake(&settings.h2, h2_io, settings.keep_alive, (), None, None)
            .await
            .unwrap();
        pool.set_h2(&sender);
        drop(h2_peer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pool.h2().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "closed connection still handed out"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.abort();
    }
}
