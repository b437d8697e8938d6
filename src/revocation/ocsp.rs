//! OCSP (RFC 6960): building a request for one certificate, asking a
//! responder over HTTP, and verifying the answer ourselves, since no crate
//! does: the response must be signed by the issuer, or by a delegated
//! responder certificate that the issuer signed for id-kp-OCSPSigning; its
//! CertID must match the certificate asked about; producedAt and thisUpdate
//! must not be in the future and nextUpdate must not have passed; an answer
//! without nextUpdate is only used while its thisUpdate is recent; and a
//! nonce sent with the request must come back unchanged.
//!
//! Wiring into admission (cache, coalescing, failure policy) and our own
//! stapling build on this module.

use std::time::Duration;

use sha1::{Digest, Sha1};
use x509_cert::der::asn1::{Null, ObjectIdentifier, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    ResponderId, TbsRequest,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// id-sha1, the hash OCSP CertIDs use in practice (RFC 5019).
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// id-pkix-ocsp-basic.
const ID_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// Responses larger than this are not OCSP responses.
const MAX_RESPONSE: usize = 64 * 1024;
/// id-pkix-ocsp-nonce (RFC 8954).
const ID_OCSP_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
/// Clock skew tolerated on producedAt, thisUpdate and answer age.
const SKEW_SECS: i64 = 300;
/// How old an answer without nextUpdate may be when no one says otherwise
/// (`revocation.ocsp.max_age`'s default).
pub const DEFAULT_MAX_AGE_SECS: i64 = 3600;

/// What an answer must satisfy besides its signature and CertID.
#[derive(Debug, Clone, Copy)]
pub struct Checks<'a> {
    /// Unix seconds.
    pub now: i64,
    /// An answer without nextUpdate is refused once its thisUpdate is older
    /// than this many seconds (plus skew): it says nothing of how long it
    /// holds.
    pub max_age: i64,
    /// The nonce the request carried, which the answer must carry too: an
    /// answer recorded earlier cannot be replayed.
    pub nonce: Option<&'a [u8]>,
}

/// What a verified response says about the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked,
    Unknown,
}

/// A verified answer and how long it may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcspAnswer {
    pub status: OcspStatus,
    pub this_update: i64,
    /// `None` when the responder gave no nextUpdate.
    pub next_update: Option<i64>,
}

/// Why a query or a response failed; every such failure is "unknown
/// status" to the failure policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    #[error("certificate cannot be parsed: {0}")]
    Certificate(String),
    #[error("responder unreachable: {0}")]
    Unreachable(String),
    #[error("responder answered HTTP {0}")]
    Http(u16),
    #[error("response is malformed: {0}")]
    Malformed(String),
    #[error("responder refused the request: {0}")]
    Refused(String),
    #[error("response is not signed by the issuer or a responder it authorized: {0}")]
    BadSigner(String),
    #[error("response signature does not verify: {0}")]
    BadSignature(String),
    #[error("response does not answer for this certificate")]
    WrongCertificate,
    #[error("response is not yet valid (thisUpdate in the future)")]
    NotYetValid,
    #[error("response was produced in the future (producedAt)")]
    ProducedInFuture,
    #[error("response has no nextUpdate and its thisUpdate is older than ocsp.max_age")]
    Stale,
    #[error("response does not carry the request's nonce")]
    NonceMismatch,
    #[error("response has expired (nextUpdate passed)")]
    Expired,
    #[error("responder timed out")]
    Timeout,
}

fn malformed(e: impl std::fmt::Display) -> OcspError {
    OcspError::Malformed(e.to_string())
}

/// The CertID of `leaf` as issued by `issuer` (SHA-1, as responders
/// expect): the hash of the issuer name *in the leaf* (RFC 6960 §4.1.1, as
/// OpenSSL computes it) and of `issuer`'s key, and the leaf's serial.
pub fn cert_id(leaf_der: &[u8], issuer_der: &[u8]) -> Result<CertId, OcspError> {
    let (_, leaf) =
        X509Certificate::from_der(leaf_der).map_err(|e| OcspError::Certificate(e.to_string()))?;
    let (_, issuer) =
        X509Certificate::from_der(issuer_der).map_err(|e| OcspError::Certificate(e.to_string()))?;
    let name_hash = Sha1::digest(leaf.issuer().as_raw());
    let key_hash = Sha1::digest(&issuer.public_key().subject_public_key.data);
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: ID_SHA1,
            parameters: Some(Null.into()),
        },
        issuer_name_hash: OctetString::new(name_hash.to_vec()).map_err(malformed)?,
        issuer_key_hash: OctetString::new(key_hash.to_vec()).map_err(malformed)?,
        serial_number: SerialNumber::new(leaf.raw_serial()).map_err(malformed)?,
    })
}

