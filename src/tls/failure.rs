//! Names for TLS handshake failures, used as the `result` label of
//! `portcullis_tls_handshakes_total` and in logs. The set is closed, so
//! label cardinality stays bounded whatever a peer sends.

use std::io;

use rustls::CertificateError;

use super::verifier::VerifyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The chain does not lead to a root of the peer's trust domain.
    UnknownCa,
    Expired,
    NotYetValid,
    /// The leaf breaks an X.509-SVID rule (SAN, CA flag, key usage, EKU).
    BadSvid,
    /// The peer's trust domain has no bundle here.
    UntrustedDomain,
    /// The upstream presented a valid SVID with another SPIFFE ID.
    WrongIdentity,
    /// The client sent no certificate.
    NoClientCert,
    BadSignature,
    Revoked,
    /// Revocation status could not be established (no CRL for the
    /// issuer, or an expired one) and revocation fails closed.
    RevocationUnknown,
    /// Some other certificate problem (bad encoding, unhandled extension).
    BadCertificate,
    /// The peer refused us with an alert (e.g. it does not trust our SVID).
    PeerRejected,
    /// The first bytes were not a TLS record (plaintext HTTP, garbage).
    NotTls,
    /// A TLS protocol problem: TLS 1.2 only, no common cipher, bad message.
    Protocol,
    Timeout,
    /// The connection failed or closed during the handshake.
    Io,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 16] = [
        Self::UnknownCa,
        Self::Expired,
        Self::NotYetValid,
        Self::BadSvid,
        Self::UntrustedDomain,
        Self::WrongIdentity,
        Self::NoClientCert,
        Self::BadSignature,
        Self::Revoked,
        Self::RevocationUnknown,
        Self::BadCertificate,
        Self::PeerRejected,
        Self::NotTls,
        Self::Protocol,
        Self::Timeout,
        Self::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSvid => "bad_svid",
            Self::UntrustedDomain => "untrusted_domain",
            Self::WrongIdentity => "wrong_identity",
            Self::NoClientCert => "no_client_cert",
            Self::BadSignature => "bad_signature",
            Self::Revoked => "revoked",
            Self::RevocationUnknown => "revocation_unknown",
            Self::BadCertificate => "bad_certificate",
            Self::PeerRejected => "peer_rejected",
            Self::NotTls => "not_tls",
            Self::Protocol => "protocol",
            Self::Timeout => "timeout",
            Self::Io => "io",
        }
    }

    /// Classifies an error from a tokio-rustls accept or connect.
    pub fn classify(err: &io::Error) -> Self {
        match err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(e) => Self::from_rustls(e),
            None if err.kind() == io::ErrorKind::TimedOut => Self::Timeout,
            None => Self::Io,
        }
    }

    pub fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::Error as E;
        match err {
            E::InvalidCertificate(ce) => Self::from_certificate_error(ce),
            E::NoCertificatesPresented => Self::NoClientCert,
            E::AlertReceived(_) => Self::PeerRejected,
            E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => Self::NotTls,
            _ => Self::Protocol,
        }
    }

    fn from_certificate_error(ce: &CertificateError) -> Self {
        use CertificateError as C;
        match ce {
            C::UnknownIssuer => Self::UnknownCa,
            C::Expired | C::ExpiredContext { .. } => Self::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => Self::NotYetValid,
            C::BadSignature => Self::BadSignature,
            C::Revoked => Self::Revoked,
            C::UnknownRevocationStatus
            | C::ExpiredRevocationList
            | C::ExpiredRevocationListContext { .. } => Self::RevocationUnknown,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => Self::BadSvid,
            C::Other(other) => match other.0.downcast_ref::<VerifyError>() {
                Some(VerifyError::Svid(_)) => Self::BadSvid,
                Some(VerifyError::UntrustedTrustDomain(_)) => Self::UntrustedDomain,
                Some(VerifyError::WrongIdentity { .. }) => Self::WrongIdentity,
                None => Self::BadCertificate,
            },
            _ => Self::BadCertificate,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
