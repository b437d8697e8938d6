//! CRLs: loading (PEM or DER), verifying every list before anything uses
//! it, and an index by (issuer, serial) for open connections. Handshakes
//! hand the lists to rustls-webpki, which checks the whole chain (or only
//! the leaf) against them.
//!
//! A list is used only once its signature verifies, with the handshake's
//! algorithms, under a certificate that may sign it: a bundle root, or an
//! intermediate CA certified by one (from our own chain or
//! `revocation.intermediates`). A forged list could otherwise revoke
//! anybody, or make every peer under an intermediate fail even with
//! `failure: open`. Lists never roll back: one older than the list in
//! force for the same issuer (by CRL number, else thisUpdate) is refused,
//! so replaying last week's list cannot un-revoke a peer; within one load
//! only the newest list per issuer is used. Delta and indirect CRLs are
//! refused with a message saying so.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use webpki::{CertRevocationList, OwnedCertRevocationList};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::clock::{fmt_time, unix_now};
use crate::config::RevocationPolicy;
use crate::files::LoadError;

/// What operators see of one loaded CRL.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrlInfo {
    pub file: String,
    pub issuer: String,
    /// The CRL number, in hex.
    pub number: Option<String>,
    pub this_update: i64,
    pub next_update: Option<i64>,
    pub entries: usize,
}

/// One CRL issuer: its name and the key that signed (two CAs may share a
/// name during a rotation; each has its own list and numbering).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct IssuerKey {
    name: Vec<u8>,
    spki_sha256: [u8; 32],
}

/// Where a list stands in its issuer's sequence.
#[derive(Debug, Clone)]
struct CrlVersion {
    /// The CRL number's big-endian bytes, without leading zeros.
    number: Option<Vec<u8>>,
    this_update: i64,
}

impl CrlVersion {
    /// Whether this list was issued before `other` (same issuer).
    fn older_than(&self, other: &CrlVersion) -> bool {
        match (&self.number, &other.number) {
            (Some(a), Some(b)) => (a.len(), a) < (b.len(), b),
            _ => self.this_update < other.this_update,
        }
    }

    fn describe(&self) -> String {
        match &self.number {
            Some(n) => format!("number {}", number_hex(n)),
            None => format!("thisUpdate {}", fmt_time(self.this_update)),
        }
    }
}

fn number_hex(n: &[u8]) -> String {
    if n.is_empty() {
        "0".into()
    } else {
        hex::encode(n)
    }
}

/// A validated set of CRLs.
#[derive(Debug)]
pub struct CrlSet {
    pub policy: RevocationPolicy,
    lists: Vec<CertRevocationList<'static>>,
    /// Who signed each of `lists`, in the same order.
    signed_by: Vec<IssuerKey>,
    /// Two of `lists` name one issuer but were signed by different keys.
    namesakes: bool,
    /// Raw issuer name → revoked serials (DER integer contents, no leading
    /// zeros), for checking open connections.
    revoked: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    /// The version in force per issuer: no later set may go back.
    versions: HashMap<IssuerKey, CrlVersion>,
    pub info: Vec<CrlInfo>,
}

impl CrlSet {
    /// The lists as webpki takes them (a slice of references, built per
    /// verification: the set cannot hold references into itself).
    pub fn lists(&self) -> Vec<&CertRevocationList<'static>> {
        self.lists.iter().collect()
    }

    /// Whether the set holds any list (none yet, when they are to be
    /// fetched from distribution points), without building [`CrlSet::lists`].
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Whether two lists name the same issuer but were signed by different
    /// keys: two CAs with one name, as in a rotation. webpki takes the first
    /// list whose issuer *name* matches, so a certificate of the second CA
    /// would be checked against the first CA's list (and fail on its
    /// signature); the verifier then tries each root with [`CrlSet::for_root`].
    pub fn has_namesakes(&self) -> bool {
        self.namesakes
    }

    /// The lists a path ending at the root with this subject (raw DER) and
    /// SPKI (SHA-256 of its DER) may use: all but the lists of another CA
    /// of the same name.
    pub fn for_root(
        &self,
        subject: &[u8],
        spki_sha256: &[u8; 32],
    ) -> Vec<&CertRevocationList<'static>> {
        self.lists
            .iter()
            .zip(&self.signed_by)
            .filter(|(_, k)| k.name != subject || k.spki_sha256 == *spki_sha256)
            .map(|(l, _)| l)
            .collect()
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