/// A DER OCSP request for `leaf`.
pub fn request(leaf_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, OcspError> {
    request_with_nonce(leaf_der, issuer_der, None)
}

/// A DER OCSP request for `leaf`, carrying `nonce` when given (the
/// extension's value an OCTET STRING of it, as RFC 8954 and OpenSSL have it).
pub fn request_with_nonce(
    leaf_der: &[u8],
    issuer_der: &[u8],
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, OcspError> {
    let request_extensions = match nonce {
        None => None,
        Some(n) => Some(vec![x509_cert::ext::Extension {
            extn_id: ID_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(nonce_value(n)?).map_err(malformed)?,
        }]),
    };
    let req = OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request {
                req_cert: cert_id(leaf_der, issuer_der)?,
                single_request_extensions: None,
            }],
            request_extensions,
        },
        optional_signature: None,
    };
    req.to_der().map_err(malformed)
}

/// The nonce extension's value: an OCTET STRING holding the nonce.
fn nonce_value(nonce: &[u8]) -> Result<Vec<u8>, OcspError> {
    OctetString::new(nonce)
        .and_then(|o| o.to_der())
        .map_err(malformed)
}

/// The OCSP responder URL in the certificate's Authority Information Access.
pub fn responder_url(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => aia.accessdescs.iter().find_map(|d| {
                // id-ad-ocsp
                (d.access_method.to_id_string() == "1.3.6.1.5.5.7.48.1")
                    .then_some(&d.access_location)
                    .and_then(|l| match l {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
            }),
            _ => None,
        })
}

/// POSTs `request` to an `http://` responder and returns the raw answer.
pub async fn query(url: &str, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, OcspError> {
    use super::http_fetch::{FetchError, send};
    send(
        hyper::Method::POST,
        url,
        Some("application/ocsp-request"),
        request,
        MAX_RESPONSE,
        timeout,
    )
    .await
    .map_err(|e| match e {
        FetchError::Unreachable(why) => OcspError::Unreachable(why),
        FetchError::Status(code) => OcspError::Http(code),
        FetchError::Body(why) => OcspError::Malformed(format!("reading the body: {why}")),
        FetchError::Timeout => OcspError::Timeout,
    })
}

/// Verifies a DER OCSP response for `leaf` issued by `issuer` at `now`
/// (Unix seconds), with the default maximum age and no nonce.
pub fn verify(
    response: &[u8],
    leaf_der: &[u8],
    issuer_der: &[u8],
    now: i64,
) -> Result<OcspAnswer, OcspError> {
    let checks = Checks {
        now,
        max_age: DEFAULT_MAX_AGE_SECS,
        nonce: None,
    };
    verify_with(response, leaf_der, issuer_der, &checks)
}

/// Verifies a DER OCSP response for `leaf` issued by `issuer` under `checks`.
pub fn verify_with(
    response: &[u8],
    leaf_der: &[u8],
    issuer_der: &[u8],
    checks: &Checks<'_>,
) -> Result<OcspAnswer, OcspError> {
    let now = checks.now;
    let outer = OcspResponse::from_der(response).map_err(malformed)?;
    if outer.response_status != OcspResponseStatus::Successful {
        return Err(OcspError::Refused(format!("{:?}", outer.response_status)));
    }
    let bytes = outer
        .response_bytes
        .ok_or_else(|| malformed("no responseBytes"))?;
    if bytes.response_type != ID_OCSP_BASIC {
        return Err(malformed(format!(
            "unsupported response type {}",
            bytes.response_type
        )));
    }
    let basic_der = bytes.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der).map_err(malformed)?;
    let (_, issuer) =
        X509Certificate::from_der(issuer_der).map_err(|e| OcspError::Certificate(e.to_string()))?;

    // Who signed: the issuer itself, or a delegated responder it certified.
    let delegated: Vec<Vec<u8>> = basic
        .certs
        .iter()
        .flatten()
        .filter_map(|c| c.to_der().ok())
        .collect();
    let signer = signer_cert(
        &basic.tbs_response_data.responder_id,
        &issuer,
        issuer_der,
        &delegated,
        now,
    )?;
    // The signature covers the tbsResponseData exactly as sent, checked
    // with the handshake's algorithms.
    crate::crypto::verify_signed(basic_der, signer)
        .map_err(|e| OcspError::BadSignature(e.to_string()))?;

    let data = &basic.tbs_response_data;
    if unix(&data.produced_at) > now + SKEW_SECS {
        return Err(OcspError::ProducedInFuture);
    }
    if let Some(nonce) = checks.nonce {
        let want = nonce_value(nonce)?;
        let echoed = data
            .response_extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == ID_OCSP_NONCE)
            .map(|e| e.extn_value.as_bytes());
        // Some responders put the bare nonce in the extension.
        if !echoed.is_some_and(|v| v == want.as_slice() || v == nonce) {
            return Err(OcspError::NonceMismatch);
        }
    }
    let want = cert_id(leaf_der, issuer_der)?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| same_cert(&r.cert_id, &want))
        .ok_or(OcspError::WrongCertificate)?;
    let this_update = unix(&single.this_update);
    if this_update > now + SKEW_SECS {
        return Err(OcspError::NotYetValid);
    }
    let next_update = single.next_update.as_ref().map(unix);
    match next_update {
        Some(nu) if nu < now => return Err(OcspError::Expired),
        None if now - this_update > checks.max_age + SKEW_SECS => return Err(OcspError::Stale),
        _ => {}
    }
    let status = match single.cert_status {
        CertStatus::Good(_) => OcspStatus::Good,
        CertStatus::Revoked(_) => OcspStatus::Revoked,
        CertStatus::Unknown(_) => OcspStatus::Unknown,
    };
    Ok(OcspAnswer {
        status,
        this_update,
        next_update,
    })
}

