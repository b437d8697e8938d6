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

use super::material::{LoadedIdentity, Stapled};

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

    /// Staples `ocsp`, valid until `until` (Unix seconds), to the current
    /// SVID if it is still the one with `serial` (a rotation may have
    /// replaced it meanwhile).
    pub fn set_staple(&self, serial: &str, ocsp: Vec<u8>, until: i64) -> bool {
        let current = self.current.load_full();
        if current.leaf.serial != serial {
            return false;
        }
        let mut next = (*current).clone();
        let mut certified = (*next.certified).clone();
        certified.ocsp = Some(ocsp);
        next.stapled = Some(Stapled {
            certified: Arc::new(certified),
            until,
        });
        self.current.store(Arc::new(next));
        true
    }

    /// Stops stapling to the SVID with `serial` (the responder no longer
    /// says it is good).
    pub fn clear_staple(&self, serial: &str) {
        let current = self.current.load_full();
        if current.leaf.serial != serial || current.stapled.is_none() {
            return;
        }
        let mut next = (*current).clone();
        next.stapled = None;
        self.current.store(Arc::new(next));
    }

    /// When the staple served now stops being served (Unix seconds), if
    /// there is one.
    pub fn staple_until(&self) -> Option<i64> {
        self.current.load().stapled.as_ref().map(|s| s.until)
    }

    /// What handshakes present now. A staple past its nextUpdate is
    /// dropped at that second, whether or not a fresh one has arrived:
    /// peers would rightly refuse it, and stapling nothing lets them ask
    /// the responder themselves.
    fn served(&self) -> Arc<CertifiedKey> {
        let current = self.current.load();
        match &current.stapled {
            Some(s) if crate::clock::unix_now() < s.until => s.certified.clone(),
            _ => current.certified.clone(),
        }
    }
}

impl ResolvesServerCert for IdentityStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.served())
    }
}

impl ResolvesClientCert for IdentityStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.served())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{SpiffeId, TrustDomain};
    use crate::pki::Ca;
    use std::time::Duration;

    #[test]
    fn a_staple_is_served_until_its_next_update_and_not_after() {
        let td = TrustDomain::parse("prod.example.org").unwrap();
        let ca = Ca::generate(&td, Duration::from_secs(86_400)).unwrap();
        let id = SpiffeId::parse("spiffe://prod.example.org/svc").unwrap();
        let svid = ca.issue_svid(&id, Duration::from_secs(86_400)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, &svid.cert_pem).unwrap();
        std::fs::write(&key, &svid.key_pem).unwrap();
        let store = IdentityStore::new(crate::tls::load_identity(&cert, &key).unwrap());
        assert_eq!(store.served().ocsp, None);

        let now = crate::clock::unix_now();
        assert!(!store.set_staple("not-our-serial", b"x".to_vec(), now + 3600));
        assert!(store.set_staple(&svid.serial, b"fresh".to_vec(), now + 3600));
        assert_eq!(store.served().ocsp.as_deref(), Some(&b"fresh"[..]));
        assert_eq!(store.staple_until(), Some(now + 3600));

        // Its nextUpdate has passed: handshakes carry no staple.
        assert!(store.set_staple(&svid.serial, b"stale".to_vec(), now - 1));
        assert_eq!(store.served().ocsp, None);
        assert_eq!(store.served().cert, store.current().certified.cert);

        // The responder says it is no longer good: dropped at once.
        assert!(store.set_staple(&svid.serial, b"fresh".to_vec(), now + 3600));
        store.clear_staple(&svid.serial);
        assert_eq!(store.served().ocsp, None);
    }
}
