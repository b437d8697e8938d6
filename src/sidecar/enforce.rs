//! The one enforcement sweep. Whatever changed what the sidecar admits (a
//! policy reload, new trust bundles or CRLs, an OCSP answer that says
//! "revoked", the clock passing a peer certificate's notAfter), every live
//! connection in the registry, of every kind, is judged again here by the
//! same rules, and each one no longer admitted is closed, logged and
//! counted with its reason.
//!
//! The rules, per connection, against the state in force now:
//! - its peer's certificate is revoked (a loaded CRL lists it, or the OCSP
//!   answer that triggered the sweep names it): closed as `revoked`;
//! - its peer's trust domain is no longer trusted, or (after a trust
//!   change) the chain it presented no longer verifies against the bundles
//!   in force, e.g. the CA it chains to was removed: closed as `denied`
//!   (or `revoked`, if the new CRLs revoke a certificate of that chain).
//!   A chain whose revocation status is merely unknown now is left open:
//!   a stale list is not evidence against a peer already admitted;
//! - its peer's certificate has expired: a pooled upstream connection is
//!   closed as `peer_expired` always (reusing it would send new requests
//!   to a peer whose identity no longer holds), any other connection with
//!   `connections.close_on_peer_expiry`;
//! - an inbound L4 connection the policy no longer admits, or an inbound
//!   tunnel whose opening request it no longer admits: closed as `policy`.
//!   HTTP connections are judged request by request instead, and outbound
//!   connections are not subject to the inbound policy.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::unix_now;
use crate::identity::Role;
use crate::metrics::Metrics;
use crate::policy::{Authorizer, Request};
use crate::proxy::close::CloseReason;
use crate::proxy::registry::{ConnInfo, ConnKind, ConnRegistry};
use crate::revocation::same_serial;
use crate::tls::{SvidVerifier, TlsContext, TrustStore};

/// What prompted a sweep.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A new policy is in force.
    Policy,
    /// New trust bundles or CRLs are in force.
    Trust,
    /// A fresh OCSP answer says this certificate (issuer name and serial,
    /// DER) is revoked.
    OcspRevoked { issuer: &'a [u8], serial: &'a [u8] },
    /// A registered peer's certificate may have expired.
    Expiry,
}

impl Change<'_> {
    fn as_str(&self) -> &'static str {
        match self {
            Change::Policy => "policy reload",
            Change::Trust => "trust reload",
            Change::OcspRevoked { .. } => "OCSP answer",
            Change::Expiry => "certificate expiry",
        }
    }
}

pub struct Enforcer {
    registry: Arc<ConnRegistry>,
    authorizer: Arc<Authorizer>,
    tls: Arc<TlsContext>,
    metrics: Arc<Metrics>,
    close_on_peer_expiry: bool,
}

impl Enforcer {
    pub fn new(
        registry: Arc<ConnRegistry>,
        authorizer: Arc<Authorizer>,
        tls: Arc<TlsContext>,
        metrics: Arc<Metrics>,
        close_on_peer_expiry: bool,
    ) -> Self {
        Enforcer {
            registry,
            authorizer,
            tls,
            metrics,
            close_on_peer_expiry,
        }
    }

    pub fn registry(&self) -> &Arc<ConnRegistry> {
        &self.registry
    }

    /// Judges every live connection against the state in force and closes
    /// the ones it no longer admits; returns how many.
    pub fn sweep(&self, change: Change<'_>) -> usize {
        let trust = self.tls.trust();
        let now = unix_now();
        let chains = match change {
            Change::Trust => self.judge_chains(&trust, now),
            _ => Default::default(),
        };
        let closed = self.registry.sweep(
            |c| {
                let leaf = c.peer.chain.first().map_or(&[][..], |l| l.as_ref());
                if let Some(why) = chains[usize::from(c.kind.peer_is_server())].get(leaf) {
                    return Some(*why);
                }
                self.judge(c, &change, &trust, now)
            },
            |c, why| self.report(c, why),
        );
        if closed > 0 {
            tracing::info!(closed, after = change.as_str(), "open connections closed");
        }
        closed
    }

