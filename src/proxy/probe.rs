//! The probe listener: plaintext HTTP for kubelet probes, which cannot
//! speak mTLS. It forwards GET and HEAD requests for the configured health
//! paths, and nothing else, to the app, so operators need not open a hole
//! in the policy (or bypass the sidecar) for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Probe answers larger than this are cut: probes only read the status.
const MAX_BODY: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct ProbeListener {
    pub forward: SocketAddr,
    pub paths: Vec<String>,
    pub refusals: super::plaintext::Refusals,
}

impl ProbeListener {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let bounds = super::plaintext::Bounds {
            // Past the app's own TIMEOUT, so the probe's 504 is what a
            // slow app gets.
            request_timeout: TIMEOUT + Duration::from_secs(5),
            ..super::plaintext::Bounds::DEFAULT
        };
        let refusals = self.refusals.clone();
        super::plaintext::serve(listener, shutdown, "probe", bounds, refusals, move |req| {
            let this = self.clone();
            async move { this.handle(req).await }
        })
        .await
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                Bytes::from_static(b"probes use GET or HEAD\n"),
            );
        }
        if !self.paths.iter().any(|p| p == req.uri().path()) {
            return reply(
                StatusCode::NOT_FOUND,
                Bytes::from_static(b"not a probe path\n"),
            );
        }
        match tokio::time::timeout(
            TIMEOUT,
            self.forward(req.method().clone(), req.uri().clone()),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "probe forward failed");
                reply(
                    StatusCode::BAD_GATEWAY,
                    Bytes::from_static(b"app unreachable\n"),
                )
            }
            Err(_) => reply(
                StatusCode::GATEWAY_TIMEOUT,
                Bytes::from_static(b"app timed out\n"),
            ),
        }
    }

    async fn forward(
        &self,
        method: Method,
        uri: hyper::Uri,
    ) -> Result<Response<Full<Bytes>>, String> {
        let stream = TcpStream::connect(self.forward)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut out = Request::builder()
            .method(method)
            .uri(path)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        if let Ok(host) = HeaderValue::from_str(&self.forward.to_string()) {
            out.headers_mut().insert(HOST, host);
        }
        let resp = sender.send_request(out).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let content_type = resp.headers().get(CONTENT_TYPE).cloned();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut r = reply(status, body);
        if let Some(ct) = content_type {
            r.headers_mut().insert(CONTENT_TYPE, ct);
        }
        Ok(r)
    }
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}
