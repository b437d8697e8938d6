//! Circuit breaking, balancing, limits and retries against real
//! misbehaving servers on loopback: one that resets, one that answers 503,
//! one that stalls, and closed ports. Attempts are counted at the servers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use portcullis::sidecar::{Sidecar, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ORDERS: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

/// A server sidecar "orders" (protocol `protocol`) in front of `app`.
async fn server(pki: &Pki, file: &str, app: SocketAddr, protocol: &str) -> Sidecar {
    pki.svid("orders-svid", ORDERS);
    start(pki.config(
        file,
        &format!(
            "identity:\n  cert: orders-svid.pem\n  key: orders-svid-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    forward: {app}\n    protocol: {protocol}\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap()
}

/// A client sidecar with outbound "orders" to `endpoints`, with `extra`
/// lines (indented for the listener) such as `circuit_breaker:`.
async fn client(
    pki: &Pki,
    file: &str,
    endpoints: &[SocketAddr],
    protocol: &str,
    extra: &str,
) -> Sidecar {
    pki.svid("frontend-svid", FRONTEND);
    let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    start(pki.config(
        file,
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n    identity: {ORDERS}\n    protocol: {protocol}\n{extra}\
             admin:\n  listen: 127.0.0.1:0\n",
            list.join(", ")
        ),
    ))
    .await
    .unwrap()
}

/// A TCP front that counts connections and, while `healthy` is false,
/// resets each one at once; while true, forwards it to `target`.
async fn switchable(
    target: SocketAddr,
    healthy: Arc<AtomicBool>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if !healthy.load(Ordering::SeqCst) {
                // RST instead of FIN: a resetting upstream.
                let _ = s.set_zero_linger();
                drop(s);
                continue;
            }
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(target).await else {
                    return;
                };
                let mut s = s;
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    (addr, accepted)
}

fn state(sc: &Sidecar, endpoint: SocketAddr) -> Option<f64> {
    metric(
        &sc.metrics().encode(),
        "portcullis_circuit_state",
        &[("upstream", "orders"), ("endpoint", &endpoint.to_string())],
    )
}

/// Whether one L4 round trip through the client works.
async fn tcp_ok(out: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(10), round_trip(out, b"ping")).await,
        Ok(Ok(ref b)) if b == b"ping"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_breaker_opens_stops_connects_half_opens_and_closes_on_recovery() {
    let pki = Pki::new();
    let echo = echo_app().await;
    let srv = server(&pki, "orders.yaml", echo, "tcp").await;
    let healthy = Arc::new(AtomicBool::new(false));
    let (front, accepted) = switchable(srv.inbound_addr("orders").unwrap(), healthy.clone()).await;
    let breaker = "    circuit_breaker: { consecutive_failures: 3, open_duration: 300ms, max_open_duration: 300ms, half_open_max_calls: 2, success_threshold: 2 }\n";
    let cl = client(&pki, "frontend.yaml", &[front], "tcp", breaker).await;
    let out = cl.outbound_addr("orders").unwrap();
    assert_eq!(state(&cl, front), Some(0.0));

    // Three resets in a row open the circuit.
    for _ in 0..3 {
        assert!(!tcp_ok(out).await);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(state(&cl, front), Some(1.0));
    let dump = http_get(cl.admin_addr(), "/config_dump").await.unwrap().1;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["upstreams"][0]["endpoints"][0]["circuit"], "open");

    // While open, connections are refused without a connect attempt.
    for _ in 0..5 {
        assert!(!tcp_ok(out).await);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "no connect while open");
    wait_metric(
        &cl,
        "portcullis_connections_closed_total",
        &[("listener", "orders"), ("reason", "circuit_open")],
        5.0,
    )
    .await;

    // The upstream recovers; after the open duration a probe goes through,
    // and two successes close the circuit.
    healthy.store(true, Ordering::SeqCst);
    wait_for(
        Duration::from_secs(10),
        "a probe after the open duration",
        || async { tcp_ok(out).await.then_some(()) },
    )
    .await;
    assert!(tcp_ok(out).await);
    assert_eq!(state(&cl, front), Some(0.0));
    let text = cl.metrics().encode();
    let e = front.to_string();
    for (to, n) in [("open", 1.0), ("half_open", 1.0), ("closed", 1.0)] {
        assert_eq!(
            metric(
                &text,
                "portcullis_circuit_transitions_total",
                &[("endpoint", &e), ("to", to)]
            ),
            Some(n),
            "{to}"
        );
    }
    for _ in 0..5 {
        assert!(tcp_ok(out).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_probe_reopens_the_circuit() {
    let pki = Pki::new();
    let echo = echo_app().await;
    let srv = server(&pki, "orders.yaml", echo, "tcp").await;
    let healthy = Arc::new(AtomicBool::new(false));
    let (front, accepted) = switchable(srv.inbound_addr("orders").unwrap(), healthy).await;
    let breaker = "    circuit_breaker: { consecutive_failures: 2, open_duration: 200ms, max_open_duration: 10s }\n";
    let cl = client(&pki, "frontend.yaml", &[front], "tcp", breaker).await;
    let out = cl.outbound_addr("orders").unwrap();
    for _ in 0..2 {
        assert!(!tcp_ok(out).await);
    }
    assert_eq!(state(&cl, front), Some(1.0));
    // Keep trying until a probe has been let through (and failed).
    wait_for(
        Duration::from_secs(10),
        "a probe to reach the upstream",
        || async {
            let _ = tcp_ok(out).await;
            (accepted.load(Ordering::SeqCst) == 3).then_some(())
        },
    )
    .await;
    assert_eq!(state(&cl, front), Some(1.0), "the failed probe reopened it");
    let text = cl.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "portcullis_circuit_transitions_total",
            &[("to", "open")]
        ),
        Some(2.0)
    );
    // The second open period is longer (backoff): no probe right away.
    for _ in 0..3 {
        assert!(!tcp_ok(out).await);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// An HTTP app answering every request with `status`, counting requests;
/// with `stall`, it never answers.
async fn counting_app(status: u16, stall: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        async move {
                            if stall {
                                std::future::pending::<()>().await;
                            }
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"x"),
                            ));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
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
    (addr, hits)
}

/// One request on its own connection: (status, `x-portcullis-error`).
async fn status_of(out: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: orders\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let response = raw(out, request.as_bytes()).await;
    let reason = header(&response, "x-portcullis-error").unwrap_or_default();
    (status(&response), reason.to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_moves_from_a_503_endpoint_to_healthy_ones() {
    let pki = Pki::new();
    let (good_app, good_hits) = counting_app(200, false).await;
    let (bad_app, bad_hits) = counting_app(503, false).await;
    let good1 = server(&pki, "good1.yaml", good_app, "http").await;
    let good2 = server(&pki, "good2.yaml", good_app, "http").await;
    let bad = server(&pki, "bad.yaml", bad_app, "http").await;
    let endpoints = [
        good1.inbound_addr("orders").unwrap(),
        bad.inbound_addr("orders").unwrap(),
        good2.inbound_addr("orders").unwrap(),
    ];
    let cl = client(
        &pki,
        "frontend.yaml",
        &endpoints,
        "http",
        "    circuit_breaker: { failure_statuses: [503] }\n",
    )
    .await;
    let out = cl.outbound_addr("orders").unwrap();
    let mut ok = 0;
    for _ in 0..60 {
        if status_of(out, "GET", "/").await.0 == 200 {
            ok += 1;
        }
    }
    let bad_n = bad_hits.load(Ordering::SeqCst);
    assert!(
        bad_n <= 6,
        "the 503 endpoint still got {bad_n} of 60 requests"
    );
    assert_eq!(ok + bad_n, 60);
    assert_eq!(good_hits.load(Ordering::SeqCst), ok);
    let ewma = |e: SocketAddr| {
        metric(
            &cl.metrics().encode(),
            "portcullis_endpoint_latency_ewma_seconds",
            &[("endpoint", &e.to_string())],
        )
        .unwrap()
    };
    assert!(ewma(endpoints[1]) > ewma(endpoints[0]) && ewma(endpoints[1]) > ewma(endpoints[2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalling_upstream_times_out_then_fails_fast() {
    let pki = Pki::new();
    let (app, hits) = counting_app(200, true).await;
    let srv = server(&pki, "orders.yaml", app, "http").await;
    let ep = srv.inbound_addr("orders").unwrap();
    pki.svid("frontend-svid", FRONTEND);
    let cl = start(pki.config(
        "frontend.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{ep}]\n    identity: {ORDERS}\n    protocol: http\n\
             \x20   circuit_breaker: {{ consecutive_failures: 2, open_duration: 1h }}\n\
             http:\n  request_timeout: 300ms\n\
             admin:\n  listen: 127.0.0.1:0\n"
        ),
    ))
    .await
    .unwrap();
    let out = cl.outbound_addr("orders").unwrap();
    for _ in 0..2 {
        assert_eq!(
            status_of(out, "GET", "/").await,
            (504, "request_timeout".into())
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(state(&cl, ep), Some(1.0));
    for _ in 0..5 {
        assert_eq!(
            status_of(out, "GET", "/").await,
            (503, "circuit_open".into())
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "nothing reaches a stalled upstream while open"
    );
    let text = cl.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "portcullis_upstream_rejections_total",
            &[("upstream", "orders"), ("reason", "circuit_open")]
        ),
        Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_refuse_exactly_above_the_limit() {
    let pki = Pki::new();
    let (app, hits) = counting_app(200, true).await;
    let srv = server(&pki, "orders.yaml", app, "http").await;
    let ep = srv.inbound_addr("orders").unwrap();
    let cl = client(
        &pki,
        "frontend.yaml",
        &[ep],
        "http",
        "    limits: { max_requests: 3 }\n",
    )
    .await;
    let out = cl.outbound_addr("orders").unwrap();
    // Three requests stall at the app and hold their slots...
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(out).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    wait_for(
        Duration::from_secs(10),
        "three requests at the app",
        || async { (hits.load(Ordering::SeqCst) == 3).then_some(()) },
    )
    .await;
    // ...so the next ones are refused at once.
    for _ in 0..4 {
        assert_eq!(status_of(out, "GET", "/").await, (503, "overloaded".into()));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let text = cl.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "portcullis_upstream_rejections_total",
            &[("reason", "max_requests")]
        ),
        Some(4.0)
    );
    // A slot given back is usable again.
    drop(held.pop());
    wait_for(Duration::from_secs(10), "a freed request slot", || async {
        let mut s = TcpStream::connect(out).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 12];
        let r = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await;
        // Timing out means the request was admitted and is stalling.
        r.is_err().then_some(())
    })
    .await;

    // L4: max_connections.
    let echo = echo_app().await;
    let pki2 = Pki::new();
    let srv2 = server(&pki2, "orders.yaml", echo, "tcp").await;
    let cl2 = client(
        &pki2,
        "frontend.yaml",
        &[srv2.inbound_addr("orders").unwrap()],
        "tcp",
        "    limits: { max_connections: 2 }\n",
    )
    .await;
    let out2 = cl2.outbound_addr("orders").unwrap();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(out2).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        open.push(s);
    }
    let mut third = TcpStream::connect(out2).await.unwrap();
    let mut b = [0u8; 1];
    let _ = third.write_all(b"x").await;
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut b))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the third connection is closed"
    );
    wait_metric(
        &cl2,
        "portcullis_upstream_rejections_total",
        &[("reason", "max_connections")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_requests_are_limited_exactly() {
    let pki = Pki::new();
    // An endpoint that accepts TCP and then says nothing: the mTLS
    // handshake to it hangs, so requests wait for a connection.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = hole.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let cl = client(
        &pki,
        "frontend.yaml",
        &[ep],
        "http",
        "    limits: { max_pending_requests: 2 }\n",
    )
    .await;
    let out = cl.outbound_addr("orders").unwrap();
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(out).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
            .await
            .unwrap();
        waiting.push(s);
    }
    wait_for(
        Duration::from_secs(10),
        "two requests waiting for a connection",
        || async {
            let dump = http_get(cl.admin_addr(), "/config_dump").await.ok()?.1;
            let dump: serde_json::Value = serde_json::from_str(&dump).ok()?;
            (dump["upstreams"][0]["pending_requests"] == 2).then_some(())
        },
    )
    .await;
    // Both pending slots are taken: the next ones are refused at once.
    for _ in 0..4 {
        assert_eq!(status_of(out, "GET", "/").await, (503, "overloaded".into()));
    }
    let text = cl.metrics().encode();
    assert_eq!(
        metric(
            &text,
            "portcullis_upstream_rejections_total",
            &[("reason", "max_pending_requests")]
        ),
        Some(4.0)
    );
    // The waiting requests made one connection attempt between them (a
    // burst opens one connection), and the refused ones none.
    wait_for(
        Duration::from_secs(10),
        "the connection attempt",
        || async { (accepted.load(Ordering::SeqCst) >= 1).then_some(()) },
    )
    .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    drop(waiting);
}

/// A connect failure means the request never left, so it goes to another
/// endpoint whatever its method (as gRPC's transparent retries), paid from
/// the retry budget (whose accounting `upstream/set.rs` unit-tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_of_any_method_are_retried_after_a_connect_failure() {
    let pki = Pki::new();
    let (app, hits) = counting_app(200, false).await;
    let srv = server(&pki, "orders.yaml", app, "http").await;
    let good = srv.inbound_addr("orders").unwrap();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // A fresh client per try: its first request picks one of the two
    // endpoints at random; keep going until it picked the refusing one.
    for method in ["GET", "POST", "PATCH"] {
        let mut seen = false;
        for i in 0..40 {
            let cl = client(
                &pki,
                &format!("c-{method}-{i}.yaml"),
                &[refused, good],
                "http",
                "",
            )
            .await;
            let before = hits.load(Ordering::SeqCst);
            let reply = status_of(cl.outbound_addr("orders").unwrap(), method, "/").await;
            assert_eq!(reply, (200, String::new()), "{method}");
            assert_eq!(
                hits.load(Ordering::SeqCst) - before,
                1,
                "{method}: reached the app once"
            );
            let text = cl.metrics().encode();
            let tried_refused = metric(
                &text,
                "portcullis_endpoint_latency_ewma_seconds",
                &[("endpoint", &refused.to_string())],
            )
            .unwrap_or(0.0)
                > 0.0;
            if tried_refused {
                assert_eq!(
                    metric(
                        &text,
                        "portcullis_upstream_retries_total",
                        &[("upstream", "orders")]
                    ),
                    Some(1.0),
                    "{method}"
                );
                assert_eq!(
                    metric(
                        &text,
                        "portcullis_request_errors_total",
                        &[("reason", "connect_failed")],
                    ),
                    None,
                    "{method}"
                );
                seen = true;
                break;
            }
        }
        assert!(
            seen,
            "{method}: the refusing endpoint was never picked first"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_settings_reload_live_and_bad_ones_are_refused() {
    let pki = Pki::new();
    let (app, hits) = counting_app(200, true).await;
    let srv = server(&pki, "orders.yaml", app, "http").await;
    let ep = srv.inbound_addr("orders").unwrap();
    let cl = client(
        &pki,
        "frontend.yaml",
        &[ep],
        "http",
        "    limits: { max_requests: 3 }\n",
    )
    .await;
    let out = cl.outbound_addr("orders").unwrap();
    let file = pki.path("frontend.yaml");
    let text = std::fs::read_to_string(&file).unwrap();

    std::fs::write(&file, text.replace("max_requests: 3", "max_requests: 1")).unwrap();
    let (status, reply) = post_reload(cl.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    // The file watch may have applied it a moment before.
    let result = reply["upstreams"]["result"].as_str().unwrap();
    assert!(result == "success" || result == "unchanged", "{reply}");
    if result == "success" {
        assert_eq!(reply["upstreams"]["changed"][0], "orders");
    }

    // One stalled request now fills the upstream.
    let mut held = TcpStream::connect(out).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the held request at the app",
        || async { (hits.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    assert_eq!(status_of(out, "GET", "/").await, (503, "overloaded".into()));

    // An invalid value is refused with its place; the live settings stay.
    std::fs::write(&file, text.replace("max_requests: 3", "max_requests: 0")).unwrap();
    let (status, reply) = post_reload(cl.admin_addr()).await;
    assert_eq!(status, 400, "{reply}");
    let err = reply["upstreams"]["error"].as_str().unwrap();
    assert!(
        err.contains("frontend.yaml:") && err.contains("limits.max_requests must be at least 1"),
        "{err}"
    );
    assert_eq!(status_of(out, "GET", "/").await, (503, "overloaded".into()));
    let dump = http_get(cl.admin_addr(), "/config_dump").await.unwrap().1;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["upstreams"][0]["settings"]["max_requests"], 1);
    assert_eq!(dump["upstreams"][0]["requests"], 1);
}

/// The local app can open at most `limits.max_app_connections` at an
/// outbound listener, whatever it sends on them (here nothing); over it a
/// new one is closed at once and counted. The ceiling reloads live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_connections_are_bounded_per_outbound_listener_and_reload_live() {
    let pki = Pki::new();
    let (app, _) = counting_app(200, false).await;
    let srv = server(&pki, "orders.yaml", app, "http").await;
    let ep = srv.inbound_addr("orders").unwrap();
    let cl = client(
        &pki,
        "frontend.yaml",
        &[ep],
        "http",
        "    limits: { max_app_connections: 2 }\n",
    )
    .await;
    let out = cl.outbound_addr("orders").unwrap();
    let rejected = || {
        metric(
            &cl.metrics().encode(),
            "portcullis_listener_rejected_connections_total",
            &[
                ("direction", "outbound"),
                ("listener", "orders"),
                ("limit", "max_app_connections"),
            ],
        )
    };
    let active = || async {
        metric(
            &cl.metrics().encode(),
            "portcullis_connections_active",
            &[("direction", "outbound"), ("listener", "orders")],
        )
    };

    let idle: Vec<TcpStream> = vec![
        TcpStream::connect(out).await.unwrap(),
        TcpStream::connect(out).await.unwrap(),
    ];
    wait_for(
        Duration::from_secs(10),
        "two app connections open",
        || async { (active().await == Some(2.0)).then_some(()) },
    )
    .await;
    let mut third = TcpStream::connect(out).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await;
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut b))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "the third connection was served"
    );
    assert_eq!(rejected(), Some(1.0));

    // Raised live: a third fits next to the two still open.
    let file = pki.path("frontend.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("max_app_connections: 2", "max_app_connections: 3"),
    )
    .unwrap();
    let (status, reply) = post_reload(cl.admin_addr()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(status_of(out, "GET", "/").await.0, 200);
    assert_eq!(rejected(), Some(1.0));
    drop(idle);
}

/// `max_requests` counts a request until its answer's body ends: a
/// streamed answer (a download, a gRPC stream) keeps the upstream busy
/// after its head. An app whose first answer sends its head and half its
/// body, then waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_slot_is_held_until_the_answer_body_ends() {
    let finish = Arc::new(tokio::sync::Notify::new());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let first = Arc::new(AtomicBool::new(true));
    {
        let (finish, first) = (finish.clone(), first.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (finish, first) = (finish.clone(), first.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |_req: hyper::Request<hyper::body::Incoming>| {
                            let (finish, first) = (finish.clone(), first.clone());
                            async move {
                                let stall = first.swap(false, Ordering::SeqCst);
                                let (tx, rx) = tokio::sync::mpsc::channel(2);
                                tokio::spawn(async move {
                                    let _ = tx.send(bytes::Bytes::from_static(b"hello ")).await;
                                    if stall {
                                        finish.notified().await;
                                    }
                                    let _ = tx.send(bytes::Bytes::from_static(b"world")).await;
                                });
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    ChannelBody(rx),
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
    }
    let pki = Pki::new();
    let srv = server(&pki, "orders.yaml", app, "http").await;
    let cl = client(
        &pki,
        "frontend.yaml",
        &[srv.inbound_addr("orders").unwrap()],
        "http",
        "    limits: { max_requests: 1 }\n",
    )
    .await;
    let out = cl.outbound_addr("orders").unwrap();

    // The first answer's head and first bytes arrive; its body goes on.
    let mut streaming = TcpStream::connect(out).await.unwrap();
    streaming
        .write_all(b"GET /stream HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("hello") {
        let n = tokio::time::timeout(Duration::from_secs(10), streaming.read(&mut buf))
            .await
            .expect("the head and first bytes in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        status_of(out, "GET", "/second").await,
        (503, "overloaded".into())
    );

    // The body ends: the slot is free again.
    finish.notify_one();
    while !String::from_utf8_lossy(&got).contains("world") {
        let n = tokio::time::timeout(Duration::from_secs(10), streaming.read(&mut buf))
            .await
            .expect("the rest in time")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    wait_for(Duration::from_secs(10), "the slot given back", || async {
        (status_of(out, "GET", "/third").await.0 == 200).then_some(())
    })
    .await;
}

/// A response body fed frame by frame from a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// An endpoint given by name uses every address the name resolves to, and
/// the name is resolved again: the client sidecar runs as its own process
/// with a hosts file of the test's mounted over /etc/hosts (a mount
/// namespace of its own, so nothing else sees it), and the name
/// `orders.test` points at two server sidecars, 127.0.0.1 and 127.0.0.2 on
/// one port; then at only the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_endpoint_uses_every_address_and_is_resolved_again() {
    const TEST: &str = "a_dns_endpoint_uses_every_address_and_is_resolved_again";
    if !have_root(TEST) || !have_tool("unshare", TEST) || !have_tool("mount", TEST) {
        return;
    }
    let pki = Pki::new();
    let app = echo_app().await;
    pki.svid("orders-svid", ORDERS);
    let serve_at = |ip: &str, port: u16, file: &str| {
        pki.config(
            file,
            &format!(
                "identity:\n  cert: orders-svid.pem\n  key: orders-svid-key.pem\n  trust_bundle: bundle.pem\n\
                 inbound:\n  - name: orders\n    listen: {ip}:{port}\n    forward: {app}\n\
                 admin:\n  listen: 127.0.0.1:0\n"
            ),
        )
    };
    let a = start(serve_at("127.0.0.1", 0, "a.yaml")).await.unwrap();
    let port = a.inbound_addr("orders").unwrap().port();
    let b = start(serve_at("127.0.0.2", port, "b.yaml")).await.unwrap();
    let opened = |s: &Sidecar| {
        metric(
            &s.metrics().encode(),
            "portcullis_connections_opened_total",
            &[("direction", "inbound"), ("listener", "orders")],
        )
        .unwrap_or(0.0)
    };

    let hosts = pki.path("hosts");
    std::fs::write(&hosts, "127.0.0.1 orders.test\n127.0.0.2 orders.test\n").unwrap();
    pki.svid("frontend-svid", FRONTEND);
    let (out, admin) = (free_addr(), free_addr());
    let config = pki.path("frontend.yaml");
    std::fs::write(
        &config,
        format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: {out}\n    endpoints: [\"orders.test:{port}\"]\n    identity: {ORDERS}\n    dns_refresh: 200ms\n\
             admin:\n  listen: {admin}\n"
        ),
    )
    .unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && exec {} run --config {}",
        path_str(&hosts),
        env!("CARGO_BIN_EXE_portcullis"),
        path_str(&config)
    );
    let _client = tokio::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the client sidecar to be ready",
        || async { matches!(http_get(admin, "/ready").await, Ok((200, _))).then_some(()) },
    )
    .await;

    // Both addresses take connections.
    for _ in 0..20 {
        assert!(tcp_ok(out).await);
    }
    let (at_a, at_b) = (opened(&a), opened(&b));
    assert!(at_a >= 5.0 && at_b >= 5.0, "a: {at_a}, b: {at_b}");

    // The name now points at the second only: once resolved again, every
    // connection goes there.
    std::fs::write(&hosts, "127.0.0.2 orders.test\n").unwrap();
    wait_for(
        Duration::from_secs(10),
        "the name resolved again",
        || async {
            let before = opened(&a);
            for _ in 0..4 {
                assert!(tcp_ok(out).await);
            }
            (opened(&a) == before).then_some(())
        },
    )
    .await;
    let before = (opened(&a), opened(&b));
    for _ in 0..10 {
        assert!(tcp_ok(out).await);
    }
    assert_eq!(opened(&a), before.0);
    assert_eq!(opened(&b), before.1 + 10.0);
}

/// An upstream of the test's own on its way out: an HTTP/2 server over
/// TLS 1.3 presenting `ORDERS`, which takes one connection, stops
/// listening, and refuses that connection's first stream unprocessed
/// (REFUSED_STREAM), as a draining server may. Counts refused streams.
async fn refusing_once(pki: &Pki, name: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = pki.svid(name, ORDERS);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(portcullis::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        let Ok((tcp, _)) = l.accept().await else {
            return;
        };
        // Gone before the stream is refused: a new connection to this
        // endpoint fails.
        drop(l);
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        let Ok(mut conn) = h2::server::handshake(tls).await else {
            return;
        };
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
        }
    });
    (addr, refused)
}

/// A request an endpoint gives back unsent goes to another endpoint: the
/// one that gave it back is likely draining, and a new connection to it
/// (what a replay to the same endpoint would make) is refused. The replay
/// is free (nothing reached any upstream) and any bodyless method may be
/// replayed after REFUSED_STREAM. Without the re-pick, the request that
/// met the refusing endpoint was answered 502 `connect_failed`: the soak's
/// one lost request in 7.1 million, while an upstream restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_an_endpoint_gives_back_unsent_goes_to_another_endpoint() {
    let pki = Pki::new();
    let (app, hits) = counting_app(200, false).await;
    let srv = server(&pki, "orders.yaml", app, "http").await;
    let good = srv.inbound_addr("orders").unwrap();
    for method in ["GET", "POST"] {
        let (draining, refused) = refusing_once(&pki, &format!("draining-{method}")).await;
        let cl = client(
            &pki,
            &format!("c-{method}.yaml"),
            &[draining, good],
            "http",
            "",
        )
        .await;
        let out = cl.outbound_addr("orders").unwrap();
        // Each request picks one of the two endpoints at random; go on
        // until one met the refusing endpoint.
        let before = hits.load(Ordering::SeqCst);
        let mut sent = 0;
        while refused.load(Ordering::SeqCst) == 0 {
            assert!(
                sent < 60,
                "{method}: the refusing endpoint was never picked"
            );
            assert_eq!(
                status_of(out, method, "/").await,
                (200, String::new()),
                "{method}"
            );
            sent += 1;
        }
        assert_eq!(refused.load(Ordering::SeqCst), 1, "{method}");
        // Every request, the refused one included, reached the app once.
        assert_eq!(hits.load(Ordering::SeqCst) - before, sent, "{method}");
        let text = cl.metrics().encode();
        assert_eq!(
            metric(
                &text,
                "portcullis_upstream_retries_total",
                &[("upstream", "orders")]
            ),
            Some(0.0),
            "{method}"
        );
        // Later requests find the endpoint that is left.
        for _ in 0..5 {
            assert_eq!(status_of(out, method, "/").await.0, 200, "{method}");
        }
    }
}
