//! The capture listeners: where `portcullis init`'s REDIRECT rules send the
//! pod's TCP. A connection's original destination (`SO_ORIGINAL_DST`,
//! read through socket2's safe wrapper) says where it was going.
//!
//! Inbound, it names the pod port the peer asked for; the inbound listener
//! serving that `port` takes it from there, exactly as if the peer had
//! connected to it: mTLS required, the same policy, the same metrics. A
//! port no listener serves is refused: with capture on, the app's ports
//! are reachable only through the sidecar.
//!
//! Outbound, the destination is looked up in the outbound listeners'
//! `destinations` (an address, a host name resolved again every
//! `dns_refresh`, then a block); the listener found serves the app's
//! connection as if the app had connected to it (its protocol, pooling,
//! breakers, limits, retries and metrics). Anything else follows
//! `capture.unmatched`: passed through as plain TCP to where it was going,
//! or refused, counted either way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntCounter;
use tokio::net::TcpStream;

use super::copy::{CopyCounters, CopyLimits, copy_bidirectional};
use super::inbound::InboundListener;
use super::listener::connect_with_timeout;
use super::outbound::OutboundListener;
use super::outbound::resolve::Addresses;
use crate::config::{Cidr, Destination, OutboundConfig, Unmatched};
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

/// The outbound capture listener's table and what it does with the rest.
pub struct CaptureOutbound {
    listeners: Vec<Arc<OutboundListener>>,
    exact: HashMap<SocketAddr, usize>,
    names: Vec<(Addresses, usize)>,
    blocks: Vec<(Cidr, u16, usize)>,
    unmatched: Unmatched,
    passed: IntCounter,
    /// Passed-through connections open at once (`capture.max_passthrough`:
    /// they hold two sockets each and no listener's limits apply), and the
    /// count of those refused over it.
    passing: Arc<crate::limit::Limit>,
    over: IntCounter,
    passed_up: IntCounter,
    passed_down: IntCounter,
    denied: IntCounter,
    unknown: IntCounter,
    connect_timeout: std::time::Duration,
    idle: std::time::Duration,
    never: tokio_util::sync::CancellationToken,
    log_limit: LogLimiter,
}

/// The outbound capture's counters: `refused` is
/// `portcullis_capture_refused_total`, `passthrough` is
/// `portcullis_capture_passthrough_total` and `bytes` its bytes.
pub struct OutboundCounters<'a> {
    pub refused: &'a prometheus::IntCounterVec,
    pub passthrough: &'a IntCounter,
    pub bytes: &'a prometheus::IntCounterVec,
}

impl CaptureOutbound {
    /// `routes`: each outbound listener with its config (for its
    /// `destinations`).
    pub fn new(
        routes: Vec<(&OutboundConfig, Arc<OutboundListener>)>,
        unmatched: Unmatched,
        max_passthrough: usize,
        counters: OutboundCounters<'_>,
        timeouts: &crate::config::Timeouts,
    ) -> Self {
        let mut c = CaptureOutbound {
            listeners: Vec::with_capacity(routes.len()),
            exact: HashMap::new(),
            names: Vec::new(),
            blocks: Vec::new(),
            unmatched,
            passed: counters.passthrough.clone(),
            passing: crate::limit::Limit::new(max_passthrough),
            over: counters
                .refused
                .with_label_values(&["outbound", "max_passthrough"]),
            passed_up: counters.bytes.with_label_values(&["to_upstream"]),
            passed_down: counters.bytes.with_label_values(&["to_downstream"]),
            denied: counters
                .refused
                .with_label_values(&["outbound", "unmatched"]),
            unknown: counters
                .refused
                .with_label_values(&["outbound", "no_original_destination"]),
            connect_timeout: timeouts.connect.0,
            idle: timeouts.idle.0,
            never: Default::default(),
            log_limit: LogLimiter::new(10),
        };
        for (config, listener) in routes {
            let i = c.listeners.len();
            c.listeners.push(listener);
            for d in &config.destinations {
                match d {
                    Destination::Addr(a) => {
                        c.exact.entry(*a).or_insert(i);
                    }
                    Destination::Block(cidr, port) => c.blocks.push((*cidr, *port, i)),
                    Destination::Name(e) => c
                        .names
                        .push((Addresses::new(e.clone(), config.dns_refresh.0), i)),
                }
            }
        }
        c
    }

    async fn route(&self, dst: SocketAddr) -> Option<usize> {
        if let Some(i) = self.exact.get(&dst) {
            return Some(*i);
        }
        for (names, i) in &self.names {
            if names.endpoint().port() == dst.port()
                && let Some(a) = names.attempts().await
                && a.iter().any(|a| a == dst)
            {
                return Some(*i);
            }
        }
        self.blocks
            .iter()
            .find(|(cidr, port, _)| *port == dst.port() && cidr.contains(dst.ip()))
            .map(|(_, _, i)| *i)
    }

    pub async fn serve(self: Arc<Self>, app: TcpStream, src: SocketAddr) {
        let Some(dst) = original_destination(&app) else {
            self.unknown.inc();
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::warn!(%src, suppressed, "captured outbound connection without an original destination: refused");
            }
            return;
        };
        if let Some(i) = self.route(dst).await {
            return self.listeners[i].clone().serve(app, src).await;
        }
        match self.unmatched {
            Unmatched::Deny => {
                self.denied.inc();
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::info!(%dst, suppressed, "captured outbound connection to a destination no listener serves: refused (capture.unmatched: deny)");
                }
            }
            Unmatched::Passthrough => self.pass_through(app, dst).await,
        }
    }

    /// Plain TCP to where the app was going: no identity, no mTLS, only
    /// counted (the sidecar's own connection is not redirected again: its
    /// UID is excluded by `portcullis init`).
    async fn pass_through(&self, mut app: TcpStream, dst: SocketAddr) {
        let Some(_place) = self.passing.try_take() else {
            self.over.inc();
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::warn!(%dst, suppressed, "passthrough refused: capture.max_passthrough reached");
            }
            return;
        };
        self.passed.inc();
        let Ok(mut up) = connect_with_timeout(dst, self.connect_timeout).await else {
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::info!(%dst, suppressed, "passthrough destination unreachable");
            }
            return;
        };
        let counters = CopyCounters {
            to_upstream: &self.passed_up,
            to_downstream: &self.passed_down,
        };
        let limits = CopyLimits {
            idle: self.idle,
            deadline: None,
            stop: &self.never,
        };
        let _ = copy_bidirectional(&mut app, &mut up, counters, limits).await;
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
