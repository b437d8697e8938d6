//! The one enforcement sweep reaches every kind of live connection, not
//! only a peer's L4 connections. Between a client and a server sidecar
//! every kind is opened (the app's L4 connection, a WebSocket tunnel,
//! pooled HTTP/2 and HTTP/1.1 connections; on the server, the matching
//! inbound L4, HTTP and tunnel connections), and then, on one side at a
//! time, a new CRL, an OCSP "revoked" and the removal of the CA the peer
//! chains to each close every one of them there, counted by kind and
//! reason. A policy reload closes the WebSocket tunnel whose opening
//! request it no longer admits and keeps the one it still does; a pooled
//! connection to an upstream whose certificate expires is closed, with or
//! without `close_on_peer_expiry`.

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
    closed_within(s, Duration::from_secs(10), what).await
}

/// As [`closed`], within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration, what: &str) {
    let mut rest = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut rest))
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
    let rules = |ws: bool, connect: bool| {
        let mut rules = String::new();
        if ws {
            rules += &format!(
                "      - {{ name: ws, action: allow, from: [{FRONTEND}], paths: [/ws] }}\n"
            );
        }
        if connect {
            rules += &format!(
                "      - {{ name: connect, action: allow, from: [{FRONTEND}], methods: [CONNECT] }}\n"
            );
        }
        // Something the frontend is still allowed, so `rules:` is never empty.
        format!(
            "default: deny\nservices:\n  orders:\n    rules:\n{rules}\
             \x20     - {{ name: health, action: allow, from: [{FRONTEND}], paths: [/health] }}\n"
        )
    };
    let policy = rules(true, true);
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
    // Closed within the promised second: the sweep runs before the
    // reload answers.
    std::fs::write(pki.path("orders-policy.yaml"), rules(false, true)).unwrap();
    let (code, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["policy"]["result"], "success", "{reply}");
    closed_within(
        &mut ws,
        Duration::from_secs(1),
        "the WebSocket the new policy denies",
    )
    .await;
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

    // CONNECT is no longer allowed either: the tunnel goes the same way.
    std::fs::write(pki.path("orders-policy.yaml"), rules(false, false)).unwrap();
    let (code, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(code, 200, "{reply}");
    closed_within(
        &mut tunnel,
        Duration::from_secs(1),
        "the CONNECT tunnel the new policy denies",
    )
    .await;
    wait_count(&server, ConnKind::InboundTunnel, 0).await;
    wait_count(&client, ConnKind::OutboundTunnel, 0).await;
}

/// Reusing a pooled connection sends new requests to its peer, so it
/// closes when the upstream's certificate expires whatever
/// `close_on_peer_expiry` says; that setting decides for connections
/// already carrying traffic (here the app's L4 connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closes_when_its_upstreams_certificate_expires() {
    for close_on_peer_expiry in [true, false] {
        let pki = Pki::new();
        let mut spec = LeafSpec::svid(&id(SERVER_ID), DAY);
        spec.not_after = time::OffsetDateTime::now_utc() + Duration::from_secs(3);
        pki.issue("short", &spec);
        let server = server(&pki, "short", "").await;
        let client = client(
            &pki,
            &server,
            &format!("connections:\n  close_on_peer_expiry: {close_on_peer_expiry}\n"),
        )
        .await;
        let web = client.outbound_addr("web").unwrap();
        let (code, _) = http_get(web, "/").await.unwrap();
        assert_eq!(code, 200);
        let mut l4 = open_echo(client.outbound_addr("orders").unwrap()).await;
        wait_count(&client, ConnKind::UpstreamPooled, 1).await;
        wait_count(&client, ConnKind::UpstreamPooled, 0).await;
        wait_metric(
            &client,
            "portcullis_enforcement_closed_connections_total",
            &[("kind", "upstream_pooled"), ("reason", "peer_expired")],
            1.0,
        )
        .await;
        if close_on_peer_expiry {
            closed(&mut l4, "the L4 connection to the expired upstream").await;
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
        } else {
            // Past the expiry sweep that closed the pool, still open.
            l4.write_all(b"ok").await.unwrap();
            let mut b = [0u8; 2];
            l4.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ok");
            assert_eq!(client.control().registry.count(ConnKind::OutboundTcp), 1);
        }
    }
}

/// Which side a trigger is applied to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side2 {
    Server,
    Client,
}

/// A server sidecar (inbound `orders`: L4 echo; `web`: HTTP; `web1`: L4
/// in front of the HTTP app, so clients pool HTTP/1.1 to it) and a client
/// sidecar (outbound `orders`, `web` and `web1` to them). `server_extra`
/// and `client_extra` are appended to each config; each trusts the bundle
/// file named.
struct Mesh {
    server: Sidecar,
    client: Sidecar,
}

