//! Workload identity: SPIFFE IDs and the X.509-SVID rules.
//!
//! Everything here is pure (no I/O); the TLS layer calls it on certificates
//! it has already received.

mod pattern;
mod spiffe_id;
mod svid;

pub use pattern::{IdPattern, PatternError, Segment};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{
    LeafInfo, Role, SvidError, check_leaf, check_parsed_leaf, serial_hex, spiffe_id_of,
};
