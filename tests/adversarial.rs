//! Adversarial HTTP/2 and HTTP/1 against a sidecar run as its own process
//! (so its memory is its own): rapid reset (CVE-2023-44487), CONTINUATION
//! flood (CVE-2024-27316 class), an HPACK bomb, SETTINGS and PING floods,
//! a zero window held forever, and request smuggling pairs, each against
//! the inbound listener (mTLS, ALPN h2) and the outbound listener
//! (plaintext from the app, h2 prior knowledge). After each attack the
//! sidecar is up, serves another client, the app saw no more than the
//! attack's bound of requests, and the sidecar's RSS stayed under
//! `RSS_BOUND_KIB` (sampled every 20 ms through the attack).

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use portcullis::tls::{Alpn, TlsContext, TrustStore, load_bundle, load_identity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const PEER_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";
/// The stated bound: a debug-build sidecar under any one attack stays
/// under this resident size (it idles at about 24 MiB in a debug build).
const RSS_BOUND_KIB: u64 = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Pin<Box<dyn Io>>;

// === frames ===

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend((stream & 0x7fff_ffff).to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix under `flags`.
fn hpack_int(flags: u8, n: u8, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_string(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(0, 7, s.len(), out);
    out.extend(s);
}

/// A literal header field; `index` adds it to the dynamic table.
fn literal(name: &str, value: &[u8], index: bool) -> Vec<u8> {
    let mut out = vec![if index { 0x40 } else { 0x00 }];
    hpack_string(name.as_bytes(), &mut out);
    hpack_string(value, &mut out);
    out
}

/// `GET path` with :scheme https and :authority a.
fn request_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    b.push(0x04); // :path, literal without indexing, indexed name 4
    hpack_string(path.as_bytes(), &mut b);
    b.push(0x01); // :authority, indexed name 1
    hpack_string(b"a", &mut b);
    b
}

// === the target ===

/// An app that counts the requests it is given (and those for a path
/// with `smuggled` in it, which the policy denies), and serves `/big`
/// (8 MiB) and anything else (a short answer).
async fn counting_app() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let smuggled = Arc::new(AtomicUsize::new(0));
    let (c, sm) = (count.clone(), smuggled.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let (c, sm) = (c.clone(), sm.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        c.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path().contains("smuggled") {
                            sm.fetch_add(1, Ordering::SeqCst);
                        }
                        async move {
                            let body = if req.uri().path() == "/big" {
                                Bytes::from(vec![b'x'; 8 << 20])
                            } else {
                                Bytes::from_static(b"ok")
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(body),
                            ))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    (addr, count, smuggled)
}

struct Target {
    child: tokio::process::Child,
    pid: u32,
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
    app_requests: Arc<AtomicUsize>,
    app_smuggled: Arc<AtomicUsize>,
    peer_tls: Arc<rustls::ClientConfig>,
    _pki: Pki,
}

/// One sidecar process: inbound `orders` (HTTP) in front of the counting
/// app, and outbound `orders` (HTTP) to its own inbound.
async fn target() -> Target {
    let pki = Pki::new();
    pki.svid("server", SERVER_ID);
    pki.svid("peer", PEER_ID);
    let (app, app_requests, app_smuggled) = counting_app().await;
    // Every peer of the trust domain, except to /smuggled: a request
    // smuggled past the sidecar's parser would reach the app unjudged.
    std::fs::write(
        pki.path("policy.yaml"),
        "default: deny\nservices:\n  orders:\n    rules:\n\
         \x20     - name: all\n        action: allow\n        from: [\"spiffe://prod.example.org\"]\n\
         \x20     - name: no-smuggling\n        action: deny\n        from: [\"spiffe://prod.example.org\"]\n        paths: [\"/smuggled\"]\n",
    )
    .unwrap();
    let (inbound, outbound, admin) = (free_addr(), free_addr(), free_addr());
    let config = pki.path("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "identity:\n  cert: server.pem\n  key: server-key.pem\n  trust_bundle: bundle.pem\npolicy: policy.yaml\n\
             inbound:\n  - name: orders\n    listen: {inbound}\n    forward: {app}\n    protocol: http\n\
             outbound:\n  - name: orders-out\n    listen: {outbound}\n    endpoints: [{inbound}]\n    identity: {SERVER_ID}\n    protocol: http\n\
             http:\n  request_timeout: 5s\n\
             admin:\n  listen: {admin}\n\
             log:\n  level: error\n"
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_for(
        Duration::from_secs(20),
        "the sidecar ready",
        || async move { (http_get(admin, "/ready").await.ok()?.0 == 200).then_some(()) },
    )
    .await;
    let identity = load_identity(&pki.path("peer.pem"), &pki.path("peer-key.pem")).unwrap();
    let bundle = load_bundle(
        &pki.bundle(),
        &portcullis::identity::TrustDomain::parse(TD).unwrap(),
    )
    .unwrap();
    let ctx = TlsContext::new(identity, TrustStore::new([bundle])).unwrap();
    let peer_tls = ctx.outbound(id(SERVER_ID)).unwrap().config_for(Alpn::Http);
    Target {
        child,
        pid,
        inbound,
        outbound,
        admin,
        app_requests,
        app_smuggled,
        peer_tls,
        _pki: pki,
    }
}

impl Target {
    /// An attacker's connection: mTLS h2 to the inbound listener, or
    /// plaintext to the outbound one.
    async fn connect(&self, inbound: bool) -> Conn {
        if inbound {
            let tls = tls_connect(self.inbound, self.peer_tls.clone())
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            Box::pin(tls)
        } else {
            Box::pin(TcpStream::connect(self.outbound).await.unwrap())
        }
    }

    /// Whether an honest client is served now, through the outbound
    /// listener and the inbound one.
    async fn serves(&self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(10), http_get(self.outbound, "/honest")).await,
            Ok(Ok((200, _)))
        )
    }

    /// Samples RSS every 20 ms until the returned flag is set; the
    /// handle gives the peak.
    fn watch_rss(&self) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p, pid) = (stop.clone(), peak.clone(), self.pid);
        let handle = tokio::spawn(async move {
            let t = rss_kib(pid);
            p.fetch_max(t, Ordering::Relaxed);
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        (stop, peak, handle)
    }
}

/// Reads and drops whatever the sidecar sends, until it closes; the
/// handle says how many bytes came.
fn drain(r: tokio::io::ReadHalf<Conn>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut r = r;
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        while let Ok(Ok(k)) = tokio::time::timeout(Duration::from_secs(15), r.read(&mut buf)).await
        {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    })
}

/// Writes `chunk` again and again for up to `within` or `max_bytes`,
/// and returns how much was written before the sidecar stopped it
/// (closed the connection or stopped reading).
async fn flood(
    w: &mut tokio::io::WriteHalf<Conn>,
    chunk: &[u8],
    max_bytes: u64,
    within: Duration,
) -> u64 {
    let deadline = tokio::time::Instant::now() + within;
    let mut written = 0u64;
    while written < max_bytes && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), w.write_all(chunk)).await {
            Ok(Ok(())) => written += chunk.len() as u64,
            // Refused (closed) or stalled (the sidecar stopped reading).
            _ => break,
        }
    }
    written
}

