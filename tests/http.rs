//! L7 through real sidecar pairs on loopback: curl over HTTP/1.1 and
//! HTTP/2 prior knowledge, the HTTP/2 hop and its pooling, per-request
//! policy, identity headers that cannot be spoofed, gRPC trailers,
//! WebSocket and CONNECT tunnels, limits, slowloris, error statuses,
//! request metrics and the access log.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use portcullis::sidecar::{Sidecar, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ORDERS: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

/// Extra YAML for one side of a pair.
#[derive(Default, Clone)]
struct Side<'a> {
    protocol: &'a str,
    /// Lines under `http:` (already indented by two spaces).
    http: &'a str,
    /// A policy file's text.
    policy: Option<&'a str>,
    /// Lines under `timeouts:`.
    timeouts: &'a str,
}

fn http_side() -> Side<'static> {
    Side {
        protocol: "http",
        ..Default::default()
    }
}

fn side_yaml(pki: &Pki, name: &str, side: &Side<'_>) -> String {
    let mut y = String::new();
    if !side.http.is_empty() {
        y.push_str("http:\n");
        y.push_str(side.http);
        y.push('\n');
    }
    if !side.timeouts.is_empty() {
        y.push_str("timeouts:\n");
        y.push_str(side.timeouts);
        y.push('\n');
    }
    if let Some(p) = side.policy {
        std::fs::write(pki.path(&format!("{name}-policy.yaml")), p).unwrap();
        y.push_str(&format!("policy: {name}-policy.yaml\n"));
    }
    y
}

/// A server sidecar ("orders", in front of `app`) and a client sidecar
/// ("frontend", outbound "orders" to it).
async fn pair(
    pki: &Pki,
    app: SocketAddr,
    server: Side<'_>,
    client: Side<'_>,
) -> (Sidecar, Sidecar) {
    pki.svid("orders-svid", ORDERS);
    pki.svid("frontend-svid", FRONTEND);
    let s = pki.config(
        "orders.yaml",
        &format!(
            "identity:\n  cert: orders-svid.pem\n  key: orders-svid-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n    protocol: {}\n\
             admin:\n  listen: 127.0.0.1:0\n{}",
            server.protocol,
            side_yaml(pki, "orders", &server)
        ),
    );
    let server_sc = start(s).await.unwrap_or_else(|e| panic!("server: {e}"));
    let endpoint = server_sc.inbound_addr("orders").unwrap();
    let c = pki.config(
        "frontend.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{endpoint}]\n    identity: {ORDERS}\n    protocol: {}\n\
             admin:\n  listen: 127.0.0.1:0\n{}",
            client.protocol,
            side_yaml(pki, "frontend", &client)
        ),
    );
    let client_sc = start(c).await.unwrap_or_else(|e| panic!("client: {e}"));
    (server_sc, client_sc)
}

fn url(sc: &Sidecar, path: &str) -> String {
    format!("http://{}{path}", sc.outbound_addr("orders").unwrap())
}

