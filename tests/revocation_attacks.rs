//! Revocation as an attacker would try to get past it, with real
//! certificates and real `openssl` responders and CAs. Each test
//! reproduces an attack that worked before the fix it names: an extra CA
//! in the chain to pick the OCSP issuer, a replayed older staple, a
//! recorded answer replayed on the wire, SHA-1 and RSA-1024 signatures on
//! revocation data, and forged or older CRLs of an intermediate.
//!
//! The extra-CA trick: a peer whose leaf is revoked sends the chain
//! `[leaf, a CA of its own, the real intermediate]`. Path building ignores
//! the unused CA, so the chain still verifies; an OCSP check that took "the
//! first intermediate" as the issuer would ask about (or accept a staple
//! for) the leaf as issued by the peer's own CA.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use portcullis::identity::TrustDomain;
use portcullis::pki::Ca;
use portcullis::revocation::ocsp::{self, OcspStatus};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

fn pem_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// The root's intermediate, a leaf it issued for `id`, and an impostor: an
/// intermediate of a root nobody trusts, with the same name as the real
/// intermediate (OCSP names an issuer by the hash of that name and of its
/// key, so a forgery needs the name; path building tells the two apart by
/// the leaf's signature).
struct Setup {
    inter: Ca,
    leaf: portcullis::pki::Issued,
    impostor: Ca,
}

fn setup(pki: &Pki, id: &str) -> Setup {
    let inter = pki.ca.intermediate(DAY).unwrap();
    let leaf = inter.issue_svid(&common::id(id), DAY).unwrap();
    let td = TrustDomain::parse("prod.example.org").unwrap();
    let impostor = Ca::generate(&td, DAY).unwrap().intermediate(DAY).unwrap();
    Setup {
        inter,
        leaf,
        impostor,
    }
}

/// `[leaf, impostor CA, real intermediate]`, as PEM.
fn tricked_chain(s: &Setup) -> String {
    let leaf_pem = s
        .leaf
        .cert_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    format!("{leaf_pem}{}{}", s.impostor.cert_pem(), s.inter.cert_pem())
}

/// An OCSP response that the impostor signs for the leaf "as issued by"
/// itself (CertID: the leaf's issuer name, the impostor's key, the leaf's
/// serial), saying "good", made by `openssl ocsp` in `dir`.
fn forged_staple(dir: &Path, s: &Setup) -> Vec<u8> {
    openssl_ca_in(dir, &s.impostor);
    let leaf_pem = s
        .leaf
        .cert_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf_pem).unwrap();
    openssl(dir, &["ca", "-config", "ca.cnf", "-valid", "leaf.pem"]);
    openssl(
        dir,
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            "leaf.pem",
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
    );
    openssl(
        dir,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-CA",
            "ca.pem",
            "-rsigner",
            "ca.pem",
            "-rkey",
            "ca-key.pem",
            "-reqin",
            "req.der",
            "-respout",
            "forged.der",
            "-ndays",
            "1",
        ],
    );
    std::fs::read(dir.join("forged.der")).unwrap()
}

/// What the attacker's server presents: a chain, its key, and whatever
/// staple the test sets for the next handshake.
struct RogueCert {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn rustls::sign::SigningKey>,
    staple: std::sync::Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for RogueCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RogueCert")
    }
}

impl rustls::server::ResolvesServerCert for RogueCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut ck = rustls::sign::CertifiedKey::new(self.chain.clone(), self.key.clone());
        ck.ocsp = self.staple.lock().unwrap().clone();
        Some(Arc::new(ck))
    }
}

impl RogueCert {
    fn new(chain: &str, key_pem: &str, staple: Option<Vec<u8>>) -> Arc<Self> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        Arc::new(RogueCert {
            chain: CertificateDer::pem_slice_iter(chain.as_bytes())
                .map(|c| c.unwrap())
                .collect(),
            key: portcullis::tls::provider()
                .key_provider
                .load_private_key(key)
                .unwrap(),
            staple: std::sync::Mutex::new(staple),
        })
    }
}

