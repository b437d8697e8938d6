//! The OCSP core against a real `openssl ocsp` responder: requests it
//! understands, and responses we verify ourselves — good, revoked and
//! unknown answers; a responder that is down; a response signed by the
//! wrong key; a delegated responder, with and without id-kp-OCSPSigning;
//! and an expired response.

mod common;

use std::time::Duration;

use common::*;
use portcullis::identity::TrustDomain;
use portcullis::pki::{Ca, ExtendedKeyUsagePurpose, KeyUsagePurpose, LeafSpec};
use portcullis::revocation::ocsp::{self, OcspError, OcspStatus};

fn der(pki: &Pki, name: &str) -> Vec<u8> {
    let pem = std::fs::read(pki.path(name)).unwrap();
    <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(&pem)
        .unwrap()
        .to_vec()
}

async fn ask(url: &str, pki: &Pki, leaf: &str, now: i64) -> Result<ocsp::OcspAnswer, OcspError> {
    let (leaf, ca) = (der(pki, leaf), der(pki, "ca.pem"));
    let req = ocsp::request(&leaf, &ca)?;
    let resp = ocsp::query(url, req, Duration::from_secs(5)).await?;
    ocsp::verify(&resp, &leaf, &ca, now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_a_real_openssl_responder_are_verified() {
    if !have_tool(
        "openssl",
        "answers_from_a_real_openssl_responder_are_verified",
    ) {
        return;
    }
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("good", "spiffe://prod.example.org/ns/a/sa/good");
    pki.svid("revoked", "spiffe://prod.example.org/ns/a/sa/revoked");
    pki.svid("stranger", "spiffe://prod.example.org/ns/a/sa/stranger");
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "good.pem"]);
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "revoked.pem"]);
    let now = portcullis::clock::unix_now();

    let (_r, url) = responder(d, "ca.pem", "ca-key.pem").await;
    let good = ask(&url, &pki, "good.pem", now).await.unwrap();
    assert_eq!(good.status, OcspStatus::Good);
    assert!(good.next_update.unwrap() > now);
    assert_eq!(
        ask(&url, &pki, "revoked.pem", now).await.unwrap().status,
        OcspStatus::Revoked
    );
    assert_eq!(
        ask(&url, &pki, "stranger.pem", now).await.unwrap().status,
        OcspStatus::Unknown
    );
    // The same answer later than its nextUpdate is refused.
    assert_eq!(
        ask(&url, &pki, "good.pem", now + 86400).await,
        Err(OcspError::Expired)
    );

    // A responder that is down.
    let dead = format!(
        "http://{}/",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    );
    assert!(matches!(
        ask(&dead, &pki, "good.pem", now).await,
        Err(OcspError::Unreachable(_))
    ));

    // Signed by a key that is not the issuer's (same name, other CA).
    let impostor = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY).unwrap();
    std::fs::write(d.join("impostor.pem"), impostor.cert_pem()).unwrap();
    std::fs::write(d.join("impostor-key.pem"), impostor.key_pem()).unwrap();
    let (_i, url) = responder(d, "impostor.pem", "impostor-key.pem").await;
    assert!(matches!(
        ask(&url, &pki, "good.pem", now).await,
        Err(OcspError::BadSignature(_))
    ));

    // A delegated responder the issuer certified for OCSP signing.
    let mut spec = LeafSpec::svid(&id("spiffe://prod.example.org/ocsp"), DAY);
    spec.uris.clear();
    spec.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    spec.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    pki.issue("delegate", &spec);
    let (_d, url) = responder(d, "delegate.pem", "delegate-key.pem").await;
    assert_eq!(
        ask(&url, &pki, "revoked.pem", now).await.unwrap().status,
        OcspStatus::Revoked
    );

    // The same, without id-kp-OCSPSigning: not authorized.
    spec.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    pki.issue("imposter-delegate", &spec);
    let (_x, url) = responder(d, "imposter-delegate.pem", "imposter-delegate-key.pem").await;
    assert!(matches!(
        ask(&url, &pki, "good.pem", now).await,
        Err(OcspError::BadSigner(_))
    ));
}

