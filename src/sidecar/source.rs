//! Where our SVID, its key and our own trust bundle come from, behind one
//! interface: files (`identity.cert`/`key`/`trust_bundle`) or the latest
//! update the SPIFFE Workload API streamed (`identity.workload_api`). A
//! source only reads and parses; `credentials` validates what it yields
//! whole (chain against bundle, CRLs, rollbacks) and swaps it in, the same
//! way for both, so nothing past this module can tell which one is in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::config::{IdentityFiles, WorkloadApiConfig};
use crate::files::LoadError;
use crate::identity::TrustDomain;
use crate::tls::{
    LoadedIdentity, Source, TrustBundle, bundle_from_certs, identity_from_der, load_bundle,
    load_identity,
};

/// What a source yields: our SVID and key, and the bundles it carries
/// (our own trust domain's first), each with the place errors name.
pub(super) struct Own {
    pub identity: LoadedIdentity,
    pub bundles: Vec<(TrustBundle, PathBuf)>,
}

/// What a source holds now: content hashes of the identity and of its
/// bundles (unchanged hashes mean nothing to do), and the material itself
/// or why it cannot be used.
pub(super) struct Read {
    pub identity_sha: String,
    pub bundle_sha: String,
    pub own: Result<Own, LoadError>,
}

/// Our identity's source.
pub(super) enum OwnSource {
    Files(IdentityFiles),
    WorkloadApi(Arc<Streamed>),
}

impl OwnSource {
    /// Reads the material as it stands now. `trust_domain`, when set, is
    /// the one our own bundle is for. Blocking: file reads.
    pub fn read(&self, trust_domain: Option<&TrustDomain>) -> Read {
        match self {
            OwnSource::Files(f) => read_files(f, trust_domain),
            OwnSource::WorkloadApi(s) => s.read(trust_domain),
        }
    }

    /// The place an error about our SVID names: the certificate file, or
    /// the Workload API socket.
    pub fn cert_place(&self) -> PathBuf {
        match self {
            OwnSource::Files(f) => f.cert.clone(),
            OwnSource::WorkloadApi(s) => s.place.clone(),
        }
    }

    /// Whether `path` is our own bundle's file (a stream update is one
    /// place for everything: its errors count as the identity's).
    pub fn is_bundle_place(&self, path: &Path) -> bool {
        match self {
            OwnSource::Files(f) => f.trust_bundle == path,
            OwnSource::WorkloadApi(_) => false,
        }
    }

    /// Whether a certificate without its key may be the first half of a
    /// rotation (files are written one at a time; a stream update is whole).
    pub fn writes_in_halves(&self) -> bool {
        matches!(self, OwnSource::Files(_))
    }
}

