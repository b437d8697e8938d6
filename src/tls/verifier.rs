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

use super::material::TrustStore;
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
            algs: super::provider().signature_verification_algorithms,
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
        let (_, cert) = X509Certificate::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        // The SPIFFE ID picks the bundle, so read it before anything else.
        let id = spiffe_id_of(&cert).map_err(|e| cert_error(e.into()))?;
        let bundle = self.trust.get(id.trust_domain_name()).ok_or_else(|| {
            cert_error(VerifyError::UntrustedTrustDomain(
                id.trust_domain_name().to_string(),
            ))
        })?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let usage = match role {
            Role::Client => webpki::KeyUsage::client_auth(),
            Role::Server => webpki::KeyUsage::server_auth(),
        };
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
            .map(|_| ())
        };
        // CRLs that are to be fetched but have not arrived: status unknown.
        let awaiting = self
            .trust
            .revocation()
            .filter(|r| r.lists().is_empty() && r.policy.fetch_distribution_points);
        if let Some(r) = awaiting {
            if let Some(counters) = &self.counters {
                counters.unknown.inc();
            }
            if !r.policy.fail_open {
                return Err(pki_error(webpki::Error::UnknownRevocationStatus));
            }
        }
        match self.trust.revocation().filter(|r| !r.lists().is_empty()) {
            None => verify(None).map_err(pki_error)?,
            Some(crls) => {
                let lists = crls.lists();
                let policy = crls.policy;
                let options = webpki::RevocationOptionsBuilder::new(&lists).map(|b| {
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
                    .build()
                });
                let count = |c: fn(&RevocationCounters) -> &prometheus::IntCounter| {
                    if let Some(counters) = &self.counters {
                        c(counters).inc();
                    }
                };
                match verify(options.ok()) {
                    Ok(()) => count(|c| &c.good),
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
                        verify(None).map_err(pki_error)?;
                        tracing::info!(peer = %id, "revocation status unknown; admitted (revocation.failure: open)");
                    }
                    Err(other) => return Err(pki_error(other)),
                }
            }
        }
        check_parsed_leaf(&cert, Some(role)).map_err(|e| cert_error(e.into()))
    }

    /// The certificate that issued `end_entity`: the first intermediate,
    /// or the trusted root with the leaf's issuer name.
    pub fn issuer_of(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
    ) -> Option<Vec<u8>> {
        issuer_of(&self.trust, end_entity, intermediates)
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

/// The certificate that issued `end_entity`: the first intermediate, or
/// the trusted root with the leaf's issuer name.
pub fn issuer_of(
    trust: &TrustStore,
    end_entity: &[u8],
    intermediates: &[CertificateDer<'_>],
) -> Option<Vec<u8>> {
    if let Some(first) = intermediates.first() {
        return Some(first.to_vec());
    }
    let (_, leaf) = X509Certificate::from_der(end_entity).ok()?;
    trust
        .bundles()
        .flat_map(|b| b.certs.iter())
        .find_map(|der| {
            let (_, ca) = X509Certificate::from_der(der).ok()?;
            (ca.subject().as_raw() == leaf.issuer().as_raw()).then(|| der.to_vec())
        })
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
        // upstream's identity.
        let leaf = self
            .inner
            .verify(end_entity, intermediates, now, Role::Server)?;
        if leaf.id != self.expected {
            return Err(cert_error(VerifyError::WrongIdentity {
                expected: self.expected.clone(),
                got: leaf.id,
            }));
        }
        // A valid staple answers for the upstream: a revoked one ends the
        // handshake, a good one is cached so admission needs no query.
        if let Some(checker) = &self.ocsp
            && !ocsp_response.is_empty()
            && let Some(issuer) = self.inner.issuer_of(end_entity, intermediates)
        {
            match crate::revocation::ocsp::verify(
                ocsp_response,
                end_entity,
                &issuer,
                crate::clock::unix_now(),
            ) {
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