async fn ocsp_server(pki: &Pki, name: &str, revocation: &str) -> portcullis::sidecar::Sidecar {
    let app = echo_app().await;
    portcullis::sidecar::start(pki.config(
        &format!("{name}.yaml"),
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n{revocation}\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap_or_else(|e| panic!("server: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_ask_a_live_responder_about_every_peer() {
    if !have_tool("openssl", "sidecars_ask_a_live_responder_about_every_peer") {
        return;
    }
    const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("srv", SERVER_ID);
    pki.svid("good", "spiffe://prod.example.org/ns/a/sa/good");
    pki.svid("revoked", "spiffe://prod.example.org/ns/a/sa/revoked");
    pki.svid("stranger", "spiffe://prod.example.org/ns/a/sa/stranger");
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "good.pem"]);
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "revoked.pem"]);
    let (_r, url) = responder(d, "ca.pem", "ca-key.pem").await;

    let required = ocsp_server(
        &pki,
        "required",
        &format!("revocation:\n  ocsp:\n    mode: require\n    responder: {url}\n"),
    )
    .await;
    let addr = required.inbound_addr("orders").unwrap();
    assert!(
        echoes(&pki, "good", SERVER_ID, addr).await,
        "good: admitted"
    );
    assert!(
        echoes(&pki, "good", SERVER_ID, addr).await,
        "good again, from the cache"
    );
    assert!(
        !echoes(&pki, "revoked", SERVER_ID, addr).await,
        "revoked: refused"
    );
    assert!(
        !echoes(&pki, "stranger", SERVER_ID, addr).await,
        "unknown: refused (fails closed)"
    );
    let m = required.metrics().encode();
    let ocsp = |result| {
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "ocsp"), ("result", result)],
        )
    };
    assert_eq!(ocsp("good"), Some(2.0));
    assert_eq!(ocsp("revoked"), Some(1.0));
    assert_eq!(ocsp("unknown"), Some(1.0));
    assert_eq!(
        metric(
            &m,
            "portcullis_connections_closed_total",
            &[("reason", "revoked")]
        ),
        Some(1.0)
    );
    // Two distinct certificates were fetched once each, and one more; the
    // second "good" came from the cache.
    assert_eq!(
        metric(&m, "portcullis_ocsp_responder_duration_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(metric(&m, "portcullis_ocsp_cache_entries", &[]), Some(3.0));

    // The responder is down: closed refuses, open admits and counts.
    let dead = format!(
        "http://{}/",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    );
    let closed = ocsp_server(
        &pki,
        "closed",
        &format!("revocation:\n  ocsp:\n    mode: require\n    responder: {dead}\n"),
    )
    .await;
    assert!(
        !echoes(
            &pki,
            "good",
            SERVER_ID,
            closed.inbound_addr("orders").unwrap()
        )
        .await,
        "responder down: refused"
    );
    let open = ocsp_server(
        &pki,
        "open",
        &format!(
            "revocation:\n  failure: open\n  ocsp:\n    mode: require\n    responder: {dead}\n"
        ),
    )
    .await;
    assert!(
        echoes(
            &pki,
            "good",
            SERVER_ID,
            open.inbound_addr("orders").unwrap()
        )
        .await,
        "responder down, failure: open: admitted"
    );
    wait_metric(
        &open,
        "portcullis_revocation_checks_total",
        &[("method", "ocsp"), ("result", "error")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_staple_their_status_and_clients_use_the_staple() {
    if !have_tool(
        "openssl",
        "servers_staple_their_status_and_clients_use_the_staple",
    ) {
        return;
    }
    const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
    const CLIENT_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("srv", SERVER_ID);
    pki.svid("cli", CLIENT_ID);
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "srv.pem"]);
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "cli.pem"]);
    let (_r, url) = responder(d, "ca.pem", "ca-key.pem").await;

    let server = ocsp_server(
        &pki,
        "srv",
        &format!("revocation:\n  ocsp:\n    mode: require\n    responder: {url}\n"),
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the server's own staple",
        || async {
            let m = server.metrics().encode();
            (metric(
                &m,
                "portcullis_ocsp_staple_next_update_timestamp_seconds",
                &[],
            )
            .unwrap_or(0.0)
                > portcullis::clock::unix_now() as f64)
                .then_some(())
        },
    )
    .await;

    // The client's responder is unreachable: only the staple can vouch for
    // the server.
    let dead = format!(
        "http://{}/",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    );
    let client = portcullis::sidecar::start(pki.config(
        "cli.yaml",
        &format!(
            "identity:\n  cert: cli.pem\n  key: cli-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  ocsp:\n    mode: require\n    responder: {dead}\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n    identity: {SERVER_ID}\nadmin:\n  listen: 127.0.0.1:0\n",
            server.inbound_addr("orders").unwrap()
        ),
    ))
    .await
    .unwrap();
    let back = round_trip(client.outbound_addr("orders").unwrap(), b"stapled")
        .await
        .unwrap();
    assert_eq!(back, b"stapled");
    let m = client.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "ocsp"), ("result", "good")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "ocsp"), ("result", "error")]
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_is_cut_when_ocsp_turns_revoked() {
    if !have_tool(
        "openssl",
        "an_open_connection_is_cut_when_ocsp_turns_revoked",
    ) {
        return;
    }
    const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("srv", SERVER_ID);
    pki.svid("victim", "spiffe://prod.example.org/ns/a/sa/victim");
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "victim.pem"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut responder1, url) = responder_on(d, "ca.pem", "ca-key.pem", port).await;
    let server = ocsp_server(
        &pki,
        "srv",
        &format!(
            "revocation:\n  ocsp:\n    mode: require\n    responder: {url}\n    max_age: 1s\n"
        ),
    )
    .await;
    let addr = server.inbound_addr("orders").unwrap();
    let mut conn = tls_connect(addr, pki.client_tls("victim", SERVER_ID))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    conn.read_exact(&mut b).await.unwrap();

    // The CA revokes it; the responder comes back with the new index.
    // kill() waits for the process to exit, so the port is free again.
    responder1.kill().await.unwrap();
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "victim.pem"]);
    let _responder2 = responder_on(d, "ca.pem", "ca-key.pem", port).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), conn.read_to_end(&mut rest))
        .await
        .expect("the connection must be cut once OCSP says revoked")
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_of_one_certificate_share_one_query() {
    if !have_tool(
        "openssl",
        "concurrent_checks_of_one_certificate_share_one_query",
    ) {
        return;
    }
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("good", "spiffe://prod.example.org/ns/a/sa/good");
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "good.pem"]);
    let (_r, url) = responder(d, "ca.pem", "ca-key.pem").await;
    let metrics = portcullis::metrics::Metrics::new();
    let checker = std::sync::Arc::new(portcullis::revocation::OcspChecker::new(
        portcullis::config::OcspConfig {
            mode: portcullis::config::OcspMode::Require,
            responder: Some(url),
            timeout: Duration::from_secs(5),
            max_age: Duration::from_secs(3600),
            cache_size: 10,
            error_cache: Duration::from_secs(10),
            nonce: false,
        },
        portcullis::revocation::OcspMetrics::new(&metrics.revocation),
    ));
    let (leaf, ca) = (der(&pki, "good.pem"), der(&pki, "ca.pem"));
    let checks: Vec<_> = (0..16)
        .map(|_| {
            let (checker, leaf, ca) = (checker.clone(), leaf.clone(), ca.clone());
            tokio::spawn(async move { checker.check(&leaf, &ca).await })
        })
        .collect();
    for c in checks {
        assert_eq!(c.await.unwrap(), portcullis::revocation::Verdict::Good);
    }
    let m = metrics.encode();
    assert_eq!(
        metric(&m, "portcullis_ocsp_responder_duration_seconds_count", &[]),
        Some(1.0),
        "one query for 16 checks"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "ocsp"), ("result", "good")]
        ),
        Some(16.0)
    );
}

