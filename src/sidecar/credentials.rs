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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::report::{IdentityChange, LastRefusal, Outcome};
use super::source::{OwnSource, hash_files};
use crate::clock::{fmt_time, unix_now};
use crate::config::{Config, FederatedBundle};
use crate::files::LoadError;
use crate::identity::{Role, TrustDomain};
use crate::metrics::{CertExpiry, CrlSeries, Metrics};
use crate::tls::{
    LoadedIdentity, Source, SvidVerifier, TlsContext, TrustStore, bundle_from_bytes, load_bundle,
};

#[derive(Default)]
struct Tracked {
    /// Content hashes of the identity and of the bundles (and CRLs) being
    /// served.
    identity_sha: String,
    bundle_sha: String,
    /// When a certificate/key mismatch was first seen.
    mismatch_since: Option<Instant>,
    /// The serial we last warned about, so each leaf warns once.
    warned_serial: Option<String>,
    expired_logged: bool,
}

/// Material fetched from the network: CRLs from distribution points (by
/// URL) and federated bundles from bundle endpoints (by trust domain).
#[derive(Clone, Default)]
pub(super) struct Fetched {
    pub crls: Vec<(String, Vec<u8>)>,
    pub bundles: Vec<(TrustDomain, Vec<u8>)>,
}

