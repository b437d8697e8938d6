//! SPIFFE IDs and trust domains: never a panic; a parsed ID is its own
//! text, and its text parses back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = TrustDomain::parse(s);
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(SpiffeId::parse(&id.to_string()).as_ref(), Ok(&id));
        let rebuilt = format!("spiffe://{}{}", id.trust_domain_name(), id.path());
        assert_eq!(rebuilt, s);
    }
});
