//! The control plane's HTTP client: a minimal plain-HTTP/1.1 client for
//! fetching revocation data (OCSP answers, CRLs). Both are signed, so they travel over `http://` as their
//! URLs in certificates say. Every request has a timeout and a cap on the
//! body size.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("reading the body: {0}")]
    Body(String),
    #[error("timed out")]
    Timeout,
}

/// Sends one request to an `http://` URL and returns the response body.
pub async fn send(
    method: hyper::Method,
    url: &str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    max_body: usize,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let unreachable = |e: &dyn std::fmt::Display| FetchError::Unreachable(e.to_string());
    let io = async {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| FetchError::Unreachable(format!("bad URL {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(FetchError::Unreachable(format!(
                "{url}: only http:// URLs are supported"
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| FetchError::Unreachable(format!("{url}: no host")))?
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host);
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(&e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| FetchError::Timeout)?
}
