//! Proxying through the pair: curl over HTTP/1.1 and HTTP/2 prior
//! knowledge with one pooled hop connection, gRPC trailers across the
//! HTTP/2 hop, falling back to HTTP/1.1 for a peer that offers only that,
//! and draining.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use portcullis::sidecar::start;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::pair::*;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_http1_and_http2_through_a_sidecar_pair() {
    if !have_tool("curl", "curl_http1_and_http2_through_a_sidecar_pair") {
        return;
    }
    let pki = Pki::new();
    let (app, app_conns) = http_app().await;
    let log = pki.path("access.log");
    let client_http = format!("  access_log: {}", path_str(&log));
    let (server, client) = pair(
        &pki,
        app,
        http_side(),
        Side {
            protocol: "http",
            http: &client_http,
            ..Default::default()
        },
    )
    .await;

    // HTTP/1.1 from the app: HTTP/2 on the hop, HTTP/1.1 again at the app.
    let (ok, body, err) = curl(&["--http1.1", "-d", "hello", &url(&client, "/orders/1?x=1")]).await;
    assert!(ok, "curl: {err}");
    let s = seen(&body);
    assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/orders/1"));
    assert_eq!(s.version, "HTTP/1.1");
    assert_eq!(s.body_len, 5);
    assert_eq!(s.header("x-portcullis-peer-id"), Some(FRONTEND));
    assert!(s.header("x-portcullis-orig-proto").is_none(), "{s:?}");
    assert!(
        s.header("host")
            .is_some_and(|h| h.starts_with("127.0.0.1:")),
        "{s:?}"
    );

    // HTTP/2 prior knowledge from the app stays HTTP/2 to the app.
    let (ok, body, err) = curl(&["--http2-prior-knowledge", &url(&client, "/h2")]).await;
    assert!(ok, "curl: {err}");
    let s = seen(&body);
    assert_eq!(s.version, "HTTP/2.0");
    assert_eq!(s.header("x-portcullis-peer-id"), Some(FRONTEND));

    // Many requests over many app connections share one mTLS connection.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let u = url(&client, &format!("/many/{i}"));
        tasks.push(tokio::spawn(async move {
            let v = if i % 2 == 0 {
                "--http1.1"
            } else {
                "--http2-prior-knowledge"
            };
            curl(&[v, "-o", "/dev/null", "-w", "%{http_code}", &u]).await
        }));
    }
    for t in tasks {
        let (ok, code, err) = t.await.unwrap();
        assert!(ok && code == "200", "{code} {err}");
    }
    let text = server.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "portcullis_connections_opened_total",
            &[("direction", "inbound"), ("listener", "orders")]
        ),
        Some(1.0),
        "every request shares one pooled HTTP/2 hop connection"
    );
    assert_eq!(
        metric(
            &text,
            "portcullis_requests_total",
            &[
                ("direction", "inbound"),
                ("service", "orders"),
                ("code_class", "2xx")
            ]
        ),
        Some(42.0)
    );
    let ctext = client.metrics().encode();
    assert_eq!(
        metric(
            &ctext,
            "portcullis_requests_total",
            &[
                ("direction", "outbound"),
                ("service", "orders"),
                ("code_class", "2xx")
            ]
        ),
        Some(42.0)
    );
    assert_eq!(
        metric(
            &ctext,
            "portcullis_request_duration_seconds_count",
            &[("direction", "outbound"), ("service", "orders")]
        ),
        Some(42.0)
    );
    assert!(app_conns.load(Ordering::SeqCst) <= 42);

    // The opt-in access log has one JSON line per request.
    let lines = wait_for(Duration::from_secs(10), "42 access log lines", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("access log line is JSON"))
            .collect();
        (lines.len() == 42).then_some(lines)
    })
    .await;
    let first = &lines[0];
    assert_eq!(first["type"], "access");
    assert_eq!(first["direction"], "outbound");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/orders/1");
    assert_eq!(first["status"], 200);
    assert!(first["duration_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_trailers_survive_the_http2_hop() {
    use http_body_util::BodyExt;
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (_server, client) = pair(&pki, app, http_side(), http_side()).await;
    let tcp = TcpStream::connect(client.outbound_addr("orders").unwrap())
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // A gRPC message: flag, length, payload.
    let mut msg = vec![0u8, 0, 0, 0, 5];
    msg.extend_from_slice(b"hello");
    let req = hyper::Request::post("http://orders/pkg.Service/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(msg.clone())))
        .unwrap();
    // The app answers on /grpc; route by rewriting nothing: ask for it.
    let req = {
        let (mut parts, body) = req.into_parts();
        parts.uri = "http://orders/grpc".parse().unwrap();
        hyper::Request::from_parts(parts, body)
    };
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all-good");
    assert_eq!(collected.to_bytes().as_ref(), &msg[..]);
}

/// A peer that offers only HTTP/1.1 by ALPN: a rustls + hyper server with
/// the orders SVID, counting the connections it accepts.
async fn http1_only_peer(pki: &Pki, app_conns: Arc<std::sync::atomic::AtomicUsize>) -> SocketAddr {
    use portcullis::tls::{TlsContext, TrustStore, load_bundle, load_identity};
    pki.svid("h1peer-svid", ORDERS);
    let identity = load_identity(
        &pki.path("h1peer-svid.pem"),
        &pki.path("h1peer-svid-key.pem"),
    )
    .unwrap();
    let bundle = load_bundle(
        &pki.bundle(),
        &portcullis::identity::TrustDomain::parse(TD).unwrap(),
    )
    .unwrap();
    let ctx = TlsContext::new(identity, TrustStore::new([bundle])).unwrap();
    let mut config = (*ctx.server_config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ctx = ctx;
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            app_conns.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?} {}", req.version(), req.uri());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hop_falls_back_to_http1_when_the_peer_offers_only_that() {
    let pki = Pki::new();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peer = http1_only_peer(&pki, accepted.clone()).await;
    pki.svid("frontend-svid", FRONTEND);
    let c = pki.config(
        "frontend.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{peer}]\n    identity: {ORDERS}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    );
    let client = start(c).await.unwrap();
    let out = client.outbound_addr("orders").unwrap();
    for i in 0..5 {
        let (status, body) = http_get(out, &format!("/seq/{i}")).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, format!("HTTP/1.1 /seq/{i}"));
    }
    // Sequential requests reuse the pooled HTTP/1.1 hop connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_finishes_the_request_in_flight_then_closes_keep_alive_connections() {
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (_server, client) = pair(&pki, app, http_side(), http_side()).await;
    let out = client.outbound_addr("orders").unwrap();

    // An idle keep-alive connection, and one with a slow request in flight.
    let mut idle = TcpStream::connect(out).await.unwrap();
    assert_eq!(
        one_response(&mut idle, b"GET /a HTTP/1.1\r\nHost: orders\r\n\r\n")
            .await
            .0,
        200
    );
    let mut busy = TcpStream::connect(out).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the slow request to reach the app",
        || async {
            let text = _server.metrics().encode();
            (metric(
                &text,
                "portcullis_authz_decisions_total",
                &[("decision", "allow")],
            )
            .unwrap_or(0.0)
                >= 2.0)
                .then_some(())
        },
    )
    .await;

    client.begin_drain();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0))),
        "the idle connection closes at once: {buf:?}"
    );
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut reply))
        .await
        .expect("the slow request finishes, then the connection closes")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 200"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert!(reply.ends_with("slow\n"), "{reply}");
}
