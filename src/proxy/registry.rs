//! The registry of every live connection that has a verified peer: a
//! peer's L4 and HTTP connections to the local app, tunnels opened by an
//! upgrade or `CONNECT` (either way), the local app's L4 connections to
//! upstreams, and pooled HTTP connections to upstream sidecars. Each is
//! registered with the identity and certificate its peer verified and a
//! handle to close it. The control plane's enforcement sweep walks them
//! all when a policy, a CRL, an OCSP answer, the trust bundles or the
//! clock changes what is admitted, and closes what no longer is.
//!
//! Registering costs one short lock per connection, never per byte.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::admission::PeerIdentity;
use super::close::CloseReason;

/// What a registered connection is; the sweep's rules differ by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// A peer's L4 connection to the local app: authorized as a whole.
    InboundTcp,
    /// A peer's HTTP connection: each request is authorized on its own.
    InboundHttp,
    /// A WebSocket or `CONNECT` tunnel a peer opened with an authorized
    /// request.
    InboundTunnel,
    /// The local app's L4 connection to an upstream.
    OutboundTcp,
    /// A tunnel the local app opened to an upstream.
    OutboundTunnel,
    /// A pooled HTTP/1.1 or HTTP/2 connection to an upstream sidecar.
    UpstreamPooled,
}

impl ConnKind {
    /// Whether the peer is the upstream (a TLS server we connected to)
    /// rather than a client that connected to us.
    pub fn peer_is_server(self) -> bool {
        matches!(
            self,
            ConnKind::OutboundTcp | ConnKind::OutboundTunnel | ConnKind::UpstreamPooled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConnKind::InboundTcp => "inbound_tcp",
            ConnKind::InboundHttp => "inbound_http",
            ConnKind::InboundTunnel => "inbound_tunnel",
            ConnKind::OutboundTcp => "outbound_tcp",
            ConnKind::OutboundTunnel => "outbound_tunnel",
            ConnKind::UpstreamPooled => "upstream_pooled",
        }
    }
}

/// The request that opened a tunnel, judged again when the policy changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    pub method: String,
    /// The normalized path (or, for `CONNECT`, the authority) that was
    /// authorized.
    pub path: String,
}

/// What the registry knows of one connection, as its task registers it.
pub struct ConnInfo {
    pub kind: ConnKind,
    /// The inbound service or the outbound listener it belongs to.
    pub listener: Arc<str>,
    /// Who the peer proved to be, with its certificate's issuer, serial
    /// and expiry.
    pub peer: Arc<PeerIdentity>,
    /// The far end: the peer's address inbound, the endpoint's outbound.
    pub remote: SocketAddr,
    /// For inbound tunnels: the request that opened it.
    pub request: Option<Box<TunnelRequest>>,
    /// The peer's leaf and issuer certificates (DER), kept only when OCSP
    /// re-checks open connections.
    pub ocsp_certs: Option<Arc<(Vec<u8>, Vec<u8>)>>,
}

/// The handle a connection's task watches.
struct ConnControl {
    token: CancellationToken,
    /// The [`CloseReason`] it was stopped for, as its index (0: none).
    reason: AtomicU8,
}

#[derive(Default)]
pub struct ConnRegistry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, (ConnInfo, Arc<ConnControl>)>>,
    /// The earliest notAfter among registered peers (Unix seconds), or
    /// `i64::MAX`: when the expiry sweep must run next. It may be earlier
    /// than any connection still open (closing does not raise it); a sweep
    /// recomputes it.
    earliest_expiry: AtomicI64Max,
    /// Woken when a registration lowers `earliest_expiry`.
    expiry_moved: Notify,
}

/// An `AtomicI64` that starts at `i64::MAX`.
struct AtomicI64Max(AtomicI64);

impl Default for AtomicI64Max {
    fn default() -> Self {
        AtomicI64Max(AtomicI64::new(i64::MAX))
    }
}

/// Keeps a connection registered until dropped.
pub struct Registration {
    registry: Arc<ConnRegistry>,
    id: u64,
    control: Arc<ConnControl>,
}

