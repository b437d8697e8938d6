//! The service policy table on live sidecars: new connections follow each
//! reload, open connections that a reload denies are closed, invalid files
//! are refused while the old policy keeps serving, Kubernetes-style symlink
//! swaps are picked up, audit mode lets denials through and logs them, and
//! rate limits refuse the excess.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use portcullis::sidecar::{Sidecar, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://prod.example.org/ns/web/sa/frontend";
const BATCH: &str = "spiffe://prod.example.org/ns/batch/sa/nightly";

fn allow(ids: &[&str]) -> String {
    let from: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        "default: deny\nservices:\n  orders:\n    rules:\n      - name: allowed\n        action: allow\n        from: [{}]\n",
        from.join(", ")
    )
}

/// A server sidecar whose config names `policy_path` and adds `extra`.
async fn server(pki: &Pki, app: SocketAddr, policy_path: &Path, extra: &str) -> Sidecar {
    pki.svid("srv", SERVER_ID);
    let config = pki.config(
        "server.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n\
             policy: {}\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n\
             admin:\n  listen: 127.0.0.1:0\n{extra}",
            path_str(policy_path)
        ),
    );
    start(config)
        .await
        .unwrap_or_else(|e| panic!("server: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_open_connections_follow_each_reload() {
    let pki = Pki::new();
    pki.svid("frontend", FRONTEND);
    pki.svid("batch", BATCH);
    let app = echo_app().await;
    let policy = pki.path("policy.yaml");
    std::fs::write(&policy, allow(&[FRONTEND, BATCH])).unwrap();
    // No watcher: this test drives reloads through POST /reload.
    let s = server(
        &pki,
        app,
        &policy,
        "reload:\n  watch: false\n  interval: 1h\n",
    )
    .await;
    let addr = s.inbound_addr("orders").unwrap();
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    assert!(echoes(&pki, "batch", SERVER_ID, addr).await);

    // Two long-lived connections, one per identity.
    let mut fe = tls_connect(addr, pki.client_tls("frontend", SERVER_ID))
        .await
        .unwrap();
    let mut ba = tls_connect(addr, pki.client_tls("batch", SERVER_ID))
        .await
        .unwrap();
    let mut b = [0u8; 2];
    for c in [&mut fe, &mut ba] {
        c.write_all(b"hi").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
    }

    // Batch is no longer allowed.
    std::fs::write(&policy, allow(&[FRONTEND])).unwrap();
    let (status, reply) = post_reload(s.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["policy"]["result"], "success");

    // Its open connection is cut within the promised second (the sweep
    // runs before the reload answers); the frontend's is untouched.
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(1), ba.read_to_end(&mut rest)).await;
    assert!(
        cut.is_ok(),
        "the denied connection must be closed within 1 s"
    );
    fe.write_all(b"ok").await.unwrap();
    fe.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ok");
    // New connections follow the new policy.
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    assert!(!echoes(&pki, "batch", SERVER_ID, addr).await);

    let m = s.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_policy_closed_connections_total",
            &[("service", "orders")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_policy_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_authz_decisions_total",
            &[("decision", "deny"), ("rule", "default")]
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &m,
            "portcullis_authz_decisions_total",
            &[("decision", "allow"), ("rule", "allowed")]
        )
        .unwrap()
            >= 4.0
    );
    wait_metric(
        &s,
        "portcullis_connections_closed_total",
        &[("reason", "policy")],
        1.0,
    )
    .await;

    // The same file again: nothing to do.
    let (_, reply) = post_reload(s.admin_addr()).await;
    assert_eq!(reply["policy"]["result"], "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_is_refused_and_the_old_one_keeps_serving() {
    let pki = Pki::new();
    pki.svid("frontend", FRONTEND);
    let app = echo_app().await;
    let policy = pki.path("policy.yaml");
    std::fs::write(&policy, allow(&[FRONTEND])).unwrap();
    let s = server(
        &pki,
        app,
        &policy,
        "reload:\n  watch: false\n  interval: 1h\n",
    )
    .await;
    let addr = s.inbound_addr("orders").unwrap();
    let (_, dump) = http_get(s.admin_addr(), "/config_dump").await.unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let sha_before = dump["policy"]["sha256"].as_str().unwrap().to_string();

    std::fs::write(
        &policy,
        allow(&[FRONTEND]).replace("action: allow", "action: allwo"),
    )
    .unwrap();
    let (status, reply) = post_reload(s.admin_addr()).await;
    assert_eq!(status, 400);
    let error = reply["policy"]["error"].as_str().unwrap();
    assert!(error.contains("policy.yaml:6:17:"), "{error}");
    assert!(error.contains("allwo"), "{error}");

    assert!(
        echoes(&pki, "frontend", SERVER_ID, addr).await,
        "the old policy keeps serving"
    );
    let m = s.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_policy_reloads_total",
            &[("result", "error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "portcullis_policy_info", &[("sha256", &sha_before)]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_and_kubernetes_symlink_swaps_reload_by_themselves() {
    let pki = Pki::new();
    pki.svid("frontend", FRONTEND);
    pki.svid("batch", BATCH);
    let app = echo_app().await;
    // A ConfigMap volume: policy.yaml -> ..data/policy.yaml, ..data -> ..v1
    let vol = pki.path("configmap");
    std::fs::create_dir_all(vol.join("..v1")).unwrap();
    std::fs::write(vol.join("..v1/policy.yaml"), allow(&[FRONTEND])).unwrap();
    std::os::unix::fs::symlink("..v1", vol.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", vol.join("policy.yaml")).unwrap();
    let s = server(
        &pki,
        app,
        &vol.join("policy.yaml"),
        "reload:\n  debounce: 50ms\n  interval: 1h\n",
    )
    .await;
    let addr = s.inbound_addr("orders").unwrap();
    assert!(!echoes(&pki, "batch", SERVER_ID, addr).await);

    // Kubelet's update: write ..v2, point a temp link at it, rename over ..data.
    std::fs::create_dir_all(vol.join("..v2")).unwrap();
    std::fs::write(vol.join("..v2/policy.yaml"), allow(&[FRONTEND, BATCH])).unwrap();
    std::os::unix::fs::symlink("..v2", vol.join("..data_tmp")).unwrap();
    std::fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
    std::fs::remove_dir_all(vol.join("..v1")).unwrap();
    wait_metric(
        &s,
        "portcullis_policy_reloads_total",
        &[("result", "success")],
        1.0,
    )
    .await;
    assert!(echoes(&pki, "batch", SERVER_ID, addr).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_reloads_by_itself() {
    let pki = Pki::new();
    pki.svid("frontend", FRONTEND);
    pki.svid("batch", BATCH);
    let app = echo_app().await;
    let policy = pki.path("policy.yaml");
    std::fs::write(&policy, allow(&[FRONTEND])).unwrap();
    let s = server(
        &pki,
        app,
        &policy,
        "reload:\n  debounce: 50ms\n  interval: 1h\n",
    )
    .await;
    let addr = s.inbound_addr("orders").unwrap();
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    std::fs::write(&policy, allow(&[BATCH])).unwrap();
    wait_metric(
        &s,
        "portcullis_policy_reloads_total",
        &[("result", "success")],
        1.0,
    )
    .await;
    assert!(!echoes(&pki, "frontend", SERVER_ID, addr).await);
    assert!(echoes(&pki, "batch", SERVER_ID, addr).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_denials_through_and_logs_them() {
    let pki = Pki::new();
    pki.svid("batch", BATCH);
    pki.svid("frontend", FRONTEND);
    let app = echo_app().await;
    let policy = pki.path("policy.yaml");
    std::fs::write(
        &policy,
        allow(&[FRONTEND]).replace("  orders:\n", "  orders:\n    mode: audit\n"),
    )
    .unwrap();
    let audit = pki.path("audit.log");
    let s = server(
        &pki,
        app,
        &policy,
        &format!("audit:\n  sink: {}\n  log_allows: true\n", path_str(&audit)),
    )
    .await;
    let addr = s.inbound_addr("orders").unwrap();
    assert!(
        echoes(&pki, "batch", SERVER_ID, addr).await,
        "audit mode lets a would-be denial through"
    );
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    wait_metric(
        &s,
        "portcullis_authz_decisions_total",
        &[("decision", "audit_deny"), ("rule", "default")],
        1.0,
    )
    .await;

    let lines = wait_for(Duration::from_secs(10), "two audit lines", || async {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    let denial = lines
        .iter()
        .find(|l| l["decision"] == "audit_deny")
        .expect("a denial line");
    assert_eq!(denial["peer"], BATCH);
    assert_eq!(denial["service"], "orders");
    assert_eq!(denial["rule"], "default");
    assert_eq!(denial["mode"], "audit");
    assert!(denial["src"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(denial["time"].as_str().unwrap().contains('T'));
    let allow = lines
        .iter()
        .find(|l| l["decision"] == "allow")
        .expect("an allow line");
    assert_eq!(allow["peer"], FRONTEND);
    assert_eq!(allow["rule"], "allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_the_excess_per_identity() {
    let pki = Pki::new();
    pki.svid("frontend", FRONTEND);
    pki.svid("batch", BATCH);
    let app = echo_app().await;
    let policy = pki.path("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "{}    rate_limit: {{ per_identity_per_second: 0.001, burst: 2 }}\n",
            allow(&[FRONTEND, BATCH])
        ),
    )
    .unwrap();
    let s = server(&pki, app, &policy, "").await;
    let addr = s.inbound_addr("orders").unwrap();
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    assert!(
        !echoes(&pki, "frontend", SERVER_ID, addr).await,
        "third connection in the burst window"
    );
    assert!(
        echoes(&pki, "batch", SERVER_ID, addr).await,
        "another identity has its own bucket"
    );
    wait_metric(
        &s,
        "portcullis_rate_limited_total",
        &[("service", "orders")],
        1.0,
    )
    .await;
    wait_metric(
        &s,
        "portcullis_connections_closed_total",
        &[("reason", "rate_limited")],
        1.0,
    )
    .await;
}

/// Reloading the policy must not be a way to reset one's budget: a
/// service whose limit did not change keeps every peer's bucket; one
/// whose limit changed starts afresh under the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_keeps_spent_rate_limits_unless_the_limit_changed() {
    let pki = Pki::new();
    pki.svid("frontend", FRONTEND);
    let app = echo_app().await;
    let policy = pki.path("policy.yaml");
    let limited = |ids: &[&str], burst: u32| {
        format!(
            "{}    rate_limit: {{ per_identity_per_second: 0.001, burst: {burst} }}\n",
            allow(ids)
        )
    };
    std::fs::write(&policy, limited(&[FRONTEND], 2)).unwrap();
    let s = server(
        &pki,
        app,
        &policy,
        "reload:\n  watch: false\n  interval: 1h\n",
    )
    .await;
    let addr = s.inbound_addr("orders").unwrap();
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    assert!(
        !echoes(&pki, "frontend", SERVER_ID, addr).await,
        "burst spent"
    );

    // Another rule changes, the limit does not: still spent.
    std::fs::write(&policy, limited(&[FRONTEND, BATCH], 2)).unwrap();
    let (status, reply) = post_reload(s.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["policy"]["result"], "success", "{reply}");
    assert!(
        !echoes(&pki, "frontend", SERVER_ID, addr).await,
        "the reload handed out a new burst"
    );

    // The limit itself changes: the new one applies from a full bucket.
    std::fs::write(&policy, limited(&[FRONTEND, BATCH], 1)).unwrap();
    let (status, reply) = post_reload(s.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    assert!(echoes(&pki, "frontend", SERVER_ID, addr).await);
    assert!(!echoes(&pki, "frontend", SERVER_ID, addr).await);
}

#[test]
fn check_validates_a_policy_offline() {
    let pki = Pki::new();
    let d = pki.dir.path();
    pki.svid("svid", SERVER_ID);
    std::fs::write(
        d.join("policy.yaml"),
        allow(&[FRONTEND]).replace("ns/web/sa/frontend", "ns/web/**/frontend"),
    )
    .unwrap();
    std::fs::write(
        d.join("portcullis.yaml"),
        "identity:\n  cert: svid.pem\n  key: svid-key.pem\n  trust_bundle: bundle.pem\npolicy: policy.yaml\ninbound:\n  - name: orders\n    listen: 127.0.0.1:15006\n    forward: 127.0.0.1:8080\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(d)
        .args(["check", "--config", "portcullis.yaml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("policy.yaml:7:16:") && err.contains("may only be the last segment"),
        "{err}"
    );

    let o = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(d)
        .args(["check", "--policy", "policy.yaml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(d.join("policy.yaml"), allow(&[FRONTEND])).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(d)
        .args(["check", "--policy", "policy.yaml"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_reach_the_app_under_default_deny_and_nothing_else_does() {
    // A tiny HTTP app that records what it was asked for.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = app.accept().await.unwrap();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = req.lines().next().unwrap_or("").to_string();
                let _ = seen_tx.send(line);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhealthy\n")
                    .await;
            });
        }
    });
    let pki = Pki::new();
    pki.svid("frontend", FRONTEND);
    let policy = pki.path("policy.yaml");
    std::fs::write(&policy, "default: deny\n").unwrap();
    let s = server(
        &pki,
        app_addr,
        &policy,
        &format!(
            "probes:\n  listen: 127.0.0.1:0\n  forward: {app_addr}\n  paths: [/healthz, /ready]\n"
        ),
    )
    .await;
    let probe = s.probe_addr().unwrap();

    assert!(
        !echoes(
            &pki,
            "frontend",
            SERVER_ID,
            s.inbound_addr("orders").unwrap()
        )
        .await,
        "default deny"
    );
    let (status, body) = http_get(probe, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "healthy\n"));
    assert_eq!(seen.recv().await.unwrap(), "GET /healthz HTTP/1.1");
    let (status, _) = http_get(probe, "/admin/secrets").await.unwrap();
    assert_eq!(status, 404);
    let mut post = TcpStream::connect(probe).await.unwrap();
    post.write_all(
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = String::new();
    post.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    // Only the one probe path ever reached the app.
    assert!(seen.try_recv().is_err());
}

/// A deny rule that names paths holds at L4: on a `tcp` listener the peers
/// it names are refused whole, rather than getting everything another
/// rule allows them (their bytes could be exactly the request the rule
/// forbids). An allow rule that names paths admits nobody at L4. Peers the
/// deny rule does not name are unaffected. Before, BATCH's connection got
/// through on the allow rule and `GET /admin` reached the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_with_paths_deny_whole_l4_connections() {
    let pki = Pki::new();
    pki.svid("frontend", FRONTEND);
    pki.svid("batch", BATCH);
    pki.svid("reader", "spiffe://prod.example.org/ns/web/sa/reader");
    let app = echo_app().await;
    let policy = pki.path("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "default: deny\nservices:\n  orders:\n    rules:\n\
             \x20     - {{ name: everyone, action: allow, from: [\"{FRONTEND}\", \"{BATCH}\"] }}\n\
             \x20     - {{ name: no-admin-for-batch, action: deny, from: [\"{BATCH}\"], paths: [\"/admin/*\"] }}\n\
             \x20     - {{ name: readers, action: allow, from: [spiffe://prod.example.org/ns/web/sa/reader], methods: [GET] }}\n"
        ),
    )
    .unwrap();
    let s = server(&pki, app, &policy, "").await;
    let addr = s.inbound_addr("orders").unwrap();
    assert!(
        echoes(&pki, "frontend", SERVER_ID, addr).await,
        "frontend is unaffected"
    );
    assert!(
        !echoes(&pki, "batch", SERVER_ID, addr).await,
        "the L7 deny holds at L4"
    );
    assert!(
        !echoes(&pki, "reader", SERVER_ID, addr).await,
        "an L7 allow admits nobody at L4"
    );
    let m = s.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_authz_decisions_total",
            &[
                ("service", "orders"),
                ("decision", "deny"),
                ("rule", "no-admin-for-batch")
            ]
        ),
        Some(1.0)
    );

    // `portcullis check` says what such rules do on this listener.
    std::fs::write(
        pki.path("check.yaml"),
        format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\npolicy: {}\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:15006\n    forward: 127.0.0.1:8080\n",
            path_str(&policy)
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .current_dir(pki.dir.path())
        .args(["check", "--config", "check.yaml"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("deny rule \"no-admin-for-batch\"")
            && out.contains("its `tcp` listener it denies the whole connection"),
        "{out}"
    );
    assert!(
        out.contains("allow rule \"readers\"") && out.contains("never admits anyone"),
        "{out}"
    );
    assert!(!out.contains("\"everyone\""), "{out}");
}
