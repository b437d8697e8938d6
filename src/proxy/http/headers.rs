//! Header and URI rewriting between hops: hop-by-hop headers (RFC 9110
//! §7.6.1), the identity headers only we may set, the original-protocol
//! marker carried across the HTTP/2 hop, request-target forms for each
//! HTTP version, and path normalization for authorization.

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::{Method, Request, Version};

/// The verified SPIFFE ID of the peer, set by the inbound sidecar.
pub const PEER_ID: HeaderName = HeaderName::from_static("x-portcullis-peer-id");
/// Envoy's XFCC, set by the inbound sidecar when configured.
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// Why portcullis itself answered a request instead of the app.
pub const ERROR: HeaderName = HeaderName::from_static("x-portcullis-error");
/// Set by the outbound sidecar when it carries an HTTP/1.x request over the
/// HTTP/2 hop, so the inbound sidecar speaks HTTP/1.1 to the app again (as
/// Linkerd's `l5d-orig-proto`).
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("x-portcullis-orig-proto");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether a request asks to leave HTTP: a protocol upgrade (WebSocket)
/// or a `CONNECT` tunnel.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || (req.version() < Version::HTTP_2 && connection_has(req.headers(), "upgrade"))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
        && headers.contains_key(header::UPGRADE)
}

/// Removes the hop-by-hop headers: `Connection` and every header it names,
/// and the fixed set RFC 9110 and HTTP/2 forbid forwarding. `TE: trailers`
/// survives (gRPC needs it on HTTP/2). With `keep_upgrade`, `Upgrade` and
/// `Connection: upgrade` stay so the next hop sees the upgrade request.
///
/// Runs on every request and response, so it looks at the names once and
/// removes only what is there (most messages carry none of these, or just
/// `Connection: keep-alive`), instead of a hashed lookup per name.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    const CONNECTION: u8 = 1;
    const KEEP: u8 = 2;
    const PROXY: u8 = 4;
    const TRANSFER: u8 = 8;
    const TE: u8 = 16;
    const UPGRADE: u8 = 32;
    let mut found = 0;
    for name in headers.keys() {
        found |= if name == header::CONNECTION {
            CONNECTION
        } else if name == header::TRANSFER_ENCODING {
            TRANSFER
        } else if name == header::TE {
            TE
        } else if name == header::UPGRADE {
            UPGRADE
        } else if name == KEEP_ALIVE {
            KEEP
        } else if name == PROXY_CONNECTION {
            PROXY
        } else {
            0
        };
    }
    if found == 0 {
        return;
    }
    if found & CONNECTION != 0 && !connection_is_plain(headers) {
        // The tokens nearly always name only `keep-alive` (removed below
        // anyway), `close` (no header) or `upgrade` (handled below); a
        // list is collected only for others, before anything is removed.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !["keep-alive", "close", "upgrade"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    if found & CONNECTION != 0 {
        headers.remove(header::CONNECTION);
    }
    if found & KEEP != 0 {
        headers.remove(KEEP_ALIVE);
    }
    if found & PROXY != 0 {
        headers.remove(PROXY_CONNECTION);
    }
    if found & TRANSFER != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if found & TE != 0
        && let Some(te) = headers.get(header::TE)
    {
        let trailers = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if found & UPGRADE != 0 {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(header::UPGRADE);
        }
    }
}

/// Whether `Connection` is one value naming one token that names no other
/// header (`keep-alive`, `close`, `upgrade`): what nearly every message
/// carries, checked without splitting the value into tokens.
fn connection_is_plain(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONNECTION).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => {
            let v = v.as_bytes();
            [&b"keep-alive"[..], b"close", b"upgrade"]
                .iter()
                .any(|k| v.eq_ignore_ascii_case(k))
        }
        _ => false,
    }
}

/// Removes every identity header a client may have sent, so only the
/// inbound sidecar's own values reach the app.
pub fn strip_identity(headers: &mut HeaderMap) {
    headers.remove(PEER_ID);
    headers.remove(XFCC);
}

/// The XFCC value for a peer: who we are (`By`), the SHA-256 of the peer's
/// leaf certificate (`Hash`) and its SPIFFE ID (`URI`), in Envoy's format.
pub fn xfcc_value(our_id: &str, peer_leaf_der: &[u8], peer_id: &str) -> Option<HeaderValue> {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(peer_leaf_der));
    HeaderValue::from_str(&format!("By={our_id};Hash={hash};URI={peer_id}")).ok()
}

/// The authority a request is for: its URI's, or its `Host` header's.
pub fn authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(header::HOST)?;
    Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes())).ok()
}

/// Rewrites the request target for an HTTP/2 connection: absolute form
/// (`http://authority/path`), `Host` folded into `:authority`.
pub fn to_h2<B>(req: &mut Request<B>, fallback: &Authority) -> Result<(), hyper::http::Error> {
    let authority = authority(req).unwrap_or_else(|| fallback.clone());
    req.headers_mut().remove(header::HOST);
    *req.version_mut() = Version::HTTP_2;
    if req.method() == Method::CONNECT {
        *req.uri_mut() = authority_form(authority)?;
        return Ok(());
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq)
        .build()?;
    Ok(())
}

