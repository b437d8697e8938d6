//! `revocation`: CRLs (files or distribution points), live OCSP, and what
//! an unknown status means.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Check, ConfigError};
use super::duration::ConfigDuration;

/// Certificate revocation lists and how they are applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RevocationConfig {
    /// CRL files (PEM or DER), one or more per CA; reloaded like certificates.
    pub crls: Vec<PathBuf>,
    /// Intermediate CA certificates (PEM) that sign CRLs, each certified
    /// by a bundle root; our own chain's intermediates count without it.
    pub intermediates: Option<PathBuf>,
    /// Live OCSP for peers, when enabled.
    pub ocsp: Option<OcspConfig>,
    pub policy: RevocationPolicy,
}

/// How revocation status is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RevocationPolicy {
    /// Check every certificate of the chain (true) or only the leaf.
    pub whole_chain: bool,
    /// A CRL past its nextUpdate gives "unknown" (true) or still counts.
    pub expired_is_unknown: bool,
    /// Unknown status admits the peer (logged and counted) instead of
    /// refusing it.
    pub fail_open: bool,
    /// CRLs are fetched from distribution points: until one arrives,
    /// every status is unknown.
    pub fetch_distribution_points: bool,
}

/// How OCSP is used for peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OcspMode {
    Off,
    /// Use OCSP when it answers; when it cannot, the CRLs (if any) and the
    /// failure policy decide.
    Prefer,
    /// An OCSP answer is required; without one the failure policy decides.
    Require,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OcspConfig {
    pub mode: OcspMode,
    /// Used instead of the certificate's AIA responder when set.
    pub responder: Option<String>,
    pub timeout: Duration,
    /// Answers are re-queried after this long even if their nextUpdate is
    /// later; an answer without nextUpdate is used only while its thisUpdate
    /// is younger than this.
    pub max_age: Duration,
    pub cache_size: usize,
    /// A failed query (timeout, unreachable, bad answer) is remembered this
    /// long per certificate, so a dead responder costs one timeout, not one
    /// per new connection. Zero turns it off.
    pub error_cache: Duration,
    /// Send a nonce with each query and refuse an answer that does not carry
    /// it back (for responders that support nonces; many CDN-fronted ones
    /// do not).
    pub nonce: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRevocation {
    #[serde(default)]
    crls: Vec<Spanned<PathBuf>>,
    intermediates: Option<Spanned<PathBuf>>,
    /// Fetch the CRLs named by our chain's and the roots' distribution points.
    #[serde(default)]
    fetch_distribution_points: bool,
    ocsp: Option<RawOcsp>,
    /// chain | leaf
    #[serde(default)]
    check: RevocationDepth,
    /// unknown | ignore: what a CRL past its nextUpdate means.
    #[serde(default)]
    expired_crl: ExpiredCrl,
    /// closed | open: what an unknown status means.
    #[serde(default)]
    failure: FailurePolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOcsp {
    mode: Spanned<OcspMode>,
    responder: Option<Spanned<String>>,
    timeout: Option<ConfigDuration>,
    max_age: Option<ConfigDuration>,
    cache_size: Option<Spanned<usize>>,
    error_cache: Option<ConfigDuration>,
    #[serde(default)]
    nonce: bool,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RevocationDepth {
    #[default]
    Chain,
    Leaf,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ExpiredCrl {
    #[default]
    Unknown,
    Ignore,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FailurePolicy {
    #[default]
    Closed,
    Open,
}

impl RawRevocation {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<RevocationConfig, ConfigError> {
        let mut crls = Vec::with_capacity(self.crls.len());
        for crl in &self.crls {
            crls.push(c.path(crl)?);
        }
        let intermediates = match &self.intermediates {
            Some(p) => Some(c.path(p)?),
            None => None,
        };
        let ocsp = match self.ocsp {
            None => None,
            Some(o) => o.validate(c)?,
        };
        if crls.is_empty() && ocsp.is_none() && !self.fetch_distribution_points {
            return Err(ConfigError::file(
                c.file,
                "revocation needs `crls`, `fetch_distribution_points: true`, or `ocsp.mode: prefer | require`",
            ));
        }
        Ok(RevocationConfig {
            crls,
            intermediates,
            ocsp,
            policy: RevocationPolicy {
                whole_chain: self.check == RevocationDepth::Chain,
                expired_is_unknown: self.expired_crl == ExpiredCrl::Unknown,
                fail_open: self.failure == FailurePolicy::Open,
                fetch_distribution_points: self.fetch_distribution_points,
            },
        })
    }
}

impl RawOcsp {
    /// `None` for `mode: off`.
    fn validate(self, c: &Check<'_>) -> Result<Option<OcspConfig>, ConfigError> {
        if let Some(u) = &self.responder
            && !u.value.starts_with("http://")
        {
            return Err(c.at(
                u.referenced,
                "revocation.ocsp.responder must be an http:// URL (OCSP answers are signed; they need no TLS)",
            ));
        }
        let cache_size = c
            .get(self.cache_size, "revocation.ocsp.cache_size", 1..)?
            .unwrap_or(10_000);
        Ok((self.mode.value != OcspMode::Off).then(|| OcspConfig {
            mode: self.mode.value,
            responder: self.responder.map(|u| u.value),
            timeout: self.timeout.map_or(Duration::from_secs(2), |t| t.0),
            max_age: self.max_age.map_or(Duration::from_secs(3600), |t| t.0),
            cache_size,
            error_cache: self.error_cache.map_or(Duration::from_secs(10), |t| t.0),
            nonce: self.nonce,
        }))
    }
}
