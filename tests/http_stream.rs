//! Bodies stream through a sidecar pair in constant memory: 1 GiB up and
//! 1 GiB down, with the process's peak RSS barely moving. In a test binary
//! of its own so no other test's memory muddies the measurement.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use portcullis::sidecar::start;

const ORDERS: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://prod.example.org/ns/web/sa/frontend";
const GIB: u64 = 1 << 30;

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gibibyte_streams_both_ways_in_constant_memory() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    pki.svid("orders-svid", ORDERS);
    pki.svid("frontend-svid", FRONTEND);
    let server = start(pki.config(
        "orders.yaml",
        &format!(
            "identity:\n  cert: orders-svid.pem\n  key: orders-svid-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let endpoint = server.inbound_addr("orders").unwrap();
    let client = start(pki.config(
        "frontend.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{endpoint}]\n    identity: {ORDERS}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();

    let tcp = tokio::net::TcpStream::connect(client.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Warm up every buffer and pool first, then take the baseline.
    let warm = hyper::Request::post("/count")
        .header("host", "orders")
        .body(Generated::new(8 << 20))
        .unwrap();
    let resp = send.send_request(warm).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), (8u64 << 20).to_string().as_bytes());
    let baseline = peak_rss();

    // 1 GiB up, chunked (no length known ahead), counted by the app.
    let up = hyper::Request::post("/count")
        .header("host", "orders")
        .body(Generated::new(GIB))
        .unwrap();
    send.ready().await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(240), send.send_request(up))
        .await
        .expect("upload in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), GIB.to_string().as_bytes());

    // 1 GiB down, read frame by frame.
    send.ready().await.unwrap();
    let down = hyper::Request::get(format!("/bytes/{GIB}"))
        .header("host", "orders")
        .body(Generated::new(0))
        .unwrap();
    let resp = send.send_request(down).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            got += frame
                .unwrap()
                .data_ref()
                .map(|d| d.len() as u64)
                .unwrap_or(0);
        }
    };
    tokio::time::timeout(Duration::from_secs(240), read)
        .await
        .expect("download in time");
    assert_eq!(got, GIB);

    // Buffering either body whole would add a gibibyte; streaming adds
    // at most a few windows' worth.
    let grew = peak_rss().saturating_sub(baseline);
    assert!(
        grew < 64 << 20,
        "peak RSS grew by {} MiB while 2 GiB streamed through",
        grew >> 20
    );
    let text = server.metrics().encode();
    let answered = metric(
        &text,
        "portcullis_requests_total",
        &[("direction", "inbound"), ("code_class", "2xx")],
    );
    assert_eq!(answered, Some(3.0));
}
