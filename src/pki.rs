//! A small development PKI built on rcgen: a CA per trust domain, SVIDs
//! issued from it, and CRLs. Used by `portcullis cert`, by `portcullis demo`
//! and by the tests, which make every certificate they need at run time.
//!
//! Production identities come from an outside issuer (SPIRE, cert-manager);
//! nothing here is on the proxy's data path.

use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyPair, PKCS_ECDSA_P256_SHA256, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
pub use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{SpiffeId, TrustDomain, serial_hex};

/// Certificates are backdated by this much so that small clock skew between
/// machines does not make a fresh certificate "not yet valid".
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A PEM certificate (or chain) and its PEM private key.
#[derive(Clone)]
pub struct Issued {
    /// The certificate, followed by any intermediates, in PEM.
    pub cert_pem: String,
    /// PKCS#8 PEM private key. Never logged.
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    /// Serial number as lowercase hex.
    pub serial: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// What to put in a leaf certificate. [`LeafSpec::svid`] gives a valid
/// X.509-SVID; tests change fields to make invalid ones.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    pub key_usages: Vec<KeyUsagePurpose>,
    /// Whether the key usage extension is marked critical, as the
    /// X.509-SVID spec requires (false only to make bad test vectors; then
    /// `key_usages` must be just `DigitalSignature`).
    pub key_usage_critical: bool,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    /// CRL distribution point URLs.
    pub crl_distribution_points: Vec<String>,
}

impl LeafSpec {
    /// A valid SVID for `id`, valid from now (backdated slightly) for `ttl`.
    pub fn svid(id: &SpiffeId, ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            uris: vec![id.to_string()],
            dns_names: Vec::new(),
            not_before: now - BACKDATE,
            not_after: now + ttl,
            is_ca: false,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            key_usage_critical: true,
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            crl_distribution_points: Vec::new(),
        }
    }
}

