//! Certificate verification for both directions, with rustls-webpki and the
//! X.509-SVID rules.
//!
//! We do not wrap rustls' stock verifiers: `WebPkiServerVerifier` insists on
//! a DNS/IP name match that URI-only SVIDs can never satisfy, and a single
//! root store cannot keep federated trust domains apart. Instead one
//! [`SvidVerifier`] reads the peer's SPIFFE ID, picks the bundle of *that*
//! trust domain, verifies the chain against it with webpki, then applies the
//! SVID rules. [`InboundVerifier`] and [`OutboundVerifier`] adapt it to the
//! rustls traits; the outbound one also requires the expected SPIFFE ID.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::material::{TrustBundle, TrustStore};
use crate::identity::{LeafInfo, Role, SpiffeId, SvidError, check_parsed_leaf, spiffe_id_of};
use crate::metrics::RevocationFamilies;
use crate::revocation::OcspChecker;

/// Verification failures of our own, carried inside
/// `rustls::CertificateError::Other` so that handshake failures can be
/// classified for metrics.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not a valid X.509-SVID: {0}")]
    Svid(#[from] SvidError),
    #[error("trust domain {0:?} is not trusted (no bundle for it)")]
    UntrustedTrustDomain(String),
    #[error("peer is {got}, expected {expected}")]
    WrongIdentity { expected: SpiffeId, got: SpiffeId },
}

