//! The operator kit's alerting rules (examples/kubernetes/alerts.yaml):
//! `promtool check rules` and `promtool test rules` on their unit tests,
//! and every series name the rules use is one a real sidecar exports.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/kubernetes/alerts.yaml"
);
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kubernetes");

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    if !have_tool(
        "promtool",
        "the_alerting_rules_pass_promtool_and_their_unit_tests",
    ) {
        return;
    }
    for args in [
        vec!["check", "rules", "alerts.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
    ] {
        let o = std::process::Command::new("promtool")
            .current_dir(DIR)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The `portcullis_*` names in the rules.
fn names_in_rules() -> BTreeSet<String> {
    let text = std::fs::read_to_string(RULES).unwrap();
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("portcullis_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_rules_use_is_exported() {
    let names = names_in_rules();
    assert!(names.len() >= 8, "{names:?}");
    // A sidecar with every part the rules look at: a CRL, an outbound
    // upstream (circuit state), a policy.
    let pki = Pki::new();
    pki.svid("orders", "spiffe://prod.example.org/ns/shop/sa/orders");
    std::fs::write(
        pki.path("ca.crl"),
        pki.ca.crl(&[], 1, Duration::from_secs(3600)).unwrap(),
    )
    .unwrap();
    std::fs::write(pki.path("policy.yaml"), "default: deny\n").unwrap();
    let app = echo_app().await;
    let sidecar = portcullis::sidecar::start(pki.config(
        "orders.yaml",
        &format!(
            "identity:\n  cert: orders.pem\n  key: orders-key.pem\n  trust_bundle: bundle.pem\n  trust_bundles:\n    partner.example.com: {{endpoint: \"https://127.0.0.1:9/bundle\", profile: https_web}}\n\
             policy: policy.yaml\nrevocation:\n  crls: [ca.crl]\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n\
             outbound:\n  - name: payments\n    listen: 127.0.0.1:0\n    endpoints: [127.0.0.1:9]\n    identity: spiffe://prod.example.org/ns/pay/sa/payments\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let text = http_get(sidecar.admin_addr(), "/metrics").await.unwrap().1;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the rules use series no sidecar exports: {missing:?}"
    );
}