    /// Verifies every registered peer's chain again against `trust` (each
    /// distinct certificate once, outside the registry lock) and returns
    /// the ones that no longer pass, with the reason. Verified as of a
    /// moment the leaf was valid: expiry has its own rule.
    /// Indexed by whether the peer is a server to us, then by leaf.
    fn judge_chains(
        &self,
        trust: &Arc<TrustStore>,
        now: i64,
    ) -> [HashMap<Vec<u8>, CloseReason>; 2] {
        let peers = self.registry.peers();
        let verifier = SvidVerifier::new(trust.clone());
        let mut failed: [HashMap<Vec<u8>, CloseReason>; 2] = Default::default();
        for (peer, is_server) in &peers {
            let Some((leaf, intermediates)) = peer.chain.split_first() else {
                continue;
            };
            let at = now.min(peer.not_after - 1).max(0) as u64;
            let at =
                rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(at));
            let role = if *is_server {
                Role::Server
            } else {
                Role::Client
            };
            let why = match verifier.verify(leaf, intermediates, at, role) {
                Ok(_) => continue,
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                    CloseReason::Revoked
                }
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownRevocationStatus
                    | rustls::CertificateError::ExpiredRevocationList,
                )) => continue,
                Err(e) => {
                    tracing::debug!(peer = %peer.id, error = %e, "peer chain no longer verifies");
                    CloseReason::Denied
                }
            };
            failed[usize::from(*is_server)].insert(leaf.to_vec(), why);
        }
        failed
    }

    /// Why `c` is no longer admitted, if it is not.
    fn judge(
        &self,
        c: &ConnInfo,
        change: &Change<'_>,
        trust: &TrustStore,
        now: i64,
    ) -> Option<CloseReason> {
        let peer = &c.peer;
        if let Change::OcspRevoked { issuer, serial } = change
            && *peer.issuer_raw == **issuer
            && same_serial(&peer.serial_raw, serial)
        {
            return Some(CloseReason::Revoked);
        }
        if trust
            .revocation()
            .is_some_and(|crls| crls.is_revoked(&peer.issuer_raw, &peer.serial_raw))
        {
            return Some(CloseReason::Revoked);
        }
        if trust.get(peer.id.trust_domain_name()).is_none() {
            return Some(CloseReason::Denied);
        }
        if peer.not_after <= now
            && (self.close_on_peer_expiry || c.kind == ConnKind::UpstreamPooled)
        {
            return Some(CloseReason::PeerExpired);
        }
        let request = match c.kind {
            ConnKind::InboundTcp => None,
            ConnKind::InboundTunnel => c.request.as_deref().map(|r| Request {
                method: &r.method,
                path: &r.path,
            }),
            ConnKind::InboundHttp
            | ConnKind::OutboundTcp
            | ConnKind::OutboundTunnel
            | ConnKind::UpstreamPooled => return None,
        };
        self.authorizer
            .recheck(&c.listener, &peer.id, request.as_ref())
            .is_err()
            .then_some(CloseReason::Policy)
    }

    /// Logs and counts one connection the sweep closed.
    fn report(&self, c: &ConnInfo, why: CloseReason) {
        let (service, peer, remote, kind) = (&c.listener, &c.peer.id, c.remote, c.kind.as_str());
        self.metrics
            .connections
            .swept
            .with_label_values(&[kind, why.as_str()])
            .inc();
        match why {
            CloseReason::Policy => {
                let request = c.request.as_deref().map(|r| Request {
                    method: &r.method,
                    path: &r.path,
                });
                // Judged again for the audit line: the decision that closed it.
                if let Err(decision) = self.authorizer.recheck(service, peer, request.as_ref()) {
                    self.authorizer.closed_by_reload(
                        service,
                        peer,
                        remote,
                        request.as_ref(),
                        &decision,
                    );
                }
            }
            CloseReason::Revoked => {
                tracing::warn!(%service, %peer, %remote, kind, "closing open connection: the peer certificate is now revoked");
                self.metrics.revocation.revoked_closed.inc();
            }
            CloseReason::Denied => {
                tracing::warn!(%service, %peer, %remote, kind, "closing open connection: the peer's trust domain or the CA its chain ends at is no longer trusted");
            }
            CloseReason::PeerExpired => {
                tracing::info!(%service, %peer, %remote, kind, "closing open connection: the peer certificate expired");
            }
            other => {
                tracing::warn!(%service, %peer, %remote, kind, reason = other.as_str(), "closing open connection");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::config::RevocationPolicy;
    use crate::identity::{SpiffeId, TrustDomain};
    use crate::pki::{Ca, RevokedEntry};
    use crate::policy::{AuditLog, PolicyStore};
    use crate::proxy::admission::PeerIdentity;
    use crate::proxy::registry::{ConnInfo, Registration, TunnelRequest};
    use crate::tls::{TrustStore, load_bundle, load_identity};

    const DAY: Duration = Duration::from_secs(86_400);

    struct World {
        _dir: tempfile::TempDir,
        enforcer: Enforcer,
        registry: Arc<ConnRegistry>,
        tls: Arc<TlsContext>,
        prod_issuer: Vec<u8>,
        partner_issuer: Vec<u8>,
        prod_only: TrustStore,
    }

    fn issuer_of(ca: &Ca) -> Vec<u8> {
        let der =
            rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        cert.subject().as_raw().to_vec()
    }

    use rustls_pki_types::pem::PemObject;

    /// Our identity in prod.example.org; bundles for it and for
    /// partner.example.com; a CRL revoking serial 0x0bad; a policy for
    /// service `svc` that denies `spiffe://prod.example.org/denied` and
    /// requests to `/admin`, and allows the rest.
    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let prod_td = TrustDomain::parse("prod.example.org").unwrap();
        let partner_td = TrustDomain::parse("partner.example.com").unwrap();
        let prod = Ca::generate(&prod_td, DAY).unwrap();
        let partner = Ca::generate(&partner_td, DAY).unwrap();
        let ours = prod
            .issue_svid(
                &SpiffeId::parse("spiffe://prod.example.org/us").unwrap(),
                DAY,
            )
            .unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(d.join(name), text).unwrap();
            d.join(name)
        };
        let (cert, key) = (
            write("us.pem", &ours.cert_pem),
            write("us-key.pem", &ours.key_pem),
        );
        let prod_bundle = load_bundle(&write("prod.pem", prod.cert_pem()), &prod_td).unwrap();
        let partner_bundle =
            load_bundle(&write("partner.pem", partner.cert_pem()), &partner_td).unwrap();
        let crl = d.join("prod.crl");
        let revoked = RevokedEntry {
            serial: "0bad".into(),
            revoked_at: time::OffsetDateTime::now_utc(),
        };
        std::fs::write(&crl, prod.crl(&[revoked], 1, DAY).unwrap()).unwrap();
        let policy = RevocationPolicy {
            whole_chain: false,
            expired_is_unknown: true,
            fail_open: false,
            fetch_distribution_points: false,
        };
        let with_crls = |bundles: Vec<crate::tls::TrustBundle>| {
            let roots: Vec<_> = bundles.iter().flat_map(|b| b.certs.iter()).collect();
            let trust = crate::revocation::CrlTrust {
                roots: &roots,
                intermediates: &[],
                in_force: None,
            };
            let crls =
                crate::revocation::load_crls(std::slice::from_ref(&crl), &[], &trust, policy)
                    .unwrap();
            TrustStore::new(bundles.clone()).with_revocation(crls)
        };
        let both = with_crls(vec![prod_bundle.clone(), partner_bundle]);
        let prod_only = with_crls(vec![prod_bundle]);
        let tls = Arc::new(TlsContext::new(load_identity(&cert, &key).unwrap(), both).unwrap());
        let policy_file = write(
            "policy.yaml",
            "default: allow\nservices:\n  svc:\n    rules:\n\
             \x20     - { name: no-denied, action: deny, from: [spiffe://prod.example.org/denied] }\n\
             \x20     - { name: no-admin, action: deny, from: [\"spiffe://prod.example.org/**\"], paths: [/admin] }\n",
        );
        let store = PolicyStore::open(Some(Path::new(&policy_file))).unwrap();
        let metrics = Arc::new(Metrics::new());
        let authorizer = Arc::new(Authorizer::new(
            Arc::new(store),
            AuditLog::off(),
            &metrics.policy,
        ));
        let registry = Arc::new(ConnRegistry::default());
        World {
            enforcer: Enforcer::new(registry.clone(), authorizer, tls.clone(), metrics, true),
            registry,
            tls,
            prod_issuer: issuer_of(&prod),
            partner_issuer: issuer_of(&partner),
            prod_only,
            _dir: dir,
        }
    }

    struct Peer<'a> {
        id: &'a str,
        issuer: &'a [u8],
        serial: u16,
        not_after: i64,
    }

    fn register(
        w: &World,
        kind: ConnKind,
        p: Peer<'_>,
        request: Option<(&str, &str)>,
    ) -> Registration {
        w.registry.register(ConnInfo {
            kind,
            listener: "svc".into(),
            peer: Arc::new(PeerIdentity {
                id: SpiffeId::parse(p.id).unwrap(),
                serial: format!("{:04x}", p.serial),
                not_after: p.not_after,
                issuer_raw: p.issuer.into(),
                serial_raw: p.serial.to_be_bytes().to_vec().into(),
                chain: Box::new([]),
            }),
            remote: "127.0.0.1:1".parse().unwrap(),
            request: request.map(|(m, p)| {
                Box::new(TunnelRequest {
                    method: m.into(),
                    path: p.into(),
                })
            }),
            ocsp_certs: None,
        })
    }

    #[test]
    fn the_sweep_judges_every_kind_by_the_same_rules() {
        use ConnKind::*;
        let w = world();
        let later = unix_now() + 3600;
        let prod = |id, serial| Peer {
            id,
            issuer: &w.prod_issuer,
            serial,
            not_after: later,
        };
        let ok = "spiffe://prod.example.org/ok";
        let denied = "spiffe://prod.example.org/denied";
        let cases = [
            // (kind, peer, tunnel request, closed for)
            // A deny rule with paths (`no-admin`) names every prod peer:
            // at L4, where there is no path, it denies the connection whole.
            (InboundTcp, prod(ok, 1), None, Some(CloseReason::Policy)),
            (InboundTcp, prod(denied, 2), None, Some(CloseReason::Policy)),
            // HTTP connections are judged request by request instead.
            (InboundHttp, prod(denied, 3), None, None),
            (InboundTunnel, prod(ok, 4), Some(("GET", "/ws")), None),
            (
                InboundTunnel,
                prod(ok, 5),
                Some(("GET", "/admin")),
                Some(CloseReason::Policy),
            ),
            // The inbound policy says nothing about upstreams.
            (OutboundTcp, prod(denied, 6), None, None),
            (OutboundTunnel, prod(denied, 7), None, None),
            // Revoked by the CRL, whatever the kind.
            (
                UpstreamPooled,
                prod(ok, 0x0bad),
                None,
                Some(CloseReason::Revoked),
            ),
            (
                InboundHttp,
                prod(ok, 0x0bad),
                None,
                Some(CloseReason::Revoked),
            ),
            // Expired, with close_on_peer_expiry.
            (
                OutboundTcp,
                Peer {
                    not_after: unix_now() - 1,
                    ..prod(ok, 8)
                },
                None,
                Some(CloseReason::PeerExpired),
            ),
        ];
        let regs: Vec<_> = cases
            .iter()
            .map(|(kind, peer, req, _)| {
                let peer = Peer { ..*peer };
                register(&w, *kind, peer, *req)
            })
            .collect();
        let partner = register(
            &w,
            UpstreamPooled,
            Peer {
                id: "spiffe://partner.example.com/api",
                issuer: &w.partner_issuer,
                serial: 9,
                not_after: later,
            },
            None,
        );
        let ocsp = register(&w, OutboundTcp, prod(ok, 10), None);

        let closed = w.enforcer.sweep(Change::Policy);
        let want: Vec<_> = cases.iter().map(|c| c.3).collect();
        let got: Vec<_> = regs.iter().map(|r| r.reason()).collect();
        assert_eq!(got, want);
        assert_eq!(closed, want.iter().flatten().count());
        assert!(partner.reason().is_none() && ocsp.reason().is_none());

        // The partner trust domain leaves the bundles: its peers go.
        w.tls.set_trust(w.prod_only.clone()).unwrap();
        assert_eq!(w.enforcer.sweep(Change::Trust), 1);
        assert_eq!(partner.reason(), Some(CloseReason::Denied));

        // An OCSP answer revokes one certificate: exactly its connections go.
        let serial = 10u16.to_be_bytes();
        let issuer = w.prod_issuer.clone();
        let n = w.enforcer.sweep(Change::OcspRevoked {
            issuer: &issuer,
            serial: &serial,
        });
        assert_eq!(n, 1);
        assert_eq!(ocsp.reason(), Some(CloseReason::Revoked));
        assert!(regs[3].reason().is_none(), "the others stay");
    }
}
