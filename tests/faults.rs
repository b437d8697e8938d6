//! Faults a sidecar meets in production, each with its stated outcome:
//! the audit log's disk is full (lines dropped and counted, one error
//! said, the proxy serves on); identity, policy and CRL files truncated,
//! deleted or rewritten in place mid-reload (refused with the file named,
//! the old state serves, the next good write is taken). The other faults
//! of the reliability table are tested where their feature is: see the
//! README's Reliability section.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use portcullis::sidecar::{Sidecar, start};

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://prod.example.org/ns/web/sa/frontend";
const STRANGER: &str = "spiffe://prod.example.org/ns/other/sa/stranger";

fn allow_frontend() -> String {
    format!(
        "default: deny\nservices:\n  orders:\n    rules:\n      - name: frontend\n        action: allow\n        from: [\"{FRONTEND}\"]\n"
    )
}

async fn server(pki: &Pki, app: SocketAddr, extra: &str) -> Sidecar {
    pki.svid("srv", SERVER_ID);
    pki.svid("frontend", FRONTEND);
    pki.svid("stranger", STRANGER);
    std::fs::write(pki.path("policy.yaml"), allow_frontend()).unwrap();
    let config = pki.config(
        "server.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n\
             policy: policy.yaml\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n\
             admin:\n  listen: 127.0.0.1:0\n\
             reload:\n  watch: false\n  interval: 1h\n{extra}"
        ),
    );
    start(config)
        .await
        .unwrap_or_else(|e| panic!("server: {e}"))
}

/// The audit log's disk is full (`/dev/full` answers every write with
/// ENOSPC): every denial is still refused and counted, the lines that
/// could not be written are counted as dropped, and allowed peers are
/// served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_drops_and_counts_lines_and_serves_on() {
    if !Path::new("/dev/full").exists() {
        assert!(
            std::env::var("PORTCULLIS_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "no /dev/full, and PORTCULLIS_REQUIRE_TOOLS is set"
        );
        eprintln!("SKIPPED a_full_audit_disk: no /dev/full");
        return;
    }
    let pki = Pki::new();
    let app = echo_app().await;
    let s = server(
        &pki,
        app,
        "audit:\n  sink: /dev/full\n  max_per_second: 1000\n",
    )
    .await;
    let addr = s.inbound_addr("orders").unwrap();
    for _ in 0..20 {
        assert!(
            !echoes(&pki, "stranger", SERVER_ID, addr).await,
            "a denial let through"
        );
        assert!(
            echoes(&pki, "frontend", SERVER_ID, addr).await,
            "an allowed peer refused"
        );
    }
    wait_for(
        Duration::from_secs(10),
        "the unwritable lines counted",
        || async {
            let m = s.metrics().encode();
            (metric(&m, "portcullis_audit_log_dropped_total", &[])? >= 20.0).then_some(())
        },
    )
    .await;
    let m = s.metrics().encode();
    let denied = metric(
        &m,
        "portcullis_authz_decisions_total",
        &[("decision", "deny"), ("service", "orders")],
    );
    assert!(denied >= Some(20.0), "{m}");
    assert!(s.control().is_ready());
}

/// Files damaged mid-reload: each is refused with its name, the state in
/// force keeps serving, and the next good write is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_deleted_and_half_written_files_are_refused_and_the_old_state_serves() {
    let pki = Pki::new();
    let app = echo_app().await;
    std::fs::write(
        pki.path("ca.crl"),
        pki.ca.crl(&[], 1, Duration::from_secs(3600)).unwrap(),
    )
    .unwrap();
    let s = server(&pki, app, "revocation:\n  crls: [ca.crl]\n").await;
    let addr = s.inbound_addr("orders").unwrap();
    let serves = || async { echoes(&pki, "frontend", SERVER_ID, addr).await };
    assert!(serves().await);

    let cert = pki.path("srv.pem");
    let good_cert = std::fs::read(&cert).unwrap();
    let policy = pki.path("policy.yaml");
    let crl = pki.path("ca.crl");
    let good_crl = std::fs::read(&crl).unwrap();
    // (file, damage, what the refusal names)
    let cases: Vec<(&Path, Option<Vec<u8>>, &str)> = vec![
        // The certificate cut in the middle of its base64, as a writer
        // that died half way leaves it.
        (
            &cert,
            Some(good_cert[..good_cert.len() / 2].to_vec()),
            "srv.pem",
        ),
        // Deleted (the issuer is between a remove and a write).
        (&cert, None, "srv.pem"),
        // The policy rewritten in place, caught half written.
        (
            &policy,
            Some(allow_frontend().as_bytes()[..60].to_vec()),
            "policy.yaml",
        ),
        (&policy, None, "policy.yaml"),
        // A CRL cut short, and one replaced by garbage.
        (
            &crl,
            Some(good_crl[..good_crl.len() - 40].to_vec()),
            "ca.crl",
        ),
        (
            &crl,
            Some(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n".to_vec()),
            "ca.crl",
        ),
    ];
    for (path, damage, names) in cases {
        let good = std::fs::read(path).unwrap();
        match &damage {
            Some(bytes) => std::fs::write(path, bytes).unwrap(),
            None => std::fs::remove_file(path).unwrap(),
        }
        let (status, reply) = post_reload(s.admin_addr()).await;
        assert_eq!(status, 400, "{names} damaged: {reply}");
        assert!(
            reply.to_string().contains(names),
            "the refusal names {names}: {reply}"
        );
        assert!(
            serves().await,
            "{names} damaged: the old state stopped serving"
        );
        assert!(
            !echoes(&pki, "stranger", SERVER_ID, addr).await,
            "{names} damaged: the policy in force changed"
        );
        // The next good write is taken.
        std::fs::write(path, &good).unwrap();
        let (status, reply) = post_reload(s.admin_addr()).await;
        assert_eq!(status, 200, "{names} restored: {reply}");
        assert!(serves().await);
    }
    let m = s.metrics().encode();
    assert!(
        metric(
            &m,
            "portcullis_policy_reloads_total",
            &[("result", "error")]
        ) >= Some(2.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "portcullis_cert_reloads_total",
            &[("kind", "crl"), ("result", "error")]
        ) >= Some(2.0),
        "{m}"
    );
}
