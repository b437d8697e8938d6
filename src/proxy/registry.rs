//! The registry of open, admitted connections: who the peer is, which
//! service it reached, and a handle to close it. When the policy changes
//! (and later, when a CRL or OCSP answer revokes a peer), the registry is
//! walked and connections that are no longer allowed are closed at once.
//!
//! Registering costs one short lock per connection, never per byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::admission::PeerIdentity;
use crate::identity::SpiffeId;

/// Why a live connection was closed from outside its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// A policy reload no longer allows the peer.
    Policy = 1,
    /// A new CRL revokes the peer's certificate.
    Revoked = 2,
}

/// The handle a connection task watches.
pub struct ConnControl {
    token: CancellationToken,
    reason: AtomicU8,
}

impl ConnControl {
    pub fn stopped(&self) -> &CancellationToken {
        &self.token
    }

    pub fn reason(&self) -> Option<StopReason> {
        match self.reason.load(Ordering::Acquire) {
            1 => Some(StopReason::Policy),
            2 => Some(StopReason::Revoked),
            _ => None,
        }
    }

    fn stop(&self, why: StopReason) {
        self.reason.store(why as u8, Ordering::Release);
        self.token.cancel();
    }
}

/// What the registry knows of one connection.
pub struct ConnInfo {
    pub service: Arc<str>,
    pub peer: SpiffeId,
    pub src: SocketAddr,
    /// The peer leaf's issuer name and serial (DER), for CRL checks.
    pub issuer_raw: Box<[u8]>,
    pub serial_raw: Box<[u8]>,
    /// The peer's leaf and issuer certificates (DER), kept only when OCSP
    /// re-checks open connections.
    pub ocsp_certs: Option<Arc<(Vec<u8>, Vec<u8>)>>,
    /// HTTP connections are authorized request by request, so a policy
    /// reload does not judge the connection as a whole.
    pub per_request: bool,
    control: Arc<ConnControl>,
}

#[derive(Default)]
pub struct ConnRegistry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, ConnInfo>>,
}

/// Keeps a connection registered until dropped.
pub struct Registration<'a> {
    registry: &'a ConnRegistry,
    id: u64,
    pub control: Arc<ConnControl>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl ConnRegistry {
    pub fn register(
        &self,
        service: Arc<str>,
        peer: &PeerIdentity,
        src: SocketAddr,
    ) -> Registration<'_> {
        self.register_with(service, peer, src, None, false)
    }

    /// As [`ConnRegistry::register`], keeping the peer's certificates for
    /// OCSP re-checks, and marking HTTP connections (`per_request`).
    pub fn register_with(
        &self,
        service: Arc<str>,
        peer: &PeerIdentity,
        src: SocketAddr,
        ocsp_certs: Option<Arc<(Vec<u8>, Vec<u8>)>>,
        per_request: bool,
    ) -> Registration<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(ConnControl {
            token: CancellationToken::new(),
            reason: AtomicU8::new(0),
        });
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            ConnInfo {
                service,
                peer: peer.id.clone(),
                src,
                issuer_raw: peer.issuer_raw.clone(),
                serial_raw: peer.serial_raw.clone(),
                ocsp_certs,
                per_request,
                control: control.clone(),
            },
        );
        Registration {
            registry: self,
            id,
            control,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The distinct peer certificates kept for OCSP re-checks.
    pub fn ocsp_certs(&self) -> Vec<Arc<(Vec<u8>, Vec<u8>)>> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<(Vec<u8>, Vec<u8>)>> = Vec::new();
        for c in conns.values() {
            if let Some(certs) = &c.ocsp_certs
                && !out.iter().any(|o| o.0 == certs.0)
            {
                out.push(certs.clone());
            }
        }
        out
    }

    /// Stops every connection for which `still_allowed` says no, calling
    /// `closed` for each; returns how many were stopped.
    pub fn enforce(
        &self,
        why: StopReason,
        mut still_allowed: impl FnMut(&ConnInfo) -> bool,
        mut closed: impl FnMut(&ConnInfo),
    ) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for info in conns.values() {
            if info.control.token.is_cancelled() || still_allowed(info) {
                continue;
            }
            info.control.stop(why);
            closed(info);
            n += 1;
        }
        n
    }
}
