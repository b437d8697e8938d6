//! Our identity and trust from files: loading the set the config names
//! (SVID, key, bundles, CRLs) and checking it whole (key matches cert, leaf
//! is a valid SVID within its validity, our chain verifies against the
//! bundle), and live rotation: re-read it, validate it whole, and only then
//! swap it in. New handshakes use the new material at once; open
//! connections keep what they were made with. A bad set is refused and the
//! old one keeps serving.
//!
//! Issuers write the certificate and the key at different moments. A
//! certificate whose key has not arrived yet is *pending*, retried shortly,
//! and only reported as an error once `identity.key_pair_grace` has passed:
//! a new certificate is never paired with an old key.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::report::{IdentityChange, LastRefusal, Outcome};
use crate::clock::{fmt_time, unix_now};
use crate::config::Config;
use crate::files::LoadError;
use crate::identity::Role;
use crate::metrics::{CertExpiry, CrlSeries, Metrics};
use crate::tls::{
    LoadedIdentity, SvidVerifier, TlsContext, TrustStore, load_bundle, load_identity,
};

#[derive(Default)]
struct Tracked {
    /// Content hashes of the identity files and of the bundle files that
    /// are being served.
    identity_sha: String,
    bundle_sha: String,
    /// When a certificate/key mismatch was first seen.
    mismatch_since: Option<Instant>,
    /// The serial we last warned about, so each leaf warns once.
    warned_serial: Option<String>,
    expired_logged: bool,
}

pub struct Credentials {
    config: Config,
    /// CRLs fetched from distribution points, by URL.
    fetched: Mutex<Vec<(String, Vec<u8>)>>,
    tls: Arc<TlsContext>,
    metrics: Arc<Metrics>,
    tracked: Mutex<Tracked>,
    /// The last refused set, reported once.
    refused: LastRefusal,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// Loads our SVID, key and trust bundle as the config names them, and checks
/// that our own chain verifies against the bundle for every role we play.
pub fn load_tls(config: &Config) -> Result<(LoadedIdentity, TrustStore), LoadError> {
    load(config, &[], None)
}

/// As [`load_tls`], adding CRLs fetched from distribution points; no CRL
/// may be older than the one `in_force` holds for the same issuer.
pub(super) fn load(
    config: &Config,
    fetched_crls: &[(String, Vec<u8>)],
    in_force: Option<&TrustStore>,
) -> Result<(LoadedIdentity, TrustStore), LoadError> {
    let ic = &config.identity;
    let identity = load_identity(&ic.cert, &ic.key)?;
    let td = ic
        .trust_domain
        .clone()
        .unwrap_or_else(|| identity.leaf.id.trust_domain());
    let mut bundles = vec![load_bundle(&ic.trust_bundle, &td)?];
    for (other_td, path) in &ic.trust_bundles {
        if *other_td == td {
            return Err(LoadError::new(
                path,
                format!("trust domain {td} already has its bundle in identity.trust_bundle"),
            ));
        }
        bundles.push(load_bundle(path, other_td)?);
    }
    // A SPIFFE bundle's sequence only goes up: a lower one than the bundle
    // in force is an old bundle served again (a rollback), refused.
    if let Some(current) = in_force {
        let paths =
            std::iter::once(&ic.trust_bundle).chain(ic.trust_bundles.iter().map(|(_, p)| p));
        for (b, path) in bundles.iter().zip(paths) {
            if let (Some(new), Some(old)) = (
                b.sequence,
                current
                    .bundles()
                    .find(|c| c.trust_domain == b.trust_domain)
                    .and_then(|c| c.sequence),
            ) && new < old
            {
                return Err(LoadError::new(
                    path,
                    format!(
                        "spiffe_sequence went backwards ({new} after {old}): an older bundle, refused"
                    ),
                ));
            }
        }
    }
    let mut trust = TrustStore::new(bundles);
    // Our own chain is checked for validity only: whether it is revoked is
    // for peers to decide, and CRLs still being fetched must not stop us.
    let verifier = SvidVerifier::new(Arc::new(trust.clone()));
    if let Some(r) = &config.revocation
        && (!r.crls.is_empty() || r.policy.fetch_distribution_points)
    {
        let crls = load_crls(
            r,
            &identity,
            &trust,
            &r.crls,
            fetched_crls,
            in_force.and_then(|t| t.revocation()),
        )?;
        trust = trust.with_revocation(crls);
    }

    let chain = &identity.certified.cert;
    let mut roles = Vec::new();
    if !config.inbound.is_empty() {
        roles.push(Role::Server);
    }
    if !config.outbound.is_empty() {
        roles.push(Role::Client);
    }
    for role in roles {
        verifier
            .verify(
                &chain[0],
                &chain[1..],
                rustls_pki_types::UnixTime::now(),
                role,
            )
            .map_err(|e| {
                LoadError::new(
                    &ic.cert,
                    format!(
                        "our SVID does not verify against the trust bundle {} as a TLS {}: {e}",
                        ic.trust_bundle.display(),
                        if role == Role::Server {
                            "server"
                        } else {
                            "client"
                        }
                    ),
                )
            })?;
    }
    Ok((identity, trust))
}

/// Loads CRLs from `files` and `fetched`, trusting as their signers the
/// roots of `trust`, and the intermediates of our chain and of
/// `revocation.intermediates` that a root certifies.
pub(super) fn load_crls(
    r: &crate::config::RevocationConfig,
    identity: &LoadedIdentity,
    trust: &TrustStore,
    files: &[std::path::PathBuf],
    fetched: &[(String, Vec<u8>)],
    in_force: Option<&crate::revocation::CrlSet>,
) -> Result<crate::revocation::CrlSet, LoadError> {
    let roots: Vec<_> = trust.bundles().flat_map(|b| b.certs.iter()).collect();
    let mut intermediates: Vec<_> = identity.certified.cert.iter().skip(1).cloned().collect();
    if let Some(path) = &r.intermediates {
        intermediates.extend(crate::revocation::load_intermediates(path)?);
    }
    let crl_trust = crate::revocation::CrlTrust {
        roots: &roots,
        intermediates: &intermediates,
        in_force,
    };
    crate::revocation::load_crls(files, fetched, &crl_trust, r.policy)
}

fn hash_files(paths: &[&Path]) -> String {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.as_os_str().as_encoded_bytes());
        match std::fs::read(p) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(&bytes);
            }
            Err(e) => h.update(format!("unreadable: {e}").as_bytes()),
        }
    }
    hex::encode(h.finalize())
}

