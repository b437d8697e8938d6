//! The sidecar's configuration: one YAML file, read into settings types
//! the rest of the proxy can trust.
//!
//! `file` holds the file as a whole and reads it; each section's settings
//! types, the serde mirror of its YAML (unknown keys are errors, places are
//! remembered) and its validation sit in a file of their own; `check` has
//! what they share: errors that name the file, line, column and reason,
//! and one helper for range-checked fields. Every settings type the proxy
//! uses is defined here, so this module imports nothing of the proxy.

mod check;
mod duration;
mod file;
mod http;
mod identity;
mod limits;
mod listeners;
mod logging;
mod revocation;
mod runtime;
mod upstream;
mod yaml;

pub use check::ConfigError;
pub(crate) use check::{Check, valid_name};
pub use duration::ConfigDuration;
pub use file::Config;
pub use http::{EscapedSlashes, HttpConfig};
pub use identity::{
    BundleEndpoint, EndpointProfile, FederatedBundle, IdentityConfig, IdentityFiles,
    IdentitySource, SPIFFE_ENDPOINT_SOCKET, WorkloadApiConfig,
};
pub use limits::{ConnectionsConfig, Timeouts};
pub use listeners::{
    AdminConfig, AppProtocol, CaptureConfig, Cidr, Destination, Endpoint, InboundConfig,
    InboundLimits, OutboundConfig, ProbeConfig, Protocol, Unmatched,
};
pub use logging::{AuditConfig, LogConfig, LogFormat, LogSink};
pub use revocation::{OcspConfig, OcspMode, RevocationConfig, RevocationPolicy};
pub use runtime::{ReloadConfig, RuntimeConfig};
pub use upstream::{BreakerConfig, UpstreamConfig};
pub(crate) use yaml::{Pairs, yaml_error};