pub(super) fn hash_files(paths: &[&Path]) -> String {
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

fn read_files(f: &IdentityFiles, trust_domain: Option<&TrustDomain>) -> Read {
    let identity_sha = hash_files(&[&f.cert, &f.key]);
    let bundle_sha = hash_files(&[&f.trust_bundle]);
    let own = load_identity(&f.cert, &f.key).and_then(|identity| {
        let td = trust_domain
            .cloned()
            .unwrap_or_else(|| identity.leaf.id.trust_domain());
        let bundle = load_bundle(&f.trust_bundle, &td)?;
        Ok(Own {
            identity,
            bundles: vec![(bundle, f.trust_bundle.clone())],
        })
    });
    Read {
        identity_sha,
        bundle_sha,
        own,
    }
}

/// One SVID as the Workload API served it.
#[derive(Clone)]
pub(super) struct StreamedSvid {
    pub chain: Vec<Vec<u8>>,
    pub key: Vec<u8>,
    pub hint: Option<String>,
    pub spiffe_id: String,
}

/// One Workload API update: every SVID it served, and every bundle
/// (ours and the federated ones) by trust domain.
#[derive(Clone, Default)]
pub(super) struct Update {
    pub svids: Vec<StreamedSvid>,
    pub bundles: Vec<(String, Vec<Vec<u8>>)>,
}

impl Update {
    fn hashes(&self) -> (String, String) {
        let mut id = Sha256::new();
        for s in &self.svids {
            for c in &s.chain {
                id.update((c.len() as u64).to_be_bytes());
                id.update(c);
            }
            id.update(Sha256::digest(&s.key));
            id.update(s.hint.as_deref().unwrap_or_default().as_bytes());
            id.update([0]);
        }
        let mut b = Sha256::new();
        for (td, certs) in &self.bundles {
            b.update(td.as_bytes());
            b.update([0]);
            for c in certs {
                b.update((c.len() as u64).to_be_bytes());
                b.update(c);
            }
        }
        (hex::encode(id.finalize()), hex::encode(b.finalize()))
    }
}

/// The latest update the Workload API streamed, held for reloads.
pub(super) struct Streamed {
    pub config: WorkloadApiConfig,
    /// The socket, as the place errors name.
    pub place: PathBuf,
    latest: Mutex<Option<Arc<Update>>>,
}

impl Streamed {
    pub fn new(config: WorkloadApiConfig) -> Self {
        Streamed {
            place: PathBuf::from(&config.socket),
            config,
            latest: Mutex::new(None),
        }
    }

    pub fn set(&self, update: Update) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(update));
    }

    fn latest(&self) -> Option<Arc<Update>> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn read(&self, trust_domain: Option<&TrustDomain>) -> Read {
        let Some(update) = self.latest() else {
            return Read {
                identity_sha: String::new(),
                bundle_sha: String::new(),
                own: Err(LoadError::new(
                    &self.place,
                    "no SVID received from the Workload API yet",
                )),
            };
        };
        let (identity_sha, bundle_sha) = update.hashes();
        Read {
            identity_sha,
            bundle_sha,
            own: self.parse(&update, trust_domain),
        }
    }

    /// The SVID to use: the one with our hint, or the first.
    fn pick<'a>(&self, update: &'a Update) -> Result<&'a StreamedSvid, LoadError> {
        match &self.config.hint {
            None => update.svids.first().ok_or_else(|| {
                LoadError::new(&self.place, "the Workload API update holds no SVID")
            }),
            Some(hint) => update
                .svids
                .iter()
                .find(|s| s.hint.as_deref() == Some(hint.as_str()))
                .ok_or_else(|| {
                    let served: Vec<String> = update
                        .svids
                        .iter()
                        .map(|s| {
                            format!(
                                "{} (hint {:?})",
                                s.spiffe_id,
                                s.hint.as_deref().unwrap_or("")
                            )
                        })
                        .collect();
                    LoadError::new(
                        &self.place,
                        format!("no SVID with hint {hint:?}; the Workload API serves {served:?}"),
                    )
                }),
        }
    }

    fn parse(&self, update: &Update, trust_domain: Option<&TrustDomain>) -> Result<Own, LoadError> {
        let svid = self.pick(update)?;
        let chain = svid
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key.clone()));
        let identity = identity_from_der(chain, key, &self.place, &self.place, Source::WorkloadApi)
            .map_err(|e| LoadError {
                // One update carries both halves: a mismatch is final.
                key_mismatch: false,
                reason: format!("SVID {}: {}", svid.spiffe_id, e.reason),
                ..e
            })?;
        let own_td = trust_domain
            .cloned()
            .unwrap_or_else(|| identity.leaf.id.trust_domain());
        let mut bundles = Vec::with_capacity(update.bundles.len());
        for (td, certs) in &update.bundles {
            let td = TrustDomain::parse(td).map_err(|e| {
                LoadError::new(
                    &self.place,
                    format!("bundle for {td:?}: not a trust domain: {e}"),
                )
            })?;
            let certs = certs
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect();
            let bundle = bundle_from_certs(certs, None, &self.place, &td, Source::WorkloadApi)
                .map_err(|e| LoadError {
                    reason: format!("bundle for {td}: {}", e.reason),
                    ..e
                })?;
            bundles.push((bundle, self.place.clone()));
        }
        // Our own trust domain's bundle first: it is the one our chain
        // must verify against.
        match bundles.iter().position(|(b, _)| b.trust_domain == own_td) {
            Some(i) => bundles.swap(0, i),
            None => {
                return Err(LoadError::new(
                    &self.place,
                    format!(
                        "the Workload API update holds no bundle for our trust domain {own_td}"
                    ),
                ));
            }
        }
        Ok(Own { identity, bundles })
    }
}
