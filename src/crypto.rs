//! The one crypto stack: the aws-lc-rs provider every rustls config is
//! built with, and signature checks on the other signed X.509 structures a
//! sidecar trusts (CRLs, OCSP responses, a delegated OCSP responder's
//! certificate) with exactly the algorithms that provider accepts in
//! handshakes. So a CRL or OCSP answer is never easier to forge than a
//! certificate: SHA-1 signatures, RSA keys under 2048 bits and anything
//! else rustls-webpki would refuse in a chain are refused here too.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm};
use x509_cert::der::asn1::{AnyRef, BitStringRef, ObjectIdentifier};
use x509_cert::der::{Decode, Header, Reader, SliceReader, Tag, Tagged};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The process-wide provider. Built once; every config uses the
/// `*_with_provider` builders with it, so nothing depends on a global
/// default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The smallest RSA modulus accepted, as rustls-webpki's RSA algorithms
/// require for certificates.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("not a signed structure: {0}")]
    Malformed(String),
    #[error("the signer's certificate cannot be used: {0}")]
    Signer(String),
    #[error("signed with {0}, which is refused (SHA-1 is not accepted, as in handshakes)")]
    Weak(&'static str),
    #[error("signature algorithm {0} is not accepted (the handshake's algorithms only)")]
    Unsupported(String),
    #[error("the signer's RSA key has {0} bits; at least 2048 are required")]
    ShortRsaKey(usize),
    #[error("signature algorithm {0} does not match the signer's key type")]
    WrongKeyType(String),
    #[error("signature does not verify with the signer's key")]
    Invalid,
}

/// Signature algorithms known to be weak, by OID, for messages that say
/// what was wrong rather than only "unsupported".
const WEAK: &[(&str, &str)] = &[
    ("1.2.840.113549.1.1.5", "sha1WithRSAEncryption"),
    ("1.2.840.113549.1.1.4", "md5WithRSAEncryption"),
    ("1.2.840.10045.4.1", "ecdsa-with-SHA1"),
    ("1.2.840.10040.4.3", "dsa-with-sha1"),
];

/// The parts of `SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING, ... }`
/// (a certificate, a CRL, a BasicOCSPResponse): the tbs exactly as
/// encoded, the algorithm identifier's contents and the signature bytes.
struct Signed<'a> {
    tbs: &'a [u8],
    algorithm: &'a [u8],
    signature: &'a [u8],
}

fn malformed(e: impl std::fmt::Display) -> SignatureError {
    SignatureError::Malformed(e.to_string())
}

fn split(signed_der: &[u8]) -> Result<Signed<'_>, SignatureError> {
    let mut outer = SliceReader::new(signed_der).map_err(malformed)?;
    let header = Header::decode(&mut outer).map_err(malformed)?;
    if header.tag != Tag::Sequence {
        return Err(malformed("expected a SEQUENCE"));
    }
    let tbs = outer.tlv_bytes().map_err(malformed)?;
    let algorithm = AnyRef::decode(&mut outer).map_err(malformed)?;
    if algorithm.tag() != Tag::Sequence {
        return Err(malformed(
            "the signature algorithm is not an AlgorithmIdentifier",
        ));
    }
    let signature = BitStringRef::decode(&mut outer).map_err(malformed)?;
    let signature = signature
        .as_bytes()
        .ok_or_else(|| malformed("the signature has unused bits"))?;
    Ok(Signed {
        tbs,
        algorithm: algorithm.value(),
        signature,
    })
}

/// The dotted OID at the start of an AlgorithmIdentifier's contents.
fn algorithm_name(contents: &[u8]) -> String {
    SliceReader::new(contents)
        .and_then(|mut r| ObjectIdentifier::decode(&mut r))
        .map_or_else(|_| "(unreadable)".to_string(), |oid| oid.to_string())
}

/// Verifies the signature on `signed_der` (a certificate, CRL or
/// BasicOCSPResponse) with the key of the certificate `signer_der`, under
/// the handshake provider's algorithms.
pub fn verify_signed(signed_der: &[u8], signer_der: &[u8]) -> Result<(), SignatureError> {
    let signed = split(signed_der)?;
    let oid = algorithm_name(signed.algorithm);
    if let Some((_, name)) = WEAK.iter().find(|(o, _)| *o == oid) {
        return Err(SignatureError::Weak(name));
    }
    let (_, signer) = x509_parser::certificate::X509Certificate::from_der(signer_der)
        .map_err(|e| SignatureError::Signer(e.to_string()))?;
    if let Ok(PublicKey::RSA(rsa)) = signer.public_key().parsed()
        && rsa.key_size() < MIN_RSA_BITS
    {
        return Err(SignatureError::ShortRsaKey(rsa.key_size()));
    }
    let signer_der = CertificateDer::from(signer_der);
    let signer = webpki::EndEntityCert::try_from(&signer_der)
        .map_err(|e| SignatureError::Signer(format!("{e:?}")))?;
    let candidates = provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|a| a.signature_alg_id().as_ref() == signed.algorithm);
    let mut seen = false;
    for alg in candidates {
        seen = true;
        match signer.verify_signature(
            *alg as &dyn SignatureVerificationAlgorithm,
            signed.tbs,
            signed.signature,
        ) {
            Ok(()) => return Ok(()),
            // ECDSA: one identifier per hash, one algorithm per curve;
            // try the next curve.
            Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => continue,
            Err(_) => return Err(SignatureError::Invalid),
        }
    }
    if seen {
        Err(SignatureError::WrongKeyType(oid))
    } else {
        Err(SignatureError::Unsupported(oid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(alg: &'static rcgen::SignatureAlgorithm) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn certificates_verify_with_their_signer_and_nothing_else() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (cert, _) = ca(alg);
            verify_signed(cert.der(), cert.der()).unwrap();
        }
        let (a, _) = ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (b, _) = ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            verify_signed(a.der(), b.der()),
            Err(SignatureError::Invalid)
        );
        let (p384, _) = ca(&rcgen::PKCS_ECDSA_P384_SHA384);
        let (ed, _) = ca(&rcgen::PKCS_ED25519);
        assert!(matches!(
            verify_signed(ed.der(), p384.der()),
            Err(SignatureError::WrongKeyType(_))
        ));

        // One flipped bit in the signed part.
        let mut tampered = a.der().to_vec();
        let at = tampered.len() / 3;
        tampered[at] ^= 1;
        assert!(verify_signed(&tampered, a.der()).is_err());
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let (a, _) = ca(&rcgen::PKCS_ECDSA_P256_SHA256);
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x03\x02\x01\x00",
            b"\x04\x00",
            &a.der()[..20],
        ] {
            assert!(verify_signed(junk, a.der()).is_err());
            assert!(verify_signed(a.der(), junk).is_err());
        }
    }
}