/// Who may sign CRLs, and the set a new one must not roll back from.
pub struct CrlTrust<'a> {
    /// The trust bundles' certificates.
    pub roots: &'a [&'a CertificateDer<'static>],
    /// Candidate intermediates (our chain's, `revocation.intermediates`):
    /// only those a root certifies, directly or through another, sign.
    pub intermediates: &'a [CertificateDer<'static>],
    /// The set in force, if any.
    pub in_force: Option<&'a CrlSet>,
}

/// A certificate that may sign CRLs.
struct Signer<'a> {
    der: &'a [u8],
    subject: Vec<u8>,
    name: String,
    /// Whether its key usage allows signing CRLs (true without the
    /// extension).
    crl_sign: bool,
    spki_sha256: [u8; 32],
}

impl<'a> Signer<'a> {
    fn new(der: &'a [u8], cert: &X509Certificate<'_>) -> Self {
        let crl_sign = match cert.key_usage() {
            Ok(Some(ku)) => ku.value.crl_sign(),
            Ok(None) => true,
            Err(_) => false,
        };
        Signer {
            der,
            subject: cert.subject().as_raw().to_vec(),
            name: cert.subject().to_string(),
            crl_sign,
            spki_sha256: Sha256::digest(cert.public_key().raw).into(),
        }
    }
}

/// The roots, and the candidate intermediates that a root certifies
/// (signature under a signer already accepted, a CA, within validity);
/// the others with the reason, for error messages.
fn signers<'a>(trust: &'a CrlTrust<'a>, now: i64) -> (Vec<Signer<'a>>, Vec<(Vec<u8>, String)>) {
    let mut accepted: Vec<Signer<'a>> = Vec::new();
    for root in trust.roots {
        if let Ok((_, cert)) = X509Certificate::from_der(root) {
            accepted.push(Signer::new(root, &cert));
        }
    }
    let mut pending: Vec<&CertificateDer<'static>> = trust.intermediates.iter().collect();
    let mut why: HashMap<Vec<u8>, String> = HashMap::new();
    // Each round certifies at least one more, or stops.
    loop {
        let before = pending.len();
        pending.retain(|der| {
            let Ok((_, cert)) = X509Certificate::from_der(der) else {
                return false;
            };
            let subject = cert.subject().as_raw().to_vec();
            if accepted.iter().any(|s| s.der == der.as_ref()) {
                return false;
            }
            let is_ca = cert
                .basic_constraints()
                .ok()
                .flatten()
                .is_some_and(|b| b.value.ca);
            let v = cert.validity();
            let reason = if !is_ca {
                Some("it is not a CA certificate".to_string())
            } else if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
                Some(format!(
                    "it is outside its validity ({} to {})",
                    fmt_time(v.not_before.timestamp()),
                    fmt_time(v.not_after.timestamp())
                ))
            } else {
                None
            };
            if let Some(r) = reason {
                why.insert(subject, r);
                return false;
            }
            let issuer = cert.issuer().as_raw();
            let mut last = None;
            for s in accepted.iter().filter(|s| s.subject == issuer) {
                match crate::crypto::verify_signed(der, s.der) {
                    Ok(()) => {
                        let signer = Signer::new(der, &cert);
                        accepted.push(signer);
                        return false;
                    }
                    Err(e) => last = Some(e.to_string()),
                }
            }
            why.insert(
                subject,
                last.map_or_else(
                    || {
                        format!(
                            "no bundle root or certified intermediate named {} issued it",
                            cert.issuer()
                        )
                    },
                    |e| format!("it does not verify under its issuer {}: {e}", cert.issuer()),
                ),
            );
            true
        });
        if pending.len() == before || pending.is_empty() {
            break;
        }
    }
    (accepted, why.into_iter().collect())
}

/// One list read from a source, before it is kept.
struct Loaded {
    source: String,
    der: Vec<u8>,
    key: IssuerKey,
    version: CrlVersion,
    info: CrlInfo,
    serials: Vec<Vec<u8>>,
}

