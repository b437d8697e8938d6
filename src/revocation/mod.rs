//! Revocation: certificate revocation lists, loaded from files, verified
//! against their issuer before use, enforced in every handshake (through
//! rustls-webpki) and on open connections when a new list arrives; the
//! OCSP protocol core (`ocsp`), its cache (`checker`) and our own staple;
//! and fetching all of it over plain HTTP (`http_fetch`).

mod checker;
mod crl;
pub mod fetch;
pub mod http_fetch;
pub mod ocsp;
pub mod staple;

pub use checker::{OcspChecker, OcspMetrics, Verdict};
pub use crl::{CrlInfo, CrlSet, CrlTrust, load_crls, load_intermediates, parse_crl_bytes};

/// Whether two DER serial numbers are the same number (leading zero bytes
/// aside).
pub fn same_serial(a: &[u8], b: &[u8]) -> bool {
    let trim = |s: &[u8]| -> usize { s.iter().position(|x| *x != 0).unwrap_or(s.len()) };
    a[trim(a)..] == b[trim(b)..]
}