fn cert_error(e: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Maps webpki's chain errors onto rustls' certificate errors, as rustls'
/// own verifiers do, so alerts and metrics say what went wrong.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::CertRevoked => CertificateError::Revoked,
        W::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        W::CrlExpired { .. } => CertificateError::ExpiredRevocationList,
        // During path building a signature that does not verify means the
        // issuer with that name is not the one we trust: typically another
        // CA for the same trust domain with the same subject name.
        W::InvalidSignatureForPublicKey => CertificateError::UnknownIssuer,
        W::UnsupportedSignatureAlgorithmContext(_)
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => CertificateError::BadSignature,
        W::CaUsedAsEndEntity => return cert_error(VerifyError::Svid(SvidError::IsCa)),
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

/// Counters of revocation check results (`portcullis_revocation_checks_total`).
#[derive(Debug, Clone)]
pub struct RevocationCounters {
    pub good: prometheus::IntCounter,
    pub revoked: prometheus::IntCounter,
    pub unknown: prometheus::IntCounter,
}

impl RevocationCounters {
    /// The CRL check series, resolved once.
    pub fn new(families: &RevocationFamilies) -> Self {
        let r = |result| families.checks.with_label_values(&["crl", result]);
        RevocationCounters {
            good: r("good"),
            revoked: r("revoked"),
            unknown: r("unknown"),
        }
    }
}

/// Chain and SVID verification against a [`TrustStore`].
#[derive(Debug)]
pub struct SvidVerifier {
    trust: Arc<TrustStore>,
    algs: WebPkiSupportedAlgorithms,
    counters: Option<RevocationCounters>,
}

impl SvidVerifier {
    pub fn new(trust: Arc<TrustStore>) -> Self {
        SvidVerifier {
            trust,
            algs: crate::crypto::provider().signature_verification_algorithms,
            counters: None,
        }
    }

    pub fn with_counters(mut self, counters: Option<RevocationCounters>) -> Self {
        self.counters = counters;
        self
    }

    /// Verifies `end_entity` (with `intermediates`) as a peer acting in `role`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
    ) -> Result<LeafInfo, rustls::Error> {
        self.verify_path(end_entity, intermediates, now, role, false)
            .map(|(leaf, _)| leaf)
    }

    /// As [`SvidVerifier::verify`]; with `want_issuer`, also returns the
    /// certificate that issued the leaf on the path verification built.
    fn verify_path(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: Role,
        want_issuer: bool,
    ) -> Result<(LeafInfo, Option<CertificateDer<'static>>), rustls::Error> {
        let Chain {
            cert,
            id,
            bundle,
            ee,
            usage,
        } = chain(&self.trust, end_entity, role)?;
        let verify = |revocation| {
            ee.verify_for_usage(
                self.algs.all,
                &bundle.anchors,
                intermediates,
                now,
                usage,
                revocation,
                None,
            )
            .map(|path| want_issuer.then(|| issuer_on(&path, bundle)).flatten())
        };
        // Two CAs of one name, each with its CRL (a rotation): webpki would
        // check a certificate against the first list of that name. Each
        // root is tried alone with the lists that are not another CA's.
        let verify_per_root = |crls: &crate::revocation::CrlSet|
         -> Result<Option<CertificateDer<'static>>, webpki::Error> {
            let mut last = webpki::Error::UnknownIssuer;
            for (i, (subject, spki)) in bundle.root_keys.iter().enumerate() {
                let lists = crls.for_root(subject, spki);
                let result = ee.verify_for_usage(
                    self.algs.all,
                    &bundle.anchors[i..=i],
                    intermediates,
                    now,
                    usage,
                    revocation_options(&lists, crls.policy),
                    None,
                );
                match result {
                    Ok(path) => return Ok(want_issuer.then(|| issuer_on(&path, bundle)).flatten()),
                    // Not this root's certificate: try the next.
                    Err(webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey) => {}
                    // This root's path, and it says revoked or unknown.
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let issuer;
        // CRLs that are to be fetched but have not arrived: status unknown.
        let awaiting = self
            .trust
            .revocation()
            .filter(|r| r.is_empty() && r.policy.fetch_distribution_points);
        if let Some(r) = awaiting {
            if let Some(counters) = &self.counters {
                counters.unknown.inc();
            }
            if !r.policy.fail_open {
                return Err(pki_error(webpki::Error::UnknownRevocationStatus));
            }
        }
        match self.trust.revocation().filter(|r| !r.is_empty()) {
            None => issuer = verify(None).map_err(pki_error)?,
            Some(crls) => {
                let policy = crls.policy;
                let count = |c: fn(&RevocationCounters) -> &prometheus::IntCounter| {
                    if let Some(counters) = &self.counters {
                        c(counters).inc();
                    }
                };
                let lists = crls.lists();
                let checked = if crls.has_namesakes() && bundle.anchors.len() > 1 {
                    verify_per_root(crls)
                } else {
                    verify(revocation_options(&lists, policy))
                };
                match checked {
                    Ok(found) => {
                        count(|c| &c.good);
                        issuer = found;
                    }
                    Err(webpki::Error::CertRevoked) => {
                        count(|c| &c.revoked);
                        return Err(pki_error(webpki::Error::CertRevoked));
                    }
                    Err(
                        e @ (webpki::Error::UnknownRevocationStatus
                        | webpki::Error::CrlExpired { .. }),
                    ) => {
                        count(|c| &c.unknown);
                        if !policy.fail_open {
                            return Err(pki_error(e));
                        }
                        // Failing open: the chain must still verify without
                        // revocation; the unknown status is counted.
                        issuer = verify(None).map_err(pki_error)?;
                        tracing::info!(peer = %id, "revocation status unknown; admitted (revocation.failure: open)");
                    }
                    Err(other) => return Err(pki_error(other)),
                }
            }
        }
        let leaf = check_parsed_leaf(&cert, Some(role)).map_err(|e| cert_error(e.into()))?;
        Ok((leaf, issuer))
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What path building starts from: the leaf, the SPIFFE ID in it, the
/// bundle of that ID's trust domain (a peer is only ever verified against
/// its own trust domain's roots), and the key usage its role needs.
struct Chain<'a> {
    cert: X509Certificate<'a>,
    id: crate::identity::SpiffeId,
    bundle: &'a TrustBundle,
    ee: webpki::EndEntityCert<'a>,
    usage: webpki::KeyUsage,
}

fn chain<'a>(
    trust: &'a TrustStore,
    end_entity: &'a CertificateDer<'a>,
    role: Role,
) -> Result<Chain<'a>, rustls::Error> {
    let (_, cert) = X509Certificate::from_der(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    // The SPIFFE ID picks the bundle, so read it before anything else.
    let id = spiffe_id_of(&cert).map_err(|e| cert_error(e.into()))?;
    let bundle = trust.get(id.trust_domain_name()).ok_or_else(|| {
        cert_error(VerifyError::UntrustedTrustDomain(
            id.trust_domain_name().to_string(),
        ))
    })?;
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    let usage = match role {
        Role::Client => webpki::KeyUsage::client_auth(),
        Role::Server => webpki::KeyUsage::server_auth(),
    };
    Ok(Chain {
        cert,
        id,
        bundle,
        ee,
        usage,
    })
}

/// The certificate that issued the leaf on a verified path: the path's
/// first intermediate, or the root it ends at (`None` only if the anchor
/// is not one of `bundle`'s, which cannot happen for a path built on them).
fn issuer_on(
    path: &webpki::VerifiedPath<'_>,
    bundle: &TrustBundle,
) -> Option<CertificateDer<'static>> {
    if let Some(first) = path.intermediate_certificates().next() {
        return Some(first.der().into_owned());
    }
    let anchor = path.anchor();
    let i = bundle
        .anchors
        .iter()
        .position(|a| std::ptr::eq(a, anchor))?;
    bundle.certs.get(i).cloned()
}

/// The certificate that really issued `end_entity`: found by building a
/// path from it to a root of its own trust domain (as the handshake does,
/// with the trust in force now), never by taking a certificate the peer
/// merely sent. A peer can send certificates its path does not use: the
/// first one after its leaf may be any CA of the peer's choosing. Two CAs
/// with the same name (during a rotation) are told apart by the leaf's
/// signature, as path building does.
pub fn verified_issuer(
    trust: &TrustStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: Role,
) -> Result<CertificateDer<'static>, rustls::Error> {
    let c = chain(trust, end_entity, role)?;
    let algs = crate::crypto::provider().signature_verification_algorithms;
    let path =
        c.ee.verify_for_usage(
            algs.all,
            &c.bundle.anchors,
            intermediates,
            now,
            c.usage,
            None,
            None,
        )
        .map_err(pki_error)?;
    issuer_on(&path, c.bundle).ok_or_else(|| {
        rustls::Error::General("the verified path's root is not in the bundle".into())
    })
}

