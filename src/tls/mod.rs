//! TLS: loading identity and trust material from files,
//! SVID-aware certificate verifiers, the resolver that serves our current
//! certificate, rustls configs (TLS 1.3 only), and naming handshake failures.

mod context;
mod failure;
mod material;
pub mod spiffe_bundle;
mod store;
mod verifier;

pub use crate::crypto::provider;
pub use context::{ALPN_H2, ALPN_HTTP1, Alpn, OutboundTls, TlsContext};
pub use failure::HandshakeFailure;
pub use material::{
    CertKind, CertSummary, LoadedIdentity, Source, TrustBundle, TrustStore, bundle_from_bytes,
    bundle_from_certs, identity_from_der, load_bundle, load_identity,
};
pub use store::IdentityStore;
pub use verifier::{
    InboundVerifier, OutboundVerifier, RevocationCounters, SvidVerifier, VerifyError,
    verified_issuer,
};
