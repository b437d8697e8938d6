//! Per-request policy: method and path rules (normalization included)
//! and per-identity rate limits answered 429.

use tokio::net::TcpStream;

use crate::common::pair::*;
use crate::common::*;

const POLICY: &str = "\
default: deny
services:
  orders:
    rules:
      - name: readers
        action: allow
        from: [spiffe://prod.example.org/ns/web/sa/frontend]
        methods: [GET, HEAD]
        paths: [/orders, /orders/*]
      - name: no-secret
        action: deny
        from: [spiffe://prod.example.org/ns/web/**]
        paths: [/orders/secret, /orders/secret/*]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn method_and_path_rules_allow_and_deny_per_request() {
    if !have_tool("curl", "method_and_path_rules_allow_and_deny_per_request") {
        return;
    }
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (server, client) = pair(
        &pki,
        app,
        Side {
            protocol: "http",
            policy: Some(POLICY),
            ..Default::default()
        },
        http_side(),
    )
    .await;
    let code = |args: Vec<String>| async move {
        let mut a: Vec<&str> = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend(args.iter().map(|s| s.as_str()));
        let (ok, out, err) = curl(&a).await;
        assert!(ok, "{err}");
        out
    };
    let u = |p: &str| url(&client, p);
    assert_eq!(code(vec![u("/orders/7")]).await, "200");
    assert_eq!(code(vec!["-I".into(), u("/orders")]).await, "200");
    assert_eq!(
        code(vec!["-X".into(), "DELETE".into(), u("/orders/7")]).await,
        "403"
    );
    assert_eq!(code(vec![u("/admin")]).await, "403");
    assert_eq!(code(vec![u("/orders/secret")]).await, "403");
    // Dot segments and encoded letters are judged (and forwarded)
    // normalized: none of them reaches /admin or /orders/secret.
    assert_eq!(
        code(vec!["--path-as-is".into(), u("/orders/../admin")]).await,
        "403"
    );
    assert_eq!(
        code(vec!["--path-as-is".into(), u("/orders/x/../secret")]).await,
        "403"
    );
    assert_eq!(code(vec![u("/orders/%73ecret")]).await, "403");
    assert_eq!(
        code(vec![
            "--http2-prior-knowledge".into(),
            u("/orders/%73ecret")
        ])
        .await,
        "403"
    );
    assert_eq!(
        code(vec!["--http2-prior-knowledge".into(), u("/orders/9")]).await,
        "200"
    );

    // A denial says only that it is one.
    let (_, out, _) = curl(&["-i", &u("/admin")]).await;
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("x-portcullis-error: forbidden"), "{out}");
    assert!(out.ends_with("\r\n\r\nforbidden\n"), "{out:?}");
    assert!(
        !lower.contains("no-secret") && !lower.contains("readers"),
        "{out}"
    );

    let text = server.metrics().encode();
    assert!(
        metric(
            &text,
            "portcullis_authz_decisions_total",
            &[
                ("service", "orders"),
                ("decision", "deny"),
                ("rule", "no-secret")
            ]
        )
        .unwrap_or(0.0)
            >= 4.0
    );
    assert!(
        metric(
            &text,
            "portcullis_authz_decisions_total",
            &[
                ("service", "orders"),
                ("decision", "allow"),
                ("rule", "readers")
            ]
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    assert_eq!(
        metric(
            &text,
            "portcullis_request_errors_total",
            &[("direction", "inbound"), ("reason", "forbidden")]
        ),
        Some(8.0)
    );
    assert_eq!(
        metric(
            &text,
            "portcullis_requests_total",
            &[("direction", "inbound"), ("code_class", "4xx")]
        ),
        Some(8.0)
    );

    // A policy reload applies to the next request on an open connection,
    // without closing it.
    let mut conn = TcpStream::connect(client.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    let get = b"GET /orders/1 HTTP/1.1\r\nHost: orders\r\n\r\n";
    assert_eq!(one_response(&mut conn, get).await.0, 200);
    std::fs::write(
        pki.path("orders-policy.yaml"),
        POLICY.replace("methods: [GET, HEAD]", "methods: [HEAD]"),
    )
    .unwrap();
    let (status, _) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 200);
    assert_eq!(one_response(&mut conn, get).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_answer_429_per_request() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let policy = "default: allow\nservices:\n  orders:\n    rules:\n      - name: all\n        action: allow\n        from: [spiffe://prod.example.org]\n    rate_limit: { per_identity_per_second: 1, burst: 3 }\n";
    let (_server, client) = pair(
        &pki,
        app,
        Side {
            protocol: "http",
            policy: Some(policy),
            ..Default::default()
        },
        http_side(),
    )
    .await;
    let mut conn = TcpStream::connect(client.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    let get = b"GET /x HTTP/1.1\r\nHost: orders\r\n\r\n";
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(one_response(&mut conn, get).await.0);
    }
    assert_eq!(&codes[..3], &[200, 200, 200]);
    assert!(codes[3..].contains(&429), "{codes:?}");
}