/// Freshness and replay: an answer without nextUpdate is good only while
/// its thisUpdate is younger than max_age; one produced in the future is
/// refused; a nonce must come back as sent, so a response recorded for
/// another request (or for none) cannot be replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_fresh_and_nonces_must_match() {
    if !have_tool("openssl", "answers_are_fresh_and_nonces_must_match") {
        return;
    }
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("good", "spiffe://prod.example.org/ns/a/sa/good");
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "good.pem"]);
    let (leaf, ca) = (der(&pki, "good.pem"), der(&pki, "ca.pem"));
    let now = portcullis::clock::unix_now();
    let checks = |now, nonce| ocsp::Checks {
        now,
        max_age: 3600,
        nonce,
    };

    // openssl ocsp without -ndays/-nmin writes no nextUpdate.
    let nonce = b"0123456789abcdef";
    let req = ocsp::request_with_nonce(&leaf, &ca, Some(nonce)).unwrap();
    let resp = ocsp_one_shot(d, &req, &[]);
    let a = ocsp::verify_with(&resp, &leaf, &ca, &checks(now, Some(nonce))).unwrap();
    assert_eq!(a.status, OcspStatus::Good);
    assert_eq!(a.next_update, None, "the responder wrote a nextUpdate");
    // Within max_age it holds; past it (and the skew) it is stale.
    assert!(ocsp::verify_with(&resp, &leaf, &ca, &checks(now + 3000, None)).is_ok());
    assert_eq!(
        ocsp::verify_with(&resp, &leaf, &ca, &checks(now + 3600 + 400, None)),
        Err(OcspError::Stale)
    );
    // With a nextUpdate, max_age does not cut it short (the cache caps
    // its use instead).
    let dated = ocsp_one_shot(d, &req, &["-ndays", "1"]);
    assert!(ocsp::verify_with(&dated, &leaf, &ca, &checks(now + 3600 + 400, None)).is_ok());

    // Produced an hour after the verifier's clock.
    assert_eq!(
        ocsp::verify_with(&resp, &leaf, &ca, &checks(now - 3600, None)),
        Err(OcspError::ProducedInFuture)
    );

    // The nonce openssl echoed is ours; another request's is not.
    assert_eq!(
        ocsp::verify_with(&resp, &leaf, &ca, &checks(now, Some(b"fedcba9876543210"))),
        Err(OcspError::NonceMismatch)
    );
    // A response to a request without a nonce carries none.
    let plain = ocsp_one_shot(d, &ocsp::request(&leaf, &ca).unwrap(), &[]);
    assert!(ocsp::verify_with(&plain, &leaf, &ca, &checks(now, None)).is_ok());
    assert_eq!(
        ocsp::verify_with(&plain, &leaf, &ca, &checks(now, Some(nonce))),
        Err(OcspError::NonceMismatch)
    );
}

