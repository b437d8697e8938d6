//! SPIFFE ID parsing and per-connection admission: both run on every
//! accepted connection, so they are measured here (`cargo bench`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::identity::{SpiffeId, TrustDomain};
use portcullis::pki::Ca;
use portcullis::proxy::admission::peer_identity;
use portcullis::tls::{TrustStore, load_bundle};

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("spiffe_id_parse");
    for (name, id) in [
        ("short", "spiffe://example.org/web"),
        (
            "typical",
            "spiffe://prod.example.org/ns/payments/sa/payments-api",
        ),
        (
            "deep",
            "spiffe://prod.example.org/region/eu-west-1/cluster/c7/ns/payments/sa/payments-api/v2",
        ),
    ] {
        g.bench_function(name, |b| b.iter(|| SpiffeId::parse(black_box(id))));
    }
    g.finish();
}

fn admission(c: &mut Criterion) {
    let td = TrustDomain::parse("prod.example.org").unwrap();
    let ca = Ca::generate(&td, Duration::from_secs(86400)).unwrap();
    let id = SpiffeId::parse("spiffe://prod.example.org/ns/web/sa/frontend").unwrap();
    let svid = ca.issue_svid(&id, Duration::from_secs(3600)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(&bundle_path, ca.cert_pem()).unwrap();
    let trust = TrustStore::new([load_bundle(&bundle_path, &td).unwrap()]);
    let chain = vec![svid.der.clone()];
    let now = portcullis::tls::unix_now();
    c.bench_function("admission_peer_identity", |b| {
        b.iter(|| peer_identity(Some(black_box(&chain)), &trust, now))
    });
}

criterion_group!(benches, parse, admission);
criterion_main!(benches);
