//! The inbound capture listener: where `portcullis init`'s REDIRECT sends
//! every TCP connection made to the pod. The connection's original
//! destination (`SO_ORIGINAL_DST`, read through socket2's safe wrapper)
//! names the pod port the peer asked for; the inbound listener serving
//! that `port` takes it from there, exactly as if the peer had connected
//! to it: mTLS required, the same policy, the same metrics. A port no
//! listener serves is refused: with capture on, the app's ports are
//! reachable only through the sidecar.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntCounter;
use tokio::net::TcpStream;

use super::inbound::InboundListener;
use crate::log_limit::LogLimiter;

pub struct CaptureInbound {
    by_port: HashMap<u16, Arc<InboundListener>>,
    unmapped: IntCounter,
    unknown: IntCounter,
    log_limit: LogLimiter,
}

impl CaptureInbound {
    /// `by_port`: each captured listener by the pod port it serves;
    /// `refused`: the `portcullis_capture_refused_total` family.
    pub fn new(
        by_port: HashMap<u16, Arc<InboundListener>>,
        refused: &prometheus::IntCounterVec,
    ) -> Self {
        CaptureInbound {
            by_port,
            unmapped: refused.with_label_values(&["inbound", "unmapped_port"]),
            unknown: refused.with_label_values(&["inbound", "no_original_destination"]),
            log_limit: LogLimiter::new(10),
        }
    }

    pub async fn serve(self: Arc<Self>, tcp: TcpStream, src: SocketAddr) {
        let Some(dst) = original_destination(&tcp) else {
            self.unknown.inc();
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::warn!(%src, suppressed, "captured connection without an original destination (not redirected by netfilter?): refused");
            }
            return;
        };
        match self.by_port.get(&dst.port()) {
            Some(listener) => listener.clone().serve(tcp, src).await,
            None => {
                self.unmapped.inc();
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(%src, %dst, suppressed, "captured connection to a port no inbound listener serves: refused");
                }
            }
        }
    }
}

/// Where the peer meant to connect before netfilter redirected it; `None`
/// for a connection made to the capture port itself.
pub fn original_destination(tcp: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let local = tcp.local_addr().ok()?;
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let dst = dst.ok()?.as_socket()?;
    // Not redirected: the original destination is this very socket.
    (dst != local).then_some(dst)
}
