//! The inbound port against real clients: `openssl s_client` with a valid
//! SVID is accepted; every kind of bad certificate is refused with its
//! reason in the metrics; garbage, plaintext HTTP and TLS 1.2-only clients
//! close only their own connection.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use portcullis::identity::TrustDomain;
use portcullis::pki::{Ca, KeyUsagePurpose, LeafSpec};
use portcullis::sidecar::Sidecar;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const PEER_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

async fn setup() -> (Pki, Sidecar, std::net::SocketAddr) {
    let pki = Pki::new();
    let app = echo_app().await;
    let server = server_sidecar(&pki, "orders", SERVER_ID, app).await;
    let addr = server.inbound_addr("orders").unwrap();
    (pki, server, addr)
}

/// Runs `openssl s_client` against `addr` with the given extra arguments,
/// sends a line, and reports whether it came back.
async fn s_client_echoes(addr: std::net::SocketAddr, args: &[&str]) -> bool {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-quiet")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    stdin.write_all(b"ping-through-portcullis\n").await.unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // Either the echo arrives, or the server closes the connection and
    // s_client exits: both happen promptly, so the deadline only guards
    // against a hang.
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("ping-through-portcullis") {
                return true;
            }
        }
        false
    })
    .await
    .expect("s_client neither echoed nor exited");
    let _ = child.kill().await;
    outcome
}

