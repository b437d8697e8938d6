//! Loading identity material from files: our SVID chain and private key, and
//! the trust bundle of CA certificates. Every error names the file and the
//! reason, and nothing is returned until the whole set is valid.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::clock::{fmt_time, unix_now};
use crate::files::{LoadError, read};
use crate::identity::{
    LeafInfo, SpiffeId, TrustDomain, check_parsed_leaf, serial_hex, spiffe_id_of,
};

/// Where a certificate sits in a chain, for metrics and `/certs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    Leaf,
    Intermediate,
    Root,
}

impl CertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::Leaf => "leaf",
            CertKind::Intermediate => "intermediate",
            CertKind::Root => "root",
        }
    }
}

/// What operators need to see of a loaded certificate (never its key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertSummary {
    pub kind: CertKind,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// The SPIFFE ID of a leaf, or of the trust domain for CAs.
    pub spiffe_id: String,
    pub not_before: i64,
    pub not_after: i64,
    pub sha256: String,
}

impl CertSummary {
    fn of(der: &[u8], kind: CertKind, spiffe_id: String) -> Result<Self, String> {
        let (_, c) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        Ok(CertSummary {
            kind,
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            serial: serial_hex(c.raw_serial()),
            spiffe_id,
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
            sha256: hex::encode(Sha256::digest(der)),
        })
    }
}

/// Our own SVID: the rustls signing material plus what we read from it.
#[derive(Debug, Clone)]
pub struct LoadedIdentity {
    /// Our chain and key, without a staple.
    pub certified: Arc<CertifiedKey>,
    pub leaf: LeafInfo,
    /// Leaf first, then intermediates, as in the file.
    pub chain: Vec<CertSummary>,
    /// The same with our OCSP staple, while it is valid.
    pub stapled: Option<Stapled>,
    /// Where it came from.
    pub source: Source,
}

/// Where identity or trust material came from, for metrics and `/certs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    File,
    WorkloadApi,
    BundleEndpoint,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::WorkloadApi => "workload_api",
            Source::BundleEndpoint => "bundle_endpoint",
        }
    }
}

/// Our certified key with an OCSP response attached, and when that
/// response's nextUpdate passes (Unix seconds): from then on it is not
/// served, since a peer would rightly refuse it.
#[derive(Debug, Clone)]
pub struct Stapled {
    pub certified: Arc<CertifiedKey>,
    pub until: i64,
}

/// The CA certificates trusted for one trust domain.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pub trust_domain: TrustDomain,
    /// `spiffe_sequence` when the file is a SPIFFE bundle: a reload to a
    /// lower one is a rollback, and refused.
    pub sequence: Option<u64>,
    pub anchors: Vec<TrustAnchor<'static>>,
    pub roots: Vec<CertSummary>,
    /// The roots themselves, to verify CRL signatures with.
    pub certs: Vec<CertificateDer<'static>>,
    /// Each root's subject (raw DER) and the SHA-256 of its SPKI, to pick
    /// the CRLs of the right CA when two share a name.
    pub root_keys: Vec<(Vec<u8>, [u8; 32])>,
    /// Where it came from.
    pub source: Source,
}

/// Trust bundles by trust domain: a peer is only ever verified against the
/// roots of the trust domain in its own SPIFFE ID. Revocation lists travel
/// with the trust they qualify.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    bundles: HashMap<TrustDomain, Arc<TrustBundle>>,
    revocation: Option<Arc<crate::revocation::CrlSet>>,
}

impl TrustStore {
    pub fn new(bundles: impl IntoIterator<Item = TrustBundle>) -> Self {
        TrustStore {
            bundles: bundles
                .into_iter()
                .map(|b| (b.trust_domain.clone(), Arc::new(b)))
                .collect(),
            revocation: None,
        }
    }

    /// Adds CRL checking to this trust.
    pub fn with_revocation(mut self, crls: crate::revocation::CrlSet) -> Self {
        self.revocation = Some(Arc::new(crls));
        self
    }

