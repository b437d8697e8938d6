//! CRLs (DER or PEM) as loaded for the seed CA: refused, or (no one but
//! the seed CA's key can sign one) listing exactly what the seed CRL lists.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::RevocationPolicy;
use portcullis::revocation::{CrlSet, CrlTrust, load_crls};
use rustls_pki_types::CertificateDer;

const CA: &[u8] = include_bytes!("../seeds/pki/ca.der");
const SEED: &[u8] = include_bytes!("../corpus-seed/crl/seed.der");

const POLICY: RevocationPolicy = RevocationPolicy {
    whole_chain: false,
    expired_is_unknown: true,
    fail_open: false,
    fetch_distribution_points: false,
};

fn load(bytes: &[u8]) -> Option<CrlSet> {
    let ca = CertificateDer::from(CA);
    let roots = [&ca];
    let trust = CrlTrust {
        roots: &roots,
        intermediates: &[],
        in_force: None,
    };
    let fetched = [("http://crl.fuzz/ca.crl".to_string(), bytes.to_vec())];
    load_crls(&[], &fetched, &trust, POLICY).ok()
}

fn seed() -> &'static CrlSet {
    static S: OnceLock<CrlSet> = OnceLock::new();
    S.get_or_init(|| load(SEED).expect("the seed CRL loads"))
}

fuzz_target!(|data: &[u8]| {
    let _ =
        portcullis::revocation::parse_crl_bytes(std::path::Path::new("/run/ca.crl"), data.to_vec());
    if let Some(set) = load(data) {
        let good = seed();
        assert_eq!(set.info.len(), good.info.len());
        for (a, b) in set.info.iter().zip(&good.info) {
            assert_eq!(a.entries, b.entries);
            assert_eq!(a.issuer, b.issuer);
            assert_eq!(a.next_update, b.next_update);
        }
    }
});
