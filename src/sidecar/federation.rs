//! Bundle-endpoint federation (SPIFFE Federation §5): for every
//! `trust_bundles.<domain>` with an `endpoint`, fetch the domain's SPIFFE
//! bundle over HTTPS, authenticated per its profile (`https_web`: a Web
//! PKI server certificate for the URL's host; `https_spiffe`: an
//! X.509-SVID carrying `endpoint_spiffe_id`, verified against the bundle
//! we hold for that ID's trust domain), then put it through the same
//! validate-then-swap as every other bundle change. The next fetch comes
//! after the bundle's `spiffe_refresh_hint` (or `refresh`); a failed
//! fetch or a refused bundle keeps the last good one and is retried
//! sooner, with backoff.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio_util::sync::CancellationToken;

use super::control::ControlPlane;
use super::report::Outcome;
use crate::config::{BundleEndpoint, EndpointProfile};
use crate::identity::TrustDomain;
use crate::tls::{OutboundVerifier, Source, bundle_from_bytes};

/// A bundle is a few KiB; this bounds what a hostile endpoint can send.
const MAX_BUNDLE: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Never fetch more often than this, whatever the hint says.
const MIN_REFRESH: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Starts one fetch loop per bundle endpoint.
pub(super) fn spawn(plane: &Arc<ControlPlane>, shutdown: &CancellationToken) {
    for (td, endpoint) in plane.config.identity.endpoints() {
        // Every result from the start, so increase() sees the first one.
        for result in ["applied", "unchanged", "error"] {
            plane
                .metrics
                .identity
                .bundle_fetches
                .with_label_values(&[td.as_str(), result]);
        }
        tokio::spawn(run(
            plane.clone(),
            td.clone(),
            endpoint.clone(),
            shutdown.clone(),
        ));
    }
}

async fn run(
    plane: Arc<ControlPlane>,
    td: TrustDomain,
    endpoint: BundleEndpoint,
    shutdown: CancellationToken,
) {
    let metrics = &plane.metrics.identity;
    let count = |result: &str| {
        metrics
            .bundle_fetches
            .with_label_values(&[td.as_str(), result])
            .inc()
    };
    // How often the publisher asks to be fetched: its hint, or `refresh`.
    let mut interval = endpoint.refresh.0;
    let mut retry = interval.min(Duration::from_secs(5));
    let mut last_error = String::new();
    loop {
        let next = match fetch_and_apply(&plane, &td, &endpoint).await {
            Ok((result, hint)) => {
                count(result);
                metrics
                    .bundle_fetched
                    .with_label_values(&[td.as_str()])
                    .set(crate::clock::unix_now() as f64);
                if !last_error.is_empty() {
                    tracing::info!(trust_domain = %td, endpoint = %endpoint.url, "bundle endpoint answering again");
                }
                last_error.clear();
                interval = hint.unwrap_or(endpoint.refresh.0).max(MIN_REFRESH);
                retry = interval.min(Duration::from_secs(5));
                interval
            }
            Err(e) => {
                count("error");
                if e != last_error {
                    tracing::error!(trust_domain = %td, endpoint = %endpoint.url, error = %e, retry_in = ?retry, "bundle endpoint fetch failed; the last good bundle keeps serving");
                    last_error = e;
                }
                // Sooner than the interval at first, backing off to it.
                let wait = retry;
                retry = (retry * 2).min(interval).min(MAX_RETRY).max(MIN_REFRESH);
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// One fetch: the bundle, authenticated per the profile, then applied
/// whole. Ok with what became of it and the bundle's refresh hint.
async fn fetch_and_apply(
    plane: &Arc<ControlPlane>,
    td: &TrustDomain,
    endpoint: &BundleEndpoint,
) -> Result<(&'static str, Option<Duration>), String> {
    let tls = client_config(plane, endpoint).await?;
    let body =
        crate::revocation::http_fetch::get_https(&endpoint.url, tls, MAX_BUNDLE, FETCH_TIMEOUT)
            .await
            .map_err(|e| format!("fetch: {e}"))?;
    let place = std::path::PathBuf::from(&endpoint.url);
    let (_, hint) =
        bundle_from_bytes(&body, &place, td, Source::BundleEndpoint).map_err(|e| e.to_string())?;
    let credentials = &plane.credentials;
    let previous = credentials.fetched_bundle(td);
    if !credentials.set_fetched_bundle(td, body) {
        return Ok(("unchanged", hint));
    }
    match plane
        .reload_identity(&format!("bundle endpoint for {td}"))
        .await
    {
        Outcome::Applied(_) | Outcome::Unchanged(_) => Ok(("applied", hint)),
        Outcome::Failed(e) => {
            // Reloads read the last good bundle again, not the refused one.
            credentials.restore_fetched_bundle(td, previous);
            Err(e)
        }
        Outcome::Pending { waiting_for, .. } => {
            credentials.restore_fetched_bundle(td, previous);
            Err(format!("not applied yet: {waiting_for}"))
        }
        Outcome::NotConfigured => Err("identity is not configured".into()),
    }
}

/// The TLS client config the endpoint's profile asks for.
async fn client_config(
    plane: &ControlPlane,
    endpoint: &BundleEndpoint,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(crate::crypto::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let config = match endpoint.profile {
        EndpointProfile::HttpsSpiffe => {
            let Some(expected) = endpoint.endpoint_spiffe_id.clone() else {
                return Err("https_spiffe without endpoint_spiffe_id".into());
            };
            // The trust in force: the start bundle, then each fetched one.
            let verifier = OutboundVerifier::new(plane.tls.trust(), expected, None);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        EndpointProfile::HttpsWeb => {
            let ca = endpoint.ca.clone();
            let roots = tokio::task::spawn_blocking(move || web_roots(ca.as_deref()))
                .await
                .map_err(|e| e.to_string())??;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// The roots a Web PKI endpoint is verified against: `ca` when given,
/// otherwise the system's.
fn web_roots(ca: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match ca {
        Some(path) => {
            let bytes = crate::files::read(path).map_err(|e| e.to_string())?;
            CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?
        }
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(match ca {
            Some(p) => format!("{}: no usable CA certificate", p.display()),
            None => "no system CA certificates found (set ca: for this endpoint)".into(),
        });
    }
    Ok(roots)
}
