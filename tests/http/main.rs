//! L7 through real sidecar pairs on loopback, one file per concern:
//! proxying (HTTP/1.1 and HTTP/2, the pooled HTTP/2 hop, trailers, version
//! fallback, draining), identity headers that cannot be spoofed,
//! per-request policy and rate limits, WebSocket and CONNECT tunnels,
//! limits and slowloris, the statuses portcullis answers itself, and
//! `auto` detection.

#[path = "../common/mod.rs"]
mod common;

mod detection;
mod errors;
mod identity;
mod limits;
mod policy;
mod proxying;
mod tunnels;
