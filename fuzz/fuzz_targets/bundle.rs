//! Trust bundles, PEM or SPIFFE JSON: refused naming the place, or only CA
//! certificates of the trust domain.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::identity::TrustDomain;
use portcullis::tls::{Source, bundle_from_bytes};

fuzz_target!(|data: &[u8]| {
    let td = TrustDomain::parse("fuzz.example").expect("the trust domain");
    let place = Path::new("/run/bundle");
    match bundle_from_bytes(data, place, &td, Source::File) {
        Ok((b, _)) => {
            assert!(!b.roots.is_empty());
            assert!(b.roots.iter().all(|r| r.spiffe_id == td.id().to_string()));
        }
        Err(e) => assert_eq!(e.path.as_path(), place),
    }
});