pub struct Credentials {
    config: Config,
    source: Arc<OwnSource>,
    fetched: Mutex<Fetched>,
    tls: Arc<TlsContext>,
    metrics: Arc<Metrics>,
    tracked: Mutex<Tracked>,
    /// The last refused set, reported once.
    refused: LastRefusal,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// The source the config names, for files; the Workload API's is made
/// where its stream runs.
pub(super) fn file_source(config: &Config) -> Option<OwnSource> {
    config
        .identity
        .files_source()
        .map(|f| OwnSource::Files(f.clone()))
}

/// Loads our SVID, key and trust bundles from the files the config
/// names, and checks that our own chain verifies against the bundle for
/// every role we play. Identity from the Workload API has nothing to load
/// here: it arrives on the stream.
pub fn load_tls(config: &Config) -> Result<(LoadedIdentity, TrustStore), LoadError> {
    let source = file_source(config).ok_or_else(|| {
        LoadError::new(
            Path::new("identity.workload_api"),
            "identity comes from the Workload API, not from files",
        )
    })?;
    load(config, &source, &Fetched::default(), None)
        .map(|(l, _)| l)
        .map_err(|(e, _)| e)
}

/// What a load found: the validated set and the hashes it had.
type Loaded = ((LoadedIdentity, TrustStore), (String, String));

/// Reads `source` and the federated bundles and CRLs the config names
/// (plus what was `fetched`), and validates it all as one set: no CRL may
/// be older, and no SPIFFE bundle's sequence lower, than in `in_force`.
/// Returns the set with the hashes of its identity and its trust, which
/// are returned (in the error's place) even when the set is refused.
pub(super) fn load(
    config: &Config,
    source: &OwnSource,
    fetched: &Fetched,
    in_force: Option<&TrustStore>,
) -> Result<Loaded, (LoadError, (String, String))> {
    let ic = &config.identity;
    let read = source.read(ic.trust_domain.as_ref());
    let hashes = (
        read.identity_sha.clone(),
        trust_hash(config, &read.bundle_sha, fetched),
    );
    let own = match read.own {
        Ok(own) => own,
        Err(e) => return Err((e, hashes)),
    };
    validate(config, source, own, fetched, in_force)
        .map(|l| (l, hashes.clone()))
        .map_err(|e| (e, hashes))
}

fn validate(
    config: &Config,
    source: &OwnSource,
    own: super::source::Own,
    fetched: &Fetched,
    in_force: Option<&TrustStore>,
) -> Result<(LoadedIdentity, TrustStore), LoadError> {
    let ic = &config.identity;
    let identity = own.identity;
    let td = own.bundles[0].0.trust_domain.clone();
    let own_place = own.bundles[0].1.clone();
    let mut bundles = Vec::with_capacity(own.bundles.len() + ic.trust_bundles.len());
    // Configured federated bundles win over those a stream carries for
    // the same trust domain: the operator named them.
    for (b, place) in own.bundles.into_iter() {
        if b.trust_domain == td || !ic.trust_bundles.iter().any(|(t, _)| *t == b.trust_domain) {
            bundles.push((b, place));
        }
    }
    for (other_td, entry) in &ic.trust_bundles {
        let place = match entry {
            FederatedBundle::File(p) => p.clone(),
            FederatedBundle::Endpoint(e) => PathBuf::from(&e.url),
        };
        if *other_td == td {
            return Err(LoadError::new(
                &place,
                format!("trust domain {td} is our own: its bundle comes from our identity source"),
            ));
        }
        let bundle = match entry {
            FederatedBundle::File(p) => Some(load_bundle(p, other_td)?),
            FederatedBundle::Endpoint(e) => {
                match fetched.bundles.iter().find(|(t, _)| t == other_td) {
                    Some((_, body)) => {
                        Some(bundle_from_bytes(body, &place, other_td, Source::BundleEndpoint)?.0)
                    }
                    // Until the first fetch: the bundle configured to start from.
                    None => e
                        .bundle
                        .as_deref()
                        .map(|p| load_bundle(p, other_td))
                        .transpose()?,
                }
            }
        };
        if let Some(b) = bundle {
            bundles.push((b, place));
        }
    }
    // A SPIFFE bundle's sequence only goes up: a lower one than the bundle
    // in force is an old bundle served again (a rollback), refused.
    if let Some(current) = in_force {
        for (b, place) in &bundles {
            if let (Some(new), Some(old)) = (
                b.sequence,
                current
                    .bundles()
                    .find(|c| c.trust_domain == b.trust_domain)
                    .and_then(|c| c.sequence),
            ) && new < old
            {
                return Err(LoadError::new(
                    place,
                    format!(
                        "spiffe_sequence went backwards ({new} after {old}): an older bundle, refused"
                    ),
                ));
            }
        }
    }
    let mut trust = TrustStore::new(bundles.into_iter().map(|(b, _)| b));
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
            &fetched.crls,
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
                    &source.cert_place(),
                    format!(
                        "our SVID does not verify against the trust bundle {} as a TLS {}: {e}",
                        own_place.display(),
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

/// Puts `bytes` in `list` under `key`; true when they differ from what
/// was there.
fn replace<K, Q>(list: &mut Vec<(K, Vec<u8>)>, key: &Q, bytes: Vec<u8>) -> bool
where
    K: std::borrow::Borrow<Q>,
    Q: PartialEq + ToOwned<Owned = K> + ?Sized,
{
    match list.iter_mut().find(|(k, _)| k.borrow() == key) {
        Some((_, old)) if *old == bytes => false,
        Some((_, old)) => {
            *old = bytes;
            true
        }
        None => {
            list.push((key.to_owned(), bytes));
            true
        }
    }
}

/// The hash of everything our trust is made of: the source's own bundles
/// (`own`), the federated bundle files, CRL files, and what was fetched.
fn trust_hash(config: &Config, own: &str, fetched: &Fetched) -> String {
    let ic = &config.identity;
    let mut paths: Vec<&Path> = Vec::new();
    for (_, b) in &ic.trust_bundles {
        match b {
            FederatedBundle::File(p) => paths.push(p),
            FederatedBundle::Endpoint(e) => paths.extend(e.bundle.as_deref()),
        }
    }
    if let Some(r) = &config.revocation {
        paths.extend(r.crls.iter().map(|p| p.as_path()));
        paths.extend(r.intermediates.as_deref());
    }
    let mut h = Sha256::new();
    h.update(own.as_bytes());
    h.update(hash_files(&paths).as_bytes());
    for (url, bytes) in &fetched.crls {
        h.update(url.as_bytes());
        h.update(Sha256::digest(bytes));
    }
    for (td, bytes) in &fetched.bundles {
        h.update(td.as_str().as_bytes());
        h.update(Sha256::digest(bytes));
    }
    hex::encode(h.finalize())
}

impl Credentials {
    /// Starts tracking the material `tls` was built from, which had
    /// `hashes` and came from `source`.
    pub(super) fn new(
        config: Config,
        source: Arc<OwnSource>,
        (identity_sha, bundle_sha): (String, String),
        tls: Arc<TlsContext>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let c = Credentials {
            config,
            source,
            fetched: Mutex::new(Fetched::default()),
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
        replace(&mut fetched.crls, url, bytes)
    }

    /// Records a bundle fetched for `trust_domain`; true when it differs
    /// from the last.
    pub fn set_fetched_bundle(&self, trust_domain: &TrustDomain, bytes: Vec<u8>) -> bool {
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        replace(&mut fetched.bundles, trust_domain, bytes)
    }

    /// Forgets a fetched bundle that was refused, so the last good one
    /// (or the configured start bundle) is what reloads read again.
    pub fn restore_fetched_bundle(&self, trust_domain: &TrustDomain, last_good: Option<Vec<u8>>) {
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        fetched.bundles.retain(|(t, _)| t != trust_domain);
        if let Some(b) = last_good {
            fetched.bundles.push((trust_domain.clone(), b));
        }
    }

    /// The bundle last fetched for `trust_domain`.
    pub fn fetched_bundle(&self, trust_domain: &TrustDomain) -> Option<Vec<u8>> {
        let fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        fetched
            .bundles
            .iter()
            .find(|(t, _)| t == trust_domain)
            .map(|(_, b)| b.clone())
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
                .map(|c| (c, identity.source))
                .chain(
                    trust
                        .bundles()
                        .flat_map(|b| b.roots.iter().map(|c| (c, b.source))),
                )
                .map(|(c, source)| CertExpiry {
                    source: source.as_str(),
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
        let source = self.source.clone();
        let read = tokio::task::spawn_blocking(move || {
            match load(&config, &source, &fetched, Some(&in_force)) {
                Ok((loaded, hashes)) => (hashes, Ok(loaded)),
                Err((e, hashes)) => (hashes, Err(e)),
            }
        })
        .await;
        let ((identity_sha, bundle_sha), loaded) = match read {
            Ok(r) => r,
            Err(e) => {
                let e = LoadError::new(
                    &self.source.cert_place(),
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
                        &self.source.cert_place(),
                        format!("cannot build TLS configs for the new trust: {e}"),
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
            Err(e) if e.key_mismatch && self.source.writes_in_halves() => {
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
                let bundle_file = self.source.is_bundle_place(&e.path)
                    || ic.trust_bundles.iter().any(|(_, b)| match b {
                        FederatedBundle::File(p) => *p == e.path,
                        FederatedBundle::Endpoint(ep) => {
                            e.path.as_os_str() == ep.url.as_str()
                                || ep.bundle.as_ref() == Some(&e.path)
                        }
                    });
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
