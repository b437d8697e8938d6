//! The load generator and helper servers of `benches/mesh/run.sh`.
//!
//! wrk measures closed-loop maximum throughput; what it cannot do is done
//! here, on one thread:
//!
//! - `rate`: open loop. Each connection has its own schedule (the total
//!   rate split evenly, start times staggered), and a request's latency is
//!   measured from when it was *due*, not when it was sent, so a stall shows
//!   up in the percentiles instead of hiding in fewer samples (coordinated
//!   omission, as wrk2 corrects it).
//! - `count`: exactly N requests over C keep-alive connections, so a
//!   tracer can count syscalls per request.
//! - `bulk` / `sink`: one connection's throughput.
//! - `idle` / `echo`: N connections opened end to end and held.
//! - `handshakes`: full mTLS handshakes against an inbound sidecar.
//!
//! Results are printed as one JSON object on stdout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis::identity::SpiffeId;
use portcullis::tls::{TlsContext, TrustStore, load_bundle, load_identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// `--name value` options after the mode.
struct Opts(Vec<String>);

impl Opts {
    fn get(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        self.0
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }

    fn req<T: std::str::FromStr>(&self, name: &str) -> Result<T, Error> {
        let v = self.get(name).ok_or(format!("--{name} is required"))?;
        v.parse()
            .map_err(|_| format!("--{name}: cannot parse {v:?}").into())
    }

    fn or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Error> {
        match self.get(name) {
            Some(_) => self.req(name),
            None => Ok(default),
        }
    }
}

async fn run(args: Vec<String>) -> Result<(), Error> {
    let mode = args.first().cloned().unwrap_or_default();
    let o = Opts(args);
    match mode.as_str() {
        "rate" => rate(&o).await,
        "count" => count(&o).await,
        "bulk" => bulk(&o).await,
        "sink" => serve(&o, Server::Sink).await,
        "echo" => serve(&o, Server::Echo).await,
        "idle" => idle(&o).await,
        "handshakes" => handshakes(&o).await,
        "flood" => flood(&o).await,
        _ => Err("usage: loadgen rate|count|bulk|sink|echo|idle|handshakes|flood --addr ... (see benches/mesh/run.sh, benches/flood/run.sh)".into()),
    }
}

/// One keep-alive HTTP/1.1 connection issuing `GET path`.
struct Client {
    tcp: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr, path: &str) -> Result<Self, Error> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Client {
            tcp,
            request: format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its whole response; errors on anything
    /// but a 200 with a Content-Length.
    async fn get(&mut self) -> Result<(), Error> {
        self.tcp.write_all(&self.request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                return Err("connection closed before a response".into());
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end])?;
        if !head.starts_with("HTTP/1.1 200") {
            let line = head.lines().next().unwrap_or_default();
            return Err(format!("unexpected response: {line}").into());
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .ok_or("response without Content-Length")?;
        while self.buf.len() < head_end + len {
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                return Err("connection closed inside a body".into());
            }
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Open loop at `--rate` requests/s for `--duration` seconds. The
/// schedule runs on a thread of its own with the OS's fine-grained sleep:
/// the runtime's timer wheel ticks in milliseconds, which alone would add
/// up to a millisecond to every latency. Request i is due at
/// `start + i / rate` and goes to connection `i % conns`; a connection still
/// busy with an earlier request queues it, and the wait counts.
async fn rate(o: &Opts) -> Result<(), Error> {
    let addr: SocketAddr = o.req("addr")?;
    let rate: f64 = o.req("rate")?;
    let secs: f64 = o.or("duration", 10.0)?;
    let conns: usize = o.or("conns", 32)?;
    let path = o.get("path").unwrap_or("/").to_string();
    let total = (secs * rate).round() as u64;
    let mut senders = Vec::with_capacity(conns);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut client = Client::connect(addr, &path).await?;
        client.get().await?; // connected end to end before the clock starts
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        senders.push(tx);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while let Some(due) = rx.recv().await {
                match client.get().await {
                    Ok(()) => lat.push(due.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let start = Instant::now() + Duration::from_millis(50);
    let scheduler = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate);
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if senders[(i as usize) % senders.len()].send(due).is_err() {
                break;
            }
        }
    });
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    if scheduler.join().is_err() {
        return Err("the scheduler thread failed".into());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{{\"requests\":{},\"errors\":{errors},\"achieved_rps\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        percentile(&all, 100.0),
    );
    Ok(())
}

/// Closed loop: exactly `--requests` over `--conns` connections. With
/// `--ready FILE` it connects first, writes FILE, and waits for FILE to be
/// removed before starting (so a tracer can attach in between).
async fn count(o: &Opts) -> Result<(), Error> {
    let addr: SocketAddr = o.req("addr")?;
    let total: u64 = o.req("requests")?;
    let conns: u64 = o.or("conns", 32)?;
    let path = o.get("path").unwrap_or("/").to_string();
    let mut clients = Vec::new();
    for _ in 0..conns {
        let mut c = Client::connect(addr, &path).await?;
        c.get().await?; // the connection exists end to end before counting
        clients.push(c);
    }
    if let Some(ready) = o.get("ready") {
        std::fs::write(ready, b"ready")?;
        while std::path::Path::new(ready).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let left = Arc::new(AtomicU64::new(total));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (left, errors) = (left.clone(), errors.clone());
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    if c.get().await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"requests\":{total},\"errors\":{},\"seconds\":{secs:.3},\"rps\":{:.1}}}",
        errors.load(Ordering::Relaxed),
        total as f64 / secs
    );
    Ok(())
}

enum Server {
    Sink,
    Echo,
}

/// `sink`: each connection announces how many bytes follow (8 bytes,
/// big-endian), sends them, and gets the count read back when all have
/// arrived; no half-close needed, which not every proxy passes on.
/// `echo`: writes back what it reads.
async fn serve(o: &Opts, kind: Server) -> Result<(), Error> {
    let l = TcpListener::bind(o.req::<SocketAddr>("listen")?).await?;
    let kind = Arc::new(kind);
    loop {
        let (mut s, _) = l.accept().await?;
        let kind = kind.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            match *kind {
                Server::Echo => loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                },
                Server::Sink => {
                    let mut announced = [0u8; 8];
                    if s.read_exact(&mut announced).await.is_err() {
                        return;
                    }
                    let want = u64::from_be_bytes(announced);
                    let mut total = 0u64;
                    while total < want {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    let _ = s.write_all(&total.to_be_bytes()).await;
                }
            }
        });
    }
}

/// Sends `--bytes` over one connection to a sink and waits for its count.
async fn bulk(o: &Opts) -> Result<(), Error> {
    let addr: SocketAddr = o.req("addr")?;
    let bytes: u64 = o.req("bytes")?;
    let mut s = TcpStream::connect(addr).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    s.write_all(&bytes.to_be_bytes()).await?;
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        return Err(format!("sink counted {got} bytes of {bytes}").into());
    }
    println!(
        "{{\"bytes\":{bytes},\"seconds\":{secs:.3},\"gbit_per_s\":{:.3}}}",
        bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

/// Opens `--conns` connections, each proven end to end (`--probe echo`:
/// one echoed line; `--probe http`: one `GET /` answered 200), over mTLS
/// when `--cert` is given (see [`tls_connector`]), writes `--ready FILE`,
/// and holds them until FILE is removed.
async fn idle(o: &Opts) -> Result<(), Error> {
    let addr: SocketAddr = o.req("addr")?;
    let n: usize = o.req("conns")?;
    let ready = o.req::<String>("ready")?;
    let http = match o.get("probe").unwrap_or("echo") {
        "echo" => false,
        "http" => true,
        other => return Err(format!("--probe {other:?}: echo or http").into()),
    };
    let tls = match o.get("cert") {
        Some(_) => Some(tls_connector(o)?),
        None => None,
    };
    let mut held = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut opened = 0;
    // A few hundred handshakes in flight at a time, not 10,000 at once.
    while held.len() < n {
        while opened < n && pending.len() < 200 {
            opened += 1;
            let tls = tls.clone();
            pending.spawn(async move {
                let tcp = TcpStream::connect(addr).await?;
                let mut s: Box<dyn Stream> = match tls {
                    Some(c) => {
                        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                        Box::new(c.connect(name, tcp).await?)
                    }
                    None => Box::new(tcp),
                };
                let (req, expect): (&[u8], &[u8]) = if http {
                    (b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n", b"HTTP/1.1 200")
                } else {
                    (b"ping\n", b"ping\n")
                };
                s.write_all(req).await?;
                let mut b = vec![0u8; expect.len()];
                s.read_exact(&mut b).await?;
                if b != expect {
                    return Err::<_, Error>("unexpected answer".into());
                }
                if http {
                    // The rest of the (small) response.
                    let mut rest = [0u8; 512];
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), s.read(&mut rest)).await;
                }
                Ok(s)
            });
        }
        match pending.join_next().await {
            Some(r) => held.push(r??),
            None => break,
        }
    }
    std::fs::write(&ready, format!("{}", held.len()))?;
    while std::path::Path::new(&ready).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{{\"held\":{}}}", held.len());
    Ok(())
}

/// What a hostile pod does to a port: `--conns` TCP connections from the
/// `--from` addresses (comma-separated, taken in turn), each either silent
/// (no byte: for a TLS port, no ClientHello) or, with `--slow`, sending
/// an HTTP request head one byte every `--every` seconds (default 2) and
/// never finishing it. Writes `--ready FILE` with the number it opened,
/// holds them until FILE is removed, and prints how many the server had
/// closed by then.
async fn flood(o: &Opts) -> Result<(), Error> {
    let addr: SocketAddr = o.req("addr")?;
    let n: usize = o.req("conns")?;
    let ready = o.req::<String>("ready")?;
    let slow = o.0.iter().any(|a| a == "--slow");
    let every = Duration::from_secs_f64(o.or("every", 2.0)?);
    let from: Vec<std::net::IpAddr> = o
        .get("from")
        .unwrap_or("127.0.0.1")
        .split(',')
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let closed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut opened = 0u64;
    for i in 0..n {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from[i % from.len()], 0))?;
        let Ok(mut tcp) = socket.connect(addr).await else {
            closed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        opened += 1;
        let closed = closed.clone();
        tasks.spawn(async move {
            let head = b"GET / HTTP/1.1\r\nHost: flood\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut next = 0;
            let mut b = [0u8; 256];
            loop {
                tokio::select! {
                    r = tcp.read(&mut b) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(every), if slow => {
                        if tcp.write_all(&head[next % head.len()..][..1]).await.is_err() {
                            break;
                        }
                        next += 1;
                    }
                }
            }
            closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    std::fs::write(&ready, format!("{opened}"))?;
    while std::path::Path::new(&ready).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{{\"attempted\":{n},\"opened\":{opened},\"closed_by_server\":{}}}",
        closed.load(Ordering::Relaxed)
    );
    tasks.abort_all();
    Ok(())
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// An mTLS client presenting `--cert`/`--key` that requires the server to
/// be `--server-id` under `--bundle`, with no session resumption (every
/// handshake is a full one), offering `--alpn` if given.
fn tls_connector(o: &Opts) -> Result<tokio_rustls::TlsConnector, Error> {
    let id = SpiffeId::parse(o.req::<String>("server-id")?.as_str())?;
    let identity = load_identity(
        std::path::Path::new(o.req::<String>("cert")?.as_str()),
        std::path::Path::new(o.req::<String>("key")?.as_str()),
    )?;
    let bundle = load_bundle(
        std::path::Path::new(o.req::<String>("bundle")?.as_str()),
        &id.trust_domain(),
    )?;
    let ctx = TlsContext::new(identity, TrustStore::new([bundle]))?;
    let mut config = (*ctx.outbound(id)?.config()).clone();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = o
        .get("alpn")
        .map(|a| a.as_bytes().to_vec())
        .into_iter()
        .collect();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Full mTLS handshakes (see [`tls_connector`]) against `--addr` for
/// `--duration` seconds, `--conc` at a time.
async fn handshakes(o: &Opts) -> Result<(), Error> {
    let addr: SocketAddr = o.req("addr")?;
    let secs: f64 = o.or("duration", 5.0)?;
    let conc: usize = o.or("conc", 8)?;
    let connector = tls_connector(o)?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (connector, done, failed, stop) = (
                connector.clone(),
                done.clone(),
                failed.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                while !stop.load(Ordering::Relaxed) {
                    let r = async {
                        let tcp = TcpStream::connect(addr).await?;
                        let mut tls = connector.connect(name.clone(), tcp).await?;
                        tls.shutdown().await?;
                        Ok::<_, Error>(())
                    };
                    match r.await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"handshakes\":{n},\"failed\":{},\"seconds\":{secs:.3},\"per_second\":{:.1}}}",
        failed.load(Ordering::Relaxed),
        n as f64 / secs
    );
    Ok(())
}