/// Loads every CRL in `paths` and `fetched`, verifying each against the
/// certificate that issued it and against rollback (see the module doc).
pub fn load_crls(
    paths: &[std::path::PathBuf],
    fetched: &[(String, Vec<u8>)],
    trust: &CrlTrust<'_>,
    policy: RevocationPolicy,
) -> Result<CrlSet, LoadError> {
    let now = unix_now();
    let (signers, uncertified) = signers(trust, now);
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
    let mut kept: HashMap<IssuerKey, Loaded> = HashMap::new();
    let mut order: Vec<IssuerKey> = Vec::new();
    for (path, ders) in sources {
        for der in ders {
            let loaded = load_one(&path, der, &signers, &uncertified)?;
            if let Some(held) = trust.in_force.and_then(|s| s.versions.get(&loaded.key))
                && loaded.version.older_than(held)
            {
                return Err(LoadError::new(
                    &path,
                    format!(
                        "CRL of {} is older ({}) than the one in force ({}); a list never rolls back (restart to start over)",
                        loaded.info.issuer,
                        loaded.version.describe(),
                        held.describe()
                    ),
                ));
            }
            match kept.get(&loaded.key) {
                Some(held) if !held.version.older_than(&loaded.version) => {
                    tracing::info!(file = %path.display(), issuer = %loaded.info.issuer, newer = %held.source, "CRL superseded by a newer one for the same issuer; not used");
                }
                Some(held) => {
                    tracing::info!(file = %held.source, issuer = %held.info.issuer, newer = %loaded.source, "CRL superseded by a newer one for the same issuer; not used");
                    kept.insert(loaded.key.clone(), loaded);
                }
                None => {
                    order.push(loaded.key.clone());
                    kept.insert(loaded.key.clone(), loaded);
                }
            }
        }
    }

    let mut set = CrlSet {
        policy,
        lists: Vec::with_capacity(order.len()),
        signed_by: Vec::with_capacity(order.len()),
        namesakes: false,
        revoked: HashMap::new(),
        versions: HashMap::with_capacity(order.len()),
        info: Vec::with_capacity(order.len()),
    };
    for key in order {
        let Some(l) = kept.remove(&key) else { continue };
        let path = Path::new(&l.source);
        let owned = OwnedCertRevocationList::from_der(&l.der).map_err(|e| {
            LoadError::new(path, format!("CRL is not usable: {}", webpki_reason(&e)))
        })?;
        if let Some(nu) = l.info.next_update
            && nu < now
        {
            tracing::warn!(file = %l.source, issuer = %l.info.issuer, next_update = %fmt_time(nu), "CRL is past its nextUpdate");
        }
        set.revoked
            .entry(key.name.clone())
            .or_default()
            .extend(l.serials);
        set.signed_by.push(key.clone());
        set.versions.insert(key, l.version);
        set.info.push(l.info);
        set.lists.push(CertRevocationList::Owned(owned));
    }
    set.namesakes = set.signed_by.iter().enumerate().any(|(i, a)| {
        set.signed_by[..i]
            .iter()
            .any(|b| b.name == a.name && b.spki_sha256 != a.spki_sha256)
    });
    Ok(set)
}

/// Parses, checks and verifies one list from `path`.
fn load_one(
    path: &Path,
    der: Vec<u8>,
    signers: &[Signer<'_>],
    uncertified: &[(Vec<u8>, String)],
) -> Result<Loaded, LoadError> {
    let err = |m: String| LoadError::new(path, m);
    let (_, parsed) = CertificateRevocationList::from_der(&der)
        .map_err(|e| err(format!("CRL cannot be parsed: {e}")))?;
    if parsed.version().is_none() {
        return Err(err(
            "this is a version 1 CRL (no CRL number, no extensions); portcullis needs version 2: \
             with `openssl ca -gencrl`, set `crlnumber` in the CA's config"
                .into(),
        ));
    }
    refuse_unsupported(&parsed).map_err(err)?;
    let signer = verify_signature(&der, &parsed, signers, uncertified).map_err(err)?;
    let number = parsed.crl_number().map(|n| trim(&n.to_bytes_be()).to_vec());
    let version = CrlVersion {
        number: number.clone(),
        this_update: parsed.last_update().timestamp(),
    };
    let serials: Vec<Vec<u8>> = parsed
        .iter_revoked_certificates()
        .map(|r| trim(r.raw_serial()).to_vec())
        .collect();
    let info = CrlInfo {
        file: path.display().to_string(),
        issuer: parsed.issuer().to_string(),
        number: number.as_deref().map(number_hex),
        this_update: version.this_update,
        next_update: parsed.next_update().map(|t| t.timestamp()),
        entries: serials.len(),
    };
    Ok(Loaded {
        source: path.display().to_string(),
        key: IssuerKey {
            name: parsed.issuer().as_raw().to_vec(),
            spki_sha256: signer.spki_sha256,
        },
        der,
        version,
        info,
        serials,
    })
}

/// Delta CRLs, indirect CRLs and lists partitioned by reason: each would
/// need handling we do not have, and using them as plain lists would
/// misjudge peers.
fn refuse_unsupported(crl: &CertificateRevocationList<'_>) -> Result<(), String> {
    for ext in crl.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::IssuingDistributionPoint(idp) if idp.indirect_crl => {
                return Err(
                    "indirect CRLs (entries for other issuers' certificates) are not supported"
                        .into(),
                );
            }
            ParsedExtension::IssuingDistributionPoint(idp) if idp.only_some_reasons.is_some() => {
                return Err("CRLs partitioned by revocation reason (onlySomeReasons) are not supported; give the complete list".into());
            }
            _ if ext.oid.to_id_string() == "2.5.29.27" => {
                return Err("delta CRLs are not supported; give the complete (base) CRL".into());
            }
            _ => {}
        }
    }
    if crl.iter_revoked_certificates().any(|r| {
        r.extensions()
            .iter()
            .any(|e| e.oid.to_id_string() == "2.5.29.29")
    }) {
        return Err(
            "indirect CRLs (entries naming another certificate issuer) are not supported".into(),
        );
    }
    if crl.next_update().is_none() {
        return Err("CRL has no nextUpdate (RFC 5280 requires one)".into());
    }
    Ok(())
}

