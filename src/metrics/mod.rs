//! Every Prometheus family the sidecar exports, declared here and grouped
//! by area: connections, HTTP, identity (certificate expiry), policy,
//! revocation, upstreams, and the process itself.
//!
//! Each running sidecar owns a [`Metrics`] (and its registry), so several
//! sidecars can live in one process, as they do in `portcullis demo` and the
//! tests. This module knows families and label names only; the parts of
//! the proxy resolve the label sets they use once, at start (a listener's
//! counters, an upstream's endpoints), so hot paths never look labels up.

mod connections;
mod http;
mod identity;
mod policy;
mod process;
mod register;
mod revocation;
mod upstream;

pub use connections::ConnectionFamilies;
pub use http::HttpFamilies;
pub use identity::{CertExpiry, IdentityFamilies};
pub use policy::{DecisionCounterCache, PolicyFamilies};
pub use process::ProcessFamilies;
pub use revocation::{CrlSeries, RevocationFamilies};
pub use upstream::UpstreamFamilies;

use prometheus::{Encoder, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub connections: ConnectionFamilies,
    pub http: HttpFamilies,
    pub identity: IdentityFamilies,
    pub policy: PolicyFamilies,
    pub process: ProcessFamilies,
    pub revocation: RevocationFamilies,
    pub upstream: UpstreamFamilies,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        Metrics {
            connections: ConnectionFamilies::new(&registry),
            http: HttpFamilies::new(&registry),
            identity: IdentityFamilies::new(&registry),
            policy: PolicyFamilies::new(&registry),
            process: ProcessFamilies::new(&registry),
            revocation: RevocationFamilies::new(&registry),
            upstream: UpstreamFamilies::new(&registry),
            registry,
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        self.process.sample_tasks();
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
