//! An SVID as loaded (certificate DER and PKCS#8 key DER): refused naming
//! the place, or a leaf that still verifies is the seed's SPIFFE ID.
//! Input: a big-endian u16 length of the certificate, the certificate, the
//! key.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use portcullis::identity::{Role, TrustDomain};
use portcullis::tls::{Source, SvidVerifier, TrustStore, bundle_from_certs, identity_from_der};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

const CA: &[u8] = include_bytes!("../seeds/pki/ca.der");

fn verifier() -> &'static SvidVerifier {
    static V: OnceLock<SvidVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let td = TrustDomain::parse("fuzz.example").expect("the trust domain");
        let ca = CertificateDer::from(CA.to_vec());
        let place = Path::new("seeds/pki/ca.der");
        let bundle = bundle_from_certs(vec![ca], None, place, &td, Source::File)
            .expect("the seed CA is a bundle");
        SvidVerifier::new(Arc::new(TrustStore::new([bundle])))
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
    let (cert, key) = data[2..].split_at(n);
    let Ok(key) = PrivateKeyDer::try_from(key.to_vec()) else {
        return;
    };
    let place = Path::new("/run/svid");
    let cert = CertificateDer::from(cert.to_vec());
    match identity_from_der(vec![cert], key, place, place, Source::File) {
        Ok(loaded) => {
            let chain = &loaded.certified.cert;
            let verified = verifier().verify(&chain[0], &chain[1..], UnixTime::now(), Role::Client);
            if verified.is_ok() {
                assert_eq!(loaded.leaf.id.as_str(), "spiffe://fuzz.example/svc");
            }
        }
        Err(e) => assert_eq!(e.path.as_path(), place),
    }
});