async fn mesh(pki: &Pki, server: (&str, &str), client: (&str, &str)) -> Mesh {
    let echo = echo_app().await;
    let (app, _) = http_app().await;
    let (server_bundle, server_extra) = server;
    let (client_bundle, client_extra) = client;
    let server = start(pki.config(
        "mesh-server.yaml",
        &format!(
            "identity:\n  cert: server.pem\n  key: server-key.pem\n  trust_bundle: {server_bundle}\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {echo}\n\
             \x20 - name: web\n    listen: 127.0.0.1:0\n    forward: {app}\n    protocol: http\n\
             \x20 - name: web1\n    listen: 127.0.0.1:0\n    forward: {app}\n\
             admin:\n  listen: 127.0.0.1:0\n{server_extra}"
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("server: {e}"));
    let addr = |name| server.inbound_addr(name).unwrap();
    let (orders, web, web1) = (addr("orders"), addr("web"), addr("web1"));
    let client = start(pki.config(
        "mesh-client.yaml",
        &format!(
            "identity:\n  cert: client.pem\n  key: client-key.pem\n  trust_bundle: {client_bundle}\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{orders}]\n    identity: {SERVER_ID}\n\
             \x20 - name: web\n    listen: 127.0.0.1:0\n    endpoints: [{web}]\n    identity: {SERVER_ID}\n    protocol: http\n\
             \x20 - name: web1\n    listen: 127.0.0.1:0\n    endpoints: [{web1}]\n    identity: {SERVER_ID}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n{client_extra}"
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("client: {e}"));
    Mesh { server, client }
}

/// The kinds each side holds once [`open_all`] has run.
const CLIENT_KINDS: [(ConnKind, usize); 3] = [
    (ConnKind::OutboundTcp, 1),
    (ConnKind::OutboundTunnel, 1),
    // HTTP/2 to `web`, HTTP/1.1 to `web1`.
    (ConnKind::UpstreamPooled, 2),
];
const SERVER_KINDS: [(ConnKind, usize); 3] = [
    // `orders`, and the pooled HTTP/1.1 connection through `web1`.
    (ConnKind::InboundTcp, 2),
    (ConnKind::InboundTunnel, 1),
    // The pooled HTTP/2 connection (the one the WebSocket upgraded counts
    // as the tunnel from then on).
    (ConnKind::InboundHttp, 1),
];

/// Opens every kind of connection through the client; returns the app's
/// L4 connection and WebSocket, which the test watches close.
async fn open_all(m: &Mesh) -> (TcpStream, TcpStream) {
    let out = |name| m.client.outbound_addr(name).unwrap();
    let l4 = open_echo(out("orders")).await;
    let ws = open_ws(out("web"), "/ws").await;
    for name in ["web", "web1"] {
        let (code, body) = http_get(out(name), "/").await.unwrap();
        assert_eq!(code, 200, "{name}: {body}");
    }
    for (kind, n) in CLIENT_KINDS {
        wait_count(&m.client, kind, n).await;
    }
    for (kind, n) in SERVER_KINDS {
        wait_count(&m.server, kind, n).await;
    }
    (l4, ws)
}

/// After a trigger on `side`: the app's connections are closed, that
/// side's registry holds none of the kinds it had, and it counted each
/// close with `reason`.
async fn all_closed(m: &Mesh, side: Side2, reason: &str, (mut l4, mut ws): (TcpStream, TcpStream)) {
    closed(&mut l4, "the app's L4 connection").await;
    closed(&mut ws, "the WebSocket").await;
    let (sidecar, kinds) = match side {
        Side2::Server => (&m.server, &SERVER_KINDS),
        Side2::Client => (&m.client, &CLIENT_KINDS),
    };
    for (kind, n) in kinds {
        wait_count(sidecar, *kind, 0).await;
        // Closed by this side's sweep, for this reason, not as a
        // consequence of the other side closing.
        wait_metric(
            sidecar,
            "portcullis_enforcement_closed_connections_total",
            &[("kind", kind.as_str()), ("reason", reason)],
            *n as f64,
        )
        .await;
    }
}

fn serial_of(pki: &Pki, name: &str) -> String {
    let pem = std::fs::read(pki.path(&format!("{name}.pem"))).unwrap();
    let der =
        <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
            &pem,
        )
        .unwrap();
    portcullis::identity::check_leaf(&der, None).unwrap().serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_crl_closes_every_connection_to_and_from_the_peer_it_revokes() {
    for side in [Side2::Server, Side2::Client] {
        let pki = Pki::new();
        pki.svid("server", SERVER_ID);
        pki.svid("client", CLIENT_ID);
        std::fs::write(pki.path("ca.crl"), pki.ca.crl(&[], 1, DAY).unwrap()).unwrap();
        let crls = "revocation:\n  crls: [ca.crl]\n";
        let m = mesh(&pki, ("bundle.pem", crls), ("bundle.pem", crls)).await;
        let open = open_all(&m).await;
        // The list now revokes the peer of `side`; only `side` reloads.
        let (victim, sidecar) = match side {
            Side2::Server => ("client", &m.server),
            Side2::Client => ("server", &m.client),
        };
        let entry = RevokedEntry {
            serial: serial_of(&pki, victim),
            revoked_at: time::OffsetDateTime::now_utc(),
        };
        std::fs::write(pki.path("ca.crl"), pki.ca.crl(&[entry], 2, DAY).unwrap()).unwrap();
        let (code, reply) = post_reload(sidecar.admin_addr()).await;
        assert_eq!(code, 200, "{side:?}: {reply}");
        all_closed(&m, side, "revoked", open).await;
        if side == Side2::Client {
            // And no new connection gets through either.
            let web = m.client.outbound_addr("web").unwrap();
            let (code, body) = http_get(web, "/").await.unwrap();
            assert_eq!(code, 502, "{body}");
        }
    }
}

/// Both roots are the trust domain's: the trust-domain check alone would
/// keep every connection. Removing the CA that one side's peer chains to
/// (while its own CA stays, so its own chain still verifies) closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_ca_a_peer_chains_to_closes_every_connection_to_and_from_it() {
    for side in [Side2::Server, Side2::Client] {
        let pki = Pki::new();
        let other = portcullis::pki::Ca::generate(
            &portcullis::identity::TrustDomain::parse(TD).unwrap(),
            DAY,
        )
        .unwrap();
        // The server's SVID from the test root, the client's from the other.
        pki.svid("server", SERVER_ID);
        pki.write("client", &other.issue_svid(&id(CLIENT_ID), DAY).unwrap());
        let both = format!("{}{}", pki.ca.cert_pem(), other.cert_pem());
        std::fs::write(pki.path("server-bundle.pem"), &both).unwrap();
        std::fs::write(pki.path("client-bundle.pem"), &both).unwrap();
        let m = mesh(&pki, ("server-bundle.pem", ""), ("client-bundle.pem", "")).await;
        let open = open_all(&m).await;
        let (file, keep, sidecar) = match side {
            Side2::Server => ("server-bundle.pem", pki.ca.cert_pem(), &m.server),
            Side2::Client => ("client-bundle.pem", other.cert_pem(), &m.client),
        };
        std::fs::write(pki.path(file), keep).unwrap();
        let (code, reply) = post_reload(sidecar.admin_addr()).await;
        assert_eq!(code, 200, "{side:?}: {reply}");
        assert_eq!(reply["identity"]["bundle_changed"], true, "{reply}");
        all_closed(&m, side, "denied", open).await;
    }
}

/// An OCSP "revoked" found by the periodic re-check closes every kind of
/// connection to and from that peer on the side that asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ocsp_revoked_closes_every_connection_to_and_from_the_peer() {
    let test = "an_ocsp_revoked_closes_every_connection_to_and_from_the_peer";
    if !have_tool("openssl", test) {
        return;
    }
    for side in [Side2::Server, Side2::Client] {
        let pki = Pki::new();
        let d = pki.dir.path();
        openssl_ca(&pki);
        pki.svid("server", SERVER_ID);
        pki.svid("client", CLIENT_ID);
        openssl(d, &["ca", "-config", "ca.cnf", "-valid", "server.pem"]);
        openssl(d, &["ca", "-config", "ca.cnf", "-valid", "client.pem"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (mut first, url) = responder_on(d, "ca.pem", "ca-key.pem", port).await;
        // Only `side` checks OCSP, so its closes are its own.
        let ocsp = format!(
            "revocation:\n  ocsp:\n    mode: require\n    responder: {url}\n    max_age: 1s\n"
        );
        let (server_extra, client_extra, victim) = match side {
            Side2::Server => (ocsp.as_str(), "", "client.pem"),
            Side2::Client => ("", ocsp.as_str(), "server.pem"),
        };
        let m = mesh(
            &pki,
            ("bundle.pem", server_extra),
            ("bundle.pem", client_extra),
        )
        .await;
        let open = open_all(&m).await;
        // The CA revokes the peer; the responder comes back knowing it.
        first.kill().await.unwrap();
        openssl(d, &["ca", "-config", "ca.cnf", "-revoke", victim]);
        let _second = responder_on(d, "ca.pem", "ca-key.pem", port).await;
        all_closed(&m, side, "revoked", open).await;
    }
}
