//! Path normalization, in each `escaped_slashes` mode: a judged path has no
//! dot segments and no `//`, what the app receives has no dot segments,
//! and it judges the same again (a fixed point). Paths are what the proxy
//! hands it: the path of a request target hyper parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::EscapedSlashes;
use portcullis::proxy::http::path::normalize;

fn has_dot_segment(p: &str) -> bool {
    p.split('/').any(|s| s == "." || s == "..")
}

fuzz_target!(|data: &[u8]| {
    let Ok(target) = hyper::http::uri::PathAndQuery::try_from(data) else {
        return;
    };
    let p = target.path();
    for mode in [
        EscapedSlashes::Reject,
        EscapedSlashes::Unescape,
        EscapedSlashes::Keep,
    ] {
        if let Ok(n) = normalize(p, mode) {
            let judged = n.judged().to_string();
            assert!(judged.starts_with('/'), "{p:?} -> {judged:?}");
            assert!(!has_dot_segment(&judged), "{p:?} -> {judged:?}");
            assert!(!judged.contains("//"), "{p:?} -> {judged:?}");
            assert!(
                !has_dot_segment(&n.forward),
                "{p:?} forwarded as {:?}",
                n.forward
            );
            let again = normalize(&n.forward, mode).map(|m| m.judged().to_string());
            assert_eq!(again, Ok(judged), "{p:?}");
        }
    }
});