/// webpki's revocation options for `lists` under `policy`: unknown status
/// denies (failing open is decided by the caller).
fn revocation_options<'a>(
    lists: &'a [&'a webpki::CertRevocationList<'a>],
    policy: crate::config::RevocationPolicy,
) -> Option<webpki::RevocationOptions<'a>> {
    let b = webpki::RevocationOptionsBuilder::new(lists).ok()?;
    Some(
        b.with_depth(if policy.whole_chain {
            webpki::RevocationCheckDepth::Chain
        } else {
            webpki::RevocationCheckDepth::EndEntity
        })
        .with_status_policy(webpki::UnknownStatusPolicy::Deny)
        .with_expiration_policy(if policy.expired_is_unknown {
            webpki::ExpirationPolicy::Enforce
        } else {
            webpki::ExpirationPolicy::Ignore
        })
        .build(),
    )
}

fn tls12_refused() -> rustls::Error {
    // Unreachable in practice: the configs only enable TLS 1.3.
    rustls::Error::General("TLS 1.2 is not supported".into())
}

/// Verifies client certificates on inbound listeners. Client certificates
/// are mandatory.
#[derive(Debug)]
pub struct InboundVerifier {
    inner: SvidVerifier,
}

impl InboundVerifier {
    pub fn new(trust: Arc<TrustStore>, counters: Option<RevocationCounters>) -> Self {
        InboundVerifier {
            inner: SvidVerifier::new(trust).with_counters(counters),
        }
    }
}

impl ClientCertVerifier for InboundVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Peers hold exactly one SVID; hints would only leak our CA names.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify(end_entity, intermediates, now, Role::Client)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.schemes()
    }
}

/// Verifies an upstream's certificate and that it presents `expected`,
/// and the OCSP answer the upstream staples, if OCSP is on.
pub struct OutboundVerifier {
    inner: SvidVerifier,
    expected: SpiffeId,
    ocsp: Option<Arc<OcspChecker>>,
}