/// The signer among `signers` whose key verifies the list; every signer
/// with the list's issuer name is tried (two CAs share a name during a
/// rotation).
fn verify_signature<'s, 'a>(
    der: &[u8],
    crl: &CertificateRevocationList<'_>,
    signers: &'s [Signer<'a>],
    uncertified: &[(Vec<u8>, String)],
) -> Result<&'s Signer<'a>, String> {
    let issuer = crl.issuer().as_raw();
    let mut last = None;
    for s in signers.iter().filter(|s| s.subject == issuer) {
        match crate::crypto::verify_signed(der, s.der) {
            Ok(()) if !s.crl_sign => {
                return Err(format!(
                    "CRL issuer {} may not sign CRLs (its key usage lacks cRLSign)",
                    s.name
                ));
            }
            Ok(()) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        return Err(format!(
            "CRL signature does not verify with its issuer {}: {e}",
            crl.issuer()
        ));
    }
    if let Some((_, why)) = uncertified.iter().find(|(s, _)| s == issuer) {
        return Err(format!(
            "CRL issuer {} cannot sign CRLs here: {why}",
            crl.issuer()
        ));
    }
    Err(format!(
        "CRL issuer {} is neither a trust-bundle root nor an intermediate certified by one; \
         add its certificate to revocation.intermediates",
        crl.issuer()
    ))
}

/// webpki's reasons for refusing a list, in words.
fn webpki_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnsupportedCrlVersion => "only version 2 CRLs are supported".into(),
        webpki::Error::UnsupportedDeltaCrl => "delta CRLs are not supported".into(),
        webpki::Error::UnsupportedIndirectCrl => "indirect CRLs are not supported".into(),
        webpki::Error::UnsupportedRevocationReasonsPartitioning => {
            "CRLs partitioned by reason are not supported".into()
        }
        webpki::Error::UnsupportedCriticalExtension => {
            "it has a critical extension portcullis does not understand".into()
        }
        webpki::Error::UnsupportedCrlIssuingDistributionPoint => {
            "its issuing distribution point is of a kind portcullis does not support".into()
        }
        webpki::Error::InvalidCrlNumber => "its CRL number is invalid".into(),
        other => format!("{other:?}"),
    }
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

