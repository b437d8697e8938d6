//! Tunnels: WebSocket upgrades and `CONNECT` through the pair.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::pair::*;
use crate::common::*;

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
