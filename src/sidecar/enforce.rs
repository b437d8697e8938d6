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
//! - its peer's trust domain is no longer trusted: closed as `denied`;
//! - with `connections.close_on_peer_expiry`, its peer's certificate has
//!   expired: closed as `peer_expired`;
//! - an inbound L4 connection the policy no longer admits, or an inbound
//!   tunnel whose opening request it no longer admits: closed as `policy`.
//!   HTTP connections are judged request by request instead, and outbound
//!   connections are not subject to the inbound policy.

use std::sync::Arc;

use crate::clock::unix_now;
use crate::metrics::Metrics;
use crate::policy::{Authorizer, Request};
use crate::proxy::close::CloseReason;
use crate::proxy::registry::{ConnInfo, ConnKind, ConnRegistry};
use crate::revocation::same_serial;
use crate::tls::{TlsContext, TrustStore};

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
        let closed = self.registry.sweep(
            |c| self.judge(c, &change, &trust, now),
            |c, why| self.report(c, why),
        );
        if closed > 0 {
            tracing::info!(closed, after = change.as_str(), "open connections closed");
        }
        closed
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
        if self.close_on_peer_expiry && peer.not_after <= now {
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
                tracing::warn!(%service, %peer, %remote, kind, "closing open connection: the peer's trust domain is no longer trusted");
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
