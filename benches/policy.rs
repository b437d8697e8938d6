//! Policy decision time at 10, 1,000 and 100,000 rules. Rules are compiled
//! into a per-trust-domain trie, so the time should stay flat as the rule
//! count grows.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis::identity::{IdPattern, SpiffeId};
use portcullis::policy::{
    Action, Mode, PeerRulesCache, PolicySpec, PolicyTable, Request, RuleSpec, ServiceSpec,
};

/// `n` rules: a third exact IDs, a third one-segment wildcards, a third
/// `**` prefixes, plus one deny; spread over 50 trust domains.
fn policy(n: usize) -> PolicySpec {
    let mut rules = Vec::with_capacity(n + 1);
    for i in 0..n {
        let td = format!("td{}.example.org", i % 50);
        let pattern = match i % 3 {
            0 => format!("spiffe://{td}/ns/team{i}/sa/svc{i}"),
            1 => format!("spiffe://{td}/ns/batch{i}/*"),
            _ => format!("spiffe://{td}/ns/ops{i}/**"),
        };
        rules.push(RuleSpec {
            name: format!("rule-{i}"),
            action: Action::Allow,
            from: vec![IdPattern::parse(&pattern).expect("valid pattern")],
            methods: None,
            paths: None,
        });
    }
    rules.push(RuleSpec {
        name: "deny-evil".into(),
        action: Action::Deny,
        from: vec![IdPattern::parse("spiffe://td0.example.org/ns/evil/**").expect("valid pattern")],
        methods: Some(vec!["POST".into()]),
        paths: Some(vec!["/admin/*".into()]),
    });
    PolicySpec {
        default: Action::Deny,
        services: vec![ServiceSpec {
            name: "orders".into(),
            mode: Mode::Enforce,
            rules,
            rate_limit: None,
        }],
    }
}

fn decisions(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_decision");
    for n in [10usize, 1_000, 100_000] {
        let table = PolicyTable::compile(&policy(n));
        // Peers that hit an exact rule, a wildcard rule and no rule.
        let last_exact = (n.saturating_sub(1) / 3) * 3;
        let exact = SpiffeId::parse(&format!(
            "spiffe://td{}.example.org/ns/team{last_exact}/sa/svc{last_exact}",
            last_exact % 50
        ))
        .expect("id");
        let wildcard = SpiffeId::parse("spiffe://td1.example.org/ns/batch1/job-42").expect("id");
        let nobody = SpiffeId::parse("spiffe://td7.example.org/ns/unknown/sa/nobody").expect("id");
        assert_eq!(table.decide("orders", &exact, None).action, Action::Allow);
        assert_eq!(
            table.decide("orders", &wildcard, None).action,
            Action::Allow
        );
        assert_eq!(table.decide("orders", &nobody, None).action, Action::Deny);
        g.bench_with_input(BenchmarkId::new("exact", n), &n, |b, _| {
            b.iter(|| table.decide(black_box("orders"), black_box(&exact), None))
        });
        g.bench_with_input(BenchmarkId::new("wildcard", n), &n, |b, _| {
            b.iter(|| table.decide(black_box("orders"), black_box(&wildcard), None))
        });
        g.bench_with_input(BenchmarkId::new("no_match", n), &n, |b, _| {
            b.iter(|| table.decide(black_box("orders"), black_box(&nobody), None))
        });
        let req = Request {
            method: "GET",
            path: "/orders/1",
        };
        g.bench_with_input(BenchmarkId::new("l7_request", n), &n, |b, _| {
            b.iter(|| {
                table.decide(
                    black_box("orders"),
                    black_box(&wildcard),
                    Some(black_box(&req)),
                )
            })
        });
        // What the inbound sidecar does per HTTP request: the connection
        // looked its peer up once; each request is judged on those rules.
        let cache = PeerRulesCache::default();
        g.bench_with_input(
            BenchmarkId::new("l7_request_on_connection", n),
            &n,
            |b, _| {
                b.iter(|| {
                    table.decide_cached(
                        black_box(&cache),
                        black_box("orders"),
                        black_box(&wildcard),
                        Some(black_box(&req)),
                    )
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
