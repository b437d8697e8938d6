//! `protocol: auto`: HTTP, opaque bytes and server-first protocols told
//! apart by their first bytes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::pair::*;
use crate::common::*;

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

/// Sends `parts` over a fresh mTLS connection (no ALPN, as an L4 client
/// sidecar would) to `addr` as `peer`, pausing `pause` between parts, and
/// returns everything the sidecar sends back until it closes.
async fn steer(pki: &Pki, addr: std::net::SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    let mut tls = tls_connect(addr, pki.client_tls("frontend-svid", ORDERS))
        .await
        .unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 || part.is_empty() {
            tokio::time::sleep(pause).await;
        }
        tls.write_all(part).await.unwrap();
    }
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut back)).await;
    String::from_utf8_lossy(&back).into_owned()
}

/// An authenticated peer tries to get a request past per-request policy
/// and identity headers on an `auto` listener by making it look like
/// opaque TCP: empty lines before the request line (which apps skip), a
/// tab for a space, a lower-case method, a pause longer than detection
/// waits before sending anything, a pause in the middle of the method, a
/// buffer's worth of empty lines. Every one is taken as HTTP: `/admin` is
/// refused by the policy (403 from the sidecar, not 200 from the app), and
/// an allowed request reaches the app with the peer's real identity, not
/// the forged one. Before, each reached the app raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_cannot_be_steered_to_tcp_around_l7() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let policy = format!(
        "default: deny\nservices:\n  orders:\n    rules:\n\
         \x20     - {{ name: no-admin, action: deny, from: [{FRONTEND}], paths: [/admin, \"/admin/*\"] }}\n\
         \x20     - {{ name: web, action: allow, from: [{FRONTEND}] }}\n"
    );
    let server_side = Side {
        protocol: "auto",
        http: "  detect_timeout: 200ms",
        policy: Some(&policy),
        ..Default::default()
    };
    let (server, _client) = pair(&pki, app, server_side, http_side()).await;
    let addr = server.inbound_addr("orders").unwrap();
    let admin = b"GET /admin HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n";
    let pause = Duration::from_millis(400);
    let crlfs = b"\r\n".repeat(600);
    let attempts: Vec<(&str, Vec<&[u8]>)> = vec![
        ("empty line first", vec![b"\r\n", admin]),
        (
            "tab for a space",
            vec![b"GET\t/admin HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"],
        ),
        (
            "lower-case method",
            vec![b"get /admin HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n"],
        ),
        ("silent first", vec![b"", admin]),
        ("stall mid-method", vec![b"GE", &admin[2..]]),
        ("a buffer of empty lines", vec![&crlfs, admin]),
    ];
    for (what, parts) in attempts {
        let back = steer(&pki, addr, &parts, pause).await;
        assert!(!back.contains("200 OK"), "{what}: reached the app: {back}");
        assert!(
            back.starts_with("HTTP/1.1 403") || back.starts_with("HTTP/1.1 400") || back.is_empty(),
            "{what}: {back}"
        );
    }
    // The policy refused all but the tab, which HTTP refused first.
    wait_metric(
        &server,
        "portcullis_authz_decisions_total",
        &[
            ("service", "orders"),
            ("decision", "deny"),
            ("rule", "no-admin"),
        ],
        5.0,
    )
    .await;

    // Silent first, then an allowed request with a forged identity: the
    // app sees who the peer really is.
    let forged = b"GET /ok HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\
                   x-portcullis-peer-id: spiffe://prod.example.org/ns/shop/sa/admin\r\n\r\n";
    let back = steer(&pki, addr, &[b"", forged], pause).await;
    assert!(back.starts_with("HTTP/1.1 200"), "{back}");
    let body = back.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(seen(body).header("x-portcullis-peer-id"), Some(FRONTEND));
}
