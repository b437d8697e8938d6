//! L7: HTTP/1.1 and HTTP/2 proxying with hyper, for listeners with
//! `protocol: http` or `protocol: auto`.
//!
//! Between sidecars the hop speaks HTTP/2 when the peer offers `h2` by
//! ALPN, multiplexing every request of an upstream over one pooled mTLS
//! connection; HTTP/1.1 from the app is carried over it and turned back
//! into HTTP/1.1 for the app on the far side. Inbound, every request is
//! authorized by method and path, and the peer's verified identity is
//! added as headers no client can forge. Bodies stream frame by frame
//! (trailers included); upgrades and `CONNECT` become byte tunnels.

mod access_log;
mod body;
mod client;
mod detect;
mod error;
mod h2_client;
mod headers;
mod inbound;
mod outbound;
mod server;

pub use access_log::AccessLog;
pub use detect::{Detected, Rewind, classify, detect};
pub use error::HttpError;
pub use headers::normalize_path;
pub(crate) use inbound::{InboundHttp, serve_inbound};
pub(crate) use outbound::{OutboundHttp, serve_outbound};
pub use server::{ServeEnd, ServeLimits};

use tokio::time::Instant;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::copy::{CopyCounters, CopyLimits, copy_bidirectional};
use crate::proxy::listener::ListenerMetrics;

/// Joins a downstream and an upstream that both left HTTP (a `101` or a
/// `CONNECT` answered `2xx`) and copies bytes between them until either
/// side ends or the idle timeout passes.
async fn tunnel(
    down: OnUpgrade,
    up: OnUpgrade,
    metrics: &ListenerMetrics,
    idle: std::time::Duration,
    listener: &str,
) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%listener, error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
    let never = tokio_util::sync::CancellationToken::new();
    let (end, stats) = copy_bidirectional(
        &mut down,
        &mut up,
        CopyCounters {
            to_upstream: &metrics.to_upstream,
            to_downstream: &metrics.to_downstream,
        },
        CopyLimits {
            idle,
            deadline: None,
            stop: &never,
        },
    )
    .await;
    tracing::debug!(%listener, ?end, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "tunnel closed");
}

/// How every request ends, either way: an error becomes our answer (and
/// is counted), hop-by-hop headers are dropped (except on a 101, whose
/// `Upgrade`/`Connection` the client needs), the client's HTTP version is
/// restored, and the request is counted. Returns the error's name for the
/// access log.
fn finish(
    result: Result<hyper::Response<body::ProxyBody>, HttpError>,
    version: hyper::Version,
    metrics: &ListenerMetrics,
    start: Instant,
) -> (hyper::Response<body::ProxyBody>, Option<&'static str>) {
    let (mut resp, error) = match result {
        Ok(r) => (r, None),
        Err(e) => {
            metrics.request_error(e.as_str());
            (e.response(), Some(e.as_str()))
        }
    };
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        headers::strip_hop_by_hop(resp.headers_mut(), false);
    }
    *resp.version_mut() = version;
    metrics.request(resp.status().as_u16(), crate::clock::seconds_since(start));
    (resp, error)
}
