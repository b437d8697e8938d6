//! Helpers shared by the integration tests: a PKI in a temp dir, sidecars
//! started in-process from real YAML, an echo app, a plain HTTP GET for
//! the admin server, metric lookups, polling with a deadline, and the rule
//! for outside tools (skip with a reason, or fail under
//! PORTCULLIS_REQUIRE_TOOLS=1).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis::app::{Sidecar, start};
use portcullis::config::Config;
use portcullis::identity::{SpiffeId, TrustDomain};
use portcullis::pki::{Ca, Issued, LeafSpec};
use portcullis::tls::{TlsContext, TrustStore, load_bundle, load_identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const DAY: Duration = Duration::from_secs(86400);
pub const TD: &str = "prod.example.org";

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("test SPIFFE ID")
}

/// A CA for `TD` and a temp dir to write certificates into.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate(&TrustDomain::parse(TD).unwrap(), DAY).expect("CA");
        std::fs::write(dir.path().join("bundle.pem"), ca.cert_pem()).unwrap();
        Pki { dir, ca }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn bundle(&self) -> PathBuf {
        self.path("bundle.pem")
    }

    /// Writes `issued` as `<name>.pem` and `<name>-key.pem`.
    pub fn write(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.path(&format!("{name}.pem"));
        let key = self.path(&format!("{name}-key.pem"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        (cert, key)
    }

    /// Issues a valid SVID for `spiffe_id` and writes it as `name`.
    pub fn svid(&self, name: &str, spiffe_id: &str) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue_svid(&id(spiffe_id), DAY).unwrap();
        self.write(name, &issued)
    }

    pub fn issue(&self, name: &str, spec: &LeafSpec) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue(spec).unwrap();
        self.write(name, &issued)
    }

    /// Writes a config file and loads it the way `portcullis run` does.
    pub fn config(&self, name: &str, yaml: &str) -> Config {
        let path = self.path(name);
        std::fs::write(&path, yaml).unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}"))
    }

    /// A TLS client config presenting `name`'s SVID and expecting `server`.
    pub fn client_tls(&self, name: &str, server: &str) -> Arc<rustls::ClientConfig> {
        let identity = load_identity(
            &self.path(&format!("{name}.pem")),
            &self.path(&format!("{name}-key.pem")),
        )
        .unwrap();
        let bundle = load_bundle(&self.bundle(), &TrustDomain::parse(TD).unwrap()).unwrap();
        let ctx = TlsContext::new(identity, TrustStore::new([bundle])).unwrap();
        ctx.outbound(id(server)).unwrap().config()
    }
}

/// Starts an echo app on loopback.
pub async fn echo_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(portcullis::demo::echo_server(l));
    addr
}

/// A server sidecar with inbound `name` in front of `app`, presenting
/// `spiffe_id`.
pub async fn server_sidecar(pki: &Pki, name: &str, spiffe_id: &str, app: SocketAddr) -> Sidecar {
    pki.svid(&format!("{name}-svid"), spiffe_id);
    let config = pki.config(
        &format!("{name}.yaml"),
        &format!(
            "identity:\n  cert: {name}-svid.pem\n  key: {name}-svid-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: {name}\n    listen: 127.0.0.1:0\n    forward: {app}\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    );
    start(config)
        .await
        .unwrap_or_else(|e| panic!("server sidecar: {e}"))
}

/// A client sidecar with outbound `name` to `endpoint`, expecting `upstream_id`.
pub async fn client_sidecar(
    pki: &Pki,
    name: &str,
    spiffe_id: &str,
    endpoint: SocketAddr,
    upstream_id: &str,
) -> Sidecar {
    pki.svid(&format!("{name}-client-svid"), spiffe_id);
    let config = pki.config(
        &format!("{name}-client.yaml"),
        &format!(
            "identity:\n  cert: {name}-client-svid.pem\n  key: {name}-client-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: {name}\n    listen: 127.0.0.1:0\n    endpoints: [{endpoint}]\n    identity: {upstream_id}\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    );
    start(config)
        .await
        .unwrap_or_else(|e| panic!("client sidecar: {e}"))
}

/// Sends `data`, half-closes, and reads until the other side closes.
pub async fn round_trip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(data.len());
    let read = r.read_to_end(&mut back);
    let (wr, rd) = tokio::join!(write, read);
    wr?;
    rd?;
    Ok(back)
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of the series `name{labels…}` in Prometheus text, matching
/// every given label.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Polls `check` every 20 ms until it returns `Some` or `within` passes.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the sidecar's metric reaches `want`.
pub async fn wait_metric(sidecar: &Sidecar, name: &str, labels: &[(&str, &str)], want: f64) {
    let what = format!("{name}{labels:?} == {want}");
    wait_for(Duration::from_secs(10), &what, || async {
        (metric(&sidecar.metrics().encode(), name, labels) == Some(want)).then_some(())
    })
    .await
}

/// Whether an outside tool is installed. Under PORTCULLIS_REQUIRE_TOOLS=1
/// (as CI sets) a missing tool fails the test; otherwise the test is
/// skipped with the reason printed.
pub fn have_tool(tool: &str, test: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("PORTCULLIS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{test}: required tool `{tool}` is not installed (PORTCULLIS_REQUIRE_TOOLS=1)");
        }
        eprintln!("SKIPPED {test}: `{tool}` is not installed");
    }
    found
}

/// A TLS stream to `addr` presenting `client_tls`'s identity.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Whether `peer`'s SVID gets an echo from the server at `addr` (which
/// presents `server_id`) right now.
pub async fn echoes(pki: &Pki, peer: &str, server_id: &str, addr: SocketAddr) -> bool {
    let io = async {
        let mut s = tls_connect(addr, pki.client_tls(peer, server_id)).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        Ok::<_, std::io::Error>(s.read(&mut b).await? == 1)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), io).await,
        Ok(Ok(true))
    )
}

/// `POST /reload` on an admin server: (status, JSON reply).
pub async fn post_reload(admin: SocketAddr) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Writes the CA's certificate and key and a minimal `openssl ca` config
/// (index.txt database) beside them, for `openssl ca` and `openssl ocsp`.
pub fn openssl_ca(pki: &Pki) {
    let d = pki.dir.path();
    std::fs::write(d.join("ca.pem"), pki.ca.cert_pem()).unwrap();
    std::fs::write(d.join("ca-key.pem"), pki.ca.key_pem()).unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    // Our SVIDs share a subject; their identity is the URI SAN.
    std::fs::write(d.join("index.txt.attr"), "unique_subject = no\n").unwrap();
    std::fs::write(d.join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        d.join("ca.cnf"),
        "[ ca ]\ndefault_ca = CA_default\n[ CA_default ]\ndatabase = ./index.txt\ncrlnumber = ./crlnumber\n\
         certificate = ./ca.pem\nprivate_key = ./ca-key.pem\ndefault_md = sha256\ndefault_crl_days = 7\n",
    )
    .unwrap();
}

/// Runs `openssl` in `dir` and insists it succeeds.
pub fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
