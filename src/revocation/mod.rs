//! Revocation: certificate revocation lists, loaded from files, verified
//! against their issuer before use, enforced in every handshake (through
//! rustls-webpki) and on open connections when a new list arrives.

mod crl;

pub use crl::{CrlInfo, CrlSet, RevocationPolicy, load_crls};