async fn h2_start(conn: Conn) -> (tokio::io::ReadHalf<Conn>, tokio::io::WriteHalf<Conn>) {
    let (r, mut w) = tokio::io::split(conn);
    w.write_all(PREFACE).await.unwrap();
    w.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    (r, w)
}

/// Runs `attack` against both listeners, checking after each that the
/// sidecar serves, that RSS stayed under the bound, and that the app saw
/// at most `max_app_requests` of the attack's requests.
async fn against_both<F, Fut>(name: &str, max_app_requests: usize, attack: F)
where
    F: Fn(Conn) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t = target().await;
    assert!(t.serves().await);
    for inbound in [true, false] {
        let side = if inbound { "inbound" } else { "outbound" };
        let before = t.app_requests.load(Ordering::SeqCst);
        let (stop, peak, watcher) = t.watch_rss();
        attack(t.connect(inbound).await).await;
        let seen = t.app_requests.load(Ordering::SeqCst) - before;
        assert!(
            t.serves().await,
            "{name} ({side}): the sidecar no longer serves"
        );
        stop.store(true, Ordering::Relaxed);
        watcher.await.unwrap();
        let peak = peak.load(Ordering::Relaxed);
        eprintln!("{name} ({side}): peak RSS {peak} KiB, app saw {seen} requests");
        assert!(
            peak > 0 && peak < RSS_BOUND_KIB,
            "{name} ({side}): peak RSS {peak} KiB"
        );
        assert!(
            seen <= max_app_requests,
            "{name} ({side}): the app saw {seen} requests, more than {max_app_requests}"
        );
    }
    let _ = t.admin;
    drop(t.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off() {
    // 20,000 streams opened and reset at once. The app may see some (a
    // request can reach it before its reset does), never most.
    against_both("rapid reset", 2_000, |conn| async move {
        let (r, mut w) = h2_start(conn).await;
        let reader = drain(r);
        let mut batch = Vec::new();
        let mut sent = 0u32;
        for i in 0..20_000u32 {
            let stream = 2 * i + 1;
            batch.extend(frame(
                HEADERS,
                END_HEADERS,
                stream,
                &request_block("/reset"),
            ));
            batch.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
            if batch.len() > 32 * 1024 {
                if flood(&mut w, &batch, batch.len() as u64, Duration::from_secs(5)).await == 0 {
                    break;
                }
                sent = i;
                batch.clear();
            }
        }
        let _ = w.shutdown().await;
        drop(w);
        let _ = reader.await;
        assert!(
            sent < 19_000,
            "the sidecar took 20,000 resets on one connection without closing it"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    // A header block that never ends: CONTINUATION frames of headers
    // forever. Refused long before 64 MiB.
    against_both("CONTINUATION flood", 0, |conn| async move {
        let (r, mut w) = h2_start(conn).await;
        let reader = drain(r);
        w.write_all(&frame(HEADERS, 0, 1, &request_block("/cont")))
            .await
            .unwrap();
        let mut block = Vec::new();
        while block.len() < 16_000 {
            block.extend(literal("x-flood", &[b'a'; 100], false));
        }
        let chunk = frame(CONTINUATION, 0, 1, &block);
        let written = flood(&mut w, &chunk, 64 << 20, Duration::from_secs(20)).await;
        drop(w);
        let _ = reader.await;
        assert!(written < 64 << 20, "64 MiB of CONTINUATION frames accepted");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bomb_is_refused() {
    // One 4,000-byte header put in the dynamic table, then referenced
    // 16,000 times in one small block: 64 MB of headers in 16 KB.
    against_both("HPACK bomb", 1, |conn| async move {
        let (r, mut w) = h2_start(conn).await;
        let reader = drain(r);
        let mut first = request_block("/seed");
        first.extend(literal("x-bomb", &[b'b'; 4000], true));
        w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &first))
            .await
            .unwrap();
        let mut bomb = request_block("/bomb");
        bomb.extend(std::iter::repeat_n(0xbe, 16_000)); // indexed: dynamic entry 62
        let _ = w
            .write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &bomb))
            .await;
        let _ = w.flush().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(w);
        let _ = reader.await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_stay_bounded() {
    // Frames that each ask for an answer, sent without ever reading one:
    // the sidecar must stop reading (or close) rather than queue answers.
    for (name, chunk) in [
        (
            "SETTINGS flood",
            frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
        ),
        ("PING flood", frame(PING, 0, 0, &[7; 8])),
    ] {
        let chunk: Vec<u8> = chunk.repeat(1000);
        against_both(name, 0, move |conn| {
            let chunk = chunk.clone();
            async move {
                let (r, mut w) = h2_start(conn).await;
                // Never read: the answers pile up on the sidecar's side.
                let written = flood(&mut w, &chunk, 256 << 20, Duration::from_secs(10)).await;
                drop((r, w));
                assert!(
                    written < 256 << 20,
                    "256 MiB of control frames taken without pushing back"
                );
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_held_forever_costs_a_bounded_buffer() {
    // Ask for 8 MiB with a window of 0 and never open it, on 20 streams.
    against_both("zero window", 20, |conn| async move {
        let (r, mut w) = tokio::io::split(conn);
        w.write_all(PREFACE).await.unwrap();
        w.write_all(&frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]))
            .await
            .unwrap(); // INITIAL_WINDOW_SIZE 0
        for i in 0..20u32 {
            w.write_all(&frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                2 * i + 1,
                &request_block("/big"),
            ))
            .await
            .unwrap();
        }
        // Hold it past the request timeout, reading only what arrives.
        let reader = drain(r);
        tokio::time::sleep(Duration::from_secs(7)).await;
        drop(w);
        let got = reader.await.unwrap();
        assert!(got < 1 << 20, "{got} bytes sent into a zero window");
    })
    .await;
}

/// The HTTP/1 smuggling pairs. The sidecar parses each request once and
/// hands the app a request it framed itself, so the two can never
/// disagree; what must hold is that nothing reaches the app unjudged: the
/// bytes that would be a second request (to /smuggled, which the policy
/// denies) never reach the app. The ambiguous pairs (TE with CL, two CLs,
/// obs-fold, a space before the colon) are refused with 400 or answered
/// once with the connection closed; the others may be read as two
/// requests, the second judged (and refused 403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_pairs_are_refused() {
    let t = target().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases = [
        (
            "TE and CL",
            true,
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "CL and TE",
            true,
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two CL",
            true,
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "obs-fold",
            true,
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n Content-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "bare LF",
            false,
            format!("POST / HTTP/1.1\nHost: a\nContent-Length: 0\n\n{smuggled}"),
        ),
        (
            "TE not chunked",
            false,
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n{smuggled}"),
        ),
        (
            "TE chunked twice",
            false,
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "space before colon",
            true,
            format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
    ];
    let mut refused = 0;
    for (name, must_refuse, request) in &cases {
        for inbound in [true, false] {
            let side = if inbound { "inbound" } else { "outbound" };
            let mut conn = if inbound {
                let config = {
                    let mut c = (*t.peer_tls).clone();
                    c.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Arc::new(c)
                };
                Box::pin(tls_connect(t.inbound, config).await.unwrap()) as Conn
            } else {
                t.connect(false).await
            };
            conn.write_all(request.as_bytes()).await.unwrap();
            // Everything that comes back until the sidecar closes or goes
            // quiet for half a second.
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(&buf[..n]);
            }
            let reply = String::from_utf8_lossy(&reply);
            if reply.starts_with("HTTP/1.1 400") {
                refused += 1;
            } else if *must_refuse {
                // Or answered once and the connection closed (RFC 9112
                // §6.3 for TE with CL): the rest is never read as a request.
                let answers = reply.matches("HTTP/1.1 ").count();
                assert!(
                    answers == 1 && reply.to_ascii_lowercase().contains("connection: close"),
                    "{name} ({side}) must be refused or answered once and closed: {reply}"
                );
                refused += 1;
            }
            assert!(
                reply.starts_with("HTTP/1.1 400") || reply.starts_with("HTTP/1.1 200"),
                "{name} ({side}): {reply}"
            );
            assert_eq!(
                t.app_smuggled.load(Ordering::SeqCst),
                0,
                "{name} ({side}): a smuggled request reached the app: {reply}"
            );
        }
    }
    eprintln!(
        "smuggling: {refused} of {} pairs refused (400, or one answer and closed), the rest read as judged requests",
        cases.len() * 2
    );
    assert!(t.serves().await);
}

/// The control for the attacks above: the same hand-made frames, sent
/// honestly, are a request the app answers, on both listeners. Without
/// it, a malformed frame of our own could pass for a defence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hand_made_frames_are_a_valid_request() {
    let t = target().await;
    for inbound in [true, false] {
        let before = t.app_requests.load(Ordering::SeqCst);
        let (mut r, mut w) = h2_start(t.connect(inbound).await).await;
        w.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap(); // ACK theirs
        let mut block = request_block("/honest");
        block.extend(literal("x-test", b"1", false));
        w.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
            .await
            .unwrap();
        // Read frames until a HEADERS on stream 1 (the response) arrives.
        let mut buf = Vec::new();
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 4096];
            loop {
                let n = r.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before answering");
                buf.extend_from_slice(&chunk[..n]);
                let mut at = 0;
                while buf.len() >= at + 9 {
                    let len = ((buf[at] as usize) << 16)
                        | ((buf[at + 1] as usize) << 8)
                        | buf[at + 2] as usize;
                    let (kind, stream) = (
                        buf[at + 3],
                        u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]),
                    );
                    if kind == HEADERS && stream == 1 {
                        return true;
                    }
                    at += 9 + len;
                }
            }
        })
        .await
        .unwrap();
        assert!(got);
        assert_eq!(t.app_requests.load(Ordering::SeqCst), before + 1);
    }
}
