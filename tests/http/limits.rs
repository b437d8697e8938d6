//! Limits: oversized heads and bodies and malformed requests answered
//! 431/413/400, and slowloris clients cut off.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::pair::*;
use crate::common::*;

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

/// Sends one HTTP/1.1 request over mTLS straight to the inbound listener
/// (ALPN http/1.1) and returns the raw reply.
async fn h1_over_mtls(
    tls: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    path: &str,
) -> String {
    let mut s = tls_connect(addr, tls).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// Each concurrent HTTP/1.1 request needs its own connection to the app;
/// `limits.max_app_connections` bounds them per inbound listener, and a
/// request that finds none free within the connect timeout is answered
/// 503 `overloaded` instead of opening one more (or waiting forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_to_the_app_are_bounded_and_the_excess_answered_503() {
    use std::sync::atomic::Ordering;
    let pki = Pki::new();
    let (app, accepted) = http_app().await;
    let (server, _client) = pair(
        &pki,
        app,
        Side {
            protocol: "http",
            listener: "    limits:\n      max_app_connections: 1\n",
            timeouts: "  connect: 300ms",
            ..Default::default()
        },
        http_side(),
    )
    .await;
    pki.svid("frontend-svid", FRONTEND);
    let mut tls = (*pki.client_tls("frontend-svid", ORDERS)).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    let inbound = server.inbound_addr("orders").unwrap();

    // The slow request holds the one connection to the app for 3 s.
    let before = accepted.load(Ordering::SeqCst);
    let slow = tokio::spawn(h1_over_mtls(tls.clone(), inbound, "/slow"));
    wait_for(
        Duration::from_secs(5),
        "the slow request to reach the app",
        || async { (accepted.load(Ordering::SeqCst) > before).then_some(()) },
    )
    .await;

    let reply = h1_over_mtls(tls.clone(), inbound, "/second").await;
    assert_eq!(status(&reply), 503, "{reply}");
    assert_eq!(
        header(&reply, "x-portcullis-error"),
        Some("overloaded"),
        "{reply}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before + 1,
        "a second connection reached the app"
    );

    // The slow one was not disturbed, and once it is done its connection
    // serves the next request.
    let slow = slow.await.unwrap();
    assert_eq!(status(&slow), 200, "{slow}");
    let reply = h1_over_mtls(tls, inbound, "/third").await;
    assert_eq!(status(&reply), 200, "{reply}");
}