/// Rewrites the request target for an HTTP/1.1 connection: origin form
/// (`/path`) with a `Host` header (authority form for `CONNECT`).
pub fn to_h1<B>(req: &mut Request<B>, fallback: &Authority) -> Result<(), hyper::http::Error> {
    let authority = authority(req).unwrap_or_else(|| fallback.clone());
    if !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    *req.version_mut() = Version::HTTP_11;
    if req.method() == Method::CONNECT {
        *req.uri_mut() = authority_form(authority)?;
        return Ok(());
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    Ok(())
}

/// `host:port` alone, the request target of `CONNECT`.
fn authority_form(authority: Authority) -> Result<Uri, hyper::http::Error> {
    let mut parts = hyper::http::uri::Parts::default();
    parts.authority = Some(authority);
    Ok(Uri::from_parts(parts)?)
}

/// Replaces the path of `uri` (keeping its query), for forwarding the
/// normalized path that authorization judged.
pub fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The header names left after stripping.
    fn stripped(pairs: &[(&str, &str)], keep_upgrade: bool) -> Vec<String> {
        let mut h = req(pairs);
        strip_hop_by_hop(&mut h, keep_upgrade);
        h.keys().map(|k| k.as_str().to_string()).collect()
    }

    #[test]
    fn hop_by_hop_headers_are_removed_with_those_connection_names() {
        assert_eq!(
            stripped(
                &[
                    ("connection", "keep-alive, x-secret"),
                    ("keep-alive", "timeout=5"),
                    ("x-secret", "1"),
                    ("transfer-encoding", "chunked"),
                    ("proxy-connection", "keep-alive"),
                    ("upgrade", "websocket"),
                    ("te", "gzip"),
                    ("x-kept", "yes"),
                ],
                false
            ),
            ["x-kept"]
        );
    }

    #[test]
    fn connection_names_go_with_any_token_mix_and_clean_messages_are_untouched() {
        assert_eq!(
            stripped(
                &[
                    ("Connection", "close, X-Trace-Hop"),
                    ("connection", "Keep-Alive"),
                    ("x-trace-hop", "1"),
                    ("keep-alive", "timeout=5"),
                    ("content-length", "2"),
                ],
                false
            ),
            ["content-length"]
        );

        // One plain token (the common case, checked without tokenizing);
        // a name that merely starts like one is still a header to drop.
        assert_eq!(
            stripped(
                &[
                    ("connection", "Keep-Alive"),
                    ("keep-alive", "timeout=5"),
                    ("x-a", "1"),
                ],
                false
            ),
            ["x-a"]
        );
        assert_eq!(
            stripped(
                &[("connection", "close-me"), ("close-me", "1"), ("x-a", "1")],
                false
            ),
            ["x-a"]
        );

        let mut h = req(&[("content-type", "text/plain"), ("x-a", "1"), ("x-a", "2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);

        assert_eq!(
            stripped(
                &[
                    ("connection", "upgrade, x-b"),
                    ("x-b", "1"),
                    ("upgrade", "h2c"),
                ],
                true
            ),
            ["upgrade", "connection"]
        );
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = req(&[("te", "trailers, gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade_headers() {
        let mut h = req(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn identity_headers_are_stripped_in_every_case() {
        let mut h = req(&[
            ("X-Portcullis-Peer-Id", "spiffe://evil/x"),
            ("x-portcullis-peer-id", "spiffe://evil/y"),
            ("X-Forwarded-Client-Cert", "By=x"),
        ]);
        strip_identity(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn request_targets_follow_the_version() {
        let fallback = Authority::from_static("fallback:80");
        let mut r = Request::get("/x?y=1")
            .header("host", "svc:8080")
            .body(())
            .unwrap();
        to_h2(&mut r, &fallback).unwrap();
        assert_eq!(r.uri(), "http://svc:8080/x?y=1");
        assert!(r.headers().get("host").is_none());
        to_h1(&mut r, &fallback).unwrap();
        assert_eq!(r.uri(), "/x?y=1");
        assert_eq!(r.headers().get("host").unwrap(), "svc:8080");

        let mut r = Request::get("/").body(()).unwrap();
        to_h2(&mut r, &fallback).unwrap();
        assert_eq!(r.uri(), "http://fallback:80/");

        let mut r = Request::connect("db:5432").body(()).unwrap();
        to_h1(&mut r, &fallback).unwrap();
        assert_eq!(r.uri(), "db:5432");
    }

    #[test]
    fn xfcc_names_both_sides_and_the_hash() {
        let v = xfcc_value("spiffe://td/me", b"leaf", "spiffe://td/peer").unwrap();
        let s = v.to_str().unwrap();
        assert!(s.starts_with("By=spiffe://td/me;Hash="), "{s}");
        assert!(s.ends_with(";URI=spiffe://td/peer"), "{s}");
        assert_eq!(
            s.split("Hash=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .len(),
            64
        );
    }
}
