//! Failures portcullis answers itself: 502, 503 and 504 with an
//! `x-portcullis-error` reason.

use portcullis::sidecar::start;

use crate::common::pair::*;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_map_to_502_503_504_with_a_reason() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (server, client) = pair(
        &pki,
        app,
        http_side(),
        Side {
            protocol: "http",
            http: "  request_timeout: 1s",
            ..Default::default()
        },
    )
    .await;
    let error_of = |reply: &str| -> (u16, String) {
        let status = reply
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let reason = reply
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-portcullis-error: ")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        (status, reason)
    };
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n");
    let out = client.outbound_addr("orders").unwrap();

    // The app is slow: 504 from the outbound side's request timeout.
    assert_eq!(
        error_of(&raw(out, get("/slow").as_bytes()).await),
        (504, "request_timeout".into())
    );

    // Outbound listeners pointing at broken upstreams.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let echo = echo_app().await;
    pki.svid(
        "other-svid",
        "spiffe://prod.example.org/ns/shop/sa/not-orders",
    );
    let other = pki.config(
        "other.yaml",
        &format!(
            "identity:\n  cert: other-svid.pem\n  key: other-svid-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: other\n    listen: 127.0.0.1:0\n    forward: {app}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    );
    let other = start(other).await.unwrap();
    let wrong_id = other.inbound_addr("other").unwrap();
    let broken = pki.config(
        "broken.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n\
             \x20 - {{ name: refused, listen: 127.0.0.1:0, endpoints: [{closed_port}], identity: {ORDERS}, protocol: http }}\n\
             \x20 - {{ name: not-tls, listen: 127.0.0.1:0, endpoints: [{echo}], identity: {ORDERS}, protocol: http }}\n\
             \x20 - {{ name: wrong-id, listen: 127.0.0.1:0, endpoints: [{wrong_id}], identity: {ORDERS}, protocol: http }}\n\
             \x20 - {{ name: nowhere, listen: 127.0.0.1:0, endpoints: [\"no-such-host.invalid:443\"], identity: {ORDERS}, protocol: http }}\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    );
    let broken = start(broken).await.unwrap();
    for (listener, want) in [
        ("refused", (502, "connect_failed")),
        ("not-tls", (502, "tls_handshake_failed")),
        ("wrong-id", (502, "upstream_identity_refused")),
        ("nowhere", (503, "no_endpoint")),
    ] {
        let reply = raw(broken.outbound_addr(listener).unwrap(), get("/").as_bytes()).await;
        assert_eq!(
            error_of(&reply),
            (want.0, want.1.to_string()),
            "{listener}: {reply}"
        );
    }
    let text = broken.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "portcullis_request_errors_total",
            &[("service", "nowhere"), ("reason", "no_endpoint")]
        ),
        Some(1.0)
    );

    // The app is down: the inbound side answers 502, and its reason
    // reaches the client unchanged.
    drop(server);
    let (dead_app, _) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (l.local_addr().unwrap(), ())
    };
    let pki2 = Pki::new();
    let (_s2, c2) = pair(&pki2, dead_app, http_side(), http_side()).await;
    let reply = raw(c2.outbound_addr("orders").unwrap(), get("/").as_bytes()).await;
    assert_eq!(error_of(&reply), (502, "connect_failed".into()), "{reply}");
}
