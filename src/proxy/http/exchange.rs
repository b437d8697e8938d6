//! How every request and tunnel ends, either way: a request's answer is
//! finished in one place (our error answer, hop-by-hop headers, the
//! client's version, the count), and a request that left HTTP becomes a
//! byte tunnel between the two upgraded connections.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::ProxyBody;
use super::error::HttpError;
use super::headers;
use crate::proxy::copy::{CopyCounters, CopyLimits, copy_bidirectional};
use crate::proxy::counters::ListenerMetrics;

/// Joins a downstream and an upstream that both left HTTP (a `101` or a
/// `CONNECT` answered `2xx`) and copies bytes between them until either
/// side ends or one of `limits` ends the tunnel (idle, deadline, or the
/// sweep closing it).
pub async fn tunnel(
    down: OnUpgrade,
    up: OnUpgrade,
    metrics: &ListenerMetrics,
    limits: CopyLimits<'_>,
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
    let (end, stats) = copy_bidirectional(
        &mut down,
        &mut up,
        CopyCounters {
            to_upstream: &metrics.to_upstream,
            to_downstream: &metrics.to_downstream,
        },
        limits,
    )
    .await;
    tracing::debug!(%listener, ?end, to_upstream = stats.to_upstream, to_downstream = stats.to_downstream, "tunnel closed");
}

/// How every request ends, either way: an error becomes our answer (and
/// is counted), hop-by-hop headers are dropped (except on a 101, whose
/// `Upgrade`/`Connection` the client needs), the client's HTTP version is
/// restored, and the request is counted. Returns the error's name for the
/// access log.
pub fn finish(
    result: Result<hyper::Response<ProxyBody>, HttpError>,
    version: hyper::Version,
    metrics: &ListenerMetrics,
    start: Instant,
) -> (hyper::Response<ProxyBody>, Option<&'static str>) {
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
