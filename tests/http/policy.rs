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

/// The classic ways around a deny rule on `/admin/*`, each sent byte for
/// byte through the client sidecar (which forwards the path as it came)
/// to the server sidecar, whose one path rule set (proxy/http/path.rs)
/// judges them; what the app then receives is the path that was judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_classic_path_bypasses_meet_a_deny_rule() {
    const BYPASS_POLICY: &str = "\
default: deny
services:
  orders:
    rules:
      - name: everything
        action: allow
        from: [spiffe://prod.example.org/ns/web/sa/frontend]
      - name: no-admin
        action: deny
        from: [spiffe://prod.example.org/ns/web/**]
        paths: [/admin/*]
";
    let pki = Pki::new();
    let (app, _) = http_app().await;
    for mode in ["reject", "unescape", "keep"] {
        let http = format!("  escaped_slashes: {mode}");
        let (_server, client) = pair(
            &pki,
            app,
            Side {
                protocol: "http",
                policy: Some(BYPASS_POLICY),
                http: &http,
                ..Default::default()
            },
            http_side(),
        )
        .await;
        let out = client.outbound_addr("orders").unwrap();
        let send = |target: &str, method: &str| {
            let request =
                format!("{method} {target} HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n");
            async move {
                let reply = raw(out, request.as_bytes()).await;
                let seen = (status(&reply) == 200).then(|| {
                    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                    seen(body).path
                });
                (status(&reply), seen)
            }
        };
        let forbidden = (403, None);
        // Every mode: these are /admin/... however they are spelt.
        for target in [
            "/admin/x",
            "/%61dmin/x",
            "/admin//x",
            "//admin/x",
            "/./admin/x",
            "/x/../admin/x",
            "/x/%2e%2e/admin/x",
            "/admin;x/y",
            "/public/..;/admin/x",
            "/admin\\x",
        ] {
            assert_eq!(send(target, "GET").await, forbidden, "{mode}: {target}");
        }
        // Not /admin/...: allowed, and the app is given the judged path.
        assert_eq!(
            send("/admin/../x", "GET").await,
            (200, Some("/x".into())),
            "{mode}"
        );
        assert_eq!(
            send("/public;v=1/ok", "GET").await,
            (200, Some("/public;v=1/ok".into())),
            "{mode}"
        );
        // An encoded slash: refused, decoded (and so denied), or kept as
        // data (and so not under /admin/), as configured.
        let escaped = send("/admin%2fx", "GET").await;
        match mode {
            "reject" => assert_eq!(escaped, (400, None)),
            "unescape" => assert_eq!(escaped, forbidden),
            _ => assert_eq!(escaped, (200, Some("/admin%2Fx".into()))),
        }
        // `OPTIONS *` reaches the app as `OPTIONS *`; `*` is for OPTIONS only.
        assert_eq!(
            send("*", "OPTIONS").await,
            (200, Some("*".into())),
            "{mode}"
        );
        assert_eq!(send("*", "GET").await.0, 400, "{mode}");
    }
}
