//! End to end through a client sidecar and a server sidecar on loopback,
//! with real TLS: bytes reach an echo app and come back intact, half-closes
//! propagate, chains with intermediates verify, and an upstream that
//! presents the wrong SPIFFE ID is refused.

mod common;

use common::*;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_cross_the_mesh_hop_intact_including_10_mib() {
    let pki = Pki::new();
    let app = echo_app().await;
    let server = server_sidecar(&pki, "orders", SERVER_ID, app).await;
    let inbound = server.inbound_addr("orders").unwrap();
    let client = client_sidecar(&pki, "orders", CLIENT_ID, inbound, SERVER_ID).await;
    let outbound = client.outbound_addr("orders").unwrap();

    let back = round_trip(outbound, b"hello").await.unwrap();
    assert_eq!(back, b"hello");

    let mut big = vec![0u8; 10 * 1024 * 1024 + 7];
    rand::rng().fill_bytes(&mut big);
    let back = round_trip(outbound, &big).await.unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "10 MiB payload came back altered");

    let total = (big.len() + 5) as f64;
    for (sidecar, direction) in [(&client, "outbound"), (&server, "inbound")] {
        wait_metric(
            sidecar,
            "portcullis_connections_closed_total",
            &[("direction", direction), ("reason", "completed")],
            2.0,
        )
        .await;
        let m = sidecar.metrics().encode();
        for flow in ["to_upstream", "to_downstream"] {
            assert_eq!(
                metric(
                    &m,
                    "portcullis_bytes_total",
                    &[("direction", direction), ("flow", flow)]
                ),
                Some(total),
                "{direction} {flow}"
            );
        }
        assert_eq!(
            metric(
                &m,
                "portcullis_tls_handshakes_total",
                &[("direction", direction), ("result", "success")]
            ),
            Some(2.0)
        );
        assert_eq!(
            metric(
                &m,
                "portcullis_connections_opened_total",
                &[("direction", direction)]
            ),
            Some(2.0)
        );
        assert_eq!(
            metric(
                &m,
                "portcullis_connections_active",
                &[("direction", direction)]
            ),
            Some(0.0)
        );
    }
}

#[tokio::test]
async fn server_can_answer_after_client_half_closes() {
    // A server that reads everything first, then answers: only works if the
    // client's EOF crosses both sidecars as a half-close.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = app.accept().await.unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).await.unwrap();
        s.write_all(format!("got {} bytes", req.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let pki = Pki::new();
    let server = server_sidecar(&pki, "orders", SERVER_ID, app_addr).await;
    let client = client_sidecar(
        &pki,
        "orders",
        CLIENT_ID,
        server.inbound_addr("orders").unwrap(),
        SERVER_ID,
    )
    .await;
    let back = round_trip(client.outbound_addr("orders").unwrap(), b"0123456789")
        .await
        .unwrap();
    assert_eq!(back, b"got 10 bytes");
}

#[tokio::test]
async fn chains_with_intermediates_verify_both_ways() {
    let pki = Pki::new();
    let inter = pki.ca.intermediate(DAY).unwrap();
    let app = echo_app().await;
    // Both SVIDs come from the intermediate; only the root is in the bundle.
    let s = inter.issue_svid(&id(SERVER_ID), DAY).unwrap();
    pki.write("srv", &s);
    let c = inter.issue_svid(&id(CLIENT_ID), DAY).unwrap();
    pki.write("cli", &c);
    let server = portcullis::sidecar::start(pki.config(
        "s.yaml",
        &format!("identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\ninbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"),
    ))
    .await
    .unwrap();
    let inbound = server.inbound_addr("orders").unwrap();
    let client = portcullis::sidecar::start(pki.config(
        "c.yaml",
        &format!("identity:\n  cert: cli.pem\n  key: cli-key.pem\n  trust_bundle: bundle.pem\noutbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{inbound}]\n    identity: {SERVER_ID}\nadmin:\n  listen: 127.0.0.1:0\n"),
    ))
    .await
    .unwrap();
    let back = round_trip(client.outbound_addr("orders").unwrap(), b"via intermediate")
        .await
        .unwrap();
    assert_eq!(back, b"via intermediate");
}

#[tokio::test]
async fn outbound_refuses_an_upstream_with_the_wrong_spiffe_id() {
    let pki = Pki::new();
    let app = echo_app().await;
    let impostor = server_sidecar(
        &pki,
        "orders",
        "spiffe://prod.example.org/ns/shop/sa/impostor",
        app,
    )
    .await;
    let client = client_sidecar(
        &pki,
        "orders",
        CLIENT_ID,
        impostor.inbound_addr("orders").unwrap(),
        SERVER_ID,
    )
    .await;

    let back = round_trip(client.outbound_addr("orders").unwrap(), b"secret").await;
    // The app's connection is closed without a byte of echo.
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    wait_metric(
        &client,
        "portcullis_tls_handshakes_total",
        &[("direction", "outbound"), ("result", "wrong_identity")],
        1.0,
    )
    .await;
    wait_metric(
        &client,
        "portcullis_connections_closed_total",
        &[("direction", "outbound"), ("reason", "handshake_failed")],
        1.0,
    )
    .await;
    // The impostor saw the client abort the handshake.
    wait_metric(
        &impostor,
        "portcullis_tls_handshakes_total",
        &[("direction", "inbound"), ("result", "peer_rejected")],
        1.0,
    )
    .await;
    let m = impostor.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_bytes_total",
            &[("direction", "inbound"), ("flow", "to_upstream")]
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn unreachable_app_and_upstream_close_only_that_connection() {
    let pki = Pki::new();
    // Nothing listens on the app port: bind and drop to get a closed port.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let server = server_sidecar(&pki, "orders", SERVER_ID, dead).await;
    let client = client_sidecar(
        &pki,
        "orders",
        CLIENT_ID,
        server.inbound_addr("orders").unwrap(),
        SERVER_ID,
    )
    .await;
    let back = round_trip(client.outbound_addr("orders").unwrap(), b"x").await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    wait_metric(
        &server,
        "portcullis_connections_closed_total",
        &[("direction", "inbound"), ("reason", "connect_failed")],
        1.0,
    )
    .await;

    let client2 = client_sidecar(&pki, "pay", CLIENT_ID, dead, SERVER_ID).await;
    let back = round_trip(client2.outbound_addr("pay").unwrap(), b"x").await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    wait_metric(
        &client2,
        "portcullis_connections_closed_total",
        &[("direction", "outbound"), ("reason", "connect_failed")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn outbound_fails_over_to_the_next_endpoint() {
    let pki = Pki::new();
    let app = echo_app().await;
    let server = server_sidecar(&pki, "orders", SERVER_ID, app).await;
    let good = server.inbound_addr("orders").unwrap();
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    pki.svid("c", CLIENT_ID);
    let client = portcullis::sidecar::start(pki.config(
        "c.yaml",
        &format!("identity:\n  cert: c.pem\n  key: c-key.pem\n  trust_bundle: bundle.pem\noutbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{dead}, {good}]\n    identity: {SERVER_ID}\nadmin:\n  listen: 127.0.0.1:0\n"),
    ))
    .await
    .unwrap();
    for i in 0..4 {
        let msg = format!("try {i}");
        let back = round_trip(client.outbound_addr("orders").unwrap(), msg.as_bytes())
            .await
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
}