    pub fn revocation(&self) -> Option<&crate::revocation::CrlSet> {
        self.revocation.as_deref()
    }

    /// The bundle for a trust domain name, if we trust it at all.
    pub fn get(&self, trust_domain: &str) -> Option<&TrustBundle> {
        // Borrowed lookup without building a TrustDomain: names are few and
        // this runs once per handshake.
        self.bundles
            .iter()
            .find(|(td, _)| td.as_str() == trust_domain)
            .map(|(_, b)| b.as_ref())
    }

    pub fn bundles(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values().map(|b| b.as_ref())
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    pem_certs(path, &read(path)?)
}

/// The PEM certificates in `bytes`, read from `path`.
fn pem_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        match item {
            Ok(c) => certs.push(c),
            Err(e) => return Err(LoadError::new(path, format!("invalid PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(LoadError::new(
            path,
            "no PEM certificate found (expected \"-----BEGIN CERTIFICATE-----\")",
        ));
    }
    Ok(certs)
}

/// Loads our SVID chain and key, checks that they match, that the leaf is a
/// valid X.509-SVID and that it is within its validity period.
pub fn load_identity(cert_path: &Path, key_path: &Path) -> Result<LoadedIdentity, LoadError> {
    let chain = read_certs(cert_path)?;
    let key_bytes = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => {
                "no private key found (expected a PKCS#8, SEC1 or PKCS#1 PEM key)".to_string()
            }
            other => format!("invalid private key PEM: {other}"),
        };
        LoadError::new(key_path, why)
    })?;
    identity_from_der(chain, key, cert_path, key_path, Source::File)
}

/// Checks an SVID chain (leaf first) and its key from `source` as
/// [`load_identity`] does; errors name `cert_path` and `key_path`, the
/// places they came from.
pub fn identity_from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
    source: Source,
) -> Result<LoadedIdentity, LoadError> {
    if chain.is_empty() {
        return Err(LoadError::new(cert_path, "no certificate"));
    }
    let (_, leaf_cert) = X509Certificate::from_der(&chain[0]).map_err(|e| {
        LoadError::new(cert_path, format!("leaf certificate cannot be parsed: {e}"))
    })?;
    let leaf = check_parsed_leaf(&leaf_cert, None)
        .map_err(|e| LoadError::new(cert_path, format!("leaf is not a valid X.509-SVID: {e}")))?;
    let now = unix_now();
    if leaf.not_after < now {
        return Err(LoadError::new(
            cert_path,
            format!("leaf certificate expired at {}", fmt_time(leaf.not_after)),
        ));
    }
    if leaf.not_before > now {
        return Err(LoadError::new(
            cert_path,
            format!(
                "leaf certificate is not valid before {}",
                fmt_time(leaf.not_before)
            ),
        ));
    }

    let mut summaries = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        let (kind, id) = if i == 0 {
            (CertKind::Leaf, leaf.id.to_string())
        } else {
            (
                CertKind::Intermediate,
                leaf.id.trust_domain().id().to_string(),
            )
        };
        summaries.push(CertSummary::of(der, kind, id).map_err(|e| {
            LoadError::new(
                cert_path,
                format!("certificate {} cannot be parsed: {e}", i + 1),
            )
        })?);
    }

    let certified =
        CertifiedKey::from_der(chain, key, &crate::crypto::provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => LoadError {
                key_mismatch: true,
                ..LoadError::new(
                    key_path,
                    format!(
                        "private key does not match the certificate in {}",
                        cert_path.display()
                    ),
                )
            },
            other => LoadError::new(key_path, format!("unusable private key: {other}")),
        })?;
    Ok(LoadedIdentity {
        certified: Arc::new(certified),
        leaf,
        chain: summaries,
        stapled: None,
        source,
    })
}

