//! Live OCSP for peers: answers cached by (issuer key, serial) until their
//! nextUpdate (or `max_age`, if sooner), refreshed ahead of expiry, with
//! concurrent queries for one certificate coalesced into one, a bound on
//! the cache size, and a timeout on every query. Queries run on the
//! runtime as plain async I/O; nothing blocks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntGauge};
use sha1::{Digest, Sha1};
use tokio::sync::OnceCell;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ocsp::{self, OcspAnswer, OcspError, OcspStatus};
use crate::config::{OcspConfig, OcspMode};
use crate::metrics::RevocationFamilies;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Good,
    Revoked,
    /// No usable answer: the reason, for logs.
    Unknown(String),
}

/// Counters and gauges the checker reports into.
#[derive(Clone)]
pub struct OcspMetrics {
    pub good: IntCounter,
    pub revoked: IntCounter,
    pub unknown: IntCounter,
    pub error: IntCounter,
    pub cache_size: IntGauge,
    pub latency: Histogram,
}

impl OcspMetrics {
    /// The checker's series, resolved once.
    pub fn new(families: &RevocationFamilies) -> Self {
        let r = |result| families.checks.with_label_values(&["ocsp", result]);
        OcspMetrics {
            good: r("good"),
            revoked: r("revoked"),
            unknown: r("unknown"),
            error: r("error"),
            cache_size: families.ocsp_cache.clone(),
            latency: families.ocsp_latency.clone(),
        }
    }
}

type Key = Vec<u8>;
type Fetch = Arc<OnceCell<Result<OcspAnswer, OcspError>>>;

struct Cached {
    answer: OcspAnswer,
    fetched: Instant,
}

/// Called with a revoked certificate's issuer name and serial (DER), so
/// open connections to that peer can be closed at once.
pub type OnRevoked = Box<dyn Fn(&[u8], &[u8]) + Send + Sync>;

pub struct OcspChecker {
    config: OcspConfig,
    metrics: OcspMetrics,
    cache: Mutex<HashMap<Key, Cached>>,
    inflight: Mutex<HashMap<Key, Fetch>>,
    on_revoked: std::sync::OnceLock<OnRevoked>,
}

