//! Property tests on every parser a peer or a file reaches: SPIFFE IDs,
//! the policy and config YAML, PEM and certificate material, SPIFFE
//! bundles, CRLs and OCSP responses (real ones, mutated), protocol
//! detection, headers and request paths. Each property is run on
//! generated and mutated inputs; none may panic, and each checks what the
//! parser promises beyond that (a located error, a round trip, stability).
//!
//! The everyday run is bounded (`PORTCULLIS_PROPTEST_CASES`, 1,000 cases per
//! property by default); the long mode is the same targets with more
//! cases, e.g. `PORTCULLIS_PROPTEST_CASES=200000 cargo test --release
//! --test properties`. A failure is shrunk and its seed saved by proptest
//! in `tests/properties.proptest-regressions`, which is committed: every
//! crash found stays a regression test.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use portcullis::config::{Config, EscapedSlashes, RevocationPolicy};
use portcullis::identity::{SpiffeId, TrustDomain};
use portcullis::proxy::detect::{Detected, classify};
use portcullis::proxy::http::path::normalize;
use portcullis::revocation::{CrlTrust, load_crls};
use portcullis::tls::{Source, bundle_from_bytes};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PORTCULLIS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // The mutation targets do real crypto; shrinking stays bounded.
        max_shrink_iters: 2048,
        // Integration tests have no lib.rs beside them for proptest's
        // default place: the seeds of failures go to one named file.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/properties.proptest-regressions",
            ),
        )),
        ..ProptestConfig::default()
    }
}

/// A byte-level mutation of a valid input: flip, replace, insert, delete
/// or truncate, at a position given as a fraction of the length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(f64, u8),
    Set(f64, u8),
    Insert(f64, Vec<u8>),
    Delete(f64, usize),
    Truncate(f64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 1u8..=255).prop_map(|(a, b)| Mutation::Flip(a, b)),
        (at.clone(), any::<u8>()).prop_map(|(a, b)| Mutation::Set(a, b)),
        (at.clone(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(a, b)| Mutation::Insert(a, b)),
        (at.clone(), 1usize..16).prop_map(|(a, n)| Mutation::Delete(a, n)),
        at.prop_map(Mutation::Truncate),
    ]
}