/// The certificates in a PEM file of intermediates.
pub fn load_intermediates(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let bytes = crate::files::read(path)?;
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        match item {
            Ok(c) => out.push(c),
            Err(e) => return Err(LoadError::new(path, format!("invalid PEM: {e}"))),
        }
    }
    if out.is_empty() {
        return Err(LoadError::new(
            path,
            "no certificate found (expected PEM \"-----BEGIN CERTIFICATE-----\")",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TrustDomain;
    use crate::pki::{Ca, RevokedEntry};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);
    const POLICY: RevocationPolicy = RevocationPolicy {
        whole_chain: true,
        expired_is_unknown: true,
        fail_open: false,
        fetch_distribution_points: false,
    };

    fn entry(serial: &str) -> RevokedEntry {
        RevokedEntry {
            serial: serial.into(),
            revoked_at: time::OffsetDateTime::now_utc(),
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn crl(&self, name: &str, ca: &Ca, revoked: &[&str], number: u64) -> std::path::PathBuf {
            let p = self.0.path().join(name);
            let entries: Vec<_> = revoked.iter().map(|s| entry(s)).collect();
            std::fs::write(&p, ca.crl(&entries, number, DAY).unwrap()).unwrap();
            p
        }
    }

    fn serial(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn the_newest_list_per_issuer_is_used_whatever_the_order() {
        let td = TrustDomain::parse("prod.example.org").unwrap();
        let ca = Ca::generate(&td, DAY).unwrap();
        let root = der(ca.cert_pem());
        let roots = [&root];
        let trust = CrlTrust {
            roots: &roots,
            intermediates: &[],
            in_force: None,
        };
        let dir = Dir(tempfile::tempdir().unwrap());
        let old = dir.crl("old.crl", &ca, &["0a"], 1);
        let new = dir.crl("new.crl", &ca, &["0b"], 2);
        let issuer = x509_parser::parse_x509_certificate(&root)
            .unwrap()
            .1
            .subject()
            .as_raw()
            .to_vec();
        for files in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
            let set = load_crls(&files, &[], &trust, POLICY).unwrap();
            assert_eq!(set.lists().len(), 1, "{files:?}");
            assert!(set.is_revoked(&issuer, &serial("0b")), "{files:?}");
            assert!(!set.is_revoked(&issuer, &serial("0a")), "{files:?}");
            assert_eq!(set.info[0].number.as_deref(), Some("02"));
        }
    }

    #[test]
    fn two_cas_with_one_name_keep_their_own_lists_and_numbers() {
        // During a rotation the old and the new CA share a subject name.
        let td = TrustDomain::parse("prod.example.org").unwrap();
        let (old_ca, new_ca) = (
            Ca::generate(&td, DAY).unwrap(),
            Ca::generate(&td, DAY).unwrap(),
        );
        let (a, b) = (der(old_ca.cert_pem()), der(new_ca.cert_pem()));
        let roots = [&a, &b];
        let dir = Dir(tempfile::tempdir().unwrap());
        let files = [
            dir.crl("old-ca.crl", &old_ca, &["0a"], 7),
            dir.crl("new-ca.crl", &new_ca, &["0b"], 1),
        ];
        let first = CrlTrust {
            roots: &roots,
            intermediates: &[],
            in_force: None,
        };
        let set = load_crls(&files, &[], &first, POLICY).unwrap();
        assert_eq!(set.lists().len(), 2);
        // The new CA's list 2 is not "older" than the old CA's list 7.
        let files = [
            dir.crl("old-ca.crl", &old_ca, &["0a"], 7),
            dir.crl("new-ca.crl", &new_ca, &["0b", "0c"], 2),
        ];
        let next = CrlTrust {
            in_force: Some(&set),
            ..first
        };
        let set2 = load_crls(&files, &[], &next, POLICY).unwrap();
        assert_eq!(set2.info.len(), 2);
        // But the old CA going back from 7 to 6 is refused.
        let files = [dir.crl("old-ca.crl", &old_ca, &[], 6)];
        let last = CrlTrust {
            in_force: Some(&set2),
            ..first
        };
        let err = load_crls(&files, &[], &last, POLICY)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("older (number 06) than the one in force (number 07)"),
            "{err}"
        );
    }

    #[test]
    fn an_intermediate_signs_only_when_a_root_certifies_it() {
        let td = TrustDomain::parse("prod.example.org").unwrap();
        let ca = Ca::generate(&td, DAY).unwrap();
        let inter = ca.intermediate(DAY).unwrap();
        let other_root = Ca::generate(&td, DAY).unwrap();
        let stray = other_root.intermediate(DAY).unwrap();
        let root = der(ca.cert_pem());
        let roots = [&root];
        let dir = Dir(tempfile::tempdir().unwrap());
        let certified = [der(inter.cert_pem())];
        let trust = CrlTrust {
            roots: &roots,
            intermediates: &certified,
            in_force: None,
        };
        load_crls(&[dir.crl("i.crl", &inter, &["01"], 1)], &[], &trust, POLICY).unwrap();
        // The same name, certified by a root nobody trusts: its list is
        // refused, saying why.
        let uncertified = [der(stray.cert_pem())];
        let trust = CrlTrust {
            roots: &roots,
            intermediates: &uncertified,
            in_force: None,
        };
        let err = load_crls(&[dir.crl("s.crl", &stray, &["01"], 1)], &[], &trust, POLICY)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.crl") && err.contains("does not verify under its issuer"),
            "{err}"
        );
    }
}
