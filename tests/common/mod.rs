//! Helpers shared by the integration tests: a PKI in a temp dir, sidecars
//! started in-process from real YAML, an echo app, a plain HTTP GET for
//! the admin server, metric lookups, polling with a deadline, and the rule
//! for outside tools (skip with a reason, or fail under
//! PORTCULLIS_REQUIRE_TOOLS=1).
#![allow(dead_code)]

pub mod openssl;
pub mod pair;

#[allow(unused_imports)]
pub use openssl::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis::config::Config;
use portcullis::identity::{SpiffeId, TrustDomain};
use portcullis::pki::{Ca, Issued, LeafSpec};
use portcullis::sidecar::{Sidecar, start};
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
    tokio::spawn(portcullis::cmd::demo::echo_server(l));
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
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status(&text), body))
}

/// Sends raw bytes to `addr` and reads the reply until the peer closes or
/// 15 s pass.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// The status code of a raw HTTP/1.x response, or 0 when there is none.
pub fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A header's value in a raw HTTP/1.x response (name matched ignoring case).
pub fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
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

/// Whether the test can do what only root may (mount namespaces, network
/// namespaces). As with tools: skipped with the reason printed, or a
/// failure under PORTCULLIS_REQUIRE_TOOLS=1.
pub fn have_root(test: &str) -> bool {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        if std::env::var("PORTCULLIS_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{test}: needs root (PORTCULLIS_REQUIRE_TOOLS=1)");
        }
        eprintln!("SKIPPED {test}: needs root");
        return false;
    }
    true
}

/// A loopback address with a port nothing listens on now, for a sidecar
/// run as a process (whose bound ports the test cannot ask). The kernel
/// hands out ports in random order, so a clash in the window is rare.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A TCP connection to `to` from `ip` (any 127.0.0.0/8 address is
/// loopback on Linux), so one test can be several clients.
pub async fn tcp_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind((std::net::Ipv4Addr::from(ip), 0).into()).unwrap();
    s.connect(to).await.unwrap()
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

// === A real HTTP app for the L7 tests ===

/// What the HTTP app reports about a request it received.
#[derive(Debug, serde::Deserialize)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(|s| s.as_str())
    }
}

/// A response body made of fixed frames (data, then trailers).
pub struct Frames(pub std::collections::VecDeque<hyper::body::Frame<bytes::Bytes>>);

impl hyper::body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        // Known length (so a Content-Length) unless trailers follow.
        if self.0.iter().all(|f| f.is_data()) {
            let n: usize = self
                .0
                .iter()
                .filter_map(|f| f.data_ref())
                .map(|d| d.len())
                .sum();
            hyper::body::SizeHint::with_exact(n as u64)
        } else {
            hyper::body::SizeHint::default()
        }
    }
}

fn frames(data: impl Into<bytes::Bytes>) -> Frames {
    Frames([hyper::body::Frame::data(data.into())].into())
}

/// Starts an HTTP app speaking HTTP/1.1 and HTTP/2 (prior knowledge) on
/// one loopback port. Routes: `/ws` (WebSocket echo), `CONNECT` (byte
/// echo), `/grpc` (echoes the body with gRPC trailers), `/slow` (answers
/// after 3 s), `/count` (streams the body in and answers its length),
/// anything else: JSON describing the request. Returns its address and a
/// counter of the connections it accepted.
pub async fn http_app() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(app_handler);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    (addr, accepted)
}

/// `n` bytes in 64 KiB chunks, made as they are read.
pub struct Generated {
    pub left: u64,
    pub chunk: bytes::Bytes,
}

impl Generated {
    pub fn new(n: u64) -> Self {
        Generated {
            left: n,
            chunk: bytes::Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl hyper::body::Body for Generated {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.slice(..n)))))
    }
}

type AppBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

async fn app_handler(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<AppBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    if let Some(n) = req.uri().path().strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        return Ok(hyper::Response::new(Generated::new(n).boxed()));
    }
    app_routes(req).await.map(|r| r.map(|b| b.boxed()))
}

async fn app_routes(
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Frames>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    use hyper::body::Frame;
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::CONNECT {
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = up.await {
                let mut io = hyper_util::rt::TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(hyper::Response::new(frames("")));
    }
    if path == "/ws" {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = up.await {
                let _ = ws_echo(hyper_util::rt::TokioIo::new(up)).await;
            }
        });
        let r = hyper::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", ws_accept(&key))
            .body(frames(""))
            .unwrap();
        return Ok(r);
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return Ok(hyper::Response::new(frames("slow\n")));
    }
    if path == "/count" {
        let mut n: u64 = 0;
        let mut body = req.into_body();
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => n += f.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                Err(_) => break,
            }
        }
        return Ok(hyper::Response::new(frames(n.to_string())));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if path == "/grpc" {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "all-good".parse().unwrap());
        let r = hyper::Response::builder()
            .header("content-type", "application/grpc")
            .body(Frames(
                [Frame::data(body), Frame::trailers(trailers)].into(),
            ))
            .unwrap();
        return Ok(r);
    }
    let mut headers = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).to_string());
    }
    let seen = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let r = hyper::Response::builder()
        .header("content-type", "application/json")
        .body(frames(seen.to_string()))
        .unwrap();
    Ok(r)
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn ws_accept(key: &str) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&h.finalize())
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Echoes WebSocket text/binary frames (client frames are masked, ours
/// are not) until the peer closes.
async fn ws_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await?;
        let len = (head[1] & 0x7f) as usize;
        assert!(len < 126, "test frames are short");
        let mut mask = [0u8; 4];
        s.read_exact(&mut mask).await?;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let mut frame = vec![head[0], len as u8];
        frame.extend_from_slice(&payload);
        s.write_all(&frame).await?;
    }
}

/// A client WebSocket text frame (masked).
pub fn ws_frame(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Runs curl with `args` and returns (success, stdout, stderr).
pub async fn curl(args: &[&str]) -> (bool, String, String) {
    let o = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// The resident set size of process `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
