//! The control plane's HTTP client: a minimal HTTP/1.1 client for
//! fetching revocation data (OCSP answers, CRLs) and federated trust
//! bundles. Revocation data is signed, so it travels over `http://` as the
//! URLs in certificates say; bundles come over `https://` with the TLS
//! config their endpoint profile asks for. Every request has a timeout and
//! a cap on the body size.

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
    let request = Request {
        method,
        content_type,
        body,
        max_body,
    };
    tokio::time::timeout(timeout, fetch(url, None, request))
        .await
        .map_err(|_| FetchError::Timeout)?
}

/// GETs an `https://` URL over TLS made with `tls` and returns the body.
pub async fn get_https(
    url: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    max_body: usize,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let request = Request {
        method: hyper::Method::GET,
        content_type: None,
        body: Vec::new(),
        max_body,
    };
    tokio::time::timeout(timeout, fetch(url, Some(tls), request))
        .await
        .map_err(|_| FetchError::Timeout)?
}

struct Request {
    method: hyper::Method,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    max_body: usize,
}

async fn fetch(
    url: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    r: Request,
) -> Result<Vec<u8>, FetchError> {
    let unreachable = |e: &dyn std::fmt::Display| FetchError::Unreachable(e.to_string());
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| FetchError::Unreachable(format!("bad URL {url:?}: {e}")))?;
    let want = if tls.is_some() { "https" } else { "http" };
    if uri.scheme_str() != Some(want) {
        return Err(FetchError::Unreachable(format!(
            "{url}: only {want}:// URLs are supported here"
        )));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| FetchError::Unreachable(format!("{url}: no host")))?;
    let port = authority
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let host = connect_host(authority.host());
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| unreachable(&e))?;
    match tls {
        None => exchange(stream, &uri, r).await,
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| FetchError::Unreachable(format!("{url}: bad host: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| FetchError::Unreachable(format!("TLS: {e}")))?;
            exchange(stream, &uri, r).await
        }
    }
}

async fn exchange<S>(stream: S, uri: &hyper::Uri, r: Request) -> Result<Vec<u8>, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let unreachable = |e: &dyn std::fmt::Display| FetchError::Unreachable(e.to_string());
    let Request {
        method,
        content_type,
        body,
        max_body,
    } = r;
    let io = async {
        let authority = uri
            .authority()
            .ok_or_else(|| FetchError::Unreachable("no host".into()))?;
        // Host carries the port when the URL does, and an IPv6 literal in
        // its brackets (RFC 9110 §7.2); never any userinfo.
        let host = host_header(authority);
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
    io.await
}

/// The name or address to connect to: an IPv6 literal without the
/// brackets a URL puts around it (`[::1]` → `::1`).
fn connect_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The Host header for `authority`: host and port as the URL has them.
fn host_header(authority: &hyper::http::uri::Authority) -> String {
    match authority.port() {
        Some(port) => format!("{}:{}", authority.host(), port),
        None => authority.host().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_literals_connect_without_brackets_and_keep_them_in_host() {
        let uri: hyper::Uri = "http://[::1]:8080/ocsp".parse().unwrap();
        let a = uri.authority().unwrap();
        assert_eq!(connect_host(a.host()), "::1");
        assert_eq!(host_header(a), "[::1]:8080");
        let uri: hyper::Uri = "http://user@ocsp.example.org/".parse().unwrap();
        let a = uri.authority().unwrap();
        assert_eq!(connect_host(a.host()), "ocsp.example.org");
        assert_eq!(host_header(a), "ocsp.example.org");
    }

    /// A real request to a listener on [::1], as a URL in a certificate
    /// would name it.
    #[tokio::test]
    async fn fetches_from_an_ipv6_literal_url() {
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            assert!(
                std::env::var("PORTCULLIS_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "no IPv6 loopback, and PORTCULLIS_REQUIRE_TOOLS is set"
            );
            eprintln!(
                "skipping fetches_from_an_ipv6_literal_url: no IPv6 loopback on this machine"
            );
            return;
        };
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let host_ok = head
                .to_ascii_lowercase()
                .contains(&format!("host: [::1]:{port}\r\n"));
            let body = if host_ok { "six" } else { "bad host" };
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
        });
        let body = send(
            hyper::Method::GET,
            &format!("http://[::1]:{port}/crl"),
            None,
            Vec::new(),
            1024,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(body, b"six");
    }
}
