//! The L7 pieces both directions share, for listeners with `protocol:
//! http | auto`: serving a downstream connection with hyper under its
//! limits (`server`), upstream connections and their pool (`client`, with
//! our HTTP/2 client in `h2_client`), the one body type (`body`), header
//! and request-target rewriting (`headers`), the one path rule set (`path`), the
//! answers portcullis gives itself (`error`), how a request or tunnel ends
//! (`exchange`), and the access log. Each direction's per-request handling
//! is in `proxy/inbound/http.rs` and `proxy/outbound/http.rs`.
//!
//! Between sidecars the hop speaks HTTP/2 when the peer offers `h2` by
//! ALPN, multiplexing every request of an upstream over one pooled mTLS
//! connection; HTTP/1.1 from the app is carried over it and turned back
//! into HTTP/1.1 for the app on the far side. Bodies stream frame by frame
//! (trailers included); upgrades and `CONNECT` become byte tunnels.

pub mod access_log;
pub mod body;
pub mod client;
pub mod error;
pub mod exchange;
pub mod h2_client;
pub mod headers;
pub mod path;
pub mod server;

pub use access_log::AccessLog;
pub use error::HttpError;
pub use server::{ServeEnd, ServeLimits};

/// The HTTP version of a connection, either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}