impl std::fmt::Debug for OutboundVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl OutboundVerifier {
    pub fn new(
        trust: Arc<TrustStore>,
        expected: SpiffeId,
        counters: Option<RevocationCounters>,
    ) -> Self {
        OutboundVerifier {
            inner: SvidVerifier::new(trust).with_counters(counters),
            expected,
            ocsp: None,
        }
    }

    pub fn with_ocsp(mut self, ocsp: Option<Arc<OcspChecker>>) -> Self {
        self.ocsp = ocsp;
        self
    }
}

impl ServerCertVerifier for OutboundVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The SPIFFE ID, not the DNS name or address we dialled, is the
        // upstream's identity. A staple is checked against the issuer on
        // the path just verified.
        let want_issuer = self.ocsp.is_some() && !ocsp_response.is_empty();
        let (leaf, issuer) =
            self.inner
                .verify_path(end_entity, intermediates, now, Role::Server, want_issuer)?;
        if leaf.id != self.expected {
            return Err(cert_error(VerifyError::WrongIdentity {
                expected: self.expected.clone(),
                got: leaf.id,
            }));
        }
        // A valid staple answers for the upstream: a revoked one ends the
        // handshake, a good one is cached so admission needs no query.
        if let Some(checker) = &self.ocsp
            && let Some(issuer) = issuer
        {
            match checker.verify_staple(ocsp_response, end_entity, &issuer) {
                Ok(answer) if answer.status == crate::revocation::ocsp::OcspStatus::Revoked => {
                    return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
                }
                Ok(answer) => checker.remember(end_entity, &issuer, answer),
                Err(e) => tracing::debug!(error = %e, "ignoring an invalid OCSP staple"),
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls_pki_types::pem::PemObject;

    use super::*;
    use crate::identity::{SpiffeId, TrustDomain};
    use crate::pki::Ca;
    use crate::tls::load_bundle;

    const DAY: Duration = Duration::from_secs(86_400);

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// The chain in a PEM file, leaf first.
    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap())
            .collect()
    }

    #[test]
    fn the_issuer_is_the_one_on_the_verified_path_never_just_the_first_sent() {
        let td = TrustDomain::parse("prod.example.org").unwrap();
        let id = SpiffeId::parse("spiffe://prod.example.org/w").unwrap();
        // Two roots with the same name, as in a rotation, both trusted.
        let (old, new) = (
            Ca::generate(&td, DAY).unwrap(),
            Ca::generate(&td, DAY).unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let bundle_path = dir.path().join("bundle.pem");
        std::fs::write(
            &bundle_path,
            format!("{}{}", old.cert_pem(), new.cert_pem()),
        )
        .unwrap();
        let trust = TrustStore::new([load_bundle(&bundle_path, &td).unwrap()]);
        let now = UnixTime::now();
        let issuer = |pem: &str| {
            let c = chain(pem);
            verified_issuer(&trust, &c[0], &c[1..], now, Role::Client).unwrap()
        };
        // A leaf of either root (no intermediate): that root, told apart
        // from its namesake by the leaf's signature.
        assert_eq!(
            issuer(&old.issue_svid(&id, DAY).unwrap().cert_pem),
            der(old.cert_pem())
        );
        assert_eq!(
            issuer(&new.issue_svid(&id, DAY).unwrap().cert_pem),
            der(new.cert_pem())
        );

        // A leaf of an intermediate, sent behind an impostor of the same
        // name (an intermediate of an untrusted root): the real one.
        let inter = new.intermediate(DAY).unwrap();
        let impostor = Ca::generate(&td, DAY).unwrap().intermediate(DAY).unwrap();
        let leaf = inter.issue_svid(&id, DAY).unwrap();
        let c = chain(&leaf.cert_pem);
        let sent = [der(impostor.cert_pem()), c[1].clone()];
        let found = verified_issuer(&trust, &c[0], &sent, now, Role::Client).unwrap();
        assert_eq!(found, der(inter.cert_pem()));
        assert_ne!(found, sent[0]);

        // Only the impostor: no path, no issuer.
        assert!(verified_issuer(&trust, &c[0], &sent[..1], now, Role::Client).is_err());
    }
}
