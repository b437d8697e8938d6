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