fn hashes(config: &Config, fetched: &[(String, Vec<u8>)]) -> (String, String) {
    let ic = &config.identity;
    let identity = hash_files(&[&ic.cert, &ic.key]);
    let mut bundle_paths: Vec<&Path> = vec![&ic.trust_bundle];
    bundle_paths.extend(ic.trust_bundles.iter().map(|(_, p)| p.as_path()));
    if let Some(r) = &config.revocation {
        bundle_paths.extend(r.crls.iter().map(|p| p.as_path()));
        bundle_paths.extend(r.intermediates.as_deref());
    }
    let mut trust = hash_files(&bundle_paths);
    if !fetched.is_empty() {
        let mut h = Sha256::new();
        h.update(trust.as_bytes());
        for (url, bytes) in fetched {
            h.update(url.as_bytes());
            h.update(bytes);
        }
        trust = hex::encode(h.finalize());
    }
    (identity, trust)
}

impl Credentials {
    /// Starts tracking the material `tls` was built from.
    pub fn new(config: Config, tls: Arc<TlsContext>, metrics: Arc<Metrics>) -> Self {
        let (identity_sha, bundle_sha) = hashes(&config, &[]);
        let c = Credentials {
            config,
            fetched: Mutex::new(Vec::new()),
            tls,
            metrics,
            tracked: Mutex::new(Tracked {
                identity_sha,
                bundle_sha,
                ..Default::default()
            }),
            refused: LastRefusal::default(),
            reloading: tokio::sync::Mutex::new(()),
        };
        c.export_certificates();
        c
    }

