//! X.509-SVID rules (SPIFFE X509-SVID spec, sections 2 and 4) applied to a
//! leaf certificate: exactly one URI SAN holding a valid SPIFFE ID with a
//! path (the trust domain's own ID names no workload), not a CA, a critical
//! key usage with digitalSignature and without keyCertSign or cRLSign, and an
//! extended key usage, when present, that allows the role the peer plays.
//!
//! Chain building and signatures are checked elsewhere (rustls-webpki, in
//! `tls::verifier`); this module only reads the leaf.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe_id::{SpiffeId, SpiffeIdError};

/// The side of a TLS connection the certificate's holder is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The holder is a TLS client (our inbound peers).
    Client,
    /// The holder is a TLS server (our outbound upstreams).
    Server,
}

impl Role {
    fn eku_name(self) -> &'static str {
        match self {
            Role::Client => "clientAuth",
            Role::Server => "serverAuth",
        }
    }
}

/// Why a certificate is not a valid X.509-SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("certificate has no URI SAN (an SVID has exactly one)")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; an SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(#[from] SpiffeIdError),
    #[error("the SPIFFE ID has no path: it names a trust domain, not a workload")]
    NoPath,
    #[error("certificate is a CA (basicConstraints CA=true); an SVID leaf must not be")]
    IsCa,
    #[error("key usage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("the key usage extension is not marked critical; an SVID leaf's must be")]
    KeyUsageNotCritical,
    #[error("key usage has keyCertSign; an SVID leaf must not")]
    KeyCertSign,
    #[error("key usage has cRLSign; an SVID leaf must not")]
    CrlSign,
    #[error("extended key usage does not allow {0}")]
    ExtendedKeyUsage(&'static str),
}

/// What the proxy needs to know about a verified leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    /// notBefore and notAfter as Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses `der` and checks every X.509-SVID leaf rule. `role`, when given,
/// is checked against the extended key usage.
pub fn check_leaf(der: &[u8], role: Option<Role>) -> Result<LeafInfo, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| SvidError::Parse(e.to_string()))?;
    check_parsed_leaf(&cert, role)
}

/// As [`check_leaf`], for a certificate the caller already parsed.
pub fn check_parsed_leaf(
    cert: &X509Certificate<'_>,
    role: Option<Role>,
) -> Result<LeafInfo, SvidError> {
    let id = spiffe_id_of(cert)?;
    if id.path().is_empty() {
        return Err(SvidError::NoPath);
    }
    let bad_ext = |e: x509_parser::error::X509Error| SvidError::Parse(e.to_string());

    if let Some(bc) = cert.basic_constraints().map_err(bad_ext)?
        && bc.value.ca
    {
        return Err(SvidError::IsCa);
    }
    match cert.key_usage().map_err(bad_ext)? {
        None => return Err(SvidError::NoDigitalSignature),
        Some(ku) => {
            if !ku.critical {
                return Err(SvidError::KeyUsageNotCritical);
            }
            if !ku.value.digital_signature() {
                return Err(SvidError::NoDigitalSignature);
            }
            if ku.value.key_cert_sign() {
                return Err(SvidError::KeyCertSign);
            }
            if ku.value.crl_sign() {
                return Err(SvidError::CrlSign);
            }
        }
    }
    if let (Some(role), Some(eku)) = (role, cert.extended_key_usage().map_err(bad_ext)?) {
        let eku = eku.value;
        let allowed = eku.any
            || match role {
                Role::Client => eku.client_auth,
                Role::Server => eku.server_auth,
            };
        if !allowed {
            return Err(SvidError::ExtendedKeyUsage(role.eku_name()));
        }
    }
    Ok(LeafInfo {
        id,
        serial: serial_hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The SPIFFE ID in the certificate's single URI SAN.
pub fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(e.to_string()))?
        .ok_or(SvidError::NoUriSan)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let first = uris.next().ok_or(SvidError::NoUriSan)?;
    let more = uris.count();
    if more > 0 {
        return Err(SvidError::MultipleUriSans(more + 1));
    }
    Ok(SpiffeId::parse(first)?)
}

/// Formats a DER serial number as lowercase hex without leading zero bytes,
/// the form `openssl x509 -serial` and our metrics use.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let trimmed = &raw[start..];
    if trimmed.is_empty() {
        return "0".to_string();
    }
    hex::encode(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_formatting() {
        assert_eq!(serial_hex(&[0x00, 0x8a, 0x01]), "8a01");
        assert_eq!(serial_hex(&[0x00]), "0");
        assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            check_leaf(b"not a certificate", None),
            Err(SvidError::Parse(_))
        ));
    }
}
