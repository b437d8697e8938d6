//! `http`: how listeners with `protocol: http | auto` treat requests.

use std::ops::Bound;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Check, ConfigError};
use super::duration::ConfigDuration;
use super::logging::LogSink;

/// How HTTP listeners (`protocol: http | auto`) treat requests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpConfig {
    /// Largest request head (request line and headers) in bytes; larger
    /// is answered 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more is answered 431.
    pub max_headers: usize,
    /// Largest request body in bytes; larger is answered 413. `None`:
    /// unlimited (bodies stream, so size costs no memory).
    pub max_request_body: Option<u64>,
    /// From a request's body having been sent whole to its response
    /// headers arriving; longer is answered 504.
    pub request_timeout: ConfigDuration,
    /// A client must send a whole request head within this (slowloris).
    pub header_read_timeout: ConfigDuration,
    /// `protocol: auto` waits this long for the first bytes before deciding
    /// the connection is opaque TCP (server-speaks-first protocols).
    pub detect_timeout: ConfigDuration,
    /// Add `x-forwarded-client-cert` (peer SPIFFE ID and certificate hash)
    /// to requests forwarded to the app.
    pub forward_client_cert: bool,
    /// Concurrent HTTP/2 streams per downstream connection.
    pub max_concurrent_streams: u32,
    /// Pooled upstream connections unused this long are closed.
    pub pool_idle_timeout: ConfigDuration,
    /// One JSON line per request, when set.
    pub access_log: LogSink,
    /// What `%2F` and `%5C` in a request path mean (see `proxy/http/path.rs`).
    pub escaped_slashes: EscapedSlashes,
}

/// `http.escaped_slashes`, as Envoy's `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    /// Answer 400: an app that decodes them would see a path other than
    /// the one judged.
    Reject,
    /// Decode both to `/`, judge and forward that.
    Unescape,
    /// Leave them encoded: data, not separators (for apps that never
    /// decode them, such as those with IDs containing `/`).
    Keep,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_body: None,
            request_timeout: ConfigDuration(Duration::from_secs(60)),
            header_read_timeout: ConfigDuration(Duration::from_secs(10)),
            detect_timeout: ConfigDuration(Duration::from_millis(500)),
            forward_client_cert: false,
            max_concurrent_streams: 256,
            pool_idle_timeout: ConfigDuration(Duration::from_secs(90)),
            access_log: LogSink::Off,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    max_header_bytes: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    max_request_body: Option<Spanned<u64>>,
    request_timeout: Option<Spanned<ConfigDuration>>,
    header_read_timeout: Option<Spanned<ConfigDuration>>,
    detect_timeout: Option<Spanned<ConfigDuration>>,
    #[serde(default)]
    forward_client_cert: bool,
    max_concurrent_streams: Option<Spanned<u32>>,
    pool_idle_timeout: Option<Spanned<ConfigDuration>>,
    /// stdout | stderr | off | a file path
    access_log: Option<Spanned<String>>,
    escaped_slashes: Option<EscapedSlashes>,
}

impl RawHttp {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<HttpConfig, ConfigError> {
        let mut http = HttpConfig::default();
        // hyper's HTTP/1 reader needs room for at least one 8 KiB buffer.
        c.set(
            self.max_header_bytes,
            "http.max_header_bytes",
            8192..=1 << 20,
            &mut http.max_header_bytes,
        )?;
        c.set(
            self.max_headers,
            "http.max_headers",
            1..=10_000,
            &mut http.max_headers,
        )?;
        http.max_request_body = c
            .get(
                self.max_request_body,
                "http.max_request_body",
                (Bound::Excluded(0), Bound::Unbounded),
            )
            .map_err(|e| e.note("leave it out for no limit"))?;
        c.set(
            self.max_concurrent_streams,
            "http.max_concurrent_streams",
            1..,
            &mut http.max_concurrent_streams,
        )?;
        c.set_positive(
            self.request_timeout,
            "http.request_timeout",
            &mut http.request_timeout,
        )?;
        c.set_positive(
            self.header_read_timeout,
            "http.header_read_timeout",
            &mut http.header_read_timeout,
        )?;
        c.set_positive(
            self.detect_timeout,
            "http.detect_timeout",
            &mut http.detect_timeout,
        )?;
        c.set_positive(
            self.pool_idle_timeout,
            "http.pool_idle_timeout",
            &mut http.pool_idle_timeout,
        )?;
        http.forward_client_cert = self.forward_client_cert;
        if let Some(e) = self.escaped_slashes {
            http.escaped_slashes = e;
        }
        if let Some(sink) = self.access_log {
            http.access_log = LogSink::read(c, sink, "http.access_log")?;
        }
        Ok(http)
    }
}
