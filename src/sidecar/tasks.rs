//! The control plane's background tasks: readiness following our SVID's
//! validity, the OCSP re-check of open connections and the sweep an OCSP
//! "revoked" triggers, the expiry sweep, CRL fetching from distribution
//! points, and our own OCSP staple. Each runs until the sidecar stops.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::control::ControlPlane;
use super::enforce::Change;
use crate::clock::unix_now;
use crate::identity::Role;
use crate::tls::{TlsContext, verified_issuer};

/// Readiness follows our SVID's validity: re-checked every few seconds.
pub(super) async fn readiness(plane: Arc<ControlPlane>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => plane.refresh_ready(),
        }
    }
}

/// With OCSP on: a fresh answer that says "revoked" sweeps at once, and
/// the answers for open connections' peers are kept fresh (a fetch that
/// turns "revoked" sweeps through the same hook).
pub(super) fn ocsp(plane: &Arc<ControlPlane>, stop: CancellationToken) {
    let Some(checker) = plane.tls.ocsp().cloned() else {
        return;
    };
    let hook = plane.clone();
    checker.on_revoked(Box::new(move |issuer, serial| {
        hook.enforcer.sweep(Change::OcspRevoked { issuer, serial });
    }));
    let registry = plane.registry.clone();
    tokio::spawn(async move {
        // The first re-check one period after start: nothing is old yet
        // (an immediate tick would race the first connections' own checks).
        let every = checker.recheck_interval();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    // Concurrently, so one slow answer does not hold up the
                    // rest; bounded, so thousands of peers do not open
                    // thousands of sockets to the responder at once.
                    let checker = checker.clone();
                    for_each_bounded(registry.ocsp_certs(), RECHECK_CONCURRENCY, move |certs| {
                        let checker = checker.clone();
                        async move {
                            checker.check(&certs.0, &certs.1).await;
                        }
                    })
                    .await;
                }
            }
        }
    });
}

/// How many OCSP re-check queries run at once.
const RECHECK_CONCURRENCY: usize = 16;

/// Runs `f` on every item, at most `limit` at a time, and returns when all
/// are done.
async fn for_each_bounded<T, F, Fut>(items: Vec<T>, limit: usize, f: F)
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for item in items {
        while running.len() >= limit.max(1) {
            running.join_next().await;
        }
        running.spawn(f(item));
    }
    while running.join_next().await.is_some() {}
}

