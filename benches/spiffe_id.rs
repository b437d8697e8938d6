//! SPIFFE ID parsing: it runs on every accepted connection (the peer's
//! URI SAN) and on every policy and config load.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::identity::SpiffeId;

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

criterion_group!(benches, parse);
criterion_main!(benches);