/// A certificate authority that can issue SVIDs and CRLs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: Issued,
    /// The CA's own chain up to (not including) the root, so that SVIDs
    /// issued by an intermediate carry their chain.
    chain_pem: String,
    trust_domain: Option<TrustDomain>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("serial", &self.cert.serial)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed root CA for `trust_domain`, valid for `validity`.
    pub fn generate(trust_domain: &TrustDomain, validity: Duration) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(trust_domain, "portcullis dev root CA", validity)?;
        let cert = params.self_signed(&key)?;
        let issued = issued(cert.der().clone(), cert.pem(), key.serialize_pem())?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert: issued,
            chain_pem: String::new(),
            trust_domain: Some(trust_domain.clone()),
        })
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, validity: Duration) -> Result<Ca, PkiError> {
        let td = self
            .trust_domain
            .clone()
            .ok_or_else(|| PkiError::Invalid("CA has no trust domain".into()))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(&td, "portcullis dev intermediate CA", validity)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = issued(cert.der().clone(), cert.pem(), key.serialize_pem())?;
        let chain_pem = format!("{}{}", issued.cert_pem, self.chain_pem);
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert: issued,
            chain_pem,
            trust_domain: Some(td),
        })
    }

    /// Loads a CA from its PEM certificate and PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("CA certificate is not PEM: {e}")))?;
        let (trust_domain, self_signed) = {
            let (_, parsed) = X509Certificate::from_der(&der)
                .map_err(|e| PkiError::Invalid(format!("CA certificate cannot be parsed: {e}")))?;
            if !parsed.is_ca() {
                return Err(PkiError::Invalid(
                    "certificate is not a CA (basicConstraints CA=false)".into(),
                ));
            }
            let td = crate::identity::spiffe_id_of(&parsed)
                .ok()
                .map(|id| id.trust_domain());
            (td, parsed.subject() == parsed.issuer())
        };
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        let cert = issued(der, cert_pem.to_string(), String::new())?;
        let chain_pem = if self_signed {
            String::new()
        } else {
            cert.cert_pem.clone()
        };
        Ok(Ca {
            issuer,
            cert,
            chain_pem,
            trust_domain,
        })
    }

    /// The CA's own certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert.cert_pem
    }

    /// The CA's private key in PEM (empty for a CA loaded from files).
    pub fn key_pem(&self) -> &str {
        &self.cert.key_pem
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.cert.der
    }

    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }

    /// Issues a valid X.509-SVID for `id`, EC P-256, valid for `ttl`.
    pub fn issue_svid(&self, id: &SpiffeId, ttl: Duration) -> Result<Issued, PkiError> {
        self.issue(&LeafSpec::svid(id, ttl))
    }

    /// Issues a leaf as `spec` describes, with a fresh P-256 key and a random
    /// serial. The returned chain holds the leaf then this CA's intermediates.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "portcullis");
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = spec.key_usages.clone();
        if !spec.key_usage_critical {
            // rcgen always marks key usage critical: write it by hand.
            // BIT STRING, 7 unused bits, digitalSignature (bit 0).
            params.key_usages.clear();
            let mut ku =
                rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![3, 2, 7, 0x80]);
            ku.set_criticality(false);
            params.custom_extensions.push(ku);
        }
        params.extended_key_usages = spec.extended_key_usages.clone();
        params.use_authority_key_identifier_extension = true;
        if !spec.crl_distribution_points.is_empty() {
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: spec.crl_distribution_points.clone(),
            }];
        }
        for uri in &spec.uris {
            params.subject_alt_names.push(SanType::URI(
                uri.as_str()
                    .try_into()
                    .map_err(|e| PkiError::Invalid(format!("URI SAN {uri:?}: {e}")))?,
            ));
        }
        for dns in &spec.dns_names {
            params.subject_alt_names.push(SanType::DnsName(
                dns.as_str()
                    .try_into()
                    .map_err(|e| PkiError::Invalid(format!("DNS SAN {dns:?}: {e}")))?,
            ));
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut out = issued(cert.der().clone(), cert.pem(), key.serialize_pem())?;
        out.cert_pem.push_str(&self.chain_pem);
        Ok(out)
    }

    /// A CRL signed by this CA listing `revoked` serials (lowercase hex),
    /// valid from now (backdated slightly) for `next_update_in`.
    pub fn crl(
        &self,
        revoked: &[RevokedEntry],
        crl_number: u64,
        next_update_in: Duration,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.crl_at(revoked, crl_number, now - BACKDATE, now + next_update_in)
    }

    /// A CRL with explicit thisUpdate and nextUpdate (tests make stale ones).
    pub fn crl_at(
        &self,
        revoked: &[RevokedEntry],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for entry in revoked {
            let bytes = hex::decode(pad_even(&entry.serial)).map_err(|_| {
                PkiError::Invalid(format!("serial {:?} is not hexadecimal", entry.serial))
            })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: entry.revoked_at,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// One revoked certificate in a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: String,
    pub revoked_at: OffsetDateTime,
}

/// Reads the entries and CRL number of an existing CRL, so that revoking one
/// more serial keeps the earlier ones.
pub fn read_crl(pem_or_der: &[u8]) -> Result<(Vec<RevokedEntry>, u64), PkiError> {
    let der = match CertificateRevocationListDer::from_pem_slice(pem_or_der) {
        Ok(d) => d.as_ref().to_vec(),
        Err(_) => pem_or_der.to_vec(),
    };
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|e| PkiError::Invalid(format!("CRL cannot be parsed: {e}")))?;
    let mut entries = Vec::new();
    for r in crl.iter_revoked_certificates() {
        let revoked_at = OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
            .map_err(|e| PkiError::Invalid(format!("CRL entry date: {e}")))?;
        entries.push(RevokedEntry {
            serial: serial_hex(r.raw_serial()),
            revoked_at,
        });
    }
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n.clone()).ok())
        .unwrap_or(0);
    Ok((entries, number))
}

fn ca_params(
    td: &TrustDomain,
    common_name: &str,
    validity: Duration,
) -> Result<CertificateParams, PkiError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "portcullis");
    dn.push(DnType::CommonName, format!("{common_name} {td}"));
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    let uri = td.id().to_string();
    params.subject_alt_names.push(SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|e| PkiError::Invalid(format!("URI SAN {uri:?}: {e}")))?,
    ));
    Ok(params)
}

fn issued(
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
) -> Result<Issued, PkiError> {
    let (_, parsed) = X509Certificate::from_der(&der)
        .map_err(|e| PkiError::Invalid(format!("generated certificate cannot be parsed: {e}")))?;
    let serial = serial_hex(parsed.raw_serial());
    Ok(Issued {
        cert_pem,
        key_pem,
        der,
        serial,
    })
}

