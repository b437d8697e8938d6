//! Admission: the checks every accepted connection passes after its TLS
//! handshake and before any byte reaches the app.
//!
//! It runs after the handshake, not inside the rustls verifier, because
//! resumed TLS 1.3 sessions skip the verifier altogether, and because later
//! checks (OCSP queries) must be able to await. It reads the peer's identity
//! from the certificate the session carries, so a resumed session is judged
//! exactly like a fresh one.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::OcspMode;
use crate::identity::{Role, SpiffeId, SvidError, serial_hex, spiffe_id_of};
use crate::revocation::Verdict;
use crate::tls::{TlsContext, TrustStore, verified_issuer};
use rustls_pki_types::UnixTime;

/// The verified identity of a connection's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub id: SpiffeId,
    pub serial: String,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The leaf's issuer name and serial as DER, for CRL lookups.
    pub issuer_raw: Box<[u8]>,
    pub serial_raw: Box<[u8]>,
    /// The chain the peer presented, leaf first: a trust change verifies it
    /// again, so removing the CA it chains to closes its connections.
    pub chain: Box<[CertificateDer<'static>]>,
}

/// Why admission refused a connection.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error("peer certificate is not a valid SVID: {0}")]
    Svid(#[from] SvidError),
    #[error("peer trust domain {0:?} is no longer trusted")]
    UntrustedDomain(String),
    #[error("peer certificate expired")]
    Expired,
    #[error("peer certificate is revoked")]
    Revoked,
    #[error("peer revocation status is unknown: {0}")]
    RevocationUnknown(String),
    #[error("peer is {got}, expected {expected}")]
    WrongIdentity { expected: SpiffeId, got: SpiffeId },
    /// The chain no longer builds to a root of the peer's trust domain
    /// (the trust changed since a resumed session was made). Never admitted,
    /// whatever the revocation failure policy.
    #[error("peer certificate chain does not verify: {0}")]
    Unverified(String),
}

impl Denial {
    /// A short label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Denial::NoCertificate => "no_certificate",
            Denial::Svid(_) => "bad_svid",
            Denial::UntrustedDomain(_) => "untrusted_domain",
            Denial::Expired => "expired",
            Denial::Revoked => "revoked",
            Denial::RevocationUnknown(_) => "revocation_unknown",
            Denial::WrongIdentity { .. } => "wrong_identity",
            Denial::Unverified(_) => "unverified",
        }
    }
}

/// Reads the peer identity from the session's certificates and checks it
/// is still acceptable now: its trust domain is still trusted and the leaf
/// has not expired since the session was made.
pub fn peer_identity(
    certs: Option<&[CertificateDer<'_>]>,
    trust: &TrustStore,
    now_unix: i64,
) -> Result<PeerIdentity, Denial> {
    let certs = certs.unwrap_or_default();
    let leaf = certs.first().ok_or(Denial::NoCertificate)?;
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| Denial::Svid(SvidError::Parse(e.to_string())))?;
    let id = spiffe_id_of(&cert)?;
    if trust.get(id.trust_domain_name()).is_none() {
        return Err(Denial::UntrustedDomain(id.trust_domain_name().to_string()));
    }
    let not_after = cert.validity().not_after.timestamp();
    if not_after < now_unix {
        return Err(Denial::Expired);
    }
    // Resumed sessions skip the verifier; a CRL that arrived since the
    // session was made still applies.
    if let Some(crls) = trust.revocation()
        && crls.is_revoked(cert.issuer().as_raw(), cert.raw_serial())
    {
        return Err(Denial::Revoked);
    }
    Ok(PeerIdentity {
        id,
        serial: serial_hex(cert.raw_serial()),
        not_after,
        issuer_raw: cert.issuer().as_raw().into(),
        serial_raw: cert.raw_serial().into(),
        chain: certs.iter().map(|c| c.clone().into_owned()).collect(),
    })
}

/// The peer's certificate chain and issuer, kept for OCSP re-checks of
/// the open connection.
pub type OcspCerts = std::sync::Arc<(Vec<u8>, Vec<u8>)>;

/// Everything admission checks, in order: the peer's identity from the
/// session's certificates (see [`peer_identity`]), that it is `expected`
/// when one is required (outbound), and its live OCSP status. Returns the
/// identity and, with OCSP on, the certificates to re-check it with.
pub async fn admit(
    tls: &TlsContext,
    certs: Option<&[CertificateDer<'_>]>,
    expected: Option<&SpiffeId>,
) -> Result<(PeerIdentity, Option<OcspCerts>), Denial> {
    let peer = peer_identity(certs, &tls.trust(), crate::clock::unix_now())?;
    if let Some(expected) = expected
        && peer.id != *expected
    {
        return Err(Denial::WrongIdentity {
            expected: expected.clone(),
            got: peer.id,
        });
    }
    // The peer is a TLS server when we expect an identity (outbound).
    let role = if expected.is_some() {
        Role::Server
    } else {
        Role::Client
    };
    let ocsp = check_ocsp_of(tls, certs, role).await?;
    Ok((peer, ocsp))
}

/// Live OCSP for a session's peer (acting in `role`), whose handshake and
/// identity checks passed. Returns the (leaf, issuer) pair for re-checks of
/// the open connection, or `None` when OCSP is off. The issuer is the one on
/// the path to a root of the peer's trust domain, never just a certificate
/// the peer sent: the OCSP answer must be about the leaf as its real issuer
/// knows it.
pub async fn check_ocsp_of(
    tls: &TlsContext,
    certs: Option<&[CertificateDer<'_>]>,
    role: Role,
) -> Result<Option<OcspCerts>, Denial> {
    let Some(checker) = tls.ocsp() else {
        return Ok(None);
    };
    let certs = certs.unwrap_or_default();
    let Some(leaf) = certs.first() else {
        return Err(Denial::NoCertificate);
    };
    let trust = tls.trust();
    let issuer = verified_issuer(&trust, leaf, &certs[1..], UnixTime::now(), role)
        .map_err(|e| Denial::Unverified(e.to_string()))?;
    check_ocsp(tls, checker, &trust, leaf, &issuer).await?;
    Ok(Some(std::sync::Arc::new((leaf.to_vec(), issuer.to_vec()))))
}

/// With `ocsp.mode: prefer` and CRLs configured, a missing answer leaves
/// the decision to the CRLs (already applied in the handshake); otherwise
/// the failure policy decides.
async fn check_ocsp(
    tls: &TlsContext,
    checker: &std::sync::Arc<crate::revocation::OcspChecker>,
    trust: &TrustStore,
    leaf: &[u8],
    issuer: &[u8],
) -> Result<(), Denial> {
    // Boxed: a query's state is large, and inlined it would grow every
    // connection's task, OCSP or not.
    match Box::pin(checker.check(leaf, issuer)).await {
        Verdict::Good => Ok(()),
        Verdict::Revoked => Err(Denial::Revoked),
        Verdict::Unknown(why) => {
            let crls = trust.revocation().is_some_and(|r| !r.is_empty());
            let fail_open = tls.revocation_fail_open();
            if (checker.mode() == OcspMode::Prefer && crls) || fail_open {
                tracing::debug!(reason = %why, "OCSP status unknown; admitted by policy");
                Ok(())
            } else {
                Err(Denial::RevocationUnknown(why))
            }
        }
    }
}
