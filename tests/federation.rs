//! Bundle-endpoint federation against real HTTPS endpoints (`openssl
//! s_server -WWW` serving SPIFFE bundles), one per profile: `https_web`
//! (a Web PKI certificate for `localhost`, checked against `ca`) and
//! `https_spiffe` (an SVID for the endpoint's SPIFFE ID, checked against
//! the start bundle and then each fetched one). The refresh hint is
//! honoured; rollbacks, garbage, an unreachable endpoint and an impostor
//! endpoint all leave the last good bundle serving.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use portcullis::identity::TrustDomain;
use portcullis::pki::{Ca, Issued, LeafSpec};
use portcullis::sidecar::Sidecar;
use portcullis::tls::{TlsContext, TrustStore, load_bundle, load_identity};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const SERVER_ID: &str = "spiffe://prod.example.org/ns/default/sa/orders";
const PARTNER: &str = "partner.example.org";
const WEB: &str = "web.example.org";
const ENDPOINT_ID: &str = "spiffe://partner.example.org/spire/server";

/// A SPIFFE bundle (JWK Set) of `cas`.
fn spiffe_bundle(cas: &[&Ca], sequence: u64, refresh_hint: u64) -> String {
    let keys: Vec<_> = cas
        .iter()
        .map(|c| serde_json::json!({"use": "x509-svid", "kty": "EC", "x5c": [base64(c.der())]}))
        .collect();
    serde_json::json!({"keys": keys, "spiffe_sequence": sequence, "spiffe_refresh_hint": refresh_hint})
        .to_string()
}

/// `openssl s_server -WWW` serving the files of `dir` over TLS 1.3 on
/// `port`, presenting `name`.pem / `name`-key.pem.
async fn https_server(dir: &Path, name: &str, port: u16) -> Child {
    let mut child = Command::new("openssl")
        .current_dir(dir)
        .args(["s_server", "-WWW", "-tls1_3", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-cert",
            &format!("{name}.pem"),
            "-key",
            &format!("{name}-key.pem"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("ACCEPT") {
                return;
            }
        }
        panic!("openssl s_server exited before listening");
    })
    .await
    .expect("openssl s_server listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

fn write(dir: &Path, name: &str, issued: &Issued) {
    std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), &issued.key_pem).unwrap();
}

/// Serves `content` as bundle.json from `dir` (written whole at once).
fn serve(dir: &Path, content: &str) {
    let tmp = dir.join("bundle.tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(tmp, dir.join("bundle.json")).unwrap();
}

/// Whether a peer with an SVID for `peer_id` from `ca` gets an echo.
async fn admitted(pki: &Pki, ca: &Ca, peer_id: &str, addr: SocketAddr) -> bool {
    let issued = ca.issue_svid(&id(peer_id), DAY).unwrap();
    let dir = pki.dir.path();
    write(dir, "peer-now", &issued);
    let identity = load_identity(&dir.join("peer-now.pem"), &dir.join("peer-now-key.pem")).unwrap();
    let bundle = load_bundle(&pki.bundle(), &TrustDomain::parse(TD).unwrap()).unwrap();
    let ctx = TlsContext::new(identity, TrustStore::new([bundle])).unwrap();
    let config = ctx.outbound(id(SERVER_ID)).unwrap().config();
    let io = async {
        let mut s = tls_connect(addr, config).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        Ok::<_, std::io::Error>(s.read(&mut b).await? == 1)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), io).await,
        Ok(Ok(true))
    )
}

fn fetches(sidecar: &Sidecar, td: &str, result: &str) -> f64 {
    metric(
        &sidecar.metrics().encode(),
        "portcullis_trust_bundle_fetches_total",
        &[("trust_domain", td), ("result", result)],
    )
    .unwrap_or(0.0)
}

