//! A sidecar pair for L7 tests: a server sidecar ("orders", in front of
//! an app) and a client sidecar ("frontend", outbound "orders" to it), each
//! with extra YAML; and reading one HTTP/1.1 response off a connection.

use std::net::SocketAddr;

use portcullis::sidecar::{Sidecar, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

pub const ORDERS: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
pub const FRONTEND: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

/// Extra YAML for one side of a pair.
#[derive(Default, Clone)]
pub struct Side<'a> {
    pub protocol: &'a str,
    /// Lines under `http:` (already indented by two spaces).
    pub http: &'a str,
    /// A policy file's text.
    pub policy: Option<&'a str>,
    /// Lines under `timeouts:`.
    pub timeouts: &'a str,
    /// Lines in the listener's own section (indented by four spaces).
    pub listener: &'a str,
}

pub fn http_side() -> Side<'static> {
    Side {
        protocol: "http",
        ..Default::default()
    }
}

pub fn side_yaml(pki: &Pki, name: &str, side: &Side<'_>) -> String {
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
pub async fn pair(
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
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n    protocol: {}\n{}\
             admin:\n  listen: 127.0.0.1:0\n{}",
            server.protocol,
            server.listener,
            side_yaml(pki, "orders", &server)
        ),
    );
    let server_sc = start(s).await.unwrap_or_else(|e| panic!("server: {e}"));
    let endpoint = server_sc.inbound_addr("orders").unwrap();
    let c = pki.config(
        "frontend.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{endpoint}]\n    identity: {ORDERS}\n    protocol: {}\n{}\
             admin:\n  listen: 127.0.0.1:0\n{}",
            client.protocol,
            client.listener,
            side_yaml(pki, "frontend", &client)
        ),
    );
    let client_sc = start(c).await.unwrap_or_else(|e| panic!("client: {e}"));
    (server_sc, client_sc)
}

pub fn url(sc: &Sidecar, path: &str) -> String {
    format!("http://{}{path}", sc.outbound_addr("orders").unwrap())
}

pub fn seen(body: &str) -> Seen {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("app JSON ({e}): {body:?}"))
}

/// Writes one HTTP/1.1 request on a kept-alive connection and reads one
/// response with a Content-Length body: (status, body).
pub async fn one_response(conn: &mut TcpStream, request: &[u8]) -> (u16, String) {
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
