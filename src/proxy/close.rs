//! Why a proxied connection ended: the `reason` label of
//! `portcullis_connections_closed_total`, how an L4 copy's end maps to it
//! (an HTTP connection's is `ServeEnd::close_reason`), and the lifetime
//! deadline.

use super::copy::CopyEnd;
use crate::config::ConnectionsConfig;

/// Why a proxied connection ended; the `reason` label of
/// `portcullis_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished normally.
    Completed,
    IdleTimeout,
    /// The TLS handshake failed (the handshake counter says why).
    HandshakeFailed,
    /// Admission refused the peer after the handshake.
    Denied,
    /// The local app or upstream could not be reached.
    ConnectFailed,
    ConnectTimeout,
    /// A read or write failed mid-stream (reset, broken pipe).
    Error,
    /// The peer went over its service's rate limit.
    RateLimited,
    /// A policy reload no longer allows the peer.
    Policy,
    /// The peer's certificate expired (with `connections.close_on_peer_expiry`).
    PeerExpired,
    /// The connection reached `connections.max_lifetime`.
    MaxLifetime,
    /// A new CRL revoked the peer's certificate.
    Revoked,
    /// An HTTP client did not send a whole request head in time (slowloris).
    HeaderTimeout,
    /// Every usable upstream endpoint's circuit breaker is open.
    CircuitOpen,
    /// Over the upstream's `max_connections`.
    Overloaded,
}

impl CloseReason {
    pub const ALL: [CloseReason; 15] = [
        CloseReason::Completed,
        CloseReason::IdleTimeout,
        CloseReason::HandshakeFailed,
        CloseReason::Denied,
        CloseReason::ConnectFailed,
        CloseReason::ConnectTimeout,
        CloseReason::Error,
        CloseReason::RateLimited,
        CloseReason::Policy,
        CloseReason::PeerExpired,
        CloseReason::MaxLifetime,
        CloseReason::Revoked,
        CloseReason::HeaderTimeout,
        CloseReason::CircuitOpen,
        CloseReason::Overloaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Completed => "completed",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::Denied => "denied",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::Error => "error",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Policy => "policy",
            CloseReason::PeerExpired => "peer_expired",
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::Revoked => "revoked",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::CircuitOpen => "circuit_open",
            CloseReason::Overloaded => "overloaded",
        }
    }
}

/// How an L4 copy's end is counted; `deadline` is what its deadline
/// meant, `stopped` why it was closed from outside.
pub fn copy_end(end: &CopyEnd, deadline: CloseReason, stopped: CloseReason) -> CloseReason {
    match end {
        CopyEnd::Completed => CloseReason::Completed,
        CopyEnd::IdleTimeout => CloseReason::IdleTimeout,
        CopyEnd::Error(_) => CloseReason::Error,
        CopyEnd::Deadline => deadline,
        CopyEnd::Stopped => stopped,
    }
}

/// When a connection must end whatever it is doing: its maximum lifetime,
/// if one is configured. (A peer certificate's expiry is the enforcement
/// sweep's: it closes every kind of connection the same way.)
pub fn lifetime_deadline(limits: &ConnectionsConfig) -> Option<tokio::time::Instant> {
    limits
        .max_lifetime
        .map(|d| tokio::time::Instant::now() + d.0)
}