/// A TLS 1.3 server of the attacker's (not a sidecar): it presents what
/// `cert` holds and echoes what it reads.
async fn rogue_server(cert: Arc<RogueCert>) -> std::net::SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(portcullis::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(cert);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// An upstream whose leaf its real issuer would not vouch for staples a
/// "good" its own CA signed, for the leaf "as issued by" that CA. A client
/// that requires OCSP and fails closed must not take it: the staple is not
/// about the leaf as its real issuer knows it, and the responder it would
/// then ask is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staple_for_an_extra_ca_in_the_upstreams_chain_is_not_taken() {
    let test = "a_staple_for_an_extra_ca_in_the_upstreams_chain_is_not_taken";
    if !have_tool("openssl", test) {
        return;
    }
    let pki = Pki::new();
    let s = setup(&pki, SERVER_ID);
    let staple = forged_staple(&pki.path("impostor"), &s);
    // The forgery is a valid answer about the leaf as issued by the
    // impostor: taking the wrong issuer is all it would take.
    let leaf = pem_der(&s.leaf.cert_pem);
    let answer = ocsp::verify(
        &staple,
        &leaf,
        &pem_der(s.impostor.cert_pem()),
        portcullis::clock::unix_now(),
    )
    .unwrap();
    assert_eq!(answer.status, OcspStatus::Good);
    assert!(
        ocsp::verify(
            &staple,
            &leaf,
            &pem_der(s.inter.cert_pem()),
            portcullis::clock::unix_now()
        )
        .is_err(),
        "and not an answer about the leaf as its real issuer knows it"
    );

    let rogue = rogue_server(RogueCert::new(
        &tricked_chain(&s),
        &s.leaf.key_pem,
        Some(staple),
    ))
    .await;
    let dead = format!(
        "http://{}/",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    );
    pki.svid("cli", CLIENT_ID);
    let client = portcullis::sidecar::start(pki.config(
        "cli.yaml",
        &format!(
            "identity:\n  cert: cli.pem\n  key: cli-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  ocsp:\n    mode: require\n    responder: {dead}\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{rogue}]\n    identity: {SERVER_ID}\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let back = round_trip(client.outbound_addr("orders").unwrap(), b"through")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "the rogue upstream was reached: {back:?}");
    let m = client.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "ocsp"), ("result", "good")]
        ),
        Some(0.0),
        "no answer counted as good"
    );
    assert!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "ocsp"), ("result", "error")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "it asked the (dead) responder instead"
    );
    wait_metric(
        &client,
        "portcullis_connections_closed_total",
        &[("direction", "outbound"), ("reason", "denied")],
        1.0,
    )
    .await;
}

/// A revoked peer sends the extra CA to an inbound listener that prefers
/// OCSP and has CRLs to fall back on. Asked about the leaf "as issued by"
/// the peer's own CA, the real responder can only fail to vouch, which
/// `prefer` hands to the CRLs (they do not list the leaf yet): the peer
/// would be admitted. Asked about the leaf as its real issuer knows it, the
/// responder says "revoked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extra_ca_in_a_peers_chain_cannot_turn_revoked_into_unknown() {
    let test = "an_extra_ca_in_a_peers_chain_cannot_turn_revoked_into_unknown";
    if !have_tool("openssl", test) {
        return;
    }
    let pki = Pki::new();
    let revoked = setup(&pki, CLIENT_ID);
    let good = revoked.inter.issue_svid(&id(CLIENT_ID), DAY).unwrap();
    // The intermediate's responder knows the leaf as revoked and the other
    // as good.
    let idir = pki.path("inter");
    openssl_ca_in(&idir, &revoked.inter);
    let first = |pem: &str| {
        pem.split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap()
            .to_string()
    };
    std::fs::write(idir.join("revoked.pem"), first(&revoked.leaf.cert_pem)).unwrap();
    std::fs::write(idir.join("good.pem"), first(&good.cert_pem)).unwrap();
    openssl(
        &idir,
        &["ca", "-config", "ca.cnf", "-revoke", "revoked.pem"],
    );
    openssl(&idir, &["ca", "-config", "ca.cnf", "-valid", "good.pem"]);
    let (_r, url) = responder(&idir, "ca.pem", "ca-key.pem").await;
    // Current, empty CRLs from the root and the intermediate.
    std::fs::write(pki.path("root.crl"), pki.ca.crl(&[], 1, DAY).unwrap()).unwrap();
    std::fs::write(
        pki.path("inter.crl"),
        revoked.inter.crl(&[], 1, DAY).unwrap(),
    )
    .unwrap();
    // The intermediate signs its CRL; the server learns it from here (its
    // own chain is the root's).
    std::fs::write(pki.path("inter-ca.pem"), revoked.inter.cert_pem()).unwrap();

    pki.svid("srv", SERVER_ID);
    let app = echo_app().await;
    let server = portcullis::sidecar::start(pki.config(
        "srv.yaml",
        &format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  crls: [root.crl, inter.crl]\n  intermediates: inter-ca.pem\n  ocsp:\n    mode: prefer\n    responder: {url}\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let addr = server.inbound_addr("orders").unwrap();
    let with_chain = |name: &str, chain: String, key: &str| {
        std::fs::write(pki.path(&format!("{name}.pem")), chain).unwrap();
        std::fs::write(pki.path(&format!("{name}-key.pem")), key).unwrap();
    };
    // The trick, and the same leaf with its honest chain: both refused.
    with_chain("tricked", tricked_chain(&revoked), &revoked.leaf.key_pem);
    with_chain(
        "honest",
        revoked.leaf.cert_pem.clone(),
        &revoked.leaf.key_pem,
    );
    assert!(
        !echoes(&pki, "tricked", SERVER_ID, addr).await,
        "the revoked peer with an extra CA in its chain was admitted"
    );
    assert!(!echoes(&pki, "honest", SERVER_ID, addr).await);
    // An unrevoked leaf of the same intermediate is admitted with the
    // extra CA in its chain: the extra certificate itself harms nobody.
    let leaf_pem = first(&good.cert_pem);
    with_chain(
        "good",
        format!(
            "{leaf_pem}{}{}",
            revoked.impostor.cert_pem(),
            revoked.inter.cert_pem()
        ),
        &good.key_pem,
    );
    assert!(echoes(&pki, "good", SERVER_ID, addr).await);
    let m = server.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "ocsp"), ("result", "revoked")]
        ),
        Some(2.0)
    );
}