async fn assert_refused(server: &Sidecar, addr: std::net::SocketAddr, args: &[&str], reason: &str) {
    assert!(
        !s_client_echoes(addr, args).await,
        "{reason}: connection must be refused"
    );
    wait_metric(
        server,
        "portcullis_tls_handshakes_total",
        &[("direction", "inbound"), ("result", reason)],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_clients_are_accepted_or_refused_with_the_right_reason() {
    if !have_tool(
        "openssl",
        "openssl_clients_are_accepted_or_refused_with_the_right_reason",
    ) {
        return;
    }
    let (pki, server, addr) = setup().await;
    let bundle = pki.bundle();
    let b = path_str(&bundle).to_string();

    // A valid SVID: accepted, and s_client also accepts our server chain.
    let (c, k) = pki.svid("good", PEER_ID);
    assert!(
        s_client_echoes(
            addr,
            &[
                "-tls1_3",
                "-cert",
                path_str(&c),
                "-key",
                path_str(&k),
                "-CAfile",
                &b,
                "-verify_return_error"
            ]
        )
        .await,
        "a valid SVID must be accepted"
    );
    wait_metric(
        &server,
        "portcullis_tls_handshakes_total",
        &[("direction", "inbound"), ("result", "success")],
        1.0,
    )
    .await;

    // No client certificate at all.
    assert_refused(&server, addr, &["-tls1_3", "-CAfile", &b], "no_client_cert").await;

    // An SVID from a CA we do not trust, for our own trust domain.
    let other_ca = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY).unwrap();
    let foreign = other_ca.issue_svid(&id(PEER_ID), DAY).unwrap();
    let (c, k) = pki.write("other-ca", &foreign);
    assert_refused(
        &server,
        addr,
        &["-tls1_3", "-cert", path_str(&c), "-key", path_str(&k)],
        "unknown_ca",
    )
    .await;

    // Expired yesterday.
    let mut spec = LeafSpec::svid(&id(PEER_ID), DAY);
    spec.not_before = time::OffsetDateTime::now_utc() - DAY * 2;
    spec.not_after = time::OffsetDateTime::now_utc() - DAY;
    let (c, k) = pki.issue("expired", &spec);
    assert_refused(
        &server,
        addr,
        &["-tls1_3", "-cert", path_str(&c), "-key", path_str(&k)],
        "expired",
    )
    .await;

    // Two URI SANs.
    let mut spec = LeafSpec::svid(&id(PEER_ID), DAY);
    spec.uris
        .push("spiffe://prod.example.org/ns/web/sa/other".into());
    let (c, k) = pki.issue("two-sans", &spec);
    assert_refused(
        &server,
        addr,
        &["-tls1_3", "-cert", path_str(&c), "-key", path_str(&k)],
        "bad_svid",
    )
    .await;

    // A CA certificate used as a leaf (counted with the other SVID breaches).
    let mut spec = LeafSpec::svid(&id(PEER_ID), DAY);
    spec.is_ca = true;
    spec.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let (c, k) = pki.issue("ca-leaf", &spec);
    assert_refused_again(
        &server,
        addr,
        &["-tls1_3", "-cert", path_str(&c), "-key", path_str(&k)],
        "bad_svid",
        2.0,
    )
    .await;

    // A valid SVID, signed by our CA, but for another trust domain.
    let (c, k) = pki.svid("foreign-td", "spiffe://partner.example.com/ns/x/sa/y");
    assert_refused(
        &server,
        addr,
        &["-tls1_3", "-cert", path_str(&c), "-key", path_str(&k)],
        "untrusted_domain",
    )
    .await;

    // TLS 1.2 only.
    let (c, k) = (pki.path("good.pem"), pki.path("good-key.pem"));
    assert_refused(
        &server,
        addr,
        &["-tls1_2", "-cert", path_str(&c), "-key", path_str(&k)],
        "protocol",
    )
    .await;

    // Every refusal was counted as a closed connection, and none reached the app.
    wait_metric(
        &server,
        "portcullis_connections_closed_total",
        &[("reason", "handshake_failed")],
        7.0,
    )
    .await;
    let m = server.metrics().encode();
    assert_eq!(
        metric(&m, "portcullis_bytes_total", &[("flow", "to_upstream")]),
        Some("ping-through-portcullis\n".len() as f64)
    );
}

async fn assert_refused_again(
    server: &Sidecar,
    addr: std::net::SocketAddr,
    args: &[&str],
    reason: &str,
    count: f64,
) {
    assert!(
        !s_client_echoes(addr, args).await,
        "{reason}: connection must be refused"
    );
    wait_metric(
        server,
        "portcullis_tls_handshakes_total",
        &[("direction", "inbound"), ("result", reason)],
        count,
    )
    .await;
}

/// The X.509-SVID spec's rules that a CA could still get wrong: the
/// trust domain's own ID names no workload, and key usage must be critical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_without_a_path_or_with_non_critical_key_usage_are_refused() {
    if !have_tool(
        "openssl",
        "svids_without_a_path_or_with_non_critical_key_usage_are_refused",
    ) {
        return;
    }
    let (pki, server, addr) = setup().await;
    pki.svid("good", PEER_ID);
    let good = (pki.path("good.pem"), pki.path("good-key.pem"));
    assert!(
        s_client_echoes(
            addr,
            &[
                "-tls1_3",
                "-cert",
                path_str(&good.0),
                "-key",
                path_str(&good.1)
            ]
        )
        .await,
        "a valid SVID must be accepted"
    );

    let no_path = TrustDomain::parse(TD).unwrap().id();
    let (c, k) = pki.issue("no-path", &LeafSpec::svid(&no_path, DAY));
    assert_refused(
        &server,
        addr,
        &["-tls1_3", "-cert", path_str(&c), "-key", path_str(&k)],
        "bad_svid",
    )
    .await;

    let mut spec = LeafSpec::svid(&id(PEER_ID), DAY);
    spec.key_usage_critical = false;
    let (c, k) = pki.issue("ku-not-critical", &spec);
    assert_refused_again(
        &server,
        addr,
        &["-tls1_3", "-cert", path_str(&c), "-key", path_str(&k)],
        "bad_svid",
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_its_own_connection() {
    let (pki, server, addr) = setup().await;
    pki.svid("good", PEER_ID);
    // A healthy connection stays open through the whole attack.
    let mut healthy = tls_connect(addr, pki.client_tls("good", SERVER_ID))
        .await
        .unwrap();
    healthy.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    healthy.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    let attacks: [(&[u8], &str); 3] = [
        (b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n", "not_tls"),
        (b"\x00\x01\x02\x03 random garbage \xff\xfe", "not_tls"),
        // A TLS record header with a nonsense handshake inside.
        (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", "protocol"),
    ];
    for (bytes, _) in attacks {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut rest = Vec::new();
        // The sidecar closes the connection (after an alert, for TLS input).
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("garbage connection must be closed");
        assert!(
            !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
            "no app data may leak"
        );
    }
    wait_metric(
        &server,
        "portcullis_tls_handshakes_total",
        &[("result", "not_tls")],
        2.0,
    )
    .await;
    wait_metric(
        &server,
        "portcullis_tls_handshakes_total",
        &[("result", "protocol")],
        1.0,
    )
    .await;

    healthy.write_all(b"after!").await.unwrap();
    healthy.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    // And new good connections still work.
    let mut again = tls_connect(addr, pki.client_tls("good", SERVER_ID))
        .await
        .unwrap();
    again.write_all(b"again!").await.unwrap();
    again.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again!");
}

#[tokio::test]
async fn a_silent_client_is_cut_at_the_handshake_timeout() {
    let pki = Pki::new();
    let app = echo_app().await;
    pki.svid("srv", SERVER_ID);
    let server = portcullis::sidecar::start(pki.config(
        "s.yaml",
        &format!("identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\ninbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\ntimeouts:\n  handshake: 200ms\n"),
    ))
    .await
    .unwrap();
    let mut s = TcpStream::connect(server.inbound_addr("orders").unwrap())
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the sidecar must close a silent connection")
        .ok();
    wait_metric(
        &server,
        "portcullis_tls_handshakes_total",
        &[("result", "timeout")],
        1.0,
    )
    .await;
}

/// Waits until the server closes `s` (EOF or reset) and says whether it
/// did within 5 s.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Anyone on the pod network can open connections, and send nothing or
/// the first bytes of a handshake and then stall. A listener holds at
/// most `max_connections` and at most `max_connections_per_client` from
/// one address; a connection takes a handshake place only once its client
/// speaks, and at most `max_handshakes` (`max_handshakes_per_client` from
/// one address) are in progress. Past any of them a new connection is
/// closed at once and counted; silent connections never keep a real peer
/// from handshaking, and once the flood lets go the peer gets through.
/// (The sidecar's memory under a larger flood is measured by the load
/// script, not asserted here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_handshake_floods_hit_the_listener_limits() {
    let pki = Pki::new();
    pki.svid("orders", SERVER_ID);
    pki.svid("peer", PEER_ID);
    let app = echo_app().await;
    let server = portcullis::sidecar::start(pki.config(
        "limits.yaml",
        &format!(
            "identity:\n  cert: orders.pem\n  key: orders-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n\
             \x20   limits: {{ max_connections: 8, max_handshakes: 2, max_connections_per_client: 3, max_handshakes_per_client: 1 }}\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let addr = server.inbound_addr("orders").unwrap();
    let rejected = |limit: &str| {
        metric(
            &server.metrics().encode(),
            "portcullis_listener_rejected_connections_total",
            &[("listener", "orders"), ("limit", limit)],
        )
        .unwrap_or(0.0)
    };
    let open_now = |n: f64| {
        wait_metric(
            &server,
            "portcullis_connections_active",
            &[("listener", "orders")],
            n,
        )
    };
    let handshaking = |n: f64| {
        wait_metric(
            &server,
            "portcullis_tls_handshakes_in_progress",
            &[("listener", "orders")],
            n,
        )
    };
    // A connection that has sent the first byte of a TLS record, and stalls.
    let stalled = |ip: [u8; 4]| async move {
        let mut s = tcp_from(ip, addr).await;
        s.write_all(&[0x16]).await.unwrap();
        s
    };

    // One address: three silent connections, and no fourth.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tcp_from([127, 0, 0, 2], addr).await);
    }
    open_now(3.0).await;
    let mut fourth = tcp_from([127, 0, 0, 2], addr).await;
    assert!(
        closed_by_server(&mut fourth).await,
        "a fourth from one address was held"
    );
    assert_eq!(rejected("max_connections_per_client"), 1.0);
    // Silence holds no handshake place: the peer still gets in.
    assert!(
        echoes(&pki, "peer", SERVER_ID, addr).await,
        "silence blocked a handshake"
    );
    open_now(3.0).await;

    // Stalled handshakes: one per address, two in all.
    let first = stalled([127, 0, 0, 3]).await;
    handshaking(1.0).await;
    let mut again = stalled([127, 0, 0, 3]).await;
    assert!(
        closed_by_server(&mut again).await,
        "a second handshake from one address"
    );
    assert_eq!(rejected("max_handshakes_per_client"), 1.0);
    let _second = stalled([127, 0, 0, 4]).await;
    handshaking(2.0).await;
    assert!(
        !echoes(&pki, "peer", SERVER_ID, addr).await,
        "over max_handshakes"
    );
    assert_eq!(rejected("max_handshakes"), 1.0);

    // One stalled handshake lets go: the peer's fits again.
    drop(first);
    handshaking(1.0).await;
    assert!(
        echoes(&pki, "peer", SERVER_ID, addr).await,
        "after a handshake ended"
    );

    // max_connections, from anyone: once the peer's connection is gone
    // (three silent, one stalled open), four more fill it, and the next is
    // closed at once, before any handshake.
    open_now(4.0).await;
    for ip in [
        [127, 0, 0, 5],
        [127, 0, 0, 5],
        [127, 0, 0, 6],
        [127, 0, 0, 6],
    ] {
        silent.push(tcp_from(ip, addr).await);
    }
    open_now(8.0).await;
    let mut over = tcp_from([127, 0, 0, 7], addr).await;
    assert!(
        closed_by_server(&mut over).await,
        "a ninth connection was held"
    );
    assert_eq!(rejected("max_connections"), 1.0);

    // Once the server has seen the flood go, the peer gets through.
    drop(silent);
    open_now(1.0).await;
    assert!(
        echoes(&pki, "peer", SERVER_ID, addr).await,
        "after the flood"
    );
}