impl Registration {
    /// Cancelled when the sweep closes the connection.
    pub fn stopped(&self) -> &CancellationToken {
        &self.control.token
    }

    /// Why the sweep closed the connection, once it has.
    pub fn reason(&self) -> Option<CloseReason> {
        reason_of(&self.control)
    }

    /// The same answer, for a task that does not hold the registration.
    pub fn reason_handle(&self) -> ReasonHandle {
        ReasonHandle(self.control.clone())
    }
}

/// Why the sweep closed a connection, readable apart from its
/// [`Registration`].
#[derive(Clone)]
pub struct ReasonHandle(Arc<ConnControl>);

impl ReasonHandle {
    pub fn reason(&self) -> Option<CloseReason> {
        reason_of(&self.0)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

fn reason_of(control: &ConnControl) -> Option<CloseReason> {
    match control.reason.load(Ordering::Acquire) {
        0 => None,
        n => CloseReason::ALL.get(usize::from(n) - 1).copied(),
    }
}

impl ConnRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (ConnInfo, Arc<ConnControl>)>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; it stays registered until the returned
    /// handle is dropped.
    pub fn register(self: &Arc<Self>, conn: ConnInfo) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(ConnControl {
            token: CancellationToken::new(),
            reason: AtomicU8::new(0),
        });
        let not_after = conn.peer.not_after;
        self.lock().insert(id, (conn, control.clone()));
        if not_after
            < self
                .earliest_expiry
                .0
                .fetch_min(not_after, Ordering::AcqRel)
        {
            self.expiry_moved.notify_one();
        }
        Registration {
            registry: self.clone(),
            id,
            control,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many registered connections are of `kind`.
    pub fn count(&self, kind: ConnKind) -> usize {
        self.lock().values().filter(|(c, _)| c.kind == kind).count()
    }

    /// The distinct peer certificates kept for OCSP re-checks.
    pub fn ocsp_certs(&self) -> Vec<Arc<(Vec<u8>, Vec<u8>)>> {
        let conns = self.lock();
        let mut seen: HashSet<&[u8]> = HashSet::new();
        conns
            .values()
            .filter_map(|(c, _)| c.ocsp_certs.as_ref())
            .filter(|certs| seen.insert(certs.0.as_slice()))
            .cloned()
            .collect()
    }

    /// Every distinct registered peer (by its certificate), with whether
    /// it is a server to us: what a trust change must verify again. One
    /// pass; the caller verifies outside the lock.
    pub fn peers(&self) -> Vec<(Arc<PeerIdentity>, bool)> {
        let conns = self.lock();
        let mut seen: HashSet<(&[u8], bool)> = HashSet::new();
        conns
            .values()
            .filter(|(c, _)| {
                let leaf = c.peer.chain.first().map_or(&[][..], |l| l.as_ref());
                seen.insert((leaf, c.kind.peer_is_server()))
            })
            .map(|(c, _)| (c.peer.clone(), c.kind.peer_is_server()))
            .collect()
    }

    /// The earliest notAfter of a registered peer, Unix seconds
    /// (`i64::MAX`: none).
    pub fn earliest_expiry(&self) -> i64 {
        self.earliest_expiry.0.load(Ordering::Acquire)
    }

    /// Resolves when a new registration's peer expires sooner than any
    /// before it.
    pub async fn expiry_moved(&self) {
        self.expiry_moved.notified().await
    }

    /// Asks `judge` about every open connection; each one it gives a
    /// reason for is stopped (its task ends it and counts that reason) and
    /// passed to `closed`. Returns how many were stopped.
    pub fn sweep(
        &self,
        mut judge: impl FnMut(&ConnInfo) -> Option<CloseReason>,
        mut closed: impl FnMut(&ConnInfo, CloseReason),
    ) -> usize {
        let conns = self.lock();
        let mut n = 0;
        let mut earliest = i64::MAX;
        // A peer already expired and left open (the rules keep it) must not
        // make the expiry sweep run again at once, and again.
        let now = crate::clock::unix_now();
        for (info, control) in conns.values() {
            if control.token.is_cancelled() {
                continue;
            }
            match judge(info) {
                Some(why) => {
                    let index = CloseReason::ALL.iter().position(|r| *r == why).unwrap_or(0);
                    control.reason.store(index as u8 + 1, Ordering::Release);
                    control.token.cancel();
                    closed(info, why);
                    n += 1;
                }
                None if info.peer.not_after > now => earliest = earliest.min(info.peer.not_after),
                None => {}
            }
        }
        self.earliest_expiry.0.store(earliest, Ordering::Release);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SpiffeId;

    fn peer(id: &str, not_after: i64) -> Arc<PeerIdentity> {
        Arc::new(PeerIdentity {
            id: SpiffeId::parse(id).unwrap(),
            serial: "01".into(),
            not_after,
            issuer_raw: b"issuer".to_vec().into(),
            serial_raw: vec![1].into(),
            chain: Box::new([]),
        })
    }

    fn conn(kind: ConnKind, peer: Arc<PeerIdentity>) -> ConnInfo {
        ConnInfo {
            kind,
            listener: "svc".into(),
            peer,
            remote: "127.0.0.1:1".parse().unwrap(),
            request: None,
            ocsp_certs: None,
        }
    }

    #[test]
    fn the_sweep_stops_what_it_judges_and_tracks_the_next_expiry() {
        let registry = Arc::new(ConnRegistry::default());
        assert_eq!(registry.earliest_expiry(), i64::MAX);
        let t = crate::clock::unix_now();
        let a = registry.register(conn(ConnKind::InboundTcp, peer("spiffe://td/a", t + 300)));
        let b = registry.register(conn(
            ConnKind::UpstreamPooled,
            peer("spiffe://td/b", t + 100),
        ));
        let c = registry.register(conn(ConnKind::OutboundTcp, peer("spiffe://td/c", t + 200)));
        // Expired already and kept open by the rules (no close on expiry).
        let d = registry.register(conn(ConnKind::InboundTcp, peer("spiffe://td/d", t - 10)));
        assert_eq!(registry.earliest_expiry(), t - 10);
        assert_eq!(registry.count(ConnKind::UpstreamPooled), 1);

        let mut seen = Vec::new();
        let n = registry.sweep(
            |c| (c.peer.not_after == t + 100).then_some(CloseReason::PeerExpired),
            |c, why| seen.push((c.kind, why)),
        );
        assert_eq!(n, 1);
        assert_eq!(seen, [(ConnKind::UpstreamPooled, CloseReason::PeerExpired)]);
        assert!(b.stopped().is_cancelled());
        assert_eq!(b.reason(), Some(CloseReason::PeerExpired));
        assert!(!a.stopped().is_cancelled() && a.reason().is_none());
        assert_eq!(
            registry.earliest_expiry(),
            t + 200,
            "recomputed over survivors not yet expired"
        );
        drop(d);

        // A stopped connection is not judged again; dropping deregisters.
        let n = registry.sweep(|_| Some(CloseReason::Revoked), |_, _| {});
        assert_eq!(n, 2);
        assert_eq!(a.reason(), Some(CloseReason::Revoked));
        assert_eq!(b.reason(), Some(CloseReason::PeerExpired));
        drop((a, b, c));
        assert!(registry.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_registration_that_expires_sooner_wakes_the_expiry_sweep() {
        use std::time::Duration;
        let registry = Arc::new(ConnRegistry::default());
        let _late = registry.register(conn(ConnKind::InboundTcp, peer("spiffe://td/a", 500)));
        // The first registration moved it from "never".
        registry.expiry_moved().await;
        let quiet = tokio::time::timeout(Duration::from_secs(60), registry.expiry_moved());
        let _later = registry.register(conn(ConnKind::InboundTcp, peer("spiffe://td/b", 900)));
        assert!(quiet.await.is_err(), "a later expiry changes nothing");
        let waiter = {
            let registry = registry.clone();
            tokio::spawn(async move { registry.expiry_moved().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let _soon = registry.register(conn(ConnKind::InboundTcp, peer("spiffe://td/c", 50)));
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(registry.earliest_expiry(), 50);
    }
}
