//! Our own OCSP staple: fetch an answer for our SVID from its responder,
//! verify it like any other, and say when to fetch again (at half its
//! validity). The control plane runs the loop that staples it to our
//! certificate and retries a failed fetch.

use std::time::Duration;

use super::ocsp::{self, OcspStatus};
use crate::clock::unix_now;
use crate::config::OcspConfig;

/// A verified "good" answer for our SVID, ready to staple.
pub struct Staple {
    /// The DER OCSP response, as handshakes carry it.
    pub response: Vec<u8>,
    /// When the answer stops being valid (Unix seconds).
    pub next_update: i64,
    /// When to fetch the next one.
    pub refresh_in: Duration,
}

/// Why no staple came back.
#[derive(Debug, thiserror::Error)]
pub enum StapleError {
    /// The responder answered, and not "good": whatever is stapled now
    /// must not be served any longer.
    #[error("the responder says our SVID is {0:?}; not stapling")]
    NotGood(OcspStatus),
    #[error("{0}")]
    Failed(String),
}

impl From<String> for StapleError {
    fn from(e: String) -> Self {
        StapleError::Failed(e)
    }
}

impl From<&str> for StapleError {
    fn from(e: &str) -> Self {
        StapleError::Failed(e.to_string())
    }
}

/// Fetches and verifies an answer for `leaf` (issued by `issuer`).
pub async fn fetch(leaf: &[u8], issuer: &[u8], config: &OcspConfig) -> Result<Staple, StapleError> {
    let url = match &config.responder {
        Some(u) => u.clone(),
        None => ocsp::responder_url(leaf)
            .ok_or("our SVID names no OCSP responder and none is configured")?,
    };
    let nonce = config.nonce.then(|| {
        let mut n = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut n);
        n
    });
    let request = ocsp::request_with_nonce(leaf, issuer, nonce.as_ref().map(|n| &n[..]))
        .map_err(|e| e.to_string())?;
    let response = ocsp::query(&url, request, config.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let now = unix_now();
    let checks = ocsp::Checks {
        now,
        max_age: config.max_age.as_secs() as i64,
        nonce: nonce.as_ref().map(|n| &n[..]),
    };
    let answer = ocsp::verify_with(&response, leaf, issuer, &checks).map_err(|e| e.to_string())?;
    if answer.status != OcspStatus::Good {
        return Err(StapleError::NotGood(answer.status));
    }
    // Without nextUpdate an answer holds while its thisUpdate is younger
    // than max_age, as for peers' answers.
    let until = answer
        .next_update
        .unwrap_or(answer.this_update + config.max_age.as_secs() as i64);
    let half = ((until - answer.this_update).max(0) / 2) as u64;
    let due = (answer.this_update + half as i64 - now).max(5) as u64;
    Ok(Staple {
        response,
        next_update: until,
        refresh_in: Duration::from_secs(due).min(config.max_age.max(Duration::from_secs(5))),
    })
}
