//! The SPIFFE Workload API stream (`identity.workload_api`): connects to
//! the agent's socket with the `spiffe` crate, receives every X.509
//! update (SVIDs, our bundle, federated bundles), holds the latest for
//! the identity source, and says that one arrived. Validating and
//! swapping it in is `credentials`' job, the same as for files. A failed
//! connection or a stream that ends is retried with exponential backoff
//! and logged; the last good identity keeps serving meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use spiffe::{WorkloadApiClient, X509Context};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::source::{Streamed, StreamedSvid, Update};
use crate::metrics::Metrics;

/// The raw material of one update, as DER.
fn update_of(context: &X509Context) -> Update {
    Update {
        svids: context
            .svids()
            .iter()
            .map(|s| StreamedSvid {
                chain: s
                    .cert_chain()
                    .iter()
                    .map(|c| c.as_bytes().to_vec())
                    .collect(),
                key: s.private_key().as_bytes().to_vec(),
                hint: s.hint().map(str::to_string),
                spiffe_id: s.spiffe_id().to_string(),
            })
            .collect(),
        bundles: {
            let mut b: Vec<_> = context
                .bundle_set()
                .iter()
                .map(|(td, bundle)| {
                    (
                        td.to_string(),
                        bundle
                            .authorities()
                            .iter()
                            .map(|c| c.as_bytes().to_vec())
                            .collect(),
                    )
                })
                .collect();
            // The set is a map: a stable order keeps equal updates' hashes equal.
            b.sort();
            b
        },
    }
}

/// Runs the stream until `shutdown`: every update is stored in `streamed`
/// and announced on `arrived` (its value counts updates); an update the
/// client cannot even parse is refused here and counted.
pub(super) async fn run(
    streamed: Arc<Streamed>,
    arrived: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let socket = streamed.config.socket.clone();
    let (first, max) = (streamed.config.backoff.0, streamed.config.backoff_max.0);
    let mut backoff = first;
    let mut last_error = String::new();
    let mut count = 0u64;
    loop {
        let error = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = stream_once(&socket, &streamed, &arrived, &metrics, &mut count) => e,
        };
        metrics.identity.workload_api_up.set(0);
        metrics.identity.workload_api_errors.inc();
        if error.received {
            backoff = first;
        }
        // Say it once per kind of failure: an agent that stays down is
        // one line, not one every retry.
        if error.message != last_error {
            tracing::warn!(socket = %socket, error = %error.message, retry_in = ?backoff, "Workload API unavailable; the last good identity keeps serving until it expires");
            last_error = error.message;
        } else {
            tracing::debug!(socket = %socket, retry_in = ?backoff, "Workload API still unavailable");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

struct StreamError {
    message: String,
    /// Whether this connection delivered anything before it failed.
    received: bool,
}

async fn stream_once(
    socket: &str,
    streamed: &Streamed,
    arrived: &watch::Sender<u64>,
    metrics: &Metrics,
    count: &mut u64,
) -> StreamError {
    let fail = |message: String, received| StreamError { message, received };
    let client = match WorkloadApiClient::connect_to(socket).await {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot connect: {e}"), false),
    };
    let mut stream = match client.stream_x509_contexts().await {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot open the X.509-SVID stream: {e}"), false),
    };
    metrics.identity.workload_api_up.set(1);
    tracing::info!(socket = %socket, "Workload API stream open");
    let mut received = false;
    while let Some(item) = stream.next().await {
        received = true;
        match item {
            Ok(context) => {
                streamed.set(update_of(&context));
                *count += 1;
                arrived.send_replace(*count);
            }
            Err(e) if is_transport(&e) => return fail(format!("stream failed: {e}"), true),
            Err(e) => {
                // Malformed material: refused, and the stream goes on.
                metrics
                    .identity
                    .workload_api_updates
                    .with_label_values(&["refused"])
                    .inc();
                tracing::error!(socket = %socket, error = %e, "Workload API update refused; the last good identity keeps serving");
            }
        }
    }
    fail("the agent closed the stream".into(), received)
}

/// Whether a stream error is the connection's (retry) rather than one
/// update's content (refuse that update, keep the stream).
fn is_transport(e: &spiffe::WorkloadApiError) -> bool {
    use spiffe::WorkloadApiError as E;
    matches!(
        e,
        E::Transport(_) | E::NoIdentityIssued | E::PermissionDenied(_) | E::EmptyResponse
    )
}

/// Up to a quarter more, so sidecars restarted together do not reconnect
/// in step.
fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() / 4.0)
}
