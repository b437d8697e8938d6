//! OCSP responses for the seed leaf: refused, or (no one but the seed CA's
//! key can sign one) the status the seed response gives.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::revocation::ocsp::{OcspAnswer, verify};

const CA: &[u8] = include_bytes!("../seeds/pki/ca.der");
const LEAF: &[u8] = include_bytes!("../seeds/pki/leaf.der");
const SEED: &[u8] = include_bytes!("../corpus-seed/ocsp/seed.der");
/// When the seed response was made: judged at that time, it stays fresh.
const MADE: &str = include_str!("../seeds/pki/made");

fn now() -> i64 {
    MADE.trim()
        .parse::<i64>()
        .expect("seeds/pki/made holds Unix seconds")
        + 60
}

fn seed() -> &'static OcspAnswer {
    static S: OnceLock<OcspAnswer> = OnceLock::new();
    S.get_or_init(|| verify(SEED, LEAF, CA, now()).expect("the seed response verifies"))
}

fuzz_target!(|data: &[u8]| {
    let want = seed().status;
    if let Ok(a) = verify(data, LEAF, CA, now()) {
        assert_eq!(a.status, want);
    }
});