fn key(leaf: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Key {
    let mut k = Sha1::digest(&issuer.public_key().subject_public_key.data).to_vec();
    k.extend_from_slice(leaf.raw_serial());
    k
}

impl OcspChecker {
    pub fn new(config: OcspConfig, metrics: OcspMetrics) -> Self {
        OcspChecker {
            config,
            metrics,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            on_revoked: std::sync::OnceLock::new(),
        }
    }

    /// Sets what to do when a fresh answer says a certificate is revoked.
    pub fn on_revoked(&self, f: OnRevoked) {
        let _ = self.on_revoked.set(f);
    }

    /// How often open connections' peers should be re-checked: answers
    /// expire no sooner than this.
    pub fn recheck_interval(&self) -> Duration {
        (self.config.max_age / 2).clamp(Duration::from_millis(500), Duration::from_secs(30))
    }

    pub fn mode(&self) -> OcspMode {
        self.config.mode
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `answer`, fetched at `fetched`, may still be used.
    fn usable_until(&self, answer: &OcspAnswer, fetched: Instant) -> Instant {
        let by_age = fetched + self.config.max_age;
        match answer.next_update {
            Some(nu) => {
                let left = (nu - crate::clock::unix_now()).max(0) as u64;
                by_age.min(Instant::now() + Duration::from_secs(left))
            }
            None => by_age,
        }
    }

    /// Records an answer obtained elsewhere (a verified staple).
    pub fn remember(&self, leaf_der: &[u8], issuer_der: &[u8], answer: OcspAnswer) {
        let (Ok((_, leaf)), Ok((_, issuer))) = (
            X509Certificate::from_der(leaf_der),
            X509Certificate::from_der(issuer_der),
        ) else {
            return;
        };
        self.store(key(&leaf, &issuer), answer);
    }

    fn store(&self, k: Key, answer: OcspAnswer) {
        let mut cache = Self::lock(&self.cache);
        if cache.len() >= self.config.cache_size {
            let now = Instant::now();
            cache.retain(|_, c| self.usable_until(&c.answer, c.fetched) > now);
            if cache.len() >= self.config.cache_size
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, c)| c.fetched)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            k,
            Cached {
                answer,
                fetched: Instant::now(),
            },
        );
        self.metrics.cache_size.set(cache.len() as i64);
    }

    /// The revocation status of `leaf` (issued by `issuer`).
    pub async fn check(self: &Arc<Self>, leaf_der: &[u8], issuer_der: &[u8]) -> Verdict {
        let (Ok((_, leaf)), Ok((_, issuer))) = (
            X509Certificate::from_der(leaf_der),
            X509Certificate::from_der(issuer_der),
        ) else {
            self.metrics.error.inc();
            return Verdict::Unknown("certificate cannot be parsed".into());
        };
        let k = key(&leaf, &issuer);
        let now = Instant::now();
        let cached = Self::lock(&self.cache)
            .get(&k)
            .map(|c| (c.answer, self.usable_until(&c.answer, c.fetched), c.fetched));
        let answer = match cached {
            Some((answer, until, fetched)) if until > now => {
                // Refresh ahead: in the last fifth of its use, fetch anew in
                // the background while this answer still serves.
                let lifetime = until.saturating_duration_since(fetched);
                if until.saturating_duration_since(now) < lifetime / 5 {
                    let (this, leaf_der, issuer_der, k) = (
                        self.clone(),
                        leaf_der.to_vec(),
                        issuer_der.to_vec(),
                        k.clone(),
                    );
                    tokio::spawn(async move {
                        let _ = this.fetch(k, &leaf_der, &issuer_der).await;
                    });
                }
                Ok(answer)
            }
            _ => self.fetch(k, leaf_der, issuer_der).await,
        };
        match answer {
            Ok(a) => match a.status {
                OcspStatus::Good => {
                    self.metrics.good.inc();
                    Verdict::Good
                }
                OcspStatus::Revoked => {
                    self.metrics.revoked.inc();
                    Verdict::Revoked
                }
                OcspStatus::Unknown => {
                    self.metrics.unknown.inc();
                    Verdict::Unknown("the responder does not know the certificate".into())
                }
            },
            Err(e) => {
                self.metrics.error.inc();
                Verdict::Unknown(e.to_string())
            }
        }
    }

    /// One query per certificate at a time: concurrent callers share it.
    async fn fetch(
        &self,
        k: Key,
        leaf_der: &[u8],
        issuer_der: &[u8],
    ) -> Result<OcspAnswer, OcspError> {
        let cell = Self::lock(&self.inflight)
            .entry(k.clone())
            .or_default()
            .clone();
        let result = cell
            .get_or_init(|| async {
                let started = Instant::now();
                let r = self.query(leaf_der, issuer_der).await;
                self.metrics
                    .latency
                    .observe(started.elapsed().as_secs_f64());
                if let Ok(a) = &r {
                    self.store(k.clone(), *a);
                    if a.status == OcspStatus::Revoked
                        && let Some(f) = self.on_revoked.get()
                        && let Ok((_, leaf)) = X509Certificate::from_der(leaf_der)
                    {
                        f(leaf.issuer().as_raw(), leaf.raw_serial());
                    }
                }
                r
            })
            .await
            .clone();
        let mut inflight = Self::lock(&self.inflight);
        if inflight.get(&k).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&k);
        }
        result
    }

    async fn query(&self, leaf_der: &[u8], issuer_der: &[u8]) -> Result<OcspAnswer, OcspError> {
        let url = match &self.config.responder {
            Some(u) => u.clone(),
            None => ocsp::responder_url(leaf_der).ok_or_else(|| {
                OcspError::Unreachable(
                    "the certificate names no OCSP responder (AIA) and none is configured".into(),
                )
            })?,
        };
        let request = ocsp::request(leaf_der, issuer_der)?;
        let response = ocsp::query(&url, request, self.config.timeout).await?;
        ocsp::verify(&response, leaf_der, issuer_der, crate::clock::unix_now())
    }
}
