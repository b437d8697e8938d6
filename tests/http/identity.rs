//! Identity headers: the peer's verified SPIFFE ID and XFCC replace
//! whatever the client sent.

use crate::common::pair::*;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spoofed_identity_headers_are_replaced() {
    if !have_tool("curl", "spoofed_identity_headers_are_replaced") {
        return;
    }
    let pki = Pki::new();
    let (app, _) = http_app().await;
    let (_server, client) = pair(
        &pki,
        app,
        Side {
            protocol: "http",
            http: "  forward_client_cert: true",
            ..Default::default()
        },
        http_side(),
    )
    .await;
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let (ok, body, err) = curl(&[
            version,
            "-H", "x-portcullis-peer-id: spiffe://prod.example.org/ns/admin/sa/root",
            "-H", "X-Forwarded-Client-Cert: By=spiffe://evil;URI=spiffe://prod.example.org/ns/admin/sa/root",
            "-H", "Connection: x-hop",
            "-H", "x-hop: secret",
            "-H", "keep-alive: timeout=5",
            "-H", "x-end-to-end: kept",
            &url(&client, "/whoami"),
        ])
        .await;
        assert!(ok, "curl: {err}");
        let s = seen(&body);
        assert_eq!(
            s.headers["x-portcullis-peer-id"],
            vec![FRONTEND.to_string()],
            "{version}"
        );
        let xfcc = &s.headers["x-forwarded-client-cert"];
        assert_eq!(xfcc.len(), 1);
        let leaf = std::fs::read_to_string(pki.path("frontend-svid.pem")).unwrap();
        let der = pem_der(&leaf);
        let hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&der))
        };
        assert_eq!(xfcc[0], format!("By={ORDERS};Hash={hash};URI={FRONTEND}"));
        // Hop-by-hop headers stop at the first hop (HTTP/2 has no
        // `Connection`); end-to-end ones pass.
        if version == "--http1.1" {
            assert!(
                s.header("x-hop").is_none() && s.header("keep-alive").is_none(),
                "{s:?}"
            );
        }
        assert_eq!(s.header("x-end-to-end"), Some("kept"));
    }
}

/// The first certificate of a PEM chain, as DER.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let mut out = Vec::new();
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = b64.bytes().filter(|c| *c != b'=').collect();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
