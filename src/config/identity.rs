//! `identity`: our SVID, its key, and the trust bundles peers are verified
//! against.

use std::ops::Bound;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Check, ConfigError};
use super::duration::ConfigDuration;
use super::yaml::Pairs;
use crate::identity::TrustDomain;

#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
    /// The trust domain the bundle is for; defaults to our own SVID's.
    pub trust_domain: Option<TrustDomain>,
    /// Federation: the bundles of other trust domains. A peer is verified
    /// only against the bundle of its own trust domain.
    pub trust_bundles: Vec<(TrustDomain, PathBuf)>,
    /// Warn when our leaf has less than this share of its lifetime left.
    pub expiry_warning_fraction: f64,
    /// How long a new certificate may wait for its matching key (issuers
    /// write the two files at different moments) before it is an error.
    pub key_pair_grace: ConfigDuration,
}

impl IdentityConfig {
    /// Every file the identity and trust are made of, for watching.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.cert.clone(),
            self.key.clone(),
            self.trust_bundle.clone(),
        ];
        files.extend(self.trust_bundles.iter().map(|(_, p)| p.clone()));
        files
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    trust_bundle: Spanned<PathBuf>,
    trust_domain: Option<TrustDomain>,
    #[serde(default)]
    trust_bundles: Pairs<TrustDomain, Spanned<PathBuf>>,
    expiry_warning_fraction: Option<Spanned<f64>>,
    key_pair_grace: Option<ConfigDuration>,
}

impl RawIdentity {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<IdentityConfig, ConfigError> {
        let mut identity = IdentityConfig {
            cert: c.path(&self.cert)?,
            key: c.path(&self.key)?,
            trust_bundle: c.path(&self.trust_bundle)?,
            trust_domain: self.trust_domain,
            trust_bundles: Vec::with_capacity(self.trust_bundles.0.len()),
            expiry_warning_fraction: 1.0 / 3.0,
            key_pair_grace: self
                .key_pair_grace
                .unwrap_or(ConfigDuration(Duration::from_secs(10))),
        };
        for (td, path) in &self.trust_bundles.0 {
            if identity.trust_bundles.iter().any(|(t, _)| t == td)
                || identity.trust_domain.as_ref() == Some(td)
            {
                return Err(c.at(
                    path.referenced,
                    format!("trust domain {td} has more than one bundle"),
                ));
            }
            identity.trust_bundles.push((td.clone(), c.path(path)?));
        }
        c.set(
            self.expiry_warning_fraction,
            "identity.expiry_warning_fraction",
            (Bound::Excluded(0.0), Bound::Excluded(1.0)),
            &mut identity.expiry_warning_fraction,
        )
        .map_err(|e| e.note("e.g. 0.33"))?;
        Ok(identity)
    }
}