fn mutate(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = input.to_vec();
    for m in mutations {
        let pos = |f: f64, len: usize| ((f * len as f64) as usize).min(len.saturating_sub(1));
        match m {
            Mutation::Flip(f, x) if !b.is_empty() => {
                let i = pos(*f, b.len());
                b[i] ^= x;
            }
            Mutation::Set(f, x) if !b.is_empty() => {
                let i = pos(*f, b.len());
                b[i] = *x;
            }
            Mutation::Insert(f, bytes) => {
                let i = pos(*f, b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(f, n) if !b.is_empty() => {
                let i = pos(*f, b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Truncate(f) => {
                let i = pos(*f, b.len() + 1);
                b.truncate(i);
            }
            _ => {}
        }
    }
    b
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

// === SPIFFE IDs ===

/// The SPIFFE-ID rules (spec §2), written again independently of the
/// parser: the reference the parser must agree with.
fn reference_valid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("spiffe://") else {
        return false;
    };
    if s.len() > 2048 {
        return false;
    }
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let td_ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_".contains(&c));
    let path_ok = path.is_empty()
        || path[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c))
        });
    td_ok && path_ok
}

/// Strings shaped like SPIFFE IDs, valid and not: the scheme (sometimes
/// wrong), a trust domain and path segments from alphabets that mix legal
/// and illegal characters.
fn spiffe_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        8 => Just("spiffe://".to_string()),
        1 => Just("SPIFFE://".to_string()),
        1 => Just("spiffe:/".to_string()),
        1 => Just("https://".to_string()),
    ];
    let td = prop_oneof![
        6 => "[a-z0-9._-]{1,20}",
        1 => "[a-zA-Z0-9._:@%-]{0,12}",
        1 => "[a-z]{250,260}",
    ];
    let segment = prop_oneof![
        6 => "[a-zA-Z0-9._-]{1,10}",
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => Just(String::new()),
        1 => "[a-z?#%/ é]{1,4}",
    ];
    (
        scheme,
        td,
        prop::collection::vec(segment, 0..6),
        any::<bool>(),
    )
        .prop_map(|(scheme, td, segs, trailing)| {
            let mut s = scheme + &td;
            for seg in segs {
                s.push('/');
                s.push_str(&seg);
            }
            if trailing {
                s.push('/');
            }
            s
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn spiffe_ids_never_panic_on_any_string(s in any::<String>()) {
        let _ = SpiffeId::parse(&s);
        let _ = TrustDomain::parse(&s);
    }

    #[test]
    fn spiffe_ids_agree_with_the_reference_rules_and_round_trip(s in spiffe_like()) {
        let parsed = SpiffeId::parse(&s);
        prop_assert_eq!(parsed.is_ok(), reference_valid(&s), "{:?}: {:?}", s, parsed);
        if let Ok(id) = parsed {
            prop_assert_eq!(id.as_str(), s.as_str());
            let again = SpiffeId::parse(&id.to_string());
            prop_assert_eq!(again, Ok(id.clone()));
            let rebuilt = format!("spiffe://{}{}", id.trust_domain_name(), id.path());
            prop_assert_eq!(rebuilt, s.clone());
            let td = id.trust_domain();
            prop_assert_eq!(td.as_str(), id.trust_domain_name());
        }
    }
}

// === Policy and config YAML ===

const POLICY: &str = "\
default: deny
services:
  orders:
    mode: enforce
    rate_limit: { per_identity_per_second: 100, burst: 200 }
    rules:
      - name: web
        action: allow
        from: [\"spiffe://prod.example.org/ns/web/sa/*\"]
        methods: [GET, POST]
        paths: [\"/api/*\"]
      - name: admin
        action: deny
        from: [\"spiffe://prod.example.org/*\"]
        paths: [\"/admin/*\"]
";

const CONFIG: &str = "\
identity:
  cert: svid.pem
  key: svid-key.pem
  trust_bundle: bundle.pem
  trust_bundles:
    partner.example.com: partner.pem
policy: policy.yaml
inbound:
  - name: orders
    listen: 0.0.0.0:15006
    forward: 127.0.0.1:8080
    protocol: http
    port: 8080
outbound:
  - name: payments
    listen: 127.0.0.1:15001
    endpoints: [127.0.0.1:16006, payments.svc:16006]
    identity: spiffe://prod.example.org/ns/pay/sa/payments
    protocol: auto
    circuit_breaker: { consecutive_failures: 5 }
    limits: { max_requests: 100 }
    retry_budget: 20
http: { request_timeout: 60s, escaped_slashes: reject }
timeouts: { connect: 2s, idle: 10m }
revocation: { crls: [ca.crl], failure: closed }
capture: { inbound: 0.0.0.0:15106, unmatched: deny }
";

/// Mutations that keep the text UTF-8 and YAML-ish: characters YAML
/// cares about, spliced in at character positions.
fn text_mutation() -> impl Strategy<Value = (f64, f64, String)> {
    (
        0.0..1.0f64,
        0.0..0.2f64,
        prop_oneof![
            Just(String::new()),
            "[ :{}\\[\\]\\-#&*!|>'\"%@`,?\\n\\t]{1,4}",
            "[a-z_0-9]{1,8}",
            Just("\n  - ".to_string()),
            Just(": ".to_string()),
            Just("\u{feff}".to_string()),
            Just("999999999999999999999".to_string()),
            Just("-1".to_string()),
            Just("*a".to_string()),
            Just("&a [*a, *a]".to_string()),
        ],
    )
}

fn splice_text(text: &str, (at, len, with): &(f64, f64, String)) -> String {
    let chars: Vec<char> = text.chars().collect();
    let i = ((at * chars.len() as f64) as usize).min(chars.len());
    let n = ((len * chars.len() as f64) as usize).min(chars.len() - i);
    let mut out: String = chars[..i].iter().collect();
    out.push_str(with);
    out.extend(&chars[i + n..]);
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn policy_yaml_is_accepted_or_refused_with_its_place(
        edits in prop::collection::vec(text_mutation(), 1..4)
    ) {
        let file = Path::new("/etc/portcullis/policy.yaml");
        let text = edits.iter().fold(POLICY.to_string(), |t, e| splice_text(&t, e));
        if let Err(e) = portcullis::policy::parse(&text, file) {
            prop_assert_eq!(e.file.as_path(), file);
            prop_assert!(!e.reason.is_empty());
            let shown = e.to_string();
            prop_assert!(shown.starts_with("/etc/portcullis/policy.yaml"), "{}", shown);
        }
    }

    #[test]
    fn config_yaml_is_accepted_or_refused_with_its_place(
        edits in prop::collection::vec(text_mutation(), 1..4)
    ) {
        let file = Path::new("/etc/portcullis/portcullis.yaml");
        let text = edits.iter().fold(CONFIG.to_string(), |t, e| splice_text(&t, e));
        if let Err(e) = Config::from_yaml(&text, file) {
            prop_assert_eq!(e.file.as_path(), file);
            prop_assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn arbitrary_text_as_policy_or_config_never_panics(text in any::<String>()) {
        let _ = portcullis::policy::parse(&text, Path::new("p.yaml"));
        let _ = Config::from_yaml(&text, Path::new("c.yaml"));
    }
}

#[test]
fn the_unmutated_documents_are_valid() {
    portcullis::policy::parse(POLICY, Path::new("policy.yaml")).unwrap();
    Config::from_yaml(CONFIG, Path::new("/etc/portcullis/portcullis.yaml")).unwrap();
}

// === PEM, certificates, SPIFFE bundles ===

proptest! {
    #![proptest_config(config())]

    /// A mutated bundle (PEM or SPIFFE JSON) is refused with the file named,
    /// or still yields only CA certificates of the trust domain.
    #[test]
    fn mutated_bundles_are_refused_or_still_valid(ms in mutations(), json in any::<bool>()) {
        let td = TrustDomain::parse(TD).unwrap();
        let ca = portcullis::pki::Ca::generate(&td, DAY).unwrap();
        let original = if json {
            serde_json::json!({
                "keys": [{"use": "x509-svid", "kty": "EC", "x5c": [base64(ca.der())]}],
                "spiffe_sequence": 7
            })
            .to_string()
            .into_bytes()
        } else {
            ca.cert_pem().as_bytes().to_vec()
        };
        let bytes = mutate(&original, &ms);
        let place = Path::new("/run/bundle");
        match bundle_from_bytes(&bytes, place, &td, Source::File) {
            Ok((b, _)) => {
                prop_assert!(!b.roots.is_empty());
                prop_assert!(b.roots.iter().all(|r| r.spiffe_id == td.id().to_string()));
            }
            Err(e) => prop_assert_eq!(e.path.as_path(), place),
        }
    }

    /// A mutated SVID (certificate DER or key DER) is refused, naming the
    /// place, or still a valid SVID for the same ID.
    #[test]
    fn mutated_svids_are_refused_or_still_valid(ms in mutations(), in_key in any::<bool>()) {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let td = TrustDomain::parse(TD).unwrap();
        let ca = portcullis::pki::Ca::generate(&td, DAY).unwrap();
        let issued = ca.issue_svid(&id("spiffe://prod.example.org/svc"), DAY).unwrap();
        let cert = issued.der.to_vec();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap().secret_der().to_vec();
        let (cert, key) = if in_key { (cert, mutate(&key, &ms)) } else { (mutate(&cert, &ms), key) };
        let key = PrivateKeyDer::try_from(key);
        let place = Path::new("/run/svid");
        if let Ok(key) = key {
            // Loading parses and pairs; the signature is the verifier's
            // (as at start and reload, where the whole set is checked).
            match portcullis::tls::identity_from_der(vec![CertificateDer::from(cert)], key, place, place, Source::File) {
                Ok(loaded) => {
                    let bundle = portcullis::tls::bundle_from_certs(vec![ca.der().clone()], None, place, &td, Source::File).unwrap();
                    let verifier = portcullis::tls::SvidVerifier::new(std::sync::Arc::new(portcullis::tls::TrustStore::new([bundle])));
                    let chain = &loaded.certified.cert;
                    let verified = verifier.verify(&chain[0], &chain[1..], rustls_pki_types::UnixTime::now(), portcullis::identity::Role::Client);
                    if verified.is_ok() {
                        prop_assert_eq!(loaded.leaf.id.as_str(), "spiffe://prod.example.org/svc");
                    }
                }
                Err(e) => prop_assert_eq!(e.path.as_path(), place),
            }
        }
    }
}

// === CRLs ===

proptest! {
    #![proptest_config(config())]

    /// A mutated real CRL is refused, or (where the mutation only touched
    /// what the signature does not cover) it lists exactly what the
    /// original does.
    #[test]
    fn mutated_crls_are_refused_or_unchanged(ms in mutations(), pem in any::<bool>()) {
        let td = TrustDomain::parse(TD).unwrap();
        let ca = portcullis::pki::Ca::generate(&td, DAY).unwrap();
        let revoked = ca.issue_svid(&id("spiffe://prod.example.org/gone"), DAY).unwrap();
        let entry = portcullis::pki::RevokedEntry {
            serial: revoked.serial.clone(),
            revoked_at: time::OffsetDateTime::now_utc() - Duration::from_secs(60),
        };
        let crl_pem = ca.crl(&[entry], 3, Duration::from_secs(3600)).unwrap();
        let original = if pem {
            crl_pem.into_bytes()
        } else {
            portcullis::revocation::parse_crl_bytes(Path::new("x"), crl_pem.into_bytes()).unwrap().remove(0)
        };
        let roots = [ca.der()];
        let trust = CrlTrust { roots: &roots, intermediates: &[], in_force: None };
        let policy = RevocationPolicy { whole_chain: false, expired_is_unknown: true, fail_open: false, fetch_distribution_points: false };
        let good = load_crls(&[], &[("http://crl/ca.crl".into(), original.clone())], &trust, policy).unwrap();
        let bytes = mutate(&original, &ms);
        if let Ok(set) = load_crls(&[], &[("http://crl/ca.crl".into(), bytes)], &trust, policy) {
            prop_assert_eq!(set.info.len(), good.info.len());
            for (a, b) in set.info.iter().zip(&good.info) {
                prop_assert_eq!(a.entries, b.entries);
                prop_assert_eq!(&a.issuer, &b.issuer);
                prop_assert_eq!(a.next_update, b.next_update);
            }
            let issuer = x509_parser::parse_x509_certificate(ca.der()).unwrap().1.subject().as_raw().to_vec();
            prop_assert!(set.is_revoked(&issuer, &hex::decode(&revoked.serial).unwrap()));
        }
    }
}

// === OCSP responses from `openssl ocsp` ===

#[test]
fn mutated_ocsp_responses_are_refused_or_say_what_the_original_says() {
    if !have_tool("openssl", "mutated_ocsp_responses") {
        return;
    }
    let pki = Pki::new();
    openssl_ca(&pki);
    let d = pki.dir.path();
    let leaf = pki
        .ca
        .issue_svid(&id("spiffe://prod.example.org/svc"), DAY)
        .unwrap();
    let request = portcullis::revocation::ocsp::request(&leaf.der, pki.ca.der()).unwrap();
    let original = ocsp_one_shot(d, &request, &["-ndays", "1"]);
    let now = portcullis::clock::unix_now();
    let answer = portcullis::revocation::ocsp::verify(&original, &leaf.der, pki.ca.der(), now)
        .expect("the real response verifies");
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&mutations(), |ms| {
            let bytes = mutate(&original, &ms);
            if let Ok(a) =
                portcullis::revocation::ocsp::verify(&bytes, &leaf.der, pki.ca.der(), now)
            {
                prop_assert_eq!(a.status, answer.status);
            }
            // Random bytes of any length, too.
            let _ = portcullis::revocation::ocsp::verify(
                &bytes[..bytes.len() / 2],
                &leaf.der,
                pki.ca.der(),
                now,
            );
            Ok(())
        })
        .unwrap();
}

// === Protocol detection ===

proptest! {
    #![proptest_config(config())]

    /// Once the first bytes decide, more bytes never change the verdict: a
    /// peer cannot start as one protocol and turn into another.
    #[test]
    fn detection_is_stable_as_bytes_arrive(
        head in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            "[\r\n \t]{0,3}[A-Za-z-]{1,22}[ \t]/[a-z]{0,5}".prop_map(String::into_bytes),
            Just(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut all = head.clone();
        all.extend(&tail);
        let mut decided: Option<Detected> = None;
        for n in 0..=all.len() {
            match (decided, classify(&all[..n])) {
                (Some(d), Some(now)) => prop_assert_eq!(d, now, "prefix {:?}", &all[..n]),
                (Some(d), None) => prop_assert!(false, "decided {:?} then undecided at {:?}", d, &all[..n]),
                (None, now) => decided = now,
            }
        }
    }

    /// Anything an HTTP/1 server could take as a request line is HTTP.
    #[test]
    fn request_lines_are_always_http(
        blank in "[\r\n \t]{0,4}",
        method in "[A-Za-z-]{1,20}",
        sep in "[ \t]",
        rest in prop::collection::vec(any::<u8>(), 0..30),
    ) {
        let mut b = format!("{blank}{method}{sep}").into_bytes();
        b.extend(rest);
        prop_assert_ne!(classify(&b), Some(Detected::Tcp));
    }
}

// === Request paths ===

/// Path segments with every trick in the book: dot segments (plain,
/// encoded, mixed case), parameters, encoded and raw (back)slashes,
/// empty segments.
fn tricky_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => "[a-z0-9]{1,6}",
        2 => Just(".".to_string()),
        2 => Just("..".to_string()),
        1 => Just("%2e".to_string()),
        1 => Just("%2E%2e".to_string()),
        1 => Just(".%2E".to_string()),
        1 => Just("..;x".to_string()),
        1 => Just(";p=1".to_string()),
        1 => Just(String::new()),
        1 => Just("%2F".to_string()),
        1 => Just("%5c".to_string()),
        1 => Just("\\".to_string()),
        1 => Just("%41%7e".to_string()),
        1 => Just("admin".to_string()),
    ];
    (prop::collection::vec(segment, 0..8), any::<bool>()).prop_map(|(segs, trailing)| {
        let mut p = String::new();
        for s in segs {
            p.push('/');
            p.push_str(&s);
        }
        if p.is_empty() || trailing {
            p.push('/');
        }
        p
    })
}

fn has_dot_segment(p: &str) -> bool {
    p.split('/').any(|s| s == "." || s == "..")
}

/// `p` spelt differently: unreserved characters percent-encoded, hex in
/// either case.
fn respell(p: &str, picks: &[bool]) -> String {
    let mut out = String::new();
    // Characters of an escape already there are left alone: encoding
    // them would make another path, not another spelling of this one.
    let mut in_escape = 0u8;
    for (i, c) in p.chars().enumerate() {
        let pick = picks.get(i % picks.len().max(1)).copied().unwrap_or(false);
        if c == '%' {
            in_escape = 3;
        }
        let escaped = in_escape > 0;
        in_escape = in_escape.saturating_sub(1);
        if pick && !escaped && (c.is_ascii_alphanumeric() || "-._~".contains(c)) {
            let hex = format!("%{:02X}", c as u8);
            out.push_str(&if i % 2 == 0 { hex.to_lowercase() } else { hex });
        } else {
            out.push(c);
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn normalized_paths_have_no_dot_segments_and_are_fixed_points(
        p in tricky_path(),
        mode in prop_oneof![Just(EscapedSlashes::Reject), Just(EscapedSlashes::Unescape), Just(EscapedSlashes::Keep)],
    ) {
        if let Ok(n) = normalize(&p, mode) {
            let judged = n.judged().to_string();
            prop_assert!(judged.starts_with('/'), "{:?} -> {:?}", p, judged);
            prop_assert!(!has_dot_segment(&judged), "{:?} -> {:?}", p, judged);
            prop_assert!(!judged.contains("//"), "{:?} -> {:?}", p, judged);
            prop_assert!(!has_dot_segment(&n.forward), "forwarded {:?} -> {:?}", p, n.forward);
            // What the app receives judges the same again.
            let again = normalize(&n.forward, mode).map(|m| m.judged().to_string());
            prop_assert_eq!(again, Ok(judged.clone()), "{:?}", p);
        }
    }

    /// Denial is stable under equivalent encodings: a respelt path is
    /// judged as the same path (or refused outright, never judged apart).
    #[test]
    fn equivalent_spellings_are_judged_alike(
        p in tricky_path(),
        picks in prop::collection::vec(any::<bool>(), 1..12),
        mode in prop_oneof![Just(EscapedSlashes::Reject), Just(EscapedSlashes::Unescape), Just(EscapedSlashes::Keep)],
    ) {
        let respelt = respell(&p, &picks);
        let a = normalize(&p, mode).map(|n| n.judged().to_string());
        let b = normalize(&respelt, mode).map(|n| n.judged().to_string());
        prop_assert_eq!(a, b, "{:?} vs {:?}", p, respelt);
    }

    #[test]
    fn any_string_as_a_path_never_panics(p in any::<String>()) {
        for mode in [EscapedSlashes::Reject, EscapedSlashes::Unescape, EscapedSlashes::Keep] {
            let _ = normalize(&p, mode);
        }
    }
}

// === Headers ===

proptest! {
    #![proptest_config(config())]

    /// Whatever `Connection` names (in any case and spacing), the headers
    /// it names and the hop-by-hop ones are gone, and identity headers a
    /// peer sent are never passed on.
    #[test]
    fn hop_by_hop_and_identity_headers_never_pass(
        named in prop::collection::vec("[a-zA-Z-]{1,12}", 0..4),
        spaces in "[ \t]{0,2}",
    ) {
        use hyper::header::{HeaderMap, HeaderName, HeaderValue};
        let mut h = HeaderMap::new();
        let list = named.join(&format!(",{spaces}"));
        if let Ok(v) = HeaderValue::from_str(&list) {
            h.insert("connection", v);
        }
        for n in &named {
            if let Ok(name) = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
                h.append(name, HeaderValue::from_static("x"));
            }
        }
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-forwarded-client-cert", HeaderValue::from_static("By=spiffe://evil/x"));
        h.insert("x-portcullis-peer-id", HeaderValue::from_static("spiffe://evil/x"));
        portcullis::proxy::http::headers::strip_hop_by_hop(&mut h, false);
        portcullis::proxy::http::headers::strip_identity(&mut h);
        prop_assert!(!h.contains_key("connection"));
        prop_assert!(!h.contains_key("keep-alive"));
        for n in &named {
            prop_assert!(!h.contains_key(n.to_ascii_lowercase().as_str()), "{} passed", n);
        }
        prop_assert!(!h.contains_key("x-forwarded-client-cert"));
    }
}
