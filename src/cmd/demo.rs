//! `portcullis demo`: the whole product on loopback in one process. It
//! makes a throwaway dev CA, an echo app and an HTTP app, a server sidecar
//! in front of both behind a policy, and a client sidecar that reaches
//! them over mTLS. It sends traffic through, shows the identity header the
//! HTTP app received, a request the policy denies (403), the decision
//! metric of each, and a peer from another trust domain being refused, and
//! keeps running so a user can try it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::identity::{SpiffeId, TrustDomain};
use crate::pki::Ca;
use crate::sidecar::{Sidecar, start};
use crate::tls::{TlsContext, TrustStore, load_bundle, load_identity};

const DAY: Duration = Duration::from_secs(86400);

/// An HTTP/1.1 app that answers every request with the identity header
/// the sidecar gave it.
async fn identity_app(listener: TcpListener) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let peer = req
                        .headers()
                        .get("x-portcullis-peer-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(none)")
                        .to_string();
                    let body = format!("{} {} from {peer}\n", req.method(), req.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(body)),
                    ))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
    }
}

/// Serves an echo app on `listener`: every byte comes back, and a
/// half-close is answered with one, so tests can see the stream end.
pub async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs the demo; `once` exits after the checks instead of waiting for Ctrl-C.
pub async fn run(once: bool) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_in(&dir, once).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, once: bool) -> Result<(), String> {
    let td = TrustDomain::parse("demo.example.org").map_err(|e| e.to_string())?;
    let server_id =
        SpiffeId::parse("spiffe://demo.example.org/ns/demo/sa/echo").map_err(|e| e.to_string())?;
    let client_id = SpiffeId::parse("spiffe://demo.example.org/ns/demo/sa/client")
        .map_err(|e| e.to_string())?;
    let ca = Ca::generate(&td, DAY).map_err(|e| e.to_string())?;
    write(&dir.join("bundle.pem"), ca.cert_pem())?;
    for (name, id) in [("server", &server_id), ("client", &client_id)] {
        let svid = ca.issue_svid(id, DAY).map_err(|e| e.to_string())?;
        write(&dir.join(format!("{name}.pem")), &svid.cert_pem)?;
        write(&dir.join(format!("{name}-key.pem")), &svid.key_pem)?;
    }

    let app_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let app_addr = app_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(echo_server(app_listener));
    let web_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let web_addr = web_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(identity_app(web_listener));
    write(
        &dir.join("policy.yaml"),
        &format!(
            "# Default deny: the client may use the echo service, and GET /hello on web.\n\
             default: deny\n\
             services:\n\
             \x20 echo:\n    rules:\n      - {{ name: client, action: allow, from: [\"{client_id}\"] }}\n\
             \x20 web:\n    rules:\n      - {{ name: hello, action: allow, from: [\"{client_id}\"], methods: [GET], paths: [/hello] }}\n"
        ),
    )?;

    let server_cfg = dir.join("server.yaml");
    write(
        &server_cfg,
        &format!(
            "# The server sidecar: mTLS in, plaintext to the echo app and the HTTP app.\n\
             identity:\n  cert: server.pem\n  key: server-key.pem\n  trust_bundle: bundle.pem\n\
             policy: policy.yaml\n\
             inbound:\n  - name: echo\n    listen: 127.0.0.1:0\n    forward: {app_addr}\n\
             \x20 - name: web\n    listen: 127.0.0.1:0\n    forward: {web_addr}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    )?;
    let server = start_sidecar(&server_cfg).await?;
    let server_in = server
        .inbound_addr("echo")
        .ok_or("server sidecar has no inbound listener")?;
    let server_web = server
        .inbound_addr("web")
        .ok_or("server sidecar has no web listener")?;

    let client_cfg = dir.join("client.yaml");
    write(
        &client_cfg,
        &format!(
            "# The client sidecar: plaintext from the app, mTLS to the server sidecar.\n\
             identity:\n  cert: client.pem\n  key: client-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: echo\n    listen: 127.0.0.1:0\n    endpoints: [{server_in}]\n    identity: {server_id}\n\
             \x20 - name: web\n    listen: 127.0.0.1:0\n    endpoints: [{server_web}]\n    identity: {server_id}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    )?;
    let client = start_sidecar(&client_cfg).await?;
    let client_out = client
        .outbound_addr("echo")
        .ok_or("client sidecar has no outbound listener")?;
    let client_web = client
        .outbound_addr("web")
        .ok_or("client sidecar has no web listener")?;

    println!("portcullis demo: mutual TLS between two sidecars on loopback\n");
    println!(
        "  dev CA          {}  (files in {})",
        td.id(),
        dir.display()
    );
    println!("  echo app        {app_addr}");
    println!("  server sidecar  inbound  {server_in} -> echo app   as {server_id}");
    println!("  http app        {web_addr}  (answers with the identity header it received)");
    println!("  client sidecar  outbound {client_out} -> {server_in}   as {client_id}");
    println!("                  outbound {client_web} -> {server_web} (HTTP)");
    println!("  policy          {}", dir.join("policy.yaml").display());
    println!();

    let mut ok = true;
    let message = b"hello through mTLS";
    match round_trip(client_out, message).await {
        Ok(back) if back == message => println!(
            "1. ok:      sent {:?} to the client sidecar; the echo app answered through the mTLS hop",
            String::from_utf8_lossy(message)
        ),
        Ok(back) => {
            ok = false;
            println!(
                "1. FAILED:  the echo came back different: {:?}",
                String::from_utf8_lossy(&back)
            );
        }
        Err(e) => {
            ok = false;
            println!("1. FAILED:  no echo through the sidecars: {e}");
        }
    }

    // HTTP through the policy: allowed, with the identity header the app
    // received, and denied, each with its decision metric.
    match http_get(client_web, "/hello").await {
        Ok((200, body)) if body.contains(client_id.as_str()) => {
            let line = wait_for_metric(&server, "rule=\"hello\"").await;
            println!(
                "2. ok:      GET /hello is allowed by rule \"hello\"; the app answered: {}",
                body.trim()
            );
            println!(
                "            server sidecar metric: {}",
                line.unwrap_or_default()
            );
        }
        other => {
            ok = false;
            println!("2. FAILED:  GET /hello: {other:?}");
        }
    }
    match http_get(client_web, "/admin").await {
        Ok((403, _)) => {
            let line = wait_for_metric(&server, "rule=\"default\",service=\"web\"").await;
            println!(
                "3. ok:      GET /admin is denied by the default: 403 forbidden, the app never saw it"
            );
            println!(
                "            server sidecar metric: {}",
                line.unwrap_or_default()
            );
        }
        other => {
            ok = false;
            println!("3. FAILED:  GET /admin: {other:?}");
        }
    }

    let rogue_id = "spiffe://evil.example.net/ns/x/sa/mallory";
    let refused = rogue_attempt(dir, &ca, server_in, &server_id, rogue_id).await?;
    let metric_line = wait_for_metric(&server, "result=\"untrusted_domain\"").await;
    match (refused, metric_line) {
        (true, Some(line)) => {
            println!(
                "4. ok:      a peer with an SVID from another trust domain ({rogue_id}) was refused"
            );
            println!("            server sidecar metric: {line}");
        }
        (refused, line) => {
            ok = false;
            println!("4. FAILED:  rogue peer refused: {refused}; metric: {line:?}");
        }
    }
    println!();
    println!("Try it yourself:");
    println!(
        "  nc 127.0.0.1 {}                          type a line; it comes back through mTLS",
        client_out.port()
    );
    println!(
        "  curl -s http://{}/hello                 allowed, with your identity",
        client_web
    );
    println!(
        "  curl -s -i http://{}/admin              denied: 403",
        client_web
    );
    println!(
        "  curl -s http://{}/metrics   server sidecar metrics",
        server.admin_addr()
    );
    println!(
        "  curl -s http://{}/certs     server sidecar certificates",
        server.admin_addr()
    );
    println!(
        "  curl -s http://{}/metrics   client sidecar metrics",
        client.admin_addr()
    );
    println!(
        "  config files: {} and {}",
        server_cfg.display(),
        client_cfg.display()
    );

    if !ok {
        return Err("the demo's checks failed (see above)".into());
    }
    if !once {
        println!("\nRunning until Ctrl-C.");
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        println!();
    }
    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}

/// One HTTP/1.1 GET: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let io = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_string())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
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

async fn start_sidecar(config_path: &Path) -> Result<Sidecar, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    start(config).await.map_err(|e| e.to_string())
}

async fn round_trip(addr: SocketAddr, message: &[u8]) -> Result<Vec<u8>, String> {
    let io = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(message).await?;
        s.shutdown().await?;
        let mut back = Vec::new();
        s.read_to_end(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())
}

/// Connects straight to the server sidecar with an SVID from a trust domain
/// it does not trust. Returns whether the connection was refused.
async fn rogue_attempt(
    dir: &Path,
    ca: &Ca,
    server_in: SocketAddr,
    server_id: &SpiffeId,
    rogue: &str,
) -> Result<bool, String> {
    let evil_td = TrustDomain::parse("evil.example.net").map_err(|e| e.to_string())?;
    let evil_ca = Ca::generate(&evil_td, DAY).map_err(|e| e.to_string())?;
    let rogue_id = SpiffeId::parse(rogue).map_err(|e| e.to_string())?;
    let svid = evil_ca
        .issue_svid(&rogue_id, DAY)
        .map_err(|e| e.to_string())?;
    let cert: PathBuf = dir.join("rogue.pem");
    let key: PathBuf = dir.join("rogue-key.pem");
    write(&cert, &svid.cert_pem)?;
    write(&key, &svid.key_pem)?;
    let bundle_path = dir.join("bundle.pem");
    write(&bundle_path, ca.cert_pem())?;
    let identity = load_identity(&cert, &key).map_err(|e| e.to_string())?;
    let bundle = load_bundle(&bundle_path, &server_id.trust_domain()).map_err(|e| e.to_string())?;
    let ctx = TlsContext::new(identity, TrustStore::new([bundle])).map_err(|e| e.to_string())?;
    let config = ctx
        .outbound(server_id.clone())
        .map_err(|e| e.to_string())?
        .config();
    let connector = tokio_rustls::TlsConnector::from(config);
    let attempt = async {
        let tcp = TcpStream::connect(server_in).await?;
        let name = rustls_pki_types::ServerName::IpAddress(server_in.ip().into());
        let mut tls = connector.connect(name, tcp).await?;
        // TLS 1.3 clients finish before the server has judged their
        // certificate; the refusal arrives on the first read.
        tls.write_all(b"let me in").await?;
        let mut buf = [0u8; 16];
        let n = tls.read(&mut buf).await?;
        Ok::<_, std::io::Error>(n)
    };
    let refused = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    };
    Ok(refused)
}

async fn wait_for_metric(sidecar: &Sidecar, needle: &str) -> Option<String> {
    for _ in 0..50 {
        if let Some(line) = sidecar
            .metrics()
            .encode()
            .lines()
            .find(|l| l.contains(needle) && !l.ends_with(" 0"))
        {
            return Some(line.to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
