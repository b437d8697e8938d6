//! Failures portcullis answers itself: 502, 503 and 504 with an
//! `x-portcullis-error` reason.

use std::time::Duration;

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

/// An app that speaks only HTTP/1.1 (hyper's HTTP/1 server, which refuses
/// the HTTP/2 preface).
async fn http1_only_app() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// An HTTP/2 client (gRPC, curl --http2-prior-knowledge) reaches the app as
/// HTTP/2; an app that speaks only HTTP/1.1 breaks that connection. The
/// operator gets a 502 and one warning that names the fix, not one per
/// request; with `app_protocol: http1` the same request is answered.
/// `app_protocol: http2` sends HTTP/1.1 requests to the app as HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http1_only_app_is_named_in_the_log_and_app_protocol_fixes_it() {
    const TEST: &str = "an_http1_only_app_is_named_in_the_log_and_app_protocol_fixes_it";
    if !have_tool("curl", TEST) {
        return;
    }
    use tokio::io::AsyncBufReadExt;
    let pki = Pki::new();
    let app = http1_only_app().await;
    pki.svid("orders-svid", ORDERS);
    pki.svid("frontend-svid", FRONTEND);
    let (inbound, admin) = (free_addr(), free_addr());
    let server_config = pki.path("orders.yaml");
    std::fs::write(
        &server_config,
        format!(
            "identity:\n  cert: orders-svid.pem\n  key: orders-svid-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: orders\n    listen: {inbound}\n    forward: {app}\n    protocol: http\n\
             admin:\n  listen: {admin}\nlog:\n  format: json\n"
        ),
    )
    .unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config", path_str(&server_config)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    {
        let lines = lines.clone();
        let mut stderr = tokio::io::BufReader::new(server.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(l)) = stderr.next_line().await {
                lines.lock().unwrap().push(l);
            }
        });
    }
    wait_for(
        Duration::from_secs(20),
        "the server sidecar to be ready",
        || async { matches!(http_get(admin, "/ready").await, Ok((200, _))).then_some(()) },
    )
    .await;
    let client = start(pki.config(
        "frontend.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{inbound}]\n    identity: {ORDERS}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let h2_get = |path: &'static str| {
        let u = url(&client, path);
        async move {
            let (ok, out, err) = curl(&["-i", "--http2-prior-knowledge", &u]).await;
            assert!(ok, "{err}");
            out
        }
    };

    for _ in 0..3 {
        let reply = h2_get("/x").await;
        assert!(reply.starts_with("HTTP/2 502"), "{reply}");
        assert!(
            reply.contains("x-portcullis-error: upstream_reset"),
            "{reply}"
        );
    }
    // A marker after the three: a path the server refuses, logged too.
    let reply = h2_get("/a%2fb").await;
    assert!(reply.starts_with("HTTP/2 400"), "{reply}");
    let warnings = wait_for(Duration::from_secs(10), "the server's log", || async {
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .any(|l| l.contains("request path refused"))
            .then(|| {
                lines
                    .iter()
                    .filter(|l| l.contains("app_protocol: http1"))
                    .cloned()
                    .collect::<Vec<_>>()
            })
    })
    .await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains(&app.to_string()),
        "{}",
        warnings[0]
    );
    drop(server);

    // Told what the app speaks, the same request is answered.
    let (_server, client) = pair(
        &pki,
        app,
        Side {
            protocol: "http",
            listener: "    app_protocol: http1\n",
            ..Default::default()
        },
        http_side(),
    )
    .await;
    let (ok, out, err) = curl(&["-i", "--http2-prior-knowledge", &url(&client, "/x")]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("HTTP/2 200") && out.ends_with("HTTP/1.1"),
        "{out}"
    );

    // And the other way: HTTP/1.1 from the client, HTTP/2 to the app.
    let (app2, _) = http_app().await;
    let (_server, client) = pair(
        &pki,
        app2,
        Side {
            protocol: "http",
            listener: "    app_protocol: http2\n",
            ..Default::default()
        },
        http_side(),
    )
    .await;
    let (code, body) = http_get(client.outbound_addr("orders").unwrap(), "/v")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(seen(&body).version, "HTTP/2.0", "{body}");
}
