//! Certificates and trust bundles swapped live: SVID rotation and a full CA
//! rotation under continuous traffic with zero failed connections, refused
//! half-written or mismatched pairs, Kubernetes Secret symlink swaps,
//! expiry metrics that follow rotation, federation, readiness on expiry,
//! and connection deadlines.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use portcullis::identity::TrustDomain;
use portcullis::pki::{Ca, Issued, LeafSpec};
use portcullis::sidecar::{Sidecar, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

/// Writes like an issuer does: a temporary file, then a rename.
fn atomic_write(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Installs `issued` as `<name>.pem` / `<name>-key.pem`: key first, then
/// the certificate, so the sidecar sees a moment of mismatch.
fn install(pki: &Pki, name: &str, issued: &Issued) {
    atomic_write(&pki.path(&format!("{name}-key.pem")), &issued.key_pem);
    std::thread::sleep(Duration::from_millis(30));
    atomic_write(&pki.path(&format!("{name}.pem")), &issued.cert_pem);
}

fn sidecar_yaml(name: &str, body: &str, extra: &str) -> String {
    format!(
        "identity:\n  cert: {name}.pem\n  key: {name}-key.pem\n  trust_bundle: bundle.pem\n{extra}{body}admin:\n  listen: 127.0.0.1:0\n"
    )
}

async fn serial_served(s: &Sidecar, serial: &str) -> bool {
    let m = s.metrics().encode();
    metric(
        &m,
        "portcullis_cert_expiration_timestamp_seconds",
        &[("kind", "leaf"), ("serial", serial)],
    )
    .is_some()
}

async fn wait_serial(s: &Sidecar, serial: &str) {
    wait_for(
        Duration::from_secs(15),
        &format!("serial {serial} in use"),
        || async { serial_served(s, serial).await.then_some(()) },
    )
    .await
}

async fn wait_roots(s: &Sidecar, serials: &[&str]) {
    wait_for(
        Duration::from_secs(15),
        &format!("roots {serials:?}"),
        || async {
            let m = s.metrics().encode();
            let roots: Vec<&str> = m
                .lines()
                .filter(|l| {
                    l.starts_with("portcullis_cert_expiration_timestamp_seconds{kind=\"root\"")
                })
                .collect();
            (roots.len() == serials.len()
                && serials.iter().all(|sn| {
                    roots
                        .iter()
                        .any(|l| l.contains(&format!("serial=\"{sn}\"")))
                }))
            .then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svid_and_ca_rotation_under_traffic_drop_nothing() {
    let pki = Pki::new();
    let ca1_serial = {
        let info =
            portcullis::tls::load_bundle(&pki.bundle(), &TrustDomain::parse(TD).unwrap()).unwrap();
        info.roots[0].serial.clone()
    };
    let app = echo_app().await;
    let reload = "reload:\n  debounce: 50ms\n  interval: 1h\n";
    pki.svid("srv", SERVER_ID);
    let server = start(pki.config(
        "srv.yaml",
        &sidecar_yaml(
            "srv",
            &format!("inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n"),
            reload,
        ),
    ))
    .await
    .unwrap();
    let inbound = server.inbound_addr("orders").unwrap();
    pki.svid("cli", CLIENT_ID);
    let client = start(pki.config(
        "cli.yaml",
        &sidecar_yaml(
            "cli",
            &format!("outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{inbound}]\n    identity: {SERVER_ID}\n"),
            reload,
        ),
    ))
    .await
    .unwrap();
    let outbound = client.outbound_addr("orders").unwrap();

    // Continuous traffic: a new connection through both sidecars each time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let msg = format!("request {i}");
                match round_trip(outbound, msg.as_bytes()).await {
                    Ok(back) if back == msg.as_bytes() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let wait_traffic = |n: u64| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + n;
            wait_for(Duration::from_secs(20), "traffic to flow", || async {
                (ok.load(Ordering::Relaxed) >= target).then_some(())
            })
            .await
        }
    };
    wait_traffic(5).await;

    // The server's SVID is reissued three times.
    let first_serial = server
        .control()
        .tls
        .identity()
        .current()
        .leaf
        .serial
        .clone();
    let mut last_serial = first_serial.clone();
    for _ in 0..3 {
        let next = pki.ca.issue_svid(&id(SERVER_ID), DAY).unwrap();
        install(&pki, "srv", &next);
        wait_serial(&server, &next.serial).await;
        last_serial = next.serial.clone();
        wait_traffic(5).await;
    }
    // Old leaf series are gone; the new one is there.
    let m = server.metrics().encode();
    assert!(
        !m.contains(&format!("serial=\"{first_serial}\"")),
        "old leaf series must be removed"
    );
    assert!(serial_served(&server, &last_serial).await);

    // CA rotation. 1: both sidecars trust old and new CA.
    let ca2 = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY).unwrap();
    let ca2_serial = {
        let p = pki.path("ca2.pem");
        std::fs::write(&p, ca2.cert_pem()).unwrap();
        portcullis::tls::load_bundle(&p, &TrustDomain::parse(TD).unwrap())
            .unwrap()
            .roots[0]
            .serial
            .clone()
    };
    atomic_write(
        &pki.bundle(),
        &format!("{}{}", pki.ca.cert_pem(), ca2.cert_pem()),
    );
    wait_roots(&server, &[&ca1_serial, &ca2_serial]).await;
    wait_roots(&client, &[&ca1_serial, &ca2_serial]).await;
    wait_traffic(5).await;
    // 2: SVIDs are reissued from the new CA.
    let srv2 = ca2.issue_svid(&id(SERVER_ID), DAY).unwrap();
    install(&pki, "srv", &srv2);
    wait_serial(&server, &srv2.serial).await;
    wait_traffic(5).await;
    let cli2 = ca2.issue_svid(&id(CLIENT_ID), DAY).unwrap();
    install(&pki, "cli", &cli2);
    wait_serial(&client, &cli2.serial).await;
    wait_traffic(5).await;
    // 3: the old CA is removed.
    atomic_write(&pki.bundle(), ca2.cert_pem());
    wait_roots(&server, &[&ca2_serial]).await;
    wait_roots(&client, &[&ca2_serial]).await;
    wait_traffic(10).await;

    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no connection may fail during rotation"
    );
    assert!(ok.load(Ordering::Relaxed) >= 45);
    let m = server.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_cert_reloads_total",
            &[("kind", "identity"), ("result", "success")]
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_cert_reloads_total",
            &[("kind", "bundle"), ("result", "success")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_cert_reloads_total",
            &[("kind", "identity"), ("result", "error")]
        ),
        Some(0.0)
    );
    // The old CA's series is gone too.
    assert!(!m.contains(&format!("serial=\"{ca1_serial}\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pairs_are_refused_and_the_old_identity_keeps_serving() {
    let pki = Pki::new();
    pki.svid("peer", CLIENT_ID);
    let app = echo_app().await;
    pki.svid("srv", SERVER_ID);
    let server = start(
        pki.config(
            "srv.yaml",
            &sidecar_yaml(
                "srv",
                &format!(
                    "inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n"
                ),
                "reload:\n  watch: false\n  interval: 1h\n",
            )
            .replace(
                "  trust_bundle: bundle.pem\n",
                "  trust_bundle: bundle.pem\n  key_pair_grace: 300ms\n",
            ),
        ),
    )
    .await
    .unwrap();
    let addr = server.inbound_addr("orders").unwrap();
    let original = server
        .control()
        .tls
        .identity()
        .current()
        .leaf
        .serial
        .clone();

    // A new certificate whose key never arrives: pending, then an error.
    let next = pki.ca.issue_svid(&id(SERVER_ID), DAY).unwrap();
    atomic_write(&pki.path("srv.pem"), &next.cert_pem);
    let (status, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["identity"]["result"], "pending", "{reply}");
    wait_metric(
        &server,
        "portcullis_cert_reloads_total",
        &[("kind", "identity"), ("result", "error")],
        1.0,
    )
    .await;
    let (status, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["identity"]["error"]
            .as_str()
            .unwrap()
            .contains("private key does not match"),
        "{reply}"
    );
    assert!(
        echoes(&pki, "peer", SERVER_ID, addr).await,
        "the old identity keeps serving"
    );
    assert!(serial_served(&server, &original).await);

    // Half a certificate: refused with the file and the reason.
    let half = &next.cert_pem[..next.cert_pem.len() / 2];
    atomic_write(&pki.path("srv.pem"), half);
    let (status, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 400, "{reply}");
    let err = reply["identity"]["error"].as_str().unwrap();
    assert!(err.contains("srv.pem"), "{err}");
    assert!(echoes(&pki, "peer", SERVER_ID, addr).await);
    assert_eq!(
        server.control().tls.identity().current().leaf.serial,
        original
    );

    // An expired certificate with its key: refused.
    let mut spec = LeafSpec::svid(&id(SERVER_ID), DAY);
    spec.not_before = time::OffsetDateTime::now_utc() - DAY * 2;
    spec.not_after = time::OffsetDateTime::now_utc() - DAY;
    let expired = pki.ca.issue(&spec).unwrap();
    install(&pki, "srv", &expired);
    let (status, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["identity"]["error"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{reply}"
    );

    // An SVID from a CA outside the bundle: refused.
    let stranger = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY)
        .unwrap()
        .issue_svid(&id(SERVER_ID), DAY)
        .unwrap();
    install(&pki, "srv", &stranger);
    let (status, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["identity"]["error"]
            .as_str()
            .unwrap()
            .contains("does not verify against the trust bundle"),
        "{reply}"
    );
    assert!(echoes(&pki, "peer", SERVER_ID, addr).await);

    // Finally a good pair goes in.
    install(&pki, "srv", &next);
    let (status, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["identity"]["result"], "success");
    assert_eq!(reply["identity"]["serial"], next.serial.as_str());
    assert!(echoes(&pki, "peer", SERVER_ID, addr).await);
    let (_, certs) = http_get(server.admin_addr(), "/certs").await.unwrap();
    assert!(certs.contains(&next.serial) && !certs.contains(&original));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_secret_symlink_swap_rotates_the_svid() {
    let pki = Pki::new();
    pki.svid("peer", CLIENT_ID);
    let app = echo_app().await;
    let secret = pki.path("secret");
    let write_version = |v: &str, issued: &Issued| {
        let dir = secret.join(v);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &issued.key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), pki.ca.cert_pem()).unwrap();
    };
    let first = pki.ca.issue_svid(&id(SERVER_ID), DAY).unwrap();
    write_version("..v1", &first);
    std::os::unix::fs::symlink("..v1", secret.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f)).unwrap();
    }
    let server = start(pki.config(
        "srv.yaml",
        &format!(
            "identity:\n  cert: secret/tls.crt\n  key: secret/tls.key\n  trust_bundle: secret/ca.crt\n\
             reload:\n  debounce: 50ms\n  interval: 1h\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    assert!(serial_served(&server, &first.serial).await);

    let second = pki.ca.issue_svid(&id(SERVER_ID), DAY).unwrap();
    write_version("..v2", &second);
    std::os::unix::fs::symlink("..v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    std::fs::remove_dir_all(secret.join("..v1")).unwrap();
    wait_serial(&server, &second.serial).await;
    assert!(!serial_served(&server, &first.serial).await);
    assert!(
        echoes(
            &pki,
            "peer",
            SERVER_ID,
            server.inbound_addr("orders").unwrap()
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_peers_are_verified_against_their_own_bundle() {
    let pki = Pki::new();
    let app = echo_app().await;
    let partner_td = TrustDomain::parse("partner.example.com").unwrap();
    let partner = Ca::generate(&partner_td, DAY).unwrap();
    std::fs::write(pki.path("partner.pem"), partner.cert_pem()).unwrap();
    pki.svid("srv", SERVER_ID);
    let server = start(pki.config(
        "srv.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n  trust_bundles:\n    partner.example.com: partner.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let addr = server.inbound_addr("orders").unwrap();
    // A partner workload with a partner-issued SVID: accepted.
    let p = partner
        .issue_svid(&id("spiffe://partner.example.com/billing"), DAY)
        .unwrap();
    pki.write("partner-peer", &p);
    assert!(echoes(&pki, "partner-peer", SERVER_ID, addr).await);
    // A partner ID signed by *our* CA: refused, only partner roots count for it.
    pki.svid("forged", "spiffe://partner.example.com/billing");
    assert!(!echoes(&pki, "forged", SERVER_ID, addr).await);
    wait_metric(
        &server,
        "portcullis_tls_handshakes_total",
        &[("result", "unknown_ca")],
        1.0,
    )
    .await;
    let (_, certs) = http_get(server.admin_addr(), "/certs").await.unwrap();
    assert!(certs.contains("partner.example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_at_peer_expiry_or_max_lifetime_when_configured() {
    let pki = Pki::new();
    let app = echo_app().await;
    pki.svid("srv", SERVER_ID);
    pki.svid("peer", CLIENT_ID);
    let mut spec = LeafSpec::svid(&id(CLIENT_ID), DAY);
    spec.not_after = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    pki.issue("short", &spec);
    let server = start(pki.config(
        "srv.yaml",
        &sidecar_yaml(
            "srv",
            &format!("inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n"),
            "connections:\n  close_on_peer_expiry: true\n  max_lifetime: 1h\n",
        ),
    ))
    .await
    .unwrap();
    let addr = server.inbound_addr("orders").unwrap();
    let mut short = tls_connect(addr, pki.client_tls("short", SERVER_ID))
        .await
        .unwrap();
    let mut long = tls_connect(addr, pki.client_tls("peer", SERVER_ID))
        .await
        .unwrap();
    let mut b = [0u8; 2];
    for c in [&mut short, &mut long] {
        c.write_all(b"hi").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
    }
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), short.read_to_end(&mut rest))
        .await
        .expect("the connection must end when the peer certificate expires")
        .ok();
    wait_metric(
        &server,
        "portcullis_connections_closed_total",
        &[("reason", "peer_expired")],
        1.0,
    )
    .await;
    long.write_all(b"ok").await.unwrap();
    long.read_exact(&mut b).await.unwrap();

    let short_lived = start(pki.config(
        "srv2.yaml",
        &sidecar_yaml(
            "srv",
            &format!("inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n"),
            "connections:\n  max_lifetime: 300ms\n",
        ),
    ))
    .await
    .unwrap();
    let mut c = tls_connect(
        short_lived.inbound_addr("orders").unwrap(),
        pki.client_tls("peer", SERVER_ID),
    )
    .await
    .unwrap();
    c.write_all(b"hi").await.unwrap();
    c.read_exact(&mut b).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
        .await
        .expect("the connection must end at its maximum lifetime")
        .ok();
    wait_metric(
        &short_lived,
        "portcullis_connections_closed_total",
        &[("reason", "max_lifetime")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_false_when_our_svid_expires() {
    let pki = Pki::new();
    let app = echo_app().await;
    let mut spec = LeafSpec::svid(&id(SERVER_ID), DAY);
    spec.not_after = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    pki.issue("srv", &spec);
    let server = start(pki.config(
        "srv.yaml",
        &sidecar_yaml(
            "srv",
            &format!("inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n"),
            "",
        ),
    ))
    .await
    .unwrap();
    assert_eq!(
        http_get(server.admin_addr(), "/ready").await.unwrap().0,
        200
    );
    wait_for(
        Duration::from_secs(20),
        "/ready to turn 503 after expiry",
        || async {
            matches!(http_get(server.admin_addr(), "/ready").await, Ok((503, _))).then_some(())
        },
    )
    .await;
    // A fresh SVID brings it back.
    pki.svid("srv", SERVER_ID);
    let (status, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        http_get(server.admin_addr(), "/ready").await.unwrap().0,
        200
    );
}

/// A TLS 1.3 session carries the certificates of the handshake that made
/// it, and each resumption hands out new tickets for it: a session that
/// survived a rotation would keep showing peers our old SVID, or keep
/// admitting a peer under trust that has since changed, for as long as
/// traffic flows. Sessions are resumed (that is what makes reconnecting
/// cheap), but never across a change of our SVID or of the bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_is_resumed_across_an_svid_or_bundle_change() {
    use rustls::HandshakeKind;
    let pki = Pki::new();
    pki.svid("peer", CLIENT_ID);
    pki.svid("srv", SERVER_ID);
    let app = echo_app().await;
    let server = start(pki.config(
        "srv.yaml",
        &sidecar_yaml(
            "srv",
            &format!("inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n"),
            "reload:\n  debounce: 50ms\n  interval: 1h\n",
        ),
    ))
    .await
    .unwrap();
    let addr = server.inbound_addr("orders").unwrap();
    // One client config, so one session store across the connections.
    let client = pki.client_tls("peer", SERVER_ID);
    // (how the handshake went, the serial of the leaf the server showed)
    let connect = || async {
        let mut s = tls_connect(addr, client.clone()).await.unwrap();
        // A round trip, so the session tickets that follow the handshake
        // are read and stored.
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        let conn = s.get_ref().1;
        let leaf = conn.peer_certificates().unwrap()[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        (
            conn.handshake_kind().unwrap(),
            cert.raw_serial_as_string().replace(':', ""),
        )
    };
    let serial_of = |issued: &Issued| issued.serial.replace(':', "").to_ascii_lowercase();

    let (kind, _) = connect().await;
    assert_eq!(kind, HandshakeKind::Full);
    let (kind, _) = connect().await;
    assert_eq!(kind, HandshakeKind::Resumed, "resumption is on");

    let next = pki.ca.issue_svid(&id(SERVER_ID), DAY).unwrap();
    install(&pki, "srv", &next);
    wait_serial(&server, &next.serial).await;
    let (kind, serial) = connect().await;
    assert_eq!(
        kind,
        HandshakeKind::Full,
        "a session from before the rotation was resumed"
    );
    assert_eq!(serial.to_ascii_lowercase(), serial_of(&next));
    assert_eq!(connect().await.0, HandshakeKind::Resumed);

    // A second CA joins the bundle: what the old trust admitted is judged
    // again by a full handshake.
    let ca2 = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY).unwrap();
    atomic_write(
        &pki.bundle(),
        &format!("{}{}", pki.ca.cert_pem(), ca2.cert_pem()),
    );
    wait_for(Duration::from_secs(15), "the new bundle in use", || async {
        let m = server.metrics().encode();
        (m.matches("portcullis_cert_expiration_timestamp_seconds{kind=\"root\"")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(
        connect().await.0,
        HandshakeKind::Full,
        "a session from before the bundle change was resumed"
    );
}

/// A SPIFFE bundle (JWK Set, as SPIRE publishes it) in place of PEM, told
/// apart by content: its x509-svid authorities are the roots, jwt-svid
/// keys are skipped. `spiffe_sequence` only goes up: a bundle with a lower
/// one is an old bundle served again and is refused, as is a malformed
/// one, and the bundle in force keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_bundle_serves_as_trust_and_cannot_roll_back() {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    let pki = Pki::new();
    let der = |pem: &str| {
        base64::engine::general_purpose::STANDARD
            .encode(rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
    };
    let jwks = |cas: &[&str], seq: u64| {
        let keys: Vec<String> = cas
            .iter()
            .map(|pem| {
                format!(
                    r#"{{"use":"x509-svid","kty":"EC","crv":"P-256","x5c":["{}"]}}"#,
                    der(pem)
                )
            })
            .chain([
                r#"{"use":"jwt-svid","kty":"EC","crv":"P-256","kid":"j1","x":"AA","y":"AA"}"#
                    .to_string(),
            ])
            .collect();
        format!(
            r#"{{"keys":[{}],"spiffe_sequence":{seq},"spiffe_refresh_hint":300}}"#,
            keys.join(",")
        )
    };
    let ca1 = pki.ca.cert_pem().to_string();
    atomic_write(&pki.bundle(), &jwks(&[&ca1], 2));
    pki.svid("srv", SERVER_ID);
    pki.svid("peer", CLIENT_ID);
    let app = echo_app().await;
    let server = start(pki.config(
        "srv.yaml",
        &sidecar_yaml(
            "srv",
            &format!("inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n"),
            "reload:\n  watch: false\n  interval: 1h\n",
        ),
    ))
    .await
    .unwrap();
    let addr = server.inbound_addr("orders").unwrap();
    assert!(
        echoes(&pki, "peer", SERVER_ID, addr).await,
        "trust from the SPIFFE bundle"
    );
    // The peer's own TLS config, made while the file is still valid.
    let peer_tls = pki.client_tls("peer", SERVER_ID);
    let peer_echoes = || async {
        let mut s = tls_connect(addr, peer_tls.clone()).await.ok()?;
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        (s.read(&mut b).await.ok()? == 1).then_some(())
    };

    // Sequence 3 adds a second authority.
    let ca2 = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY).unwrap();
    atomic_write(&pki.bundle(), &jwks(&[&ca1, ca2.cert_pem()], 3));
    let (status, reply) = post_reload(server.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    let roots = |s: &Sidecar| {
        s.metrics()
            .encode()
            .lines()
            .filter(|l| l.starts_with("portcullis_cert_expiration_timestamp_seconds{kind=\"root\""))
            .count()
    };
    assert_eq!(roots(&server), 2);

    // Sequence 1 again: a rollback, refused; and a malformed bundle.
    for (text, why) in [
        (
            jwks(&[&ca1], 1),
            "spiffe_sequence went backwards (1 after 3)",
        ),
        (
            format!(
                r#"{{"keys":[{{"use":"x509-svid","x5c":["{}","{}"]}}],"spiffe_sequence":4}}"#,
                der(&ca1),
                der(&ca1)
            ),
            "exactly one certificate, not 2",
        ),
    ] {
        atomic_write(&pki.bundle(), &text);
        let (status, reply) = post_reload(server.admin_addr()).await;
        assert_eq!(status, 400, "{reply}");
        let err = reply.to_string();
        assert!(err.contains("bundle.pem") && err.contains(why), "{err}");
        assert_eq!(roots(&server), 2, "the bundle in force keeps serving");
        assert!(peer_echoes().await.is_some());
    }
}
