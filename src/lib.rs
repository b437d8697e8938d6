//! portcullis: a per-pod sidecar proxy that gives services mutual TLS with
//! SPIFFE identities. See ARCHITECTURE.md for how the modules fit together.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cert_cmd;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod files;
pub mod http_client;
pub mod http_server;
pub mod identity;
pub mod line_writer;
pub mod log_limit;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod revocation;
pub mod runtime;
pub mod tls;
pub mod upstream;