async fn more_errors(sidecar: &Sidecar, td: &str, than: f64, what: &str) {
    wait_for(Duration::from_secs(20), what, || async {
        (fetches(sidecar, td, "error") > than).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_are_fetched_from_endpoints_of_both_profiles_and_the_last_good_one_survives() {
    if !have_tool("openssl", "federation") {
        return;
    }
    let pki = Pki::new();
    let dir = pki.dir.path();
    let partner_td = TrustDomain::parse(PARTNER).unwrap();
    let web_td = TrustDomain::parse(WEB).unwrap();
    let (p1, p2, p3) = (
        Ca::generate(&partner_td, DAY).unwrap(),
        Ca::generate(&partner_td, DAY).unwrap(),
        Ca::generate(&partner_td, DAY).unwrap(),
    );
    let web_spiffe_ca = Ca::generate(&web_td, DAY).unwrap();

    // The https_spiffe endpoint: an SVID for its SPIFFE ID from p1, which
    // is the start bundle the sidecar is configured with.
    let spiffe_dir = dir.join("spiffe-endpoint");
    std::fs::create_dir_all(&spiffe_dir).unwrap();
    write(
        &spiffe_dir,
        "endpoint",
        &p1.issue_svid(&id(ENDPOINT_ID), DAY).unwrap(),
    );
    std::fs::write(dir.join("partner-start.pem"), p1.cert_pem()).unwrap();
    serve(&spiffe_dir, &spiffe_bundle(&[&p1, &p2], 2, 1));
    // The https_web endpoint: a server certificate for localhost from a
    // web CA that only `ca` names.
    let web_dir = dir.join("web-endpoint");
    std::fs::create_dir_all(&web_dir).unwrap();
    let web_pki = Ca::generate(&TrustDomain::parse("webpki.test").unwrap(), DAY).unwrap();
    let mut spec = LeafSpec::svid(&id("spiffe://webpki.test/unused"), DAY);
    spec.uris.clear();
    spec.dns_names = vec!["localhost".into()];
    write(&web_dir, "web", &web_pki.issue(&spec).unwrap());
    std::fs::write(dir.join("webpki-ca.pem"), web_pki.cert_pem()).unwrap();
    serve(&web_dir, &spiffe_bundle(&[&web_spiffe_ca], 1, 1));

    let spiffe_port = free_addr().port();
    let web_port = free_addr().port();
    let mut spiffe_server = https_server(&spiffe_dir, "endpoint", spiffe_port).await;
    let _web_server = https_server(&web_dir, "web", web_port).await;

    pki.svid("server", SERVER_ID);
    let app = echo_app().await;
    let config = pki.config(
        "fed.yaml",
        &format!(
            "identity:\n  cert: server.pem\n  key: server-key.pem\n  trust_bundle: bundle.pem\n  trust_bundles:\n\
             \x20   {PARTNER}:\n      endpoint: https://127.0.0.1:{spiffe_port}/bundle.json\n      profile: https_spiffe\n      endpoint_spiffe_id: {ENDPOINT_ID}\n      bundle: partner-start.pem\n\
             \x20   {WEB}:\n      endpoint: https://localhost:{web_port}/bundle.json\n      profile: https_web\n      ca: webpki-ca.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    );
    let sidecar = portcullis::sidecar::start(config).await.unwrap();
    let addr = sidecar.inbound_addr("orders").unwrap();
    let partner_peer = "spiffe://partner.example.org/billing";
    let web_peer = "spiffe://web.example.org/frontend";

    // Both bundles arrive: p2 was never in the start bundle, and the web
    // domain had none at all.
    wait_for(
        Duration::from_secs(20),
        "both fetched bundles in force",
        || async {
            (admitted(&pki, &p2, partner_peer, addr).await
                && admitted(&pki, &web_spiffe_ca, web_peer, addr).await)
                .then_some(())
        },
    )
    .await;
    let m = sidecar.metrics().encode();
    for td in [PARTNER, WEB] {
        let at = metric(
            &m,
            "portcullis_trust_bundle_fetched_timestamp_seconds",
            &[("trust_domain", td)],
        )
        .unwrap_or_else(|| panic!("no fetch time for {td}:\n{m}"));
        assert!((portcullis::clock::unix_now() as f64 - at).abs() < 60.0);
    }
    assert!(
        metric(
            &m,
            "portcullis_cert_expiration_timestamp_seconds",
            &[("source", "bundle_endpoint"), ("kind", "root")]
        )
        .is_some(),
        "{m}"
    );

    // The endpoint moves its SVID to p2 (trusted now), then the 1 s
    // refresh hint is honoured (the default refresh is 5 min): a new
    // bundle is in force within seconds, and p1 leaves.
    spiffe_server.kill().await.unwrap();
    let _ = spiffe_server.wait().await;
    write(
        &spiffe_dir,
        "endpoint",
        &p2.issue_svid(&id(ENDPOINT_ID), DAY).unwrap(),
    );
    let mut spiffe_server = https_server(&spiffe_dir, "endpoint", spiffe_port).await;
    serve(&spiffe_dir, &spiffe_bundle(&[&p2], 3, 1));
    wait_for(Duration::from_secs(20), "the refreshed bundle", || async {
        (!admitted(&pki, &p1, partner_peer, addr).await).then_some(())
    })
    .await;
    assert!(admitted(&pki, &p2, partner_peer, addr).await);

    // A rollback (a lower spiffe_sequence) is refused: p3 is not trusted.
    let errors = fetches(&sidecar, PARTNER, "error");
    serve(&spiffe_dir, &spiffe_bundle(&[&p2, &p3], 1, 1));
    more_errors(&sidecar, PARTNER, errors, "the rollback refused").await;
    assert!(
        !admitted(&pki, &p3, partner_peer, addr).await,
        "a rolled-back bundle was applied"
    );
    assert!(admitted(&pki, &p2, partner_peer, addr).await);

    // Garbage from the web endpoint: refused, the last good bundle serves.
    let errors = fetches(&sidecar, WEB, "error");
    serve(&web_dir, "<html>maintenance</html>");
    more_errors(&sidecar, WEB, errors, "the garbage refused").await;
    assert!(admitted(&pki, &web_spiffe_ca, web_peer, addr).await);

    // The endpoint goes away: fetches fail, the last good bundle serves.
    spiffe_server.kill().await.unwrap();
    let _ = spiffe_server.wait().await;
    let errors = fetches(&sidecar, PARTNER, "error");
    more_errors(
        &sidecar,
        PARTNER,
        errors,
        "the unreachable endpoint counted",
    )
    .await;
    assert!(admitted(&pki, &p2, partner_peer, addr).await);

    // An impostor at the endpoint's address (a valid SVID of the domain,
    // from the CA in force, but not the endpoint's SPIFFE ID): refused.
    write(
        &spiffe_dir,
        "impostor",
        &p2.issue_svid(&id("spiffe://partner.example.org/impostor"), DAY)
            .unwrap(),
    );
    serve(&spiffe_dir, &spiffe_bundle(&[&p2, &p3], 9, 1));
    let errors = fetches(&sidecar, PARTNER, "error");
    let mut impostor = https_server(&spiffe_dir, "impostor", spiffe_port).await;
    more_errors(&sidecar, PARTNER, errors, "the impostor refused").await;
    assert!(
        !admitted(&pki, &p3, partner_peer, addr).await,
        "a bundle from an impostor endpoint was applied"
    );
    impostor.kill().await.unwrap();
    let _ = impostor.wait().await;

    // The real endpoint is believed again.
    let _back = https_server(&spiffe_dir, "endpoint", spiffe_port).await;
    wait_for(
        Duration::from_secs(20),
        "the endpoint's next bundle",
        || async { admitted(&pki, &p3, partner_peer, addr).await.then_some(()) },
    )
    .await;
    let certs: serde_json::Value =
        serde_json::from_str(&http_get(sidecar.admin_addr(), "/certs").await.unwrap().1).unwrap();
    let partner = certs["trust_bundles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["trust_domain"] == PARTNER)
        .unwrap()
        .clone();
    assert_eq!(partner["source"], "bundle_endpoint", "{certs}");
    assert_eq!(partner["spiffe_sequence"], 9, "{certs}");
}