/// The DER certificate whose key must have signed the response: the
/// issuer, or a delegated responder it certified.
fn signer_cert<'a>(
    responder: &ResponderId,
    issuer: &X509Certificate<'_>,
    issuer_der: &'a [u8],
    delegated: &'a [Vec<u8>],
    now: i64,
) -> Result<&'a [u8], OcspError> {
    let names = |c: &X509Certificate<'_>| -> bool {
        match responder {
            ResponderId::ByName(name) => name.to_der().is_ok_and(|n| n == c.subject().as_raw()),
            ResponderId::ByKey(hash) => {
                hash.as_bytes() == Sha1::digest(&c.public_key().subject_public_key.data).as_slice()
            }
        }
    };
    if names(issuer) {
        return Ok(issuer_der);
    }
    for der in delegated {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            continue;
        };
        if !names(&cert) {
            continue;
        }
        if cert.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(OcspError::BadSigner(format!(
                "responder {} was not issued by {}",
                cert.subject(),
                issuer.subject()
            )));
        }
        crate::crypto::verify_signed(der, issuer_der).map_err(|e| {
            OcspError::BadSigner(format!(
                "responder certificate is not signed by the issuer: {e}"
            ))
        })?;
        let eku_ok = cert
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|e| e.value.ocsp_signing);
        if !eku_ok {
            return Err(OcspError::BadSigner(
                "responder certificate lacks id-kp-OCSPSigning".into(),
            ));
        }
        let v = cert.validity();
        if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
            return Err(OcspError::BadSigner(
                "responder certificate is outside its validity".into(),
            ));
        }
        return Ok(der);
    }
    Err(OcspError::BadSigner(
        "the responder named in the response is neither the issuer nor a certificate it carries"
            .into(),
    ))
}

fn same_cert(a: &CertId, b: &CertId) -> bool {
    a.hash_algorithm.oid == b.hash_algorithm.oid
        && a.issuer_name_hash == b.issuer_name_hash
        && a.issuer_key_hash == b.issuer_key_hash
        && a.serial_number == b.serial_number
}

fn unix(t: &x509_ocsp::OcspGeneralizedTime) -> i64 {
    t.0.to_unix_duration().as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_responses_are_malformed_not_panics() {
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x03\x0a\x01\x00",
            b"not der at all",
        ] {
            assert!(verify(junk, b"", b"", 0).is_err());
        }
    }
}
