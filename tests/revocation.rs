//! CRLs made by real tools — `openssl ca -gencrl` and `portcullis cert
//! revoke` — enforced on live sidecars: revoked clients and servers are
//! refused, unrevoked ones pass, a CRL with a bad signature is refused at
//! load, unknown status fails closed (or open, counted), and an open
//! connection is cut when a reloaded CRL revokes its peer.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use portcullis::identity::TrustDomain;
use portcullis::pki::Ca;
use portcullis::sidecar::{Sidecar, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";
const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn portcullis(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// A server sidecar with `revocation.crls: [crl]` and the `revocation`
/// lines `more`; `extra` goes in before the revocation section.
async fn server_with_crl(pki: &Pki, crl: &str, extra: &str, more: &str) -> Sidecar {
    let app = echo_app().await;
    pki.svid("srv", SERVER_ID);
    start(pki.config(
        "srv.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n{extra}\
             revocation:\n  crls: [{crl}]\n{more}\
             reload:\n  debounce: 50ms\n  interval: 1h\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("server: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_ca_crl_refuses_the_revoked_client_only() {
    if !have_tool(
        "openssl",
        "an_openssl_ca_crl_refuses_the_revoked_client_only",
    ) {
        return;
    }
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("good", CLIENT_ID);
    pki.svid("bad", "spiffe://prod.example.org/ns/web/sa/stolen");
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "bad.pem"]);
    openssl(d, &["ca", "-config", "ca.cnf", "-gencrl", "-out", "ca.crl"]);

    let server = server_with_crl(&pki, "ca.crl", "", "").await;
    let addr = server.inbound_addr("orders").unwrap();
    assert!(
        echoes(&pki, "good", SERVER_ID, addr).await,
        "an unrevoked client passes"
    );
    assert!(
        !echoes(&pki, "bad", SERVER_ID, addr).await,
        "a revoked client is refused"
    );
    wait_metric(
        &server,
        "portcullis_tls_handshakes_total",
        &[("result", "revoked")],
        1.0,
    )
    .await;
    let m = server.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "crl"), ("result", "revoked")]
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "crl"), ("result", "good")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(metric(&m, "portcullis_crl_entries", &[]), Some(1.0));
    let next = metric(&m, "portcullis_crl_next_update_timestamp_seconds", &[]).unwrap();
    assert!(next > portcullis::clock::unix_now() as f64 + 6.0 * 86400.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portcullis_crl_refuses_a_revoked_server() {
    let pki = Pki::new();
    let d = pki.dir.path();
    std::fs::write(d.join("ca.pem"), pki.ca.cert_pem()).unwrap();
    std::fs::write(d.join("ca-key.pem"), pki.ca.key_pem()).unwrap();
    let app = echo_app().await;
    let server = server_sidecar(&pki, "orders", SERVER_ID, app).await;
    // Revoke the server's SVID with `portcullis cert revoke`.
    let o = portcullis(
        d,
        &[
            "cert",
            "revoke",
            "--cert",
            "orders-svid.pem",
            "--crl",
            "ca.crl",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pki.svid("cli", CLIENT_ID);
    let client = start(pki.config(
        "cli.yaml",
        &format!(
            "identity:\n  cert: cli.pem\n  key: cli-key.pem\n  trust_bundle: bundle.pem\nrevocation:\n  crls: [ca.crl]\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n    identity: {SERVER_ID}\nadmin:\n  listen: 127.0.0.1:0\n",
            server.inbound_addr("orders").unwrap()
        ),
    ))
    .await
    .unwrap();
    let back = round_trip(client.outbound_addr("orders").unwrap(), b"hello").await;
    assert!(
        back.map(|b| b.is_empty()).unwrap_or(true),
        "a revoked server is refused"
    );
    wait_metric(
        &client,
        "portcullis_tls_handshakes_total",
        &[("direction", "outbound"), ("result", "revoked")],
        1.0,
    )
    .await;
}

#[test]
fn a_crl_with_a_bad_signature_is_refused_at_load() {
    let pki = Pki::new();
    let d = pki.dir.path();
    pki.svid("srv", SERVER_ID);
    // Same issuer name, different key: the signature cannot verify.
    let impostor = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY).unwrap();
    std::fs::write(d.join("forged.crl"), impostor.crl(&[], 1, DAY).unwrap()).unwrap();
    std::fs::write(
        d.join("portcullis.yaml"),
        "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\nrevocation:\n  crls: [forged.crl]\n\
         inbound:\n  - name: orders\n    listen: 127.0.0.1:15006\n    forward: 127.0.0.1:8080\n",
    )
    .unwrap();
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("forged.crl: CRL signature does not verify"),
        "{err}"
    );
    // A good one passes.
    std::fs::write(d.join("forged.crl"), pki.ca.crl(&[], 1, DAY).unwrap()).unwrap();
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_status_fails_closed_by_default_and_open_on_request() {
    let pki = Pki::new();
    std::fs::write(pki.path("ca.crl"), pki.ca.crl(&[], 1, DAY).unwrap()).unwrap();
    // A federated partner whose CA has no CRL here: status unknown.
    let partner = Ca::generate(&TrustDomain::parse("partner.example.com").unwrap(), DAY).unwrap();
    std::fs::write(pki.path("partner.pem"), partner.cert_pem()).unwrap();
    pki.write(
        "partner-peer",
        &partner
            .issue_svid(&id("spiffe://partner.example.com/billing"), DAY)
            .unwrap(),
    );
    pki.svid("good", CLIENT_ID);
    let federation = "  trust_bundles:\n    partner.example.com: partner.pem\n";

    let closed = server_with_crl(&pki, "ca.crl", federation, "").await;
    let addr = closed.inbound_addr("orders").unwrap();
    assert!(echoes(&pki, "good", SERVER_ID, addr).await);
    assert!(
        !echoes(&pki, "partner-peer", SERVER_ID, addr).await,
        "unknown status fails closed"
    );
    wait_metric(
        &closed,
        "portcullis_tls_handshakes_total",
        &[("result", "revocation_unknown")],
        1.0,
    )
    .await;

    let app = echo_app().await;
    let open = start(pki.config(
        "open.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n{federation}\
             revocation:\n  crls: [ca.crl]\n  failure: open\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    assert!(
        echoes(
            &pki,
            "partner-peer",
            SERVER_ID,
            open.inbound_addr("orders").unwrap()
        )
        .await,
        "failure: open admits"
    );
    wait_metric(
        &open,
        "portcullis_revocation_checks_total",
        &[("method", "crl"), ("result", "unknown")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_is_cut_when_a_new_crl_revokes_its_peer() {
    let pki = Pki::new();
    let d = pki.dir.path();
    std::fs::write(d.join("ca.pem"), pki.ca.cert_pem()).unwrap();
    std::fs::write(d.join("ca-key.pem"), pki.ca.key_pem()).unwrap();
    std::fs::write(pki.path("ca.crl"), pki.ca.crl(&[], 1, DAY).unwrap()).unwrap();
    pki.svid("victim", CLIENT_ID);
    pki.svid("bystander", "spiffe://prod.example.org/ns/web/sa/other");
    let server = server_with_crl(&pki, "ca.crl", "", "").await;
    let addr = server.inbound_addr("orders").unwrap();
    let mut victim = tls_connect(addr, pki.client_tls("victim", SERVER_ID))
        .await
        .unwrap();
    let mut bystander = tls_connect(addr, pki.client_tls("bystander", SERVER_ID))
        .await
        .unwrap();
    let mut b = [0u8; 2];
    for c in [&mut victim, &mut bystander] {
        c.write_all(b"hi").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
    }

    let o = portcullis(
        d,
        &["cert", "revoke", "--cert", "victim.pem", "--crl", "ca.crl"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), victim.read_to_end(&mut rest))
        .await
        .expect("the revoked peer's connection must be cut")
        .ok();
    wait_metric(
        &server,
        "portcullis_revoked_connections_closed_total",
        &[],
        1.0,
    )
    .await;
    wait_metric(
        &server,
        "portcullis_connections_closed_total",
        &[("reason", "revoked")],
        1.0,
    )
    .await;
    bystander.write_all(b"ok").await.unwrap();
    bystander.read_exact(&mut b).await.unwrap();
    assert!(
        !echoes(&pki, "victim", SERVER_ID, addr).await,
        "and new connections are refused"
    );
    let m = server.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_cert_reloads_total",
            &[("kind", "bundle"), ("result", "success")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_are_fetched_from_distribution_points_when_asked() {
    let test = "crls_are_fetched_from_distribution_points_when_asked";
    if !have_tool("python3", test) {
        return;
    }
    let pki = Pki::new();
    // A plain HTTP server publishing the CA's CRL, as a CA would.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = pki.path("www");
    std::fs::create_dir_all(&publish).unwrap();
    let _web = tokio::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&publish)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/ca.crl");
    pki.svid("good", CLIENT_ID);
    pki.svid("bad", "spiffe://prod.example.org/ns/web/sa/stolen");
    let bad_serial = portcullis::identity::check_leaf(
        &<rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_file(
            pki.path("bad.pem"),
        )
        .unwrap(),
        None,
    )
    .unwrap()
    .serial;
    let entry = portcullis::pki::RevokedEntry {
        serial: bad_serial,
        revoked_at: time::OffsetDateTime::now_utc(),
    };
    std::fs::write(
        publish.join("ca.crl"),
        pki.ca.crl(&[entry], 1, DAY).unwrap(),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the CRL to be published",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                .then_some(())
        },
    )
    .await;

    // The server's own SVID names the distribution point.
    let mut spec = portcullis::pki::LeafSpec::svid(&id(SERVER_ID), DAY);
    spec.crl_distribution_points = vec![url.clone()];
    pki.issue("srv", &spec);
    let app = echo_app().await;
    let server = start(pki.config(
        "srv.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  fetch_distribution_points: true\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    wait_metric(&server, "portcullis_crl_entries", &[], 1.0).await;
    let addr = server.inbound_addr("orders").unwrap();
    assert!(echoes(&pki, "good", SERVER_ID, addr).await);
    assert!(!echoes(&pki, "bad", SERVER_ID, addr).await);
    wait_metric(
        &server,
        "portcullis_tls_handshakes_total",
        &[("result", "revoked")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_crl_means_unknown_unless_told_to_ignore_it() {
    let pki = Pki::new();
    let now = time::OffsetDateTime::now_utc();
    let stale = pki.ca.crl_at(&[], 1, now - DAY * 2, now - DAY).unwrap();
    std::fs::write(pki.path("ca.crl"), stale).unwrap();
    pki.svid("good", CLIENT_ID);
    let strict = server_with_crl(&pki, "ca.crl", "", "").await;
    assert!(
        !echoes(
            &pki,
            "good",
            SERVER_ID,
            strict.inbound_addr("orders").unwrap()
        )
        .await,
        "expired CRL: unknown, refused"
    );
    wait_metric(
        &strict,
        "portcullis_tls_handshakes_total",
        &[("result", "revocation_unknown")],
        1.0,
    )
    .await;

    let app = echo_app().await;
    let lenient = start(pki.config(
        "lenient.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  crls: [ca.crl]\n  expired_crl: ignore\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    assert!(
        echoes(
            &pki,
            "good",
            SERVER_ID,
            lenient.inbound_addr("orders").unwrap()
        )
        .await,
        "expired_crl: ignore"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_checking_sees_a_revoked_intermediate_and_leaf_checking_does_not() {
    let pki = Pki::new();
    let inter = pki.ca.intermediate(DAY).unwrap();
    // The root revokes the intermediate; the intermediate revokes nothing.
    let inter_serial = portcullis::tls::load_bundle(
        &{
            let p = pki.path("inter.pem");
            std::fs::write(&p, inter.cert_pem()).unwrap();
            p
        },
        &TrustDomain::parse(TD).unwrap(),
    )
    .unwrap()
    .roots[0]
        .serial
        .clone();
    let entry = portcullis::pki::RevokedEntry {
        serial: inter_serial,
        revoked_at: time::OffsetDateTime::now_utc(),
    };
    std::fs::write(pki.path("root.crl"), pki.ca.crl(&[entry], 1, DAY).unwrap()).unwrap();
    std::fs::write(pki.path("inter.crl"), inter.crl(&[], 1, DAY).unwrap()).unwrap();
    pki.write("peer", &inter.issue_svid(&id(CLIENT_ID), DAY).unwrap());

    let chain = server_with_crl(
        &pki,
        "root.crl, inter.crl",
        "",
        "  intermediates: inter.pem\n",
    )
    .await;
    assert!(
        !echoes(
            &pki,
            "peer",
            SERVER_ID,
            chain.inbound_addr("orders").unwrap()
        )
        .await,
        "check: chain"
    );
    wait_metric(
        &chain,
        "portcullis_tls_handshakes_total",
        &[("result", "revoked")],
        1.0,
    )
    .await;

    let app = echo_app().await;
    let leaf_only = start(pki.config(
        "leaf.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  crls: [root.crl, inter.crl]\n  intermediates: inter.pem\n  check: leaf\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    assert!(
        echoes(
            &pki,
            "peer",
            SERVER_ID,
            leaf_only.inbound_addr("orders").unwrap()
        )
        .await,
        "check: leaf"
    );
}

/// Lists portcullis cannot use say why, in words an operator can act on:
/// a version 1 CRL (what `openssl ca -gencrl` writes when its config has
/// no `crlnumber`), a delta CRL, an indirect CRL. Each made by openssl.
#[test]
fn crls_that_cannot_be_used_are_refused_with_the_reason() {
    if !have_tool(
        "openssl",
        "crls_that_cannot_be_used_are_refused_with_the_reason",
    ) {
        return;
    }
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("srv", SERVER_ID);
    let cnf = std::fs::read_to_string(d.join("ca.cnf")).unwrap();
    std::fs::write(
        d.join("ca.cnf"),
        format!(
            "{cnf}[ delta ]\n2.5.29.27 = critical,ASN1:INTEGER:1\n\
             [ indirect ]\nissuingDistributionPoint = critical, @idp\n[ idp ]\nindirectCRL = TRUE\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("v1.cnf"),
        cnf.replace("crlnumber = ./crlnumber\n", ""),
    )
    .unwrap();
    openssl(d, &["ca", "-config", "v1.cnf", "-gencrl", "-out", "v1.crl"]);
    openssl(
        d,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-gencrl",
            "-crlexts",
            "delta",
            "-out",
            "delta.crl",
        ],
    );
    openssl(
        d,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-gencrl",
            "-crlexts",
            "indirect",
            "-out",
            "indirect.crl",
        ],
    );
    openssl(
        d,
        &["ca", "-config", "ca.cnf", "-gencrl", "-out", "good.crl"],
    );
    for (crl, reason) in [
        ("v1.crl", "version 1 CRL"),
        ("v1.crl", "set `crlnumber`"),
        ("delta.crl", "delta CRLs are not supported"),
        ("indirect.crl", "indirect CRLs"),
    ] {
        std::fs::write(
            d.join("portcullis.yaml"),
            format!(
                "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\nrevocation:\n  crls: [{crl}]\n\
                 inbound:\n  - name: orders\n    listen: 127.0.0.1:15006\n    forward: 127.0.0.1:8080\n"
            ),
        )
        .unwrap();
        let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{crl}: {err}");
        assert!(err.contains(crl) && err.contains(reason), "{crl}: {err}");
    }
    std::fs::write(
        d.join("portcullis.yaml"),
        "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\nrevocation:\n  crls: [good.crl]\n\
         inbound:\n  - name: orders\n    listen: 127.0.0.1:15006\n    forward: 127.0.0.1:8080\n",
    )
    .unwrap();
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A bad CRL is refused on every trigger until it is fixed, but said once
/// per change: the periodic re-read, each file event and each
/// `POST /reload` find the same file, and a log line per attempt would
/// bury the one that matters. The metric counts every attempt, so an
/// alert on it keeps firing while the file is bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_crl_is_reported_once_per_change() {
    let pki = Pki::new();
    let d = pki.dir.path();
    pki.svid("srv", SERVER_ID);
    std::fs::write(d.join("ca.crl"), pki.ca.crl(&[], 1, DAY).unwrap()).unwrap();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        d.join("portcullis.yaml"),
        format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  crls: [ca.crl]\nreload:\n  watch: false\n  interval: 1h\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: 127.0.0.1:9\n\
             admin:\n  listen: 127.0.0.1:{admin_port}\nlog:\n  format: json\n"
        ),
    )
    .unwrap();
    let log_path = d.join("sidecar.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .current_dir(d)
        .args(["run", "--config", "portcullis.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_for(
        Duration::from_secs(20),
        "the sidecar to be ready",
        || async { matches!(http_get(admin, "/ready").await, Ok((200, _))).then_some(()) },
    )
    .await;
    let reload = || async {
        let reply = raw(
            admin,
            format!("POST /reload HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(
            reply.contains("error"),
            "the bad CRL was not refused: {reply}"
        );
    };
    let refusals = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .filter(|l| l.contains("refused") && l.contains("ca.crl"))
            .count()
    };
    let wait_refusals = |n: usize| async move {
        wait_for(
            Duration::from_secs(10),
            "the refusal to be logged",
            || async { (refusals() >= n).then_some(()) },
        )
        .await;
    };

    // Forged: same issuer name, another key.
    let impostor = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY).unwrap();
    std::fs::write(d.join("ca.crl"), impostor.crl(&[], 2, DAY).unwrap()).unwrap();
    for _ in 0..4 {
        reload().await;
    }
    wait_refusals(1).await;
    // Another bad file: news again.
    std::fs::write(d.join("ca.crl"), "not a CRL").unwrap();
    for _ in 0..3 {
        reload().await;
    }
    wait_refusals(2).await;
    assert_eq!(
        refusals(),
        2,
        "{}",
        std::fs::read_to_string(&log_path).unwrap()
    );
    let (_, m) = http_get(admin, "/metrics").await.unwrap();
    assert_eq!(
        metric(
            &m,
            "portcullis_cert_reloads_total",
            &[("kind", "crl"), ("result", "error")]
        ),
        Some(7.0),
        "every attempt counts"
    );
    let _ = child.kill().await;
}

/// A CA rotation with revocation on: two CAs with one name in the bundle,
/// each with its own CRL in the CRL file. webpki takes the first list
/// whose issuer *name* matches, so before the fix every certificate of the
/// second CA was checked against the first CA's list and refused (found by
/// tests/soak.rs). Now each CA's certificates answer to its own list: the
/// good ones of both are admitted, the revoked one of each refused.
#[test]
fn two_cas_of_one_name_each_answer_to_their_own_crl() {
    use portcullis::identity::Role;
    use portcullis::pki::RevokedEntry;
    use portcullis::revocation::{CrlTrust, load_crls};
    use portcullis::tls::{SvidVerifier, TrustStore, load_bundle};
    let pki = Pki::new();
    let td = TrustDomain::parse(TD).unwrap();
    let ca2 = Ca::generate(&td, DAY).unwrap();
    let d = pki.dir.path();
    std::fs::write(
        d.join("both.pem"),
        format!("{}{}", pki.ca.cert_pem(), ca2.cert_pem()),
    )
    .unwrap();
    let peer = |ca: &Ca| {
        ca.issue_svid(&id("spiffe://prod.example.org/ns/web/sa/frontend"), DAY)
            .unwrap()
    };
    let (good1, bad1, good2, bad2) = (peer(&pki.ca), peer(&pki.ca), peer(&ca2), peer(&ca2));
    let revoke = |ca: &Ca, who: &portcullis::pki::Issued| {
        let e = RevokedEntry {
            serial: who.serial.clone(),
            revoked_at: time::OffsetDateTime::now_utc() - Duration::from_secs(60),
        };
        ca.crl(&[e], 1, Duration::from_secs(3600)).unwrap()
    };
    std::fs::write(
        d.join("both.crl"),
        format!("{}{}", revoke(&pki.ca, &bad1), revoke(&ca2, &bad2)),
    )
    .unwrap();
    let bundle = load_bundle(&d.join("both.pem"), &td).unwrap();
    let roots: Vec<_> = bundle.certs.iter().collect();
    let policy = portcullis::config::RevocationPolicy {
        whole_chain: true,
        expired_is_unknown: true,
        fail_open: false,
        fetch_distribution_points: false,
    };
    let crls = load_crls(
        &[d.join("both.crl")],
        &[],
        &CrlTrust {
            roots: &roots,
            intermediates: &[],
            in_force: None,
        },
        policy,
    )
    .unwrap();
    assert!(crls.has_namesakes());
    let v = SvidVerifier::new(std::sync::Arc::new(
        TrustStore::new([bundle]).with_revocation(crls),
    ));
    let check = |who: &portcullis::pki::Issued| {
        v.verify(
            &who.der,
            &[],
            rustls_pki_types::UnixTime::now(),
            Role::Client,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert_eq!(check(&good1), Ok(()), "a good certificate of the first CA");
    assert_eq!(check(&good2), Ok(()), "a good certificate of the second CA");
    assert!(
        check(&bad1).unwrap_err().to_lowercase().contains("revoked"),
        "{:?}",
        check(&bad1)
    );
    assert!(
        check(&bad2).unwrap_err().to_lowercase().contains("revoked"),
        "{:?}",
        check(&bad2)
    );
}
