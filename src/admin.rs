//! The admin HTTP server: liveness, readiness, Prometheus metrics, the
//! effective config, the loaded certificates, and `POST /reload`. It binds to loopback
//! unless the config explicitly allows otherwise, and never shows a key.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::State;

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    crate::http_server::serve(listener, shutdown, "admin", move |req| {
        let state = state.clone();
        async move { route(&state, req).await }
    })
    .await
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/reload" {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
        }
        let report = state.reload("POST /reload").await;
        let mut r = json(&report.to_json());
        if !report.ok() {
            *r.status_mut() = StatusCode::BAD_REQUEST;
        }
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/config_dump" => json(&state.config_dump()),
        "/certs" => json(&state.certs_dump()),
        "/" => text(
            StatusCode::OK,
            "portcullis admin: /live /ready /metrics /config_dump /certs, POST /reload\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