/// A client sidecar with outbound "orders" to `upstream`, requiring OCSP
/// from `responder` and failing closed.
async fn ocsp_client(
    pki: &Pki,
    upstream: std::net::SocketAddr,
    responder: &str,
) -> portcullis::sidecar::Sidecar {
    ocsp_client_with(pki, "cli", upstream, responder, "").await
}

/// As [`ocsp_client`], named `name`, with `extra` lines in its `ocsp:`
/// section.
async fn ocsp_client_with(
    pki: &Pki,
    name: &str,
    upstream: std::net::SocketAddr,
    responder: &str,
    extra: &str,
) -> portcullis::sidecar::Sidecar {
    pki.svid("cli", CLIENT_ID);
    portcullis::sidecar::start(pki.config(
        &format!("{name}.yaml"),
        &format!(
            "identity:\n  cert: cli.pem\n  key: cli-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  ocsp:\n    mode: require\n    responder: {responder}\n{extra}\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{upstream}]\n    identity: {SERVER_ID}\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap()
}

/// Marks `cert` good in the CA's index and records the answer openssl's
/// responder gives for it now, without a nonce, valid for a day: what a
/// peer or anyone on the path to the responder could keep and replay.
fn record_good(d: &Path, cert: &str) -> Vec<u8> {
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", cert]);
    openssl(
        d,
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            cert,
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
    );
    openssl(
        d,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-CA",
            "ca.pem",
            "-rsigner",
            "ca.pem",
            "-rkey",
            "ca-key.pem",
            "-reqin",
            "req.der",
            "-respout",
            "recorded.der",
            "-ndays",
            "1",
        ],
    );
    std::fs::read(d.join("recorded.der")).unwrap()
}

/// Rollback: an upstream whose certificate was revoked replays the last
/// "good" it was stapled, after the client already holds a fresher
/// "revoked". The older answer must not replace the newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_good_staple_does_not_undo_a_fresh_revoked() {
    let test = "a_replayed_older_good_staple_does_not_undo_a_fresh_revoked";
    if !have_tool("openssl", test) {
        return;
    }
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("srv", SERVER_ID);
    // The staple the upstream got while it was still good.
    let old_good = record_good(d, "srv.pem");
    let leaf = pem_der(&std::fs::read_to_string(pki.path("srv.pem")).unwrap());
    let issuer = pem_der(pki.ca.cert_pem());
    let t0 = ocsp::verify(&old_good, &leaf, &issuer, portcullis::clock::unix_now())
        .unwrap()
        .this_update;
    // Answers have one-second precision: the revocation comes later.
    wait_for(
        std::time::Duration::from_secs(5),
        "the clock to pass the staple's thisUpdate",
        || async { (portcullis::clock::unix_now() > t0).then_some(()) },
    )
    .await;
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "srv.pem"]);
    let (_r, url) = responder(d, "ca.pem", "ca-key.pem").await;

    let cert = RogueCert::new(
        &std::fs::read_to_string(pki.path("srv.pem")).unwrap(),
        &std::fs::read_to_string(pki.path("srv-key.pem")).unwrap(),
        None,
    );
    let rogue = rogue_server(cert.clone()).await;
    let client = ocsp_client(&pki, rogue, &url).await;
    let out = client.outbound_addr("orders").unwrap();
    // No staple: the client asks and learns "revoked".
    let back = round_trip(out, b"one").await.unwrap_or_default();
    assert!(back.is_empty(), "a revoked upstream was reached");
    wait_metric(
        &client,
        "portcullis_revocation_checks_total",
        &[("method", "ocsp"), ("result", "revoked")],
        1.0,
    )
    .await;
    // Now it staples its older "good".
    *cert.staple.lock().unwrap() = Some(old_good);
    let back = round_trip(out, b"two").await.unwrap_or_default();
    assert!(
        back.is_empty(),
        "the replayed good staple undid the revocation"
    );
    wait_metric(
        &client,
        "portcullis_revocation_checks_total",
        &[("method", "ocsp"), ("result", "revoked")],
        2.0,
    )
    .await;
    let m = client.metrics().encode();
    assert_eq!(
        metric(
            &m,
            "portcullis_revocation_checks_total",
            &[("method", "ocsp"), ("result", "good")]
        ),
        Some(0.0)
    );
}

