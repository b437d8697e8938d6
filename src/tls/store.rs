//! The current identity (our SVID and key) behind an `ArcSwap`, served to
//! rustls as both the server certificate and the client certificate. A new
//! SVID swaps in atomically: new handshakes use it at once, open connections
//! keep the one they were made with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::material::LoadedIdentity;

pub struct IdentityStore {
    current: ArcSwap<LoadedIdentity>,
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("id", &self.current.load().leaf.id)
            .finish()
    }
}

impl IdentityStore {
    pub fn new(identity: LoadedIdentity) -> Self {
        IdentityStore {
            current: ArcSwap::from_pointee(identity),
        }
    }

    pub fn current(&self) -> Arc<LoadedIdentity> {
        self.current.load_full()
    }

    pub fn swap(&self, identity: LoadedIdentity) {
        self.current.store(Arc::new(identity));
    }

    /// Staples `ocsp` to the current SVID if it is still the one with
    /// `serial` (a rotation may have replaced it meanwhile).
    pub fn set_staple(&self, serial: &str, ocsp: Vec<u8>) -> bool {
        let current = self.current.load_full();
        if current.leaf.serial != serial {
            return false;
        }
        let mut next = (*current).clone();
        let mut certified = (*next.certified).clone();
        certified.ocsp = Some(ocsp);
        next.certified = Arc::new(certified);
        self.current.store(Arc::new(next));
        true
    }
}

impl ResolvesServerCert for IdentityStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }
}

impl ResolvesClientCert for IdentityStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
