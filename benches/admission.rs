//! Admission per connection, after the handshake and before the first
//! byte reaches the app: the peer identity read from the session's leaf,
//! the CRL index, the OCSP cache, then the policy decision. Each step is
//! measured alone and the whole as the inbound path runs it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::clock::unix_now;
use portcullis::config::{OcspConfig, OcspMode, RevocationPolicy};
use portcullis::identity::{IdPattern, Role, SpiffeId, TrustDomain};
use portcullis::metrics::Metrics;
use portcullis::pki::{Ca, RevokedEntry};
use portcullis::policy::{Action, Mode, PolicySpec, PolicyTable, RuleSpec, ServiceSpec};
use portcullis::proxy::admission::{check_ocsp_of, peer_identity};
use portcullis::revocation::ocsp::{OcspAnswer, OcspStatus};
use portcullis::revocation::{CrlTrust, OcspChecker, Verdict, load_crls};
use portcullis::tls::{TlsContext, TrustStore, load_bundle, load_identity};

const DAY: Duration = Duration::from_secs(86_400);

/// 1,000 allow rules over 50 trust domains, one of which admits the peer.
fn policy() -> PolicyTable {
    let mut rules: Vec<RuleSpec> = (0..1_000)
        .map(|i| RuleSpec {
            name: format!("rule-{i}"),
            action: Action::Allow,
            from: vec![
                IdPattern::parse(&format!("spiffe://td{}.example.org/ns/team{i}/*", i % 50))
                    .expect("valid pattern"),
            ],
            methods: None,
            paths: None,
        })
        .collect();
    rules.push(RuleSpec {
        name: "frontend".into(),
        action: Action::Allow,
        from: vec![IdPattern::parse("spiffe://prod.example.org/ns/web/**").expect("pattern")],
        methods: None,
        paths: None,
    });
    PolicyTable::compile(&PolicySpec {
        default: Action::Deny,
        services: vec![ServiceSpec {
            name: "orders".into(),
            mode: Mode::Enforce,
            rules,
            rate_limit: None,
        }],
    })
}

fn admission(c: &mut Criterion) {
    let td = TrustDomain::parse("prod.example.org").expect("td");
    let ca = Ca::generate(&td, DAY).expect("ca");
    let peer = SpiffeId::parse("spiffe://prod.example.org/ns/web/sa/frontend").expect("id");
    let me = SpiffeId::parse("spiffe://prod.example.org/ns/shop/sa/orders").expect("id");
    let svid = ca.issue_svid(&peer, DAY).expect("svid");
    let own = ca.issue_svid(&me, DAY).expect("svid");
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let bundle_path = write("bundle.pem", ca.cert_pem());
    let (cert, key) = (
        write("me.pem", &own.cert_pem),
        write("me-key.pem", &own.key_pem),
    );
    // A CRL of 1,000 other revoked serials: the index lookup is what
    // admission pays for every connection.
    let revoked: Vec<RevokedEntry> = (0..1_000u32)
        .map(|i| RevokedEntry {
            serial: format!("7f{i:08x}"),
            revoked_at: time::OffsetDateTime::now_utc() - time::Duration::hours(1),
        })
        .collect();
    let crl_path = write("ca.crl", &ca.crl(&revoked, 1, DAY).expect("crl"));
    let bundle = load_bundle(&bundle_path, &td).expect("bundle");
    let roots: Vec<_> = bundle.certs.iter().collect();
    let crl_trust = CrlTrust {
        roots: &roots,
        intermediates: &[],
        in_force: None,
    };
    let crls = load_crls(
        &[crl_path],
        &[],
        &crl_trust,
        RevocationPolicy {
            whole_chain: false,
            expired_is_unknown: true,
            fail_open: false,
            fetch_distribution_points: false,
        },
    )
    .expect("crl loads");
    let trust = TrustStore::new([bundle]).with_revocation(crls);

    let metrics = Metrics::new();
    let checker = Arc::new(OcspChecker::new(
        OcspConfig {
            mode: OcspMode::Require,
            responder: None,
            timeout: Duration::from_secs(1),
            max_age: Duration::from_secs(3_600),
            cache_size: 10_000,
            error_cache: Duration::from_secs(10),
            nonce: false,
        },
        portcullis::revocation::OcspMetrics::new(&metrics.revocation),
    ));
    let now = unix_now();
    checker.remember(
        &svid.der,
        ca.der(),
        OcspAnswer {
            status: OcspStatus::Good,
            this_update: now - 60,
            next_update: Some(now + 3_600),
        },
    );
    let identity = load_identity(&cert, &key).expect("identity");
    let tls = TlsContext::with_revocation(identity, trust.clone(), None, Some(checker), false)
        .expect("tls context");
    let table = policy();
    let chain = vec![svid.der.clone()];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // The results the bench relies on, checked once so a broken setup
    // cannot pass as fast.
    assert!(peer_identity(Some(&chain), &trust, now).is_ok());
    assert!(
        rt.block_on(check_ocsp_of(&tls, Some(&chain), Role::Client))
            .is_ok()
    );
    let ocsp = tls.ocsp().expect("ocsp on");
    assert_eq!(rt.block_on(ocsp.check(&svid.der, ca.der())), Verdict::Good);
    assert_eq!(table.decide("orders", &peer, None).action, Action::Allow);

    let mut g = c.benchmark_group("admission");
    g.bench_function("peer_identity_with_crl_index", |b| {
        b.iter(|| peer_identity(Some(black_box(&chain)), &trust, now))
    });
    g.bench_function("ocsp_cache_hit", |b| {
        b.iter(|| rt.block_on(ocsp.check(black_box(&svid.der), ca.der())))
    });
    g.bench_function("policy_decision_1000_rules", |b| {
        b.iter(|| table.decide(black_box("orders"), black_box(&peer), None))
    });
    g.bench_function("whole", |b| {
        b.iter(|| {
            rt.block_on(async {
                let id = peer_identity(Some(black_box(&chain)), &tls.trust(), now).ok()?;
                check_ocsp_of(&tls, Some(&chain), Role::Client).await.ok()?;
                Some(table.decide("orders", &id.id, None).action)
            })
        })
    });
    g.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
