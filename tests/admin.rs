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