fn seen(body: &str) -> Seen {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("app JSON ({e}): {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_http1_and_http2_through_a_sidecar_pair() {
    if !have_tool("curl", "curl_http1_and_http2_through_a_sidecar_pair") {
        return;
    }
    let pki = Pki::new();
    let (app, app_conns) = http_app().await;
    let log = pki.path("access.log");
    let client_http = format!("  access_log: {}", path_str(&log));
    let (server, client) = pair(
        &pki,
        app,
        http_side(),
        Side {
            protocol: "http",
            http: &client_http,
            ..Default::default()
        },
    )
    .await;

    // HTTP/1.1 from the app: HTTP/2 on the hop, HTTP/1.1 again at the app.
    let (ok, body, err) = curl(&["--http1.1", "-d", "hello", &url(&client, "/orders/1?x=1")]).await;
    assert!(ok, "curl: {err}");
    let s = seen(&body);
    assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/orders/1"));
    assert_eq!(s.version, "HTTP/1.1");
    assert_eq!(s.body_len, 5);
    assert_eq!(s.header("x-portcullis-peer-id"), Some(FRONTEND));
    assert!(s.header("x-portcullis-orig-proto").is_none(), "{s:?}");
    assert!(
        s.header("host")
            .is_some_and(|h| h.starts_with("127.0.0.1:")),
        "{s:?}"
    );

    // HTTP/2 prior knowledge from the app stays HTTP/2 to the app.
    let (ok, body, err) = curl(&["--http2-prior-knowledge", &url(&client, "/h2")]).await;
    assert!(ok, "curl: {err}");
    let s = seen(&body);
    assert_eq!(s.version, "HTTP/2.0");
    assert_eq!(s.header("x-portcullis-peer-id"), Some(FRONTEND));

    // Many requests over many app connections share one mTLS connection.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let u = url(&client, &format!("/many/{i}"));
        tasks.push(tokio::spawn(async move {
            let v = if i % 2 == 0 {
                "--http1.1"
            } else {
                "--http2-prior-knowledge"
            };
            curl(&[v, "-o", "/dev/null", "-w", "%{http_code}", &u]).await
        }));
    }
    for t in tasks {
        let (ok, code, err) = t.await.unwrap();
        assert!(ok && code == "200", "{code} {err}");
    }
    let text = server.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "portcullis_connections_opened_total",
            &[("direction", "inbound"), ("listener", "orders")]
        ),
        Some(1.0),
        "every request shares one pooled HTTP/2 hop connection"
    );
    assert_eq!(
        metric(
            &text,
            "portcullis_requests_total",
            &[
                ("direction", "inbound"),
                ("service", "orders"),
                ("code_class", "2xx")
            ]
        ),
        Some(42.0)
    );
    let ctext = client.metrics().encode();
    assert_eq!(
        metric(
            &ctext,
            "portcullis_requests_total",
            &[
                ("direction", "outbound"),
                ("service", "orders"),
                ("code_class", "2xx")
            ]
        ),
        Some(42.0)
    );
    assert_eq!(
        metric(
            &ctext,
            "portcullis_request_duration_seconds_count",
            &[("direction", "outbound"), ("service", "orders")]
        ),
        Some(42.0)
    );
    assert!(app_conns.load(Ordering::SeqCst) <= 42);

    // The opt-in access log has one JSON line per request.
    let lines = wait_for(Duration::from_secs(10), "42 access log lines", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
            .collect();
        (lines.len() == 42).then_some(lines)
    })
    .await;
    let first = &lines[0];
    assert_eq!(first["type"], "access");
    assert_eq!(first["direction"], "outbound");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/orders/1");
    assert_eq!(first["status"], 200);
    assert!(first["duration_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spoofed_identity_headers_are_replaced() {
    if !have_tool("curl", "spoofed_identity_headers_are_replaced") {
        return;
    }
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (_server, client) = pair(
        &pki,
        app,
        Side {
            protocol: "http",
            http: "  forward_client_cert: true",
            ..Default::default()
        },
        http_side(),
    )
    .await;
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let (ok, body, err) = curl(&[
            version,
            "-H", "x-portcullis-peer-id: spiffe://prod.example.org/ns/admin/sa/root",
            "-H", "X-Forwarded-Client-Cert: By=spiffe://evil;URI=spiffe://prod.example.org/ns/admin/sa/root",
            "-H", "Connection: x-hop",
            "-H", "x-hop: secret",
            "-H", "keep-alive: timeout=5",
            "-H", "x-end-to-end: kept",
            &url(&client, "/whoami"),
        ])
        .await;
        assert!(ok, "curl: {err}");
        let s = seen(&body);
        assert_eq!(
            s.headers["x-portcullis-peer-id"],
            vec![FRONTEND.to_string()],
            "{version}"
        );
        let xfcc = &s.headers["x-forwarded-client-cert"];
        assert_eq!(xfcc.len(), 1);
        let leaf = std::fs::read_to_string(pki.path("frontend-svid.pem")).unwrap();
        let der = pem_der(&leaf);
        let hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&der))
        };
        assert_eq!(xfcc[0], format!("By={ORDERS};Hash={hash};URI={FRONTEND}"));
        // Hop-by-hop headers stop at the first hop (HTTP/2 has no
        // `Connection`); end-to-end ones pass.
        if version == "--http1.1" {
            assert!(
                s.header("x-hop").is_none() && s.header("keep-alive").is_none(),
                "{s:?}"
            );
        }
        assert_eq!(s.header("x-end-to-end"), Some("kept"));
    }
}

/// The first certificate of a PEM chain, as DER.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let mut out = Vec::new();
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = b64.bytes().filter(|c| *c != b'=').collect();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

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