/// An attacker on the path to the responder (OCSP is plain HTTP): answers
/// every query with the same recorded response. Returns its URL and how
/// many queries it answered.
async fn replaying_responder(response: Vec<u8>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let response = response.clone();
            let count = count.clone();
            tokio::spawn(async move {
                // Read the head and the body its Content-Length announces.
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    response.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(&response).await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    (url, served)
}

/// Replay on the wire: after an upstream is revoked, someone between the
/// client and the responder answers its queries with a "good" recorded
/// while it was still good, signed by the real issuer and not yet past its
/// nextUpdate. Without a nonce nothing tells it apart from a fresh answer
/// (shown first, so the test proves the attack is real); with
/// `ocsp.nonce: true` it is refused, and a real responder, which echoes
/// the nonce, still admits a good upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nonces_a_recorded_good_answer_cannot_be_replayed() {
    let test = "with_nonces_a_recorded_good_answer_cannot_be_replayed";
    if !have_tool("openssl", test) {
        return;
    }
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl_ca(&pki);
    pki.svid("srv", SERVER_ID);
    let recorded = record_good(d, "srv.pem");
    openssl(d, &["ca", "-config", "ca.cnf", "-revoke", "srv.pem"]);
    let (replay, served) = replaying_responder(recorded).await;
    let pem = |name: &str| std::fs::read_to_string(pki.path(name)).unwrap();
    let revoked = rogue_server(RogueCert::new(&pem("srv.pem"), &pem("srv-key.pem"), None)).await;

    let trusting = ocsp_client_with(&pki, "trusting", revoked, &replay, "").await;
    let back = round_trip(trusting.outbound_addr("orders").unwrap(), b"one")
        .await
        .unwrap_or_default();
    assert_eq!(
        back, b"one",
        "without a nonce the replay is indistinguishable"
    );

    let careful = ocsp_client_with(&pki, "careful", revoked, &replay, "    nonce: true\n").await;
    let before = served.load(std::sync::atomic::Ordering::SeqCst);
    let back = round_trip(careful.outbound_addr("orders").unwrap(), b"two")
        .await
        .unwrap_or_default();
    assert!(
        back.is_empty(),
        "a replayed answer admitted a revoked upstream"
    );
    assert!(
        served.load(std::sync::atomic::Ordering::SeqCst) > before,
        "the replaying responder was never asked"
    );
    wait_metric(
        &careful,
        "portcullis_revocation_checks_total",
        &[("method", "ocsp"), ("result", "error")],
        1.0,
    )
    .await;

    // A real responder echoes the nonce: a good upstream is admitted.
    pki.svid("srv2", SERVER_ID);
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "srv2.pem"]);
    let (_r, url) = responder(d, "ca.pem", "ca-key.pem").await;
    let good = rogue_server(RogueCert::new(&pem("srv2.pem"), &pem("srv2-key.pem"), None)).await;
    let real = ocsp_client_with(&pki, "real", good, &url, "    nonce: true\n").await;
    let back = round_trip(real.outbound_addr("orders").unwrap(), b"three")
        .await
        .unwrap_or_default();
    assert_eq!(
        back, b"three",
        "the nonce a real responder echoed was refused"
    );
}