/// Loads a trust bundle for `trust_domain`: every certificate must be a CA.
pub fn load_bundle(path: &Path, trust_domain: &TrustDomain) -> Result<TrustBundle, LoadError> {
    let bytes = read(path)?;
    bundle_from_bytes(&bytes, path, trust_domain, Source::File).map(|(b, _)| b)
}

/// A trust bundle for `trust_domain` from PEM or SPIFFE bundle `bytes`
/// (told apart by content) that came from `path`, with the bundle's
/// `spiffe_refresh_hint` if it has one.
pub fn bundle_from_bytes(
    bytes: &[u8],
    path: &Path,
    trust_domain: &TrustDomain,
    source: Source,
) -> Result<(TrustBundle, Option<std::time::Duration>), LoadError> {
    let (certs, sequence, hint) = if super::spiffe_bundle::is_json(bytes) {
        let b = super::spiffe_bundle::parse(bytes).map_err(|e| LoadError::new(path, e))?;
        (
            b.x509_authorities,
            b.sequence,
            b.refresh_hint.map(std::time::Duration::from_secs),
        )
    } else {
        (pem_certs(path, bytes)?, None, None)
    };
    Ok((
        bundle_from_certs(certs, sequence, path, trust_domain, source)?,
        hint,
    ))
}

/// A trust bundle for `trust_domain` from CA certificates that came from
/// `path`: every one must be a CA of that trust domain (or of none).
pub fn bundle_from_certs(
    certs: Vec<CertificateDer<'static>>,
    sequence: Option<u64>,
    path: &Path,
    trust_domain: &TrustDomain,
    source: Source,
) -> Result<TrustBundle, LoadError> {
    if certs.is_empty() {
        return Err(LoadError::new(
            path,
            format!("the bundle for {trust_domain} has no certificate"),
        ));
    }
    let mut anchors = Vec::with_capacity(certs.len());
    let mut roots = Vec::with_capacity(certs.len());
    let mut root_keys = Vec::with_capacity(certs.len());
    for (i, der) in certs.iter().enumerate() {
        let n = i + 1;
        let (_, parsed) = X509Certificate::from_der(der)
            .map_err(|e| LoadError::new(path, format!("certificate {n} cannot be parsed: {e}")))?;
        root_keys.push((
            parsed.subject().as_raw().to_vec(),
            Sha256::digest(parsed.public_key().raw).into(),
        ));
        if !parsed.is_ca() {
            return Err(LoadError::new(
                path,
                format!(
                    "certificate {n} ({}) is not a CA (basicConstraints CA=true is required in a trust bundle)",
                    parsed.subject()
                ),
            ));
        }
        // A CA that names a trust domain must name this one; a CA without a
        // SPIFFE ID is fine (the spec makes it optional).
        if let Ok(id) = spiffe_id_of(&parsed)
            && id.trust_domain_name() != trust_domain.as_str()
        {
            return Err(LoadError::new(
                path,
                format!(
                    "certificate {n} belongs to trust domain {:?}, not {:?}",
                    id.trust_domain_name(),
                    trust_domain.as_str()
                ),
            ));
        }
        let anchor = webpki::anchor_from_trusted_cert(der)
            .map_err(|e| {
                LoadError::new(
                    path,
                    format!("certificate {n} is not a usable trust anchor: {e}"),
                )
            })?
            .to_owned();
        anchors.push(anchor);
        roots.push(
            CertSummary::of(der, CertKind::Root, trust_domain.id().to_string())
                .map_err(|e| LoadError::new(path, format!("certificate {n}: {e}")))?,
        );
    }
    Ok(TrustBundle {
        trust_domain: trust_domain.clone(),
        sequence,
        anchors,
        roots,
        certs,
        root_keys,
        source,
    })
}

/// The SPIFFE ID of our own leaf, for callers that only need that.
impl LoadedIdentity {
    pub fn id(&self) -> &SpiffeId {
        &self.leaf.id
    }
}
