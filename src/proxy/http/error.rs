//! The answers portcullis gives itself instead of the app's: each failure
//! maps to one status and one `x-portcullis-error` reason, with a short
//! body that names the reason and nothing internal.

use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

use super::body::ProxyBody;
use super::headers::ERROR;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The policy denies this request.
    Forbidden,
    /// Over the peer's rate limit.
    RateLimited,
    /// The body is larger than `http.max_request_body`.
    BodyTooLarge,
    /// The request cannot be forwarded as written.
    BadRequest,
    /// No TCP connection to the upstream or the app.
    ConnectFailed,
    /// The TLS handshake with the upstream failed.
    TlsFailed,
    /// The upstream is not the identity the config expects, or is revoked.
    UpstreamRefused,
    /// The connection broke before a response came.
    UpstreamReset,
    /// No endpoint resolves.
    NoEndpoint,
    /// Every usable endpoint's circuit breaker is open.
    CircuitOpen,
    /// Over the upstream's connection or request limits.
    Overloaded,
    /// Connecting took longer than `timeouts.connect`.
    ConnectTimeout,
    /// No response headers within `http.request_timeout`.
    RequestTimeout,
}

impl HttpError {
    pub fn status(self) -> StatusCode {
        match self {
            HttpError::Forbidden => StatusCode::FORBIDDEN,
            HttpError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            HttpError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::BadRequest => StatusCode::BAD_REQUEST,
            HttpError::ConnectFailed
            | HttpError::TlsFailed
            | HttpError::UpstreamRefused
            | HttpError::UpstreamReset => StatusCode::BAD_GATEWAY,
            HttpError::NoEndpoint | HttpError::CircuitOpen | HttpError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HttpError::ConnectTimeout | HttpError::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `x-portcullis-error` value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpError::Forbidden => "forbidden",
            HttpError::RateLimited => "rate_limited",
            HttpError::BodyTooLarge => "body_too_large",
            HttpError::BadRequest => "bad_request",
            HttpError::ConnectFailed => "connect_failed",
            HttpError::TlsFailed => "tls_handshake_failed",
            HttpError::UpstreamRefused => "upstream_identity_refused",
            HttpError::UpstreamReset => "upstream_reset",
            HttpError::NoEndpoint => "no_endpoint",
            HttpError::CircuitOpen => "circuit_open",
            HttpError::Overloaded => "overloaded",
            HttpError::ConnectTimeout => "connect_timeout",
            HttpError::RequestTimeout => "request_timeout",
        }
    }

    fn body(self) -> &'static str {
        match self {
            HttpError::Forbidden => "forbidden\n",
            HttpError::RateLimited => "too many requests\n",
            HttpError::BodyTooLarge => "request body too large\n",
            HttpError::BadRequest => "bad request\n",
            HttpError::ConnectFailed => "upstream connect failed\n",
            HttpError::TlsFailed => "upstream TLS handshake failed\n",
            HttpError::UpstreamRefused => "upstream identity refused\n",
            HttpError::UpstreamReset => "upstream connection reset\n",
            HttpError::NoEndpoint => "no upstream endpoint\n",
            HttpError::CircuitOpen => "upstream circuit open\n",
            HttpError::Overloaded => "upstream overloaded\n",
            HttpError::ConnectTimeout => "upstream connect timeout\n",
            HttpError::RequestTimeout => "upstream request timeout\n",
        }
    }

    pub fn response(self) -> Response<ProxyBody> {
        let mut r = Response::new(ProxyBody::text(self.body()));
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        h.insert(ERROR, HeaderValue::from_static(self.as_str()));
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}