    /// Records a CRL fetched from `url`; true when it differs from the last.
    pub fn set_fetched_crl(&self, url: &str, bytes: Vec<u8>) -> bool {
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        match fetched.iter_mut().find(|(u, _)| u == url) {
            Some((_, old)) if *old == bytes => false,
            Some((_, old)) => {
                *old = bytes;
                true
            }
            None => {
                fetched.push((url.to_string(), bytes));
                true
            }
        }
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the expiry series to exactly the certificates now loaded.
    fn export_certificates(&self) {
        let identity = self.tls.identity().current();
        let trust = self.tls.trust();
        self.metrics.identity.set_certificates(
            identity
                .chain
                .iter()
                .chain(trust.bundles().flat_map(|b| b.roots.iter()))
                .map(|c| CertExpiry {
                    kind: c.kind.as_str(),
                    spiffe_id: &c.spiffe_id,
                    serial: &c.serial,
                    not_after: c.not_after,
                    not_before: c.not_before,
                }),
        );
        let crls = trust.revocation().map(|r| r.info.as_slice()).unwrap_or(&[]);
        self.metrics
            .revocation
            .set_crls(crls.iter().map(|c| CrlSeries {
                issuer: &c.issuer,
                next_update: c.next_update,
                entries: c.entries,
            }));
    }

    /// Re-reads and, if it changed and is valid, swaps in our identity
    /// and trust.
    pub async fn reload(&self, trigger: &str) -> Outcome<IdentityChange> {
        let _one = self.reloading.lock().await;
        let config = self.config.clone();
        let fetched = self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let in_force = self.tls.trust();
        let read = tokio::task::spawn_blocking(move || {
            (
                hashes(&config, &fetched),
                load(&config, &fetched, Some(&in_force)),
            )
        })
        .await;
        let ((identity_sha, bundle_sha), loaded) = match read {
            Ok(r) => r,
            Err(e) => {
                let e = LoadError::new(
                    &self.config.identity.cert,
                    format!("reload task failed: {e}"),
                );
                return Outcome::Failed(e.to_string());
            }
        };
        let (identity_changed, bundle_changed) = {
            let t = self.tracked();
            (t.identity_sha != identity_sha, t.bundle_sha != bundle_sha)
        };
        if !identity_changed && !bundle_changed {
            self.tracked().mismatch_since = None;
            self.refused.clear();
            return Outcome::Unchanged(None);
        }
        let input = format!("{identity_sha}:{bundle_sha}");
        let kind = if identity_changed {
            "identity"
        } else {
            "bundle"
        };
        match loaded {
            Ok((identity, trust)) => {
                if bundle_changed && let Err(e) = self.tls.set_trust(trust) {
                    let err = LoadError::new(
                        &self.config.identity.trust_bundle,
                        format!("cannot build TLS configs: {e}"),
                    );
                    self.metrics.identity.cert_reload("bundle", "error");
                    if self.refused.is_news(&input, &err.to_string()) {
                        tracing::error!(trigger, error = %err, "trust bundle refused; the previous one keeps serving");
                    }
                    return Outcome::Failed(err.to_string());
                }
                self.refused.clear();
                let serial = identity.leaf.serial.clone();
                if identity_changed {
                    tracing::info!(
                        trigger,
                        spiffe_id = %identity.leaf.id,
                        serial = %serial,
                        not_after = %fmt_time(identity.leaf.not_after),
                        "new SVID in use for new handshakes"
                    );
                    if let Err(e) = self.tls.set_identity(identity) {
                        // Building a config from an SVID that loaded cannot
                        // fail today; if it ever does, the new SVID is
                        // already served and only the old sessions linger.
                        tracing::error!(trigger, error = %e, "cannot rebuild TLS configs for the new SVID");
                    }
                    self.metrics.identity.cert_reload("identity", "success");
                }
                if bundle_changed {
                    let tds: Vec<String> = self
                        .tls
                        .trust()
                        .bundles()
                        .map(|b| format!("{} ({} roots)", b.trust_domain, b.roots.len()))
                        .collect();
                    tracing::info!(trigger, bundles = ?tds, "new trust bundle in use for new handshakes");
                    self.metrics.identity.cert_reload("bundle", "success");
                }
                {
                    let mut t = self.tracked();
                    t.identity_sha = identity_sha;
                    t.bundle_sha = bundle_sha;
                    t.mismatch_since = None;
                    t.expired_logged = false;
                }
                self.export_certificates();
                Outcome::Applied(IdentityChange {
                    identity_changed,
                    bundle_changed,
                    serial,
                })
            }
            Err(e) if e.key_mismatch => {
                let grace = self.config.identity.key_pair_grace.0;
                let since = *self
                    .tracked()
                    .mismatch_since
                    .get_or_insert_with(Instant::now);
                if since.elapsed() < grace {
                    self.metrics.identity.cert_reload("identity", "pending");
                    tracing::info!(trigger, error = %e, "certificate and key do not match yet; waiting for the other file");
                    Outcome::Pending {
                        waiting_for: e.to_string(),
                        retry: (grace / 5).clamp(Duration::from_millis(50), Duration::from_secs(1)),
                    }
                } else {
                    self.metrics.identity.cert_reload("identity", "error");
                    if self.refused.is_news(&input, &e.to_string()) {
                        tracing::error!(trigger, error = %e, waited = ?grace, "certificate and key still do not match; the previous identity keeps serving");
                    }
                    Outcome::Failed(e.to_string())
                }
            }
            Err(e) => {
                let ic = &self.config.identity;
                let bundle_file =
                    e.path == ic.trust_bundle || ic.trust_bundles.iter().any(|(_, p)| *p == e.path);
                let crl_file = self.config.revocation.as_ref().is_some_and(|r| {
                    r.crls.contains(&e.path) || r.intermediates.as_ref() == Some(&e.path)
                });
                let kind = if bundle_file {
                    "bundle"
                } else if crl_file {
                    "crl"
                } else {
                    kind
                };
                self.metrics.identity.cert_reload(kind, "error");
                // Every trigger finds the same bad file until it is fixed:
                // say so once per change (the metric counts every attempt).
                if self.refused.is_news(&input, &e.to_string()) {
                    tracing::error!(trigger, error = %e, "new {kind} refused; the previous one keeps serving");
                } else {
                    tracing::debug!(trigger, error = %e, "new {kind} still refused");
                }
                Outcome::Failed(e.to_string())
            }
        }
    }

    /// Checks our leaf's remaining lifetime: warns once per leaf when less
    /// than `identity.expiry_warning_fraction` is left; returns whether it
    /// has expired.
    pub fn check_expiry(&self) -> bool {
        let identity = self.tls.identity().current();
        let leaf = &identity.leaf;
        let now = unix_now();
        let mut t = self.tracked();
        if now >= leaf.not_after {
            if !t.expired_logged {
                t.expired_logged = true;
                tracing::error!(serial = %leaf.serial, not_after = %fmt_time(leaf.not_after), "our SVID has expired: not ready until a new one is loaded");
            }
            return true;
        }
        let fraction = self.config.identity.expiry_warning_fraction;
        if past_renewal_point(leaf.not_before, leaf.not_after, now, fraction)
            && t.warned_serial.as_deref() != Some(leaf.serial.as_str())
        {
            let left = leaf.not_after - now;
            t.warned_serial = Some(leaf.serial.clone());
            tracing::warn!(
                serial = %leaf.serial,
                not_after = %fmt_time(leaf.not_after),
                left_seconds = left,
                "our SVID is past its renewal point and has not been replaced"
            );
        }
        false
    }
}

/// Whether less than `fraction` of the lifetime from `not_before` to
/// `not_after` is left at `now`.
fn past_renewal_point(not_before: i64, not_after: i64, now: i64, fraction: f64) -> bool {
    let lifetime = (not_after - not_before).max(1) as f64;
    ((not_after - now) as f64) / lifetime < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_point_is_a_share_of_the_lifetime() {
        // A 24 h certificate with the default third: warn in its last 8 h.
        let (nb, na) = (0, 24 * 3600);
        assert!(!past_renewal_point(nb, na, 15 * 3600, 1.0 / 3.0));
        assert!(!past_renewal_point(nb, na, 16 * 3600 - 1, 1.0 / 3.0));
        assert!(past_renewal_point(nb, na, 16 * 3600 + 1, 1.0 / 3.0));
        assert!(past_renewal_point(nb, na, 23 * 3600, 1.0 / 3.0));
        assert!(!past_renewal_point(nb, na, 23 * 3600, 0.01));
    }
}
