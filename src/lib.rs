//! portcullis: a per-pod sidecar proxy that gives services mutual TLS with
//! SPIFFE identities. See ARCHITECTURE.md for how the modules fit together.
#![forbid(unsafe_code)]

pub mod clock;
pub mod cmd;
pub mod config;
pub mod crypto;
pub mod files;
pub mod identity;
pub mod limit;
pub mod line_writer;
pub mod log_limit;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod revocation;
pub mod runtime;
pub mod sidecar;
pub mod tls;
pub mod upstream;