/// A random, positive, non-zero 128-bit serial (RFC 5280 allows 20 bytes).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn pad_even(hex: &str) -> String {
    if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Role, SvidError, check_leaf};

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }
    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap()
    }
    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn issued_svid_passes_every_svid_rule() {
        let ca = Ca::generate(&td(), DAY).unwrap();
        let svid = ca.issue_svid(&id(), DAY).unwrap();
        let info = check_leaf(&svid.der, Some(Role::Client)).unwrap();
        assert_eq!(info.id, id());
        assert_eq!(info.serial, svid.serial);
        assert!(check_leaf(&svid.der, Some(Role::Server)).is_ok());
    }

    #[test]
    fn svid_rules_refuse_bad_leaves() {
        let ca = Ca::generate(&td(), DAY).unwrap();
        let base = LeafSpec::svid(&id(), DAY);
        let check = |spec: LeafSpec, role| {
            let c = ca.issue(&spec).unwrap();
            check_leaf(&c.der, Some(role))
        };
        let mut two = base.clone();
        two.uris.push("spiffe://example.org/other".into());
        assert_eq!(check(two, Role::Client), Err(SvidError::MultipleUriSans(2)));

        let mut none = base.clone();
        none.uris.clear();
        none.dns_names.push("a.example.org".into());
        assert_eq!(check(none, Role::Client), Err(SvidError::NoUriSan));

        let mut bad_id = base.clone();
        bad_id.uris = vec!["spiffe://example.org/a/".into()];
        assert!(matches!(
            check(bad_id, Role::Client),
            Err(SvidError::InvalidSpiffeId(_))
        ));

        let mut ca_leaf = base.clone();
        ca_leaf.is_ca = true;
        assert_eq!(check(ca_leaf, Role::Client), Err(SvidError::IsCa));

        let mut no_ds = base.clone();
        no_ds.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        assert_eq!(
            check(no_ds, Role::Client),
            Err(SvidError::NoDigitalSignature)
        );

        let mut no_ku = base.clone();
        no_ku.key_usages.clear();
        assert_eq!(
            check(no_ku, Role::Client),
            Err(SvidError::NoDigitalSignature)
        );

        let mut cert_sign = base.clone();
        cert_sign.key_usages.push(KeyUsagePurpose::KeyCertSign);
        assert_eq!(check(cert_sign, Role::Client), Err(SvidError::KeyCertSign));

        let mut crl_sign = base.clone();
        crl_sign.key_usages.push(KeyUsagePurpose::CrlSign);
        assert_eq!(check(crl_sign, Role::Client), Err(SvidError::CrlSign));

        let mut server_only = base.clone();
        server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        assert_eq!(
            check(server_only.clone(), Role::Client),
            Err(SvidError::ExtendedKeyUsage("clientAuth"))
        );
        assert!(check(server_only, Role::Server).is_ok());

        let mut no_eku = base.clone();
        no_eku.extended_key_usages.clear();
        assert!(check(no_eku, Role::Client).is_ok());

        // The trust domain's own ID names no workload.
        let mut no_path = base.clone();
        no_path.uris = vec!["spiffe://example.org".into()];
        assert_eq!(check(no_path, Role::Client), Err(SvidError::NoPath));

        let mut ku_not_critical = base;
        ku_not_critical.key_usage_critical = false;
        assert_eq!(
            check(ku_not_critical, Role::Server),
            Err(SvidError::KeyUsageNotCritical)
        );
    }

    #[test]
    fn issued_svids_mark_key_usage_critical() {
        let ca = Ca::generate(&td(), DAY).unwrap();
        let svid = ca.issue_svid(&id(), DAY).unwrap();
        let (_, cert) = X509Certificate::from_der(&svid.der).unwrap();
        assert!(cert.key_usage().unwrap().unwrap().critical);
    }

    #[test]
    fn ca_round_trips_through_pem_and_intermediates_chain() {
        let root = Ca::generate(&td(), DAY).unwrap();
        let loaded = Ca::from_pem(root.cert_pem(), root.key_pem()).unwrap();
        assert_eq!(loaded.trust_domain(), Some(&td()));
        let inter = root.intermediate(DAY).unwrap();
        let leaf = inter.issue_svid(&id(), DAY).unwrap();
        assert_eq!(leaf.cert_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let leaf_from_root = loaded.issue_svid(&id(), DAY).unwrap();
        assert_eq!(
            leaf_from_root.cert_pem.matches("BEGIN CERTIFICATE").count(),
            1
        );
    }

    #[test]
    fn crl_keeps_entries_and_counts_up() {
        let ca = Ca::generate(&td(), DAY).unwrap();
        let a = ca.issue_svid(&id(), DAY).unwrap();
        let entry = RevokedEntry {
            serial: a.serial.clone(),
            revoked_at: OffsetDateTime::now_utc(),
        };
        let crl = ca.crl(&[entry], 7, DAY).unwrap();
        let (entries, number) = read_crl(crl.as_bytes()).unwrap();
        assert_eq!(number, 7);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].serial, a.serial);
    }
}
