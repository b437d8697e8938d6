//! The one enforcement sweep reaches every kind of live connection, not
//! only a peer's L4 connections: a new CRL closes the local app's L4
//! connections and the pooled HTTP connections to an upstream it revokes;
//! a policy reload closes the WebSocket tunnel whose opening request it no
//! longer admits and keeps the one it still does; a pooled connection to an
//! upstream whose certificate expires is closed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::pair::*;
use common::*;
use portcullis::pki::{LeafSpec, RevokedEntry};
use portcullis::proxy::registry::ConnKind;
use portcullis::sidecar::{Sidecar, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVER_ID: &str = ORDERS;
const CLIENT_ID: &str = FRONTEND;

/// A server sidecar with an L4 inbound "orders" (echo app) and an HTTP
/// inbound "web" (the test HTTP app), presenting the SVID in `svid`.
async fn server(pki: &Pki, svid: &str, extra: &str) -> Sidecar {
    let echo = echo_app().await;
    let (web, _) = http_app().await;
    start(pki.config(
        "server.yaml",
        &format!(
            "identity:\n  cert: {svid}.pem\n  key: {svid}-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {echo}\n\
             \x20 - name: web\n    listen: 127.0.0.1:0\n    forward: {web}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n{extra}"
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("server: {e}"))
}

/// A client sidecar with outbound "orders" (L4) and "web" (HTTP) to
/// `server`.
async fn client(pki: &Pki, server: &Sidecar, extra: &str) -> Sidecar {
    pki.svid("client", CLIENT_ID);
    let (orders, web) = (
        server.inbound_addr("orders").unwrap(),
        server.inbound_addr("web").unwrap(),
    );
    start(pki.config(
        "client.yaml",
        &format!(
            "identity:\n  cert: client.pem\n  key: client-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{orders}]\n    identity: {SERVER_ID}\n\
             \x20 - name: web\n    listen: 127.0.0.1:0\n    endpoints: [{web}]\n    identity: {SERVER_ID}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n{extra}"
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("client: {e}"))
}

/// An open L4 connection through `addr` that has echoed once.
async fn open_echo(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    s
}

/// Waits until the peer closes `s` (EOF or a reset).
async fn closed(s: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{what} must be closed"))
        .ok();
}

/// Waits until `registry` holds `n` connections of `kind`.
async fn wait_count(sidecar: &Sidecar, kind: ConnKind, n: usize) {
    let registry = &sidecar.control().registry;
    wait_for(
        Duration::from_secs(10),
        &format!("{n} {} connection(s)", kind.as_str()),
        || async { (registry.count(kind) == n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_crl_closes_outbound_and_pooled_connections_to_a_revoked_upstream() {
    let pki = Pki::new();
    let issued = pki.ca.issue_svid(&id(SERVER_ID), DAY).unwrap();
    pki.write("server", &issued);
    std::fs::write(pki.path("ca.crl"), pki.ca.crl(&[], 1, DAY).unwrap()).unwrap();
    let server = server(&pki, "server", "").await;
    let client = client(&pki, &server, "revocation:\n  crls: [ca.crl]\n").await;

    let mut l4 = open_echo(client.outbound_addr("orders").unwrap()).await;
    let web = client.outbound_addr("web").unwrap();
    let (code, _) = http_get(web, "/").await.unwrap();
    assert_eq!(code, 200);
    wait_count(&client, ConnKind::OutboundTcp, 1).await;
    wait_count(&client, ConnKind::UpstreamPooled, 1).await;

    // The upstream's SVID is revoked: both connections to it close.
    let entry = RevokedEntry {
        serial: issued.serial.clone(),
        revoked_at: time::OffsetDateTime::now_utc(),
    };
    std::fs::write(pki.path("ca.crl"), pki.ca.crl(&[entry], 2, DAY).unwrap()).unwrap();
    let (code, reply) = post_reload(client.admin_addr()).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["identity"]["bundle_changed"], true, "{reply}");
    closed(&mut l4, "the L4 connection to the revoked upstream").await;
    wait_count(&client, ConnKind::UpstreamPooled, 0).await;
    wait_count(&client, ConnKind::OutboundTcp, 0).await;
    wait_metric(
        &client,
        "portcullis_revoked_connections_closed_total",
        &[],
        2.0,
    )
    .await;
    wait_metric(
        &client,
        "portcullis_connections_closed_total",
        &[
            ("direction", "outbound"),
            ("listener", "orders"),
            ("reason", "revoked"),
        ],
        1.0,
    )
    .await;
    // And no new connection gets through either.
    let (code, body) = http_get(web, "/").await.unwrap();
    assert_eq!(code, 502, "{body}");
}

/// Opens a WebSocket to `path` through `addr` and checks it echoes.
async fn open_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: orders\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws_echoes(&mut s, "hello").await;
    s
}

/// Opens a `CONNECT` tunnel through `addr` (the test app echoes it).
async fn open_connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echoes_raw(&mut s).await;
    s
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(n, 1, "closed: {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn ws_echoes(s: &mut TcpStream, text: &str) {
    s.write_all(&ws_frame(text)).await.unwrap();
    let mut back = vec![0u8; 2 + text.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(&back[2..], text.as_bytes());
}

async fn echoes_raw(s: &mut TcpStream) {
    s.write_all(b"\x00\x01raw").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(&back, b"\x00\x01raw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_reload_closes_the_tunnels_it_no_longer_admits() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let rules = |ws: bool| {
        let ws = if ws {
            format!("      - {{ name: ws, action: allow, from: [{FRONTEND}], paths: [/ws] }}\n")
        } else {
            String::new()
        };
        format!(
            "default: deny\nservices:\n  orders:\n    rules:\n{ws}\
             \x20     - {{ name: connect, action: allow, from: [{FRONTEND}], methods: [CONNECT] }}\n"
        )
    };
    let policy = rules(true);
    let server_side = Side {
        protocol: "http",
        policy: Some(&policy),
        ..Default::default()
    };
    let (server, client) = pair(&pki, app, server_side, http_side()).await;
    let addr = client.outbound_addr("orders").unwrap();
    let mut ws = open_ws(addr, "/ws").await;
    let mut tunnel = open_connect(addr).await;
    wait_count(&server, ConnKind::InboundTunnel, 2).await;

    // /ws is no longer allowed; CONNECT still is.
    std::fs::write(pki.path("orders-policy.yaml"), rules(false)).unwrap();
    let (code, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["policy"]["result"], "success", "{reply}");
    closed(&mut ws, "the WebSocket the new policy denies").await;
    wait_count(&server, ConnKind::InboundTunnel, 1).await;
    echoes_raw(&mut tunnel).await;
    wait_metric(
        &server,
        "portcullis_policy_closed_connections_total",
        &[("service", "orders")],
        1.0,
    )
    .await;
    // The client's side of the closed tunnel ended with it.
    wait_count(&client, ConnKind::OutboundTunnel, 1).await;
    // New upgrades to /ws are refused.
    let mut again = TcpStream::connect(addr).await.unwrap();
    again
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: orders\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5aw==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut again).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closes_when_its_upstreams_certificate_expires() {
    let pki = Pki::new();
    let mut spec = LeafSpec::svid(&id(SERVER_ID), DAY);
    spec.not_after = time::OffsetDateTime::now_utc() + Duration::from_secs(3);
    pki.issue("short", &spec);
    let server = server(&pki, "short", "").await;
    let client = client(
        &pki,
        &server,
        "connections:\n  close_on_peer_expiry: true\n",
    )
    .await;
    let web = client.outbound_addr("web").unwrap();
    let (code, _) = http_get(web, "/").await.unwrap();
    assert_eq!(code, 200);
    let mut l4 = open_echo(client.outbound_addr("orders").unwrap()).await;
    wait_count(&client, ConnKind::UpstreamPooled, 1).await;
    closed(&mut l4, "the L4 connection to the expired upstream").await;
    wait_count(&client, ConnKind::UpstreamPooled, 0).await;
    wait_metric(
        &client,
        "portcullis_connections_closed_total",
        &[
            ("direction", "outbound"),
            ("listener", "orders"),
            ("reason", "peer_expired"),
        ],
        1.0,
    )
    .await;
}
