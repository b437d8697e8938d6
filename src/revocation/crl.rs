//! CRLs: loading (PEM or DER), checking each list's signature against its
//! issuer in the trust bundles, and an index by (issuer, serial) for open
//! connections. Handshakes hand the lists to rustls-webpki, which checks
//! the whole chain (or only the leaf) against them.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use webpki::{CertRevocationList, OwnedCertRevocationList};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use rustls_pki_types::CertificateDer;

use crate::clock::{fmt_time, unix_now};
use crate::config::RevocationPolicy;
use crate::files::LoadError;

/// What operators see of one loaded CRL.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrlInfo {
    pub file: String,
    pub issuer: String,
    pub this_update: i64,
    pub next_update: Option<i64>,
    pub entries: usize,
}

/// A validated set of CRLs.
#[derive(Debug)]
pub struct CrlSet {
    pub policy: RevocationPolicy,
    lists: Vec<CertRevocationList<'static>>,
    /// Raw issuer name → revoked serials (DER integer contents, no leading
    /// zeros), for checking open connections.
    revoked: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    pub info: Vec<CrlInfo>,
}

impl CrlSet {
    pub fn lists(&self) -> Vec<&CertRevocationList<'static>> {
        self.lists.iter().collect()
    }

    /// Whether the certificate with this issuer name and serial is listed.
    pub fn is_revoked(&self, issuer_raw: &[u8], serial: &[u8]) -> bool {
        self.revoked
            .get(issuer_raw)
            .is_some_and(|s| s.contains(trim(serial)))
    }
}

fn trim(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[start..]
}

/// Loads every CRL in `paths`, verifying each one's signature with the
/// root among `roots` (the trust bundles' certificates) that issued it. A CRL whose issuer is not a trusted root
/// (an intermediate's) is checked by webpki against the intermediate in the
/// chain when it is used.
pub fn load_crls(
    paths: &[std::path::PathBuf],
    fetched: &[(String, Vec<u8>)],
    roots: &[&CertificateDer<'_>],
    policy: RevocationPolicy,
) -> Result<CrlSet, LoadError> {
    let mut lists = Vec::new();
    let mut revoked: HashMap<Vec<u8>, HashSet<Vec<u8>>> = HashMap::new();
    let mut info = Vec::new();
    let mut sources: Vec<(std::path::PathBuf, Vec<Vec<u8>>)> =
        Vec::with_capacity(paths.len() + fetched.len());
    for path in paths {
        sources.push((path.clone(), read_crl_file(path)?));
    }
    for (url, bytes) in fetched {
        let name = std::path::PathBuf::from(url);
        let ders = parse_crl_bytes(&name, bytes.clone())?;
        sources.push((name, ders));
    }
    for (path, ders) in &sources {
        let path = path.as_path();
        for der in ders {
            let (_, parsed) = CertificateRevocationList::from_der(der)
                .map_err(|e| LoadError::new(path, format!("CRL cannot be parsed: {e}")))?;
            verify_issuer(path, &parsed, roots)?;
            let owned = OwnedCertRevocationList::from_der(der)
                .map_err(|e| LoadError::new(path, format!("CRL is not usable: {e}")))?;
            let issuer_raw = parsed.tbs_cert_list.issuer.as_raw().to_vec();
            let set = revoked.entry(issuer_raw).or_default();
            let mut entries = 0;
            for r in parsed.iter_revoked_certificates() {
                set.insert(trim(r.raw_serial()).to_vec());
                entries += 1;
            }
            let next_update = parsed.next_update().map(|t| t.timestamp());
            if let Some(nu) = next_update
                && nu < unix_now()
            {
                tracing::warn!(file = %path.display(), issuer = %parsed.issuer(), next_update = %fmt_time(nu), "CRL is past its nextUpdate");
            }
            info.push(CrlInfo {
                file: path.display().to_string(),
                issuer: parsed.issuer().to_string(),
                this_update: parsed.last_update().timestamp(),
                next_update,
                entries,
            });
            lists.push(CertRevocationList::Owned(owned));
        }
    }
    Ok(CrlSet {
        policy,
        lists,
        revoked,
        info,
    })
}

fn read_crl_file(path: &Path) -> Result<Vec<Vec<u8>>, LoadError> {
    parse_crl_bytes(path, crate::files::read(path)?)
}

/// PEM (one or more lists) or DER (one list); `path` names the source.
pub fn parse_crl_bytes(path: &Path, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, LoadError> {
    let mut out = Vec::new();
    for item in CertificateRevocationListDer::pem_slice_iter(&bytes) {
        match item {
            Ok(d) => out.push(d.as_ref().to_vec()),
            Err(e) => return Err(LoadError::new(path, format!("invalid PEM: {e}"))),
        }
    }
    if out.is_empty() {
        if bytes.first() == Some(&0x30) {
            out.push(bytes);
        } else {
            return Err(LoadError::new(
                path,
                "no CRL found (expected PEM \"-----BEGIN X509 CRL-----\" or DER)",
            ));
        }
    }
    Ok(out)
}

/// Checks the CRL's signature against the trusted root that issued it.
fn verify_issuer(
    path: &Path,
    crl: &CertificateRevocationList<'_>,
    roots: &[&CertificateDer<'_>],
) -> Result<(), LoadError> {
    let issuer = crl.issuer().as_raw();
    for der in roots {
        let Ok((_, ca)) = X509Certificate::from_der(der) else {
            continue;
        };
        if ca.subject().as_raw() != issuer {
            continue;
        }
        return crl.verify_signature(ca.public_key()).map_err(|e| {
            LoadError::new(
                path,
                format!(
                    "CRL signature does not verify with its issuer {} in the trust bundle: {e}",
                    ca.subject()
                ),
            )
        });
    }
    tracing::info!(file = %path.display(), issuer = %crl.issuer(), "CRL issuer is not a trusted root; its signature is checked against the intermediate in each chain");
    Ok(())
}
