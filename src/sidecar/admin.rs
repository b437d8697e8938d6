//! The admin HTTP server: liveness, readiness, Prometheus metrics, the
//! effective config (`/config_dump`), the loaded certificates (`/certs`),
//! and `POST /reload`. It binds to loopback
//! unless the config explicitly allows otherwise, and never shows a key.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::control::ControlPlane;

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, plane: Arc<ControlPlane>, shutdown: CancellationToken) {
    use crate::proxy::plaintext::{self, Bounds, Refusals};
    let refusals = Refusals::new(plane.metrics.connections.plaintext_refused.clone(), "admin");
    plaintext::serve(
        listener,
        shutdown,
        "admin",
        Bounds::DEFAULT,
        refusals,
        move |req| {
            let plane = plane.clone();
            async move { route(&plane, req).await }
        },
    )
    .await
}

/// Serves what the admin API can say before we have an identity (the
/// Workload API has not yet sent a valid SVID): live, not ready (with
/// `why`), and the metrics; everything else is 503 with `why`.
pub async fn serve_waiting(
    listener: TcpListener,
    metrics: Arc<crate::metrics::Metrics>,
    why: String,
    stop: CancellationToken,
) {
    use crate::proxy::plaintext::{self, Bounds, Refusals};
    let refusals = Refusals::new(metrics.connections.plaintext_refused.clone(), "admin");
    let why = Bytes::from(why);
    plaintext::serve(
        listener,
        stop,
        "admin",
        Bounds::DEFAULT,
        refusals,
        move |req| {
            let (metrics, why) = (metrics.clone(), why.clone());
            async move {
                match req.uri().path() {
                    "/live" => text(StatusCode::OK, "live\n"),
                    "/metrics" => metrics_response(&metrics),
                    _ => {
                        let mut r = Response::new(Full::new(why));
                        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        r
                    }
                }
            }
        },
    )
    .await
}

fn metrics_response(metrics: &crate::metrics::Metrics) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(metrics.encode())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn route(plane: &Arc<ControlPlane>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/reload" {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
        }
        let report = plane.reload("POST /reload").await;
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
            if plane.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => metrics_response(&plane.metrics),
        "/config_dump" => json(&config_dump(plane)),
        "/certs" => json(&certs_dump(plane)),
        "/" => text(
            StatusCode::OK,
            "portcullis admin: /live /ready /metrics /config_dump /certs, POST /reload\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The effective config and identity, for `/config_dump`. Paths only:
/// never key material.
fn config_dump(plane: &ControlPlane) -> serde_json::Value {
    let id = plane.tls.identity().current();
    let policy = plane.policy.active();
    serde_json::json!({
        "config": &plane.config,
        "policy": {
            "file": plane.policy.path(),
            "sha256": policy.sha256,
            "loaded_at": policy.loaded_at,
            "spec": policy.spec,
            "note": if policy.spec.is_none() { Some("no policy file: every authenticated peer of a trusted trust domain is admitted") } else { None },
        },
        "identity": {
            "spiffe_id": id.leaf.id.as_str(),
            "serial": id.leaf.serial,
            "not_after": id.leaf.not_after,
        },
        "upstreams": plane.upstreams().iter().map(|s| s.dump()).collect::<Vec<_>>(),
    })
}

/// Every loaded certificate, for `/certs`.
fn certs_dump(plane: &ControlPlane) -> serde_json::Value {
    let id = plane.tls.identity().current();
    let trust = plane.tls.trust();
    let mut bundles: Vec<_> = trust
        .bundles()
        .map(|b| {
            serde_json::json!({
                "trust_domain": b.trust_domain.as_str(),
                "source": b.source,
                "spiffe_sequence": b.sequence,
                "roots": &b.roots,
            })
        })
        .collect();
    bundles.sort_by(|a, b| a["trust_domain"].as_str().cmp(&b["trust_domain"].as_str()));
    serde_json::json!({ "identity": &id.chain, "identity_source": id.source, "trust_bundles": bundles })
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
