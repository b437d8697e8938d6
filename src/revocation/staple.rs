//! Stapling our own OCSP status: fetch an answer for our SVID from its
//! responder, verify it like any other, staple it to our certificate so
//! inbound handshakes carry it, and refresh it at half its validity. A
//! failed fetch is retried soon; an answer that expires is dropped.

use std::sync::Arc;
use std::time::Duration;

use prometheus::Gauge;
use tokio_util::sync::CancellationToken;

use super::OcspConfig;
use super::ocsp::{self, OcspStatus};
use crate::tls::{TlsContext, issuer_of, unix_now};

const RETRY: Duration = Duration::from_secs(30);

/// Runs until `stop`, keeping our SVID's staple fresh.
pub async fn run(
    tls: Arc<TlsContext>,
    config: OcspConfig,
    next_update: Gauge,
    stop: CancellationToken,
) {
    loop {
        let wait = match refresh(&tls, &config, &next_update).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch an OCSP staple for our SVID; retrying");
                RETRY
            }
        };
        // Re-check sooner than that if our SVID rotates.
        let serial = tls.identity().current().leaf.serial.clone();
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
            if tls.identity().current().leaf.serial != serial {
                break;
            }
        }
    }
}

/// Fetches and staples one answer; returns how long until the next fetch.
async fn refresh(
    tls: &TlsContext,
    config: &OcspConfig,
    next_update: &Gauge,
) -> Result<Duration, String> {
    let identity = tls.identity().current();
    let chain = &identity.certified.cert;
    let leaf = chain.first().ok_or("no certificate")?;
    let issuer = issuer_of(&tls.trust(), leaf, &chain[1..])
        .ok_or("our issuer is not in the chain or the bundle")?;
    let url = match &config.responder {
        Some(u) => u.clone(),
        None => ocsp::responder_url(leaf)
            .ok_or("our SVID names no OCSP responder and none is configured")?,
    };
    let request = ocsp::request(leaf, &issuer).map_err(|e| e.to_string())?;
    let response = ocsp::query(&url, request, config.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let now = unix_now();
    let answer = ocsp::verify(&response, leaf, &issuer, now).map_err(|e| e.to_string())?;
    if answer.status != OcspStatus::Good {
        return Err(format!(
            "the responder says our SVID is {:?}; not stapling",
            answer.status
        ));
    }
    tls.identity().set_staple(&identity.leaf.serial, response);
    let until = answer
        .next_update
        .unwrap_or(now + config.max_age.as_secs() as i64);
    next_update.set(until as f64);
    tracing::debug!(next_update = %crate::tls::fmt_time(until), "OCSP staple refreshed");
    let half = ((until - answer.this_update).max(0) / 2) as u64;
    let due = (answer.this_update + half as i64 - now).max(5) as u64;
    Ok(Duration::from_secs(due).min(config.max_age.max(Duration::from_secs(5))))
}