/// With `connections.close_on_peer_expiry`, or pooled upstream
/// connections to close: sweeps when the earliest registered peer
/// certificate expires (woken sooner when a connection
/// whose peer expires sooner registers).
pub(super) async fn expiry(plane: Arc<ControlPlane>, stop: CancellationToken) {
    let registry = plane.registry.clone();
    loop {
        let next = registry.earliest_expiry();
        let wait = async {
            if next == i64::MAX {
                std::future::pending::<()>().await
            } else {
                let left = (next - unix_now()).max(0) as u64;
                tokio::time::sleep(Duration::from_secs(left)).await
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = registry.expiry_moved() => {}
            _ = wait => {
                plane.enforcer.sweep(Change::Expiry);
            }
        }
    }
}

/// Fetches the CRLs named by the distribution points of our chain and the
/// trust bundle roots, validates each against its issuer before keeping it,
/// swaps them in through the credentials reload, and fetches again well
/// before each one's nextUpdate.
pub(super) async fn fetch_crls(plane: Arc<ControlPlane>, stop: CancellationToken) {
    const RETRY: Duration = Duration::from_secs(30);
    let max_wait = plane.config.reload.interval.0.max(Duration::from_secs(10));
    // URL → digest of the last download refused from it.
    let mut refused: std::collections::HashMap<String, [u8; 32]> = Default::default();
    loop {
        let trust = plane.tls.trust();
        let identity = plane.tls.identity().current();
        let mut urls: Vec<String> = identity
            .certified
            .cert
            .iter()
            .chain(trust.bundles().flat_map(|b| b.certs.iter()))
            .flat_map(|c| crate::revocation::fetch::distribution_points(c))
            .collect();
        urls.sort();
        urls.dedup();
        let mut wait = max_wait;
        let mut changed = false;
        for url in &urls {
            let fetched = crate::revocation::http_fetch::send(
                hyper::Method::GET,
                url,
                None,
                Vec::new(),
                32 << 20,
                Duration::from_secs(10),
            )
            .await;
            let bytes = match fetched {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%url, error = %e, "cannot fetch CRL");
                    wait = wait.min(RETRY);
                    continue;
                }
            };
            // Validate on its own first, so a bad download never blocks reloads.
            let entry = [(url.clone(), bytes.clone())];
            if let Some(r) = &plane.config.revocation
                && let Err(e) = super::credentials::load_crls(
                    r,
                    &identity,
                    &trust,
                    &[],
                    &entry,
                    trust.revocation(),
                )
            {
                // The same bad download again is not news: say it once.
                let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
                plane.metrics.identity.cert_reload("crl", "error");
                if refused.insert(url.clone(), digest) != Some(digest) {
                    tracing::warn!(%url, error = %e, "fetched CRL refused; the lists in force stay");
                }
                wait = wait.min(RETRY);
                continue;
            }
            refused.remove(url);
            if let Ok(ders) =
                crate::revocation::parse_crl_bytes(std::path::Path::new(url), bytes.clone())
                && let Some(der) = ders.first()
            {
                wait = wait.min(crate::revocation::fetch::refresh_in(
                    der,
                    crate::clock::unix_now(),
                    Duration::from_secs(10),
                    max_wait,
                ));
            }
            changed |= plane.credentials.set_fetched_crl(url, bytes);
        }
        if changed {
            plane.reload("CRL fetched").await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Keeps our SVID's OCSP staple fresh until `stop`: fetch, staple, and
/// fetch again at half the answer's validity (sooner when our SVID
/// rotates). While the responder is down, fetches back off (5 s doubling
/// to 5 min, jittered); the staple held meanwhile stops being served at
/// its nextUpdate (the identity store sees to that), which is logged once.
pub(super) async fn staple(
    tls: Arc<TlsContext>,
    config: crate::config::OcspConfig,
    next_update: prometheus::Gauge,
    stop: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut expiry_logged = false;
    let note_expiry = |logged: &mut bool| {
        if let Some(until) = tls.identity().staple_until()
            && until <= unix_now()
            && !*logged
        {
            *logged = true;
            tracing::warn!(next_update = %crate::clock::fmt_time(until), "our OCSP staple has passed its nextUpdate and is no longer served");
        }
    };
    loop {
        let identity = tls.identity().current();
        let chain = &identity.certified.cert;
        let fetched = match chain.first() {
            None => Err("no certificate".into()),
            Some(leaf) => {
                let now = rustls_pki_types::UnixTime::now();
                match verified_issuer(&tls.trust(), leaf, &chain[1..], now, Role::Server) {
                    Err(e) => Err(format!("our chain does not verify: {e}").into()),
                    Ok(issuer) => crate::revocation::staple::fetch(leaf, &issuer, &config).await,
                }
            }
        };
        let wait = match fetched {
            Ok(staple) => {
                tls.identity().set_staple(
                    &identity.leaf.serial,
                    staple.response,
                    staple.next_update,
                );
                next_update.set(staple.next_update as f64);
                tracing::debug!(next_update = %crate::clock::fmt_time(staple.next_update), "OCSP staple refreshed");
                failures = 0;
                expiry_logged = false;
                staple.refresh_in
            }
            Err(e) => {
                if let crate::revocation::staple::StapleError::NotGood(_) = e {
                    // A "good" held from before must not outlive the news.
                    tls.identity().clear_staple(&identity.leaf.serial);
                }
                let wait = staple_backoff(failures, rand::random::<f64>());
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?wait, "cannot fetch an OCSP staple for our SVID");
                note_expiry(&mut expiry_logged);
                wait
            }
        };
        // Re-check sooner than that if our SVID rotates.
        let serial = identity.leaf.serial.clone();
        drop(identity);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let step = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_secs(5));
            if step.is_zero() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(step) => {}
            }
            note_expiry(&mut expiry_logged);
            if tls.identity().current().leaf.serial != serial {
                failures = 0;
                break;
            }
        }
    }
}

/// The wait before the next staple fetch after `failures` failed ones in a
/// row: 5 s doubling up to 5 min, scaled by 0.8–1.2 with `jitter` in
/// [0, 1) so a fleet whose responder comes back does not ask in step.
fn staple_backoff(failures: u32, jitter: f64) -> Duration {
    const FIRST: Duration = Duration::from_secs(5);
    const CAP: Duration = Duration::from_secs(300);
    let base = FIRST.saturating_mul(1u32 << failures.min(10)).min(CAP);
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn bounded_runs_up_to_the_limit_at_once_and_no_more() {
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (a, p, d) = (active.clone(), peak.clone(), done.clone());
        for_each_bounded((0..20).collect(), 3, move |_: i32| {
            let (a, p, d) = (a.clone(), p.clone(), d.clone());
            async move {
                let now = a.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                a.fetch_sub(1, Ordering::SeqCst);
                d.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
        assert_eq!(done.load(Ordering::SeqCst), 20);
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn staple_fetches_back_off_to_a_cap_with_jitter() {
        let mid: Vec<u64> = (0..9).map(|n| staple_backoff(n, 0.5).as_secs()).collect();
        assert_eq!(mid, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(staple_backoff(0, 0.0), Duration::from_secs(4));
        assert_eq!(staple_backoff(u32::MAX, 0.999_999).as_secs(), 359);
    }
}