/// A responder that accepts connections and never answers: the worst kind
/// of down. Returns its URL and how many connections it accepted.
async fn black_hole() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    (url, accepted)
}

/// A responder that hangs costs each certificate one timeout per
/// `error_cache`, not one per connection: later connections are decided
/// at once from the remembered failure (here admitted, `failure: open`,
/// and counted as errors). With the cache off, every connection asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_responder_costs_one_timeout_not_one_per_connection() {
    const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
    let pki = Pki::new();
    pki.svid("srv", SERVER_ID);
    pki.svid("peer", "spiffe://prod.example.org/ns/a/sa/peer");
    for (name, error_cache, queries) in [("cached", "1h", 1), ("uncached", "0s", 4)] {
        let (url, accepted) = black_hole().await;
        let server = ocsp_server(
            &pki,
            name,
            &format!(
                "revocation:\n  failure: open\n  ocsp:\n    mode: require\n    responder: {url}\n\
                 \x20   timeout: 300ms\n    error_cache: {error_cache}\n"
            ),
        )
        .await;
        // Our own staple's fetch goes there first.
        wait_for(Duration::from_secs(10), "the staple fetch", || async {
            (accepted.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        let addr = server.inbound_addr("orders").unwrap();
        for _ in 0..4 {
            assert!(
                echoes(&pki, "peer", SERVER_ID, addr).await,
                "{name}: failure: open admits"
            );
        }
        let m = server.metrics().encode();
        assert_eq!(
            metric(
                &m,
                "portcullis_revocation_checks_total",
                &[("method", "ocsp"), ("result", "error")]
            ),
            Some(4.0),
            "{name}: every connection's check is an error"
        );
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst) - 1,
            queries,
            "{name}: queries about the peer that reached the responder"
        );
    }
}

/// A server whose own SVID is revoked stops stapling the "good" it held
/// as soon as its next fetch hears the news, instead of serving it until
/// that answer's nextUpdate: a client that cannot reach the responder
/// then has nothing to admit it with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_told_its_svid_is_revoked_stops_stapling_the_old_good() {
    let test = "a_server_told_its_svid_is_revoked_stops_stapling_the_old_good";
    if !have_tool("openssl", test) {
        return;
    }
    const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("srv", SERVER_ID);
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "srv.pem"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut first, url) = responder_on(d, "ca.pem", "ca-key.pem", port).await;
    // max_age bounds how long until the staple is fetched again (5 s at
    // least); the responder's answers are good for 5 minutes.
    let server = ocsp_server(
        &pki,
        "srv",
        &format!(
            "revocation:\n  ocsp:\n    mode: require\n    responder: {url}\n    max_age: 2s\n"
        ),
    )
    .await;
    let identity = server.control().tls.identity().clone();
    wait_for(
        Duration::from_secs(10),
        "the server's own staple",
        || async { identity.staple_until().map(|_| ()) },
    )
    .await;
    first.kill().await.unwrap();
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "srv.pem"]);
    let _second = responder_on(d, "ca.pem", "ca-key.pem", port).await;
    wait_for(
        Duration::from_secs(20),
        "the staple to be dropped",
        || async { identity.staple_until().is_none().then_some(()) },
    )
    .await;
}
