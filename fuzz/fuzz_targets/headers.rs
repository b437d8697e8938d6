//! Header handling: from any header list (lines of `name: value`), the
//! hop-by-hop headers, those `Connection` names, and the identity headers
//! a peer sent never pass.
#![no_main]

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const GONE: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "x-portcullis-peer-id",
    "x-forwarded-client-cert",
];

fuzz_target!(|data: &[u8]| {
    let mut h = HeaderMap::new();
    let mut named = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        if name == hyper::header::CONNECTION {
            if let Ok(v) = value.to_str() {
                named.extend(
                    v.split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty()),
                );
            }
        }
        h.append(name, value);
    }
    portcullis::proxy::http::headers::strip_hop_by_hop(&mut h, false);
    portcullis::proxy::http::headers::strip_identity(&mut h);
    for n in GONE {
        assert!(!h.contains_key(n), "{n} passed");
    }
    for n in &named {
        // `TE: trailers` may stay (gRPC needs it), even when named; `close`
        // is the option itself, not a header any hop acts on.
        if n != "te" && n != "close" {
            assert!(
                !h.contains_key(n.as_str()),
                "{n}, named by Connection, passed"
            );
        }
    }
});
