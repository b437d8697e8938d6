//! Live OCSP for peers: answers cached by (issuer key, serial) until their
//! nextUpdate (or `max_age`, if sooner), refreshed ahead of expiry, with
//! concurrent queries for one certificate coalesced into one, a bound on
//! the cache size, and a timeout on every query. Answers never roll back:
//! one with an earlier thisUpdate than the one held does not replace it
//! (a revoked upstream replaying its last "good" staple changes nothing),
//! and "revoked" is sticky for the certificate for the process's life. Queries run on the
//! runtime as plain async I/O; nothing blocks.

use std::collections::{HashMap, HashSet};
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
    /// Recent failed queries, by certificate: answered from here (as
    /// "unknown") until `error_cache` has passed.
    failures: Mutex<HashMap<Key, (Instant, OcspError)>>,
    /// Certificates an answer said were revoked: outside the cache, so no
    /// eviction and no later answer makes them good again.
    revoked: Mutex<HashSet<Key>>,
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
            revoked: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
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

    /// How long `answer`, fetched at `fetched`, may still be used: until its
    /// nextUpdate, or without one until its thisUpdate is `max_age` old, and
    /// never longer than `max_age` after it was fetched.
    fn usable_until(&self, answer: &OcspAnswer, fetched: Instant) -> Instant {
        let by_age = fetched + self.config.max_age;
        let until = answer
            .next_update
            .unwrap_or(answer.this_update + self.config.max_age.as_secs() as i64);
        let left = (until - crate::clock::unix_now()).max(0) as u64;
        by_age.min(Instant::now() + Duration::from_secs(left))
    }

    /// The checks an answer must pass under this configuration (a staple
    /// carries no nonce of ours).
    fn checks<'a>(&self, nonce: Option<&'a [u8]>) -> ocsp::Checks<'a> {
        ocsp::Checks {
            now: crate::clock::unix_now(),
            max_age: self.config.max_age.as_secs() as i64,
            nonce,
        }
    }

    /// Verifies a staple an upstream sent for `leaf` (issued by `issuer`, on
    /// the verified path) under this configuration's checks.
    pub fn verify_staple(
        &self,
        staple: &[u8],
        leaf_der: &[u8],
        issuer_der: &[u8],
    ) -> Result<OcspAnswer, OcspError> {
        ocsp::verify_with(staple, leaf_der, issuer_der, &self.checks(None))
    }

    /// Records an answer obtained elsewhere (a verified staple), under the
    /// same rules as a fetched one: it never replaces a later answer, and
    /// never a "revoked".
    pub fn remember(&self, leaf_der: &[u8], issuer_der: &[u8], answer: OcspAnswer) {
        let (Ok((_, leaf)), Ok((_, issuer))) = (
            X509Certificate::from_der(leaf_der),
            X509Certificate::from_der(issuer_der),
        ) else {
            return;
        };
        self.store(key(&leaf, &issuer), answer);
    }

    /// Keeps `answer` unless the answer held for `k` is later or says
    /// "revoked"; returns the answer held afterwards.
    fn store(&self, k: Key, answer: OcspAnswer) -> OcspAnswer {
        if answer.status == OcspStatus::Revoked {
            let mut revoked = Self::lock(&self.revoked);
            // Bounded like the cache; revoked peers are rare, so a full set
            // means something is wrong, and the cache still holds the answer.
            if revoked.len() < self.config.cache_size {
                revoked.insert(k.clone());
            }
        }
        let mut cache = Self::lock(&self.cache);
        if let Some(held) = cache.get(&k)
            && (held.answer.this_update > answer.this_update
                || held.answer.status == OcspStatus::Revoked)
        {
            return held.answer;
        }
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
        Self::lock(&self.failures).remove(&k);
        cache.insert(
            k,
            Cached {
                answer,
                fetched: Instant::now(),
            },
        );
        self.metrics.cache_size.set(cache.len() as i64);
        answer
    }

    /// The error of a query for `k` that failed less than `error_cache`
    /// ago.
    fn recent_failure(&self, k: &Key, now: Instant) -> Option<OcspError> {
        let failures = Self::lock(&self.failures);
        let (at, e) = failures.get(k)?;
        (now.saturating_duration_since(*at) < self.config.error_cache).then(|| e.clone())
    }

    fn remember_failure(&self, k: Key, e: OcspError) {
        if self.config.error_cache.is_zero() {
            return;
        }
        let mut failures = Self::lock(&self.failures);
        if failures.len() >= self.config.cache_size {
            let now = Instant::now();
            failures
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < self.config.error_cache);
            if failures.len() >= self.config.cache_size {
                // Still full of fresh failures: forget one rather than grow.
                if let Some(victim) = failures.keys().next().cloned() {
                    failures.remove(&victim);
                }
            }
        }
        failures.insert(k, (Instant::now(), e));
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
        if Self::lock(&self.revoked).contains(&k) {
            self.metrics.revoked.inc();
            return Verdict::Revoked;
        }
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
            _ => match self.recent_failure(&k, now) {
                Some(e) => Err(e),
                None => self.fetch(k, leaf_der, issuer_der).await,
            },
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
                let r = r.map(|a| self.store(k.clone(), a));
                if let Err(e) = &r {
                    self.remember_failure(k.clone(), e.clone());
                }
                if let Ok(a) = &r
                    && a.status == OcspStatus::Revoked
                    && let Some(f) = self.on_revoked.get()
                    && let Ok((_, leaf)) = X509Certificate::from_der(leaf_der)
                {
                    f(leaf.issuer().as_raw(), leaf.raw_serial());
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
        let nonce = self.config.nonce.then(|| {
            let mut n = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut n);
            n
        });
        let request =
            ocsp::request_with_nonce(leaf_der, issuer_der, nonce.as_ref().map(|n| &n[..]))?;
        let response = ocsp::query(&url, request, self.config.timeout).await?;
        ocsp::verify_with(
            &response,
            leaf_der,
            issuer_der,
            &self.checks(nonce.as_ref().map(|n| &n[..])),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{SpiffeId, TrustDomain};
    use crate::metrics::Metrics;
    use crate::pki::Ca;
    use rustls_pki_types::pem::PemObject;

    const DAY: Duration = Duration::from_secs(86_400);

    fn checker() -> Arc<OcspChecker> {
        let config = OcspConfig {
            mode: OcspMode::Require,
            // Never asked: every answer here is remembered, not fetched.
            responder: Some("http://127.0.0.1:9/".into()),
            timeout: Duration::from_secs(1),
            max_age: Duration::from_secs(3600),
            cache_size: 100,
            error_cache: Duration::from_secs(10),
            nonce: false,
        };
        Arc::new(OcspChecker::new(
            config,
            OcspMetrics::new(&Metrics::new().revocation),
        ))
    }

    fn answer(status: OcspStatus, this_update: i64) -> OcspAnswer {
        OcspAnswer {
            status,
            this_update,
            next_update: Some(crate::clock::unix_now() + 3600),
        }
    }

    #[tokio::test]
    async fn answers_never_roll_back_and_revoked_is_sticky() {
        let td = TrustDomain::parse("prod.example.org").unwrap();
        let ca = Ca::generate(&td, DAY).unwrap();
        let issuer = rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
            .unwrap()
            .to_vec();
        let leaf = |path: &str| {
            let id = SpiffeId::parse(&format!("spiffe://prod.example.org/{path}")).unwrap();
            ca.issue_svid(&id, DAY).unwrap().der.to_vec()
        };
        let now = crate::clock::unix_now();
        let c = checker();

        // A later "good" is kept against an earlier one replayed after it.
        let a = leaf("a");
        c.remember(&a, &issuer, answer(OcspStatus::Good, now - 10));
        c.remember(&a, &issuer, answer(OcspStatus::Good, now - 100));
        let k = |l: &[u8]| {
            let (_, l) = X509Certificate::from_der(l).unwrap();
            let (_, i) = X509Certificate::from_der(&issuer).unwrap();
            key(&l, &i)
        };
        let held = |l: &[u8]| OcspChecker::lock(&c.cache).get(&k(l)).map(|h| h.answer);
        assert_eq!(held(&a).unwrap().this_update, now - 10);

        // A fresh "revoked" is not undone by the last "good" the peer
        // replays, nor by any later "good".
        let b = leaf("b");
        c.remember(&b, &issuer, answer(OcspStatus::Good, now - 100));
        assert_eq!(c.check(&b, &issuer).await, Verdict::Good);
        c.remember(&b, &issuer, answer(OcspStatus::Revoked, now - 10));
        assert_eq!(c.check(&b, &issuer).await, Verdict::Revoked);
        c.remember(&b, &issuer, answer(OcspStatus::Good, now - 100));
        assert_eq!(c.check(&b, &issuer).await, Verdict::Revoked);
        c.remember(&b, &issuer, answer(OcspStatus::Good, now));
        assert_eq!(c.check(&b, &issuer).await, Verdict::Revoked);
        // Other certificates are not affected.
        assert_eq!(c.check(&a, &issuer).await, Verdict::Good);
        // And it stays revoked once the cache no longer holds it.
        OcspChecker::lock(&c.cache).clear();
        assert_eq!(c.check(&b, &issuer).await, Verdict::Revoked);
    }
}