/// An RSA root made by openssl in `d` (`ca.pem`, `ca-key.pem`, with its
/// `openssl ca` database), and a leaf it issued (`leaf.pem`), marked good.
fn openssl_rsa_ca(d: &Path, bits: u32) -> (CertificateDer<'static>, CertificateDer<'static>) {
    std::fs::create_dir_all(d).unwrap();
    let newkey = format!("rsa:{bits}");
    let subject = format!("/O=SPIFFE/CN=rsa{bits}");
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            &newkey,
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-sha256",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf-key.pem",
            "-out",
            "leaf.pem",
            "-days",
            "1",
            "-subj",
            "/CN=leaf",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
        ],
    );
    openssl_ca_config(d);
    openssl(d, &["ca", "-config", "ca.cnf", "-valid", "leaf.pem"]);
    let read = |name: &str| pem_der(&std::fs::read_to_string(d.join(name)).unwrap());
    (read("ca.pem"), read("leaf.pem"))
}

fn load_crl(path: &Path, root: &CertificateDer<'static>) -> Result<(), String> {
    let policy = portcullis::config::RevocationPolicy {
        whole_chain: true,
        expired_is_unknown: true,
        fail_open: false,
        fetch_distribution_points: false,
    };
    let roots = [root];
    let trust = portcullis::revocation::CrlTrust {
        roots: &roots,
        intermediates: &[],
        in_force: None,
    };
    portcullis::revocation::load_crls(&[path.to_path_buf()], &[], &trust, policy)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Revocation data is never easier to forge than a certificate: a CRL or
/// OCSP answer signed with SHA-1 (chosen-prefix collisions are practical)
/// or with an RSA key under 2048 bits is refused, as rustls-webpki refuses
/// both in chains. Before, x509-parser's ring backend accepted both, and a
/// forged "good" or a forged list revoking everybody would have been used.
#[test]
fn crls_and_ocsp_answers_signed_weakly_are_refused() {
    if !have_tool("openssl", "crls_and_ocsp_answers_signed_weakly_are_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let now = portcullis::clock::unix_now();

    // RSA-2048: SHA-256 is fine, SHA-1 is not.
    let d = dir.path().join("rsa2048");
    let (root, leaf) = openssl_rsa_ca(&d, 2048);
    openssl(
        &d,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-gencrl",
            "-md",
            "sha256",
            "-out",
            "sha256.crl",
        ],
    );
    openssl(
        &d,
        &[
            "ca", "-config", "ca.cnf", "-gencrl", "-md", "sha1", "-out", "sha1.crl",
        ],
    );
    load_crl(&d.join("sha256.crl"), &root).unwrap();
    let err = load_crl(&d.join("sha1.crl"), &root).unwrap_err();
    assert!(
        err.contains("sha1.crl") && err.contains("sha1WithRSAEncryption"),
        "{err}"
    );
    let req = ocsp::request(&leaf, &root).unwrap();
    let good = ocsp_one_shot(&d, &req, &["-ndays", "1"]);
    assert_eq!(
        ocsp::verify(&good, &leaf, &root, now).unwrap().status,
        OcspStatus::Good
    );
    let sha1 = ocsp_one_shot(&d, &req, &["-ndays", "1", "-rmd", "sha1"]);
    let err = ocsp::verify(&sha1, &leaf, &root, now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-1"), "{err}");

    // RSA-1024, even with SHA-256.
    let d = dir.path().join("rsa1024");
    let (root, leaf) = openssl_rsa_ca(&d, 1024);
    openssl(
        &d,
        &[
            "ca", "-config", "ca.cnf", "-gencrl", "-md", "sha256", "-out", "weak.crl",
        ],
    );
    let err = load_crl(&d.join("weak.crl"), &root).unwrap_err();
    assert!(
        err.contains("weak.crl") && err.contains("1024 bits"),
        "{err}"
    );
    let req = ocsp::request(&leaf, &root).unwrap();
    let weak = ocsp_one_shot(&d, &req, &["-ndays", "1"]);
    let err = ocsp::verify(&weak, &leaf, &root, now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1024 bits"), "{err}");
}

fn revoked(serial: &str) -> portcullis::pki::RevokedEntry {
    portcullis::pki::RevokedEntry {
        serial: serial.to_string(),
        revoked_at: time::OffsetDateTime::now_utc(),
    }
}

/// CRLs of an intermediate, as an attacker who can write to the CRL path
/// (or sits between the sidecar and a distribution point) would try them:
/// a list signed by a CA of their own with the intermediate's name,
/// revoking an honest peer (before, a CRL whose issuer was not a root went
/// into the index unverified, and a forged list could revoke anybody); and
/// the intermediate's own older list, which does not yet revoke the
/// attacker's stolen certificate. Both are refused with the reason, and
/// the list in force keeps judging; an intermediate nobody certified
/// cannot sign lists at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_older_crl_of_an_intermediate_is_refused_and_the_last_good_one_stays() {
    let pki = Pki::new();
    let inter = pki.ca.intermediate(DAY).unwrap();
    std::fs::write(pki.path("inter-ca.pem"), inter.cert_pem()).unwrap();
    let honest = inter.issue_svid(&id(CLIENT_ID), DAY).unwrap();
    let stolen = inter.issue_svid(&id(CLIENT_ID), DAY).unwrap();
    pki.write("honest", &honest);
    pki.write("stolen", &stolen);
    std::fs::write(pki.path("root.crl"), pki.ca.crl(&[], 1, DAY).unwrap()).unwrap();
    std::fs::write(
        pki.path("inter.crl"),
        inter.crl(&[revoked(&stolen.serial)], 2, DAY).unwrap(),
    )
    .unwrap();

    pki.svid("srv", SERVER_ID);
    let app = echo_app().await;
    let config = |extra: &str| {
        format!(
            "identity:\n  cert: srv.pem\n  key: srv-key.pem\n  trust_bundle: bundle.pem\n\
             revocation:\n  crls: [root.crl, inter.crl]\n{extra}\
             reload:\n  watch: false\n  interval: 1h\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\nadmin:\n  listen: 127.0.0.1:0\n"
        )
    };
    // Nobody certified the intermediate: its list cannot be checked.
    let err = portcullis::sidecar::start(pki.config("uncertified.yaml", &config("")))
        .await
        .err()
        .expect("a CRL of an unknown intermediate was used")
        .to_string();
    assert!(
        err.contains("inter.crl") && err.contains("revocation.intermediates"),
        "{err}"
    );

    let server = portcullis::sidecar::start(
        pki.config("srv.yaml", &config("  intermediates: inter-ca.pem\n")),
    )
    .await
    .unwrap();
    let addr = server.inbound_addr("orders").unwrap();
    assert!(echoes(&pki, "honest", SERVER_ID, addr).await);
    assert!(!echoes(&pki, "stolen", SERVER_ID, addr).await);

    // A forged list, newer by number, revoking the honest peer.
    let td = TrustDomain::parse("prod.example.org").unwrap();
    let impostor = Ca::generate(&td, DAY).unwrap().intermediate(DAY).unwrap();
    std::fs::write(
        pki.path("inter.crl"),
        impostor.crl(&[revoked(&honest.serial)], 3, DAY).unwrap(),
    )
    .unwrap();
    let report = server.control().reload("test").await;
    let err = report.identity.to_json()["error"].to_string();
    assert!(
        err.contains("inter.crl") && err.contains("does not verify"),
        "forged list: {err}"
    );
    assert!(
        echoes(&pki, "honest", SERVER_ID, addr).await,
        "the forgery revoked an honest peer"
    );
    assert!(!echoes(&pki, "stolen", SERVER_ID, addr).await);

    // The intermediate's own earlier list, from before the theft.
    std::fs::write(pki.path("inter.crl"), inter.crl(&[], 1, DAY).unwrap()).unwrap();
    let report = server.control().reload("test").await;
    let err = report.identity.to_json()["error"].to_string();
    assert!(
        err.contains("inter.crl") && err.contains("older") && err.contains("in force"),
        "older list: {err}"
    );
    assert!(
        !echoes(&pki, "stolen", SERVER_ID, addr).await,
        "an older list un-revoked the stolen certificate"
    );

    // A newer list of the intermediate's own is taken.
    std::fs::write(pki.path("inter.crl"), inter.crl(&[], 4, DAY).unwrap()).unwrap();
    assert!(server.control().reload("test").await.ok());
    assert!(echoes(&pki, "stolen", SERVER_ID, addr).await);
}
