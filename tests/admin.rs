//! The admin server: liveness, readiness through a drain, Prometheus text
//! that `promtool check metrics` accepts, and certificate and config dumps
//! that never show a private key.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_show_expiry() {
    let pki = Pki::new();
    let app = echo_app().await;
    let server = server_sidecar(&pki, "orders", SERVER_ID, app).await;
    let client = client_sidecar(
        &pki,
        "orders",
        CLIENT_ID,
        server.inbound_addr("orders").unwrap(),
        SERVER_ID,
    )
    .await;
    round_trip(client.outbound_addr("orders").unwrap(), b"some traffic")
        .await
        .unwrap();

    for sidecar in [&server, &client] {
        let (status, body) = http_get(sidecar.admin_addr(), "/metrics").await.unwrap();
        assert_eq!(status, 200);
        // Our leaf and the bundle's root, with absolute timestamps.
        let leaf = metric(
            &body,
            "portcullis_cert_expiration_timestamp_seconds",
            &[("kind", "leaf")],
        )
        .expect("leaf expiry");
        let root = metric(
            &body,
            "portcullis_cert_expiration_timestamp_seconds",
            &[("kind", "root"), ("spiffe_id", "spiffe://prod.example.org")],
        )
        .expect("root expiry");
        let now = portcullis::clock::unix_now() as f64;
        assert!(
            leaf > now && leaf <= now + 86400.0 + 5.0,
            "leaf expiry {leaf}"
        );
        assert!(root > now, "root expiry {root}");
        assert_eq!(metric(&body, "portcullis_ready", &[]), Some(1.0));

        if have_tool("promtool", "metrics_pass_promtool_and_show_expiry") {
            let mut child = tokio::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .await
                .unwrap();
            let out = child.wait_with_output().await.unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let (_, body) = http_get(server.admin_addr(), "/metrics").await.unwrap();
    let leaf_serial = server
        .control()
        .tls
        .identity()
        .current()
        .leaf
        .serial
        .clone();
    assert!(
        body.contains(&format!("spiffe_id=\"{SERVER_ID}\"")),
        "{body}"
    );
    assert!(body.contains(&format!("serial=\"{leaf_serial}\"")));
}

#[tokio::test]
async fn live_ready_and_drain() {
    let pki = Pki::new();
    let app = echo_app().await;
    let server = server_sidecar(&pki, "orders", SERVER_ID, app).await;
    let admin = server.admin_addr();
    assert_eq!(http_get(admin, "/live").await.unwrap().0, 200);
    assert_eq!(http_get(admin, "/ready").await.unwrap().0, 200);
    assert_eq!(http_get(admin, "/nope").await.unwrap().0, 404);

    server.begin_drain();
    assert_eq!(http_get(admin, "/ready").await.unwrap().0, 503);
    assert_eq!(http_get(admin, "/live").await.unwrap().0, 200);
    let (_, body) = http_get(admin, "/metrics").await.unwrap();
    assert_eq!(metric(&body, "portcullis_ready", &[]), Some(0.0));
    let inbound = server.inbound_addr("orders").unwrap();
    wait_for(
        Duration::from_secs(5),
        "the inbound port to refuse connections",
        || async {
            tokio::net::TcpStream::connect(inbound)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert_eq!(server.shutdown(Duration::from_secs(5)).await, 0);
}

#[tokio::test]
async fn certs_and_config_dump_never_show_keys() {
    let pki = Pki::new();
    let app = echo_app().await;
    let server = server_sidecar(&pki, "orders", SERVER_ID, app).await;
    let (status, certs) = http_get(server.admin_addr(), "/certs").await.unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(v["identity"][0]["spiffe_id"], SERVER_ID);
    assert_eq!(v["identity"][0]["kind"], "leaf");
    assert_eq!(v["identity"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["trust_bundles"][0]["trust_domain"], TD);
    assert_eq!(v["trust_bundles"][0]["roots"][0]["kind"], "root");

    let (status, dump) = http_get(server.admin_addr(), "/config_dump").await.unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["identity"]["spiffe_id"], SERVER_ID);
    assert_eq!(v["config"]["inbound"][0]["name"], "orders");

    let key = std::fs::read_to_string(pki.path("orders-svid-key.pem")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for text in [&certs, &dump] {
        assert!(!text.contains("PRIVATE KEY"));
        assert!(!text.contains(&key_body[..40]));
    }
}

/// Whether the server closes `s` within `within` (EOF or reset).
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// The probe port is reachable from the pod network and the admin port
/// may be: neither can be held by slow or idle clients, flooded from one
/// address, or fed a large body, and kubelet (another address) still gets
/// its answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_probe_servers_are_not_slowloris_targets() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    pki.svid("orders", SERVER_ID);
    let sidecar = portcullis::sidecar::start(pki.config(
        "orders.yaml",
        &format!(
            "identity:\n  cert: orders.pem\n  key: orders-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n\
             probes:\n  listen: 127.0.0.1:0\n  forward: {app}\n  paths: [/healthz]\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let refused = |server: &str, reason: &str| {
        metric(
            &sidecar.metrics().encode(),
            "portcullis_plaintext_refused_total",
            &[("server", server), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };

    for (server, addr, path) in [
        ("admin", sidecar.admin_addr(), "/live"),
        ("probe", sidecar.probe_addr().unwrap(), "/healthz"),
    ] {
        // A head dribbled one byte at a time, and a connection that never
        // says anything: both cut off by the header deadline (5 s).
        let mut slow = tcp_from([127, 0, 0, 1], addr).await;
        let mut idle = tcp_from([127, 0, 0, 1], addr).await;
        let dribble = async {
            for b in b"GET /live HTTP/1.1\r\nHost: a\r\nx-a: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if slow.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            closed_within(&mut slow, Duration::from_secs(10)).await
        };
        let (slow_closed, idle_closed) =
            tokio::join!(dribble, closed_within(&mut idle, Duration::from_secs(10)));
        assert!(slow_closed, "{server}: a slow head was never cut off");
        assert!(
            idle_closed,
            "{server}: an idle connection was never cut off"
        );
        assert!(refused(server, "header_timeout") >= 2.0, "{server}");

        // A declared body over 64 KiB is refused without being read.
        let reply = raw(
            addr,
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(status(&reply), 413, "{server}: {reply}");
        assert_eq!(refused(server, "body_too_large"), 1.0, "{server}");

        // One address holds at most 32 connections...
        let mut held = Vec::new();
        for _ in 0..32 {
            held.push(tcp_from([127, 0, 0, 2], addr).await);
        }
        let mut over = tcp_from([127, 0, 0, 2], addr).await;
        assert!(
            closed_within(&mut over, Duration::from_secs(3)).await,
            "{server}"
        );
        assert_eq!(refused(server, "max_per_client"), 1.0, "{server}");
        // ...and the server at most 128, from anyone; kubelet, from
        // another address, is answered while one address is at its cap.
        let (status_code, _) = http_get(addr, path).await.unwrap();
        assert_eq!(status_code, 200, "{server}");
        for ip in [[127, 0, 0, 3], [127, 0, 0, 4], [127, 0, 0, 5]] {
            for _ in 0..32 {
                held.push(tcp_from(ip, addr).await);
            }
        }
        let mut over = tcp_from([127, 0, 0, 6], addr).await;
        assert!(
            closed_within(&mut over, Duration::from_secs(3)).await,
            "{server}"
        );
        assert_eq!(refused(server, "max_connections"), 1.0, "{server}");
        // Once the flood lets go, the server answers again.
        drop(held);
        wait_for(
            Duration::from_secs(10),
            "the server to answer again",
            || async { matches!(http_get(addr, path).await, Ok((200, _))).then_some(()) },
        )
        .await;
    }
}