/// Writes one HTTP/1.1 request on a kept-alive connection and reads one
/// response with a Content-Length body: (status, body).
async fn one_response(conn: &mut TcpStream, request: &[u8]) -> (u16, String) {
    conn.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, body[..len].to_string());
            }
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_trailers_survive_the_http2_hop() {
    use http_body_util::BodyExt;
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (_server, client) = pair(&pki, app, http_side(), http_side()).await;
    let tcp = TcpStream::connect(client.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // A gRPC message: flag, length, payload.
    let mut msg = vec![0u8, 0, 0, 0, 5];
    msg.extend_from_slice(b"hello");
    let req = hyper::Request::post("http://orders/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(msg.clone())))
        .unwrap();
    // The app answers on /grpc; route by rewriting nothing: ask for it.
    let req = {
        let (mut parts, body) = req.into_parts();
        parts.uri = "http://orders/grpc".parse().unwrap();
        hyper::Request::from_parts(parts, body)
    };
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all-good");
    assert_eq!(collected.to_bytes().as_ref(), &msg[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_upgrade_echoes_through_the_pair() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (_server, client) = pair(&pki, app, http_side(), http_side()).await;
    let mut s = TcpStream::connect(client.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: orders\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed during the handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!(
            "sec-websocket-accept: {}",
            ws_accept(key).to_ascii_lowercase()
        )),
        "{head}"
    );
    assert!(head.contains("upgrade: websocket"), "{head}");
    for text in ["hello", "through two sidecars"] {
        s.write_all(&ws_frame(text)).await.unwrap();
        let mut back = vec![0u8; 2 + text.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back[0], 0x81);
        assert_eq!(&back[2..], text.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_tunnels_pass_through() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (_server, client) = pair(&pki, app, http_side(), http_side()).await;
    let mut s = TcpStream::connect(client.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    s.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"\x00\x01binary after CONNECT").await.unwrap();
    let mut back = vec![0u8; 22];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"\x00\x01binary after CONNECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_answer_431_413_and_400_and_nothing_breaks() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let limits = "  max_header_bytes: 8192\n  max_headers: 20\n  max_request_body: 1000";
    let (server, client) = pair(
        &pki,
        app,
        Side {
            protocol: "http",
            http: limits,
            ..Default::default()
        },
        Side {
            protocol: "http",
            http: limits,
            ..Default::default()
        },
    )
    .await;
    let out = client.outbound_addr("orders").unwrap();

    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert!(raw(out, big.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..30 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(raw(out, many.as_bytes()).await.starts_with("HTTP/1.1 431"));
    assert!(
        raw(out, b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    assert!(
        raw(out, b"\x00\x01\x02 garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );

    // The body limit is the inbound side's, answered through the hop.
    let body = "b".repeat(2000);
    let req = format!(
        "POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}"
    );
    let reply = raw(out, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("x-portcullis-error: body_too_large"),
        "{reply}"
    );
    // Chunked, with no length up front: cut off once over the limit.
    let req = format!(
        "POST /count HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n"
    );
    let reply = raw(out, req.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // Under the limit passes.
    let req = "POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789";
    let reply = raw(out, req.as_bytes()).await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("\r\n\r\n10"),
        "{reply}"
    );

    // Both sidecars still serve.
    assert_eq!(http_get(out, "/after").await.unwrap().0, 200);
    assert!(server.control().is_ready() && client.control().is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_clients_are_cut_off() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (server, client) = pair(
        &pki,
        app,
        Side {
            protocol: "http",
            http: "  header_read_timeout: 1s",
            ..Default::default()
        },
        Side {
            protocol: "http",
            http: "  header_read_timeout: 1s",
            ..Default::default()
        },
    )
    .await;

    // At the network-facing inbound listener, over mTLS with ALPN http/1.1:
    // a request head dribbled one byte every 200 ms never completes.
    pki.svid("slow-svid", FRONTEND);
    let mut tls_config = (*pki.client_tls("slow-svid", ORDERS)).clone();
    tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut s = tls_connect(server.inbound_addr("orders").unwrap(), Arc::new(tls_config))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let closed = async {
        let head = b"GET / HTTP/1.1\r\nHost: orders\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head {
            if s.write_all(&[*b]).await.is_err() {
                return true;
            }
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => return true,
                Err(_) => {}
            }
        }
        false
    };
    assert!(closed.await, "the slow client was never cut off");
    assert!(started.elapsed() < Duration::from_secs(8));
    wait_metric(
        &server,
        "portcullis_connections_closed_total",
        &[("direction", "inbound"), ("reason", "header_timeout")],
        1.0,
    )
    .await;

    // An HTTP/2 client that connects and never asks anything.
    let mut s = TcpStream::connect(client.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let gone = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the idle HTTP/2 client was never cut off");
    wait_metric(
        &client,
        "portcullis_connections_closed_total",
        &[("direction", "outbound"), ("reason", "header_timeout")],
        1.0,
    )
    .await;
}

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

/// A peer that offers only HTTP/1.1 by ALPN: a rustls + hyper server with
/// the orders SVID, counting the connections it accepts.
async fn http1_only_peer(pki: &Pki, app_conns: Arc<std::sync::atomic::AtomicUsize>) -> SocketAddr {
    use portcullis::tls::{TlsContext, TrustStore, load_bundle, load_identity};
    pki.svid("h1peer-svid", ORDERS);
    let identity = load_identity(
        &pki.path("h1peer-svid.pem"),
        &pki.path("h1peer-svid-key.pem"),
    )
    .unwrap();
    let bundle = load_bundle(
        &pki.bundle(),
        &portcullis::identity::TrustDomain::parse(TD).unwrap(),
    )
    .unwrap();
    let ctx = TlsContext::new(identity, TrustStore::new([bundle])).unwrap();
    let mut config = (*ctx.server_config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ctx = ctx;
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            app_conns.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?} {}", req.version(), req.uri());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hop_falls_back_to_http1_when_the_peer_offers_only_that() {
    let pki = Pki::new();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peer = http1_only_peer(&pki, accepted.clone()).await;
    pki.svid("frontend-svid", FRONTEND);
    let c = pki.config(
        "frontend.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{peer}]\n    identity: {ORDERS}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    );
    let client = start(c).await.unwrap();
    let out = client.outbound_addr("orders").unwrap();
    for i in 0..5 {
        let (status, body) = http_get(out, &format!("/seq/{i}")).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, format!("HTTP/1.1 /seq/{i}"));
    }
    // Sequential requests reuse the pooled HTTP/1.1 hop connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_detects_http_tcp_and_server_first_protocols() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let auto = Side {
        protocol: "auto",
        http: "  detect_timeout: 200ms",
        ..Default::default()
    };
    let (server, client) = pair(&pki, app, auto.clone(), auto.clone()).await;
    let out = client.outbound_addr("orders").unwrap();
    let (status, body) = http_get(out, "/auto").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(seen(&body).header("x-portcullis-peer-id"), Some(FRONTEND));
    wait_metric(
        &server,
        "portcullis_requests_total",
        &[("direction", "inbound"), ("code_class", "2xx")],
        1.0,
    )
    .await;

    // Opaque bytes go through as TCP, both sides detecting it.
    let pki2 = Pki::new();
    let echo = echo_app().await;
    let (_s2, c2) = pair(&pki2, echo, auto.clone(), auto.clone()).await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let back = round_trip(c2.outbound_addr("orders").unwrap(), &data)
        .await
        .unwrap();
    assert_eq!(back, data);

    // A server-speaks-first protocol: the client waits for a banner.
    let banner_app = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(b"220 ready\r\n").await;
                    let mut b = [0u8; 16];
                    let _ = s.read(&mut b).await;
                });
            }
        });
        a
    };
    let pki3 = Pki::new();
    let (_s3, c3) = pair(&pki3, banner_app, auto.clone(), auto).await;
    let mut s = TcpStream::connect(c3.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_finishes_the_request_in_flight_then_closes_keep_alive_connections() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (_server, client) = pair(&pki, app, http_side(), http_side()).await;
    let out = client.outbound_addr("orders").unwrap();

    // An idle keep-alive connection, and one with a slow request in flight.
    let mut idle = TcpStream::connect(out).await.unwrap();
    assert_eq!(
        one_response(&mut idle, b"GET /a HTTP/1.1\r\nHost: orders\r\n\r\n")
            .await
            .0,
        200
    );
    let mut busy = TcpStream::connect(out).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the slow request to reach the app",
        || async {
            let text = _server.metrics().encode();
            (metric(
                &text,
                "portcullis_authz_decisions_total",
                &[("decision", "allow")],
            )
            .unwrap_or(0.0)
                >= 2.0)
                .then_some(())
        },
    )
    .await;

    client.begin_drain();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0))),
        "the idle connection closes at once: {buf:?}"
    );
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut reply))
        .await
        .expect("the slow request finishes, then the connection closes")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 200"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert!(reply.ends_with("slow\n"), "{reply}");
}
