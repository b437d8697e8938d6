//! The SPIFFE bundle format (SPIFFE Trust Domain and Bundle, §4): a JWK
//! Set whose `x509-svid` keys each carry one X.509 authority in `x5c`,
//! with `spiffe_sequence` and `spiffe_refresh_hint`. What SPIRE serves
//! from its bundle endpoint and writes with `spire-server bundle show
//! -format spiffe`. Only the X.509 authorities are read; `jwt-svid` keys
//! and keys of a use this sidecar does not know are skipped, as the spec
//! asks, but a key that claims `x509-svid` must be one.

use base64::Engine;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

/// What a SPIFFE bundle holds for X.509.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeBundle {
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// Increases with every change of the bundle; a reload to a lower one
    /// is a rollback and is refused.
    pub sequence: Option<u64>,
    /// How often (seconds) the publisher suggests fetching it again.
    pub refresh_hint: Option<u64>,
}

#[derive(Deserialize)]
struct RawBundle {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<u64>,
}

/// Whether `bytes` look like a JSON document rather than PEM.
pub fn is_json(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// Parses a SPIFFE bundle; the error says which key is wrong and why.
pub fn parse(bytes: &[u8]) -> Result<SpiffeBundle, String> {
    let raw: RawBundle =
        serde_json::from_slice(bytes).map_err(|e| format!("not a SPIFFE bundle (JWK Set): {e}"))?;
    let mut x509_authorities = Vec::new();
    for (i, key) in raw.keys.iter().enumerate() {
        let n = i + 1;
        let usage = key
            .get("use")
            .ok_or_else(|| format!("key {n} has no \"use\""))?
            .as_str()
            .ok_or_else(|| format!("key {n}: \"use\" must be a string"))?;
        if usage != "x509-svid" {
            // jwt-svid keys, and uses a later spec may add.
            continue;
        }
        let x5c = key
            .get("x5c")
            .and_then(|v| v.as_array())
            .ok_or_else(|| format!("key {n} (x509-svid) has no \"x5c\" array"))?;
        let [cert] = x5c.as_slice() else {
            return Err(format!(
                "key {n} (x509-svid): \"x5c\" must hold exactly one certificate, not {}",
                x5c.len()
            ));
        };
        let b64 = cert
            .as_str()
            .ok_or_else(|| format!("key {n} (x509-svid): the x5c entry must be a string"))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("key {n} (x509-svid): x5c is not base64: {e}"))?;
        x509_authorities.push(CertificateDer::from(der));
    }
    if x509_authorities.is_empty() {
        return Err("the SPIFFE bundle has no x509-svid key".into());
    }
    Ok(SpiffeBundle {
        x509_authorities,
        sequence: raw.spiffe_sequence,
        refresh_hint: raw.spiffe_refresh_hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(der: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(der)
    }

    #[test]
    fn authorities_sequence_and_hint_are_read_and_other_uses_skipped() {
        let doc = format!(
            r#"{{"keys":[
                {{"use":"x509-svid","kty":"EC","crv":"P-256","x5c":["{}"]}},
                {{"use":"jwt-svid","kty":"EC","crv":"P-256","kid":"k1","x":"a","y":"b"}},
                {{"use":"some-future-use","kty":"OKP"}}
              ],"spiffe_sequence":7,"spiffe_refresh_hint":300}}"#,
            b64(b"not really DER, checked by the caller")
        );
        assert!(is_json(doc.as_bytes()));
        let b = parse(doc.as_bytes()).unwrap();
        assert_eq!(b.x509_authorities.len(), 1);
        assert_eq!((b.sequence, b.refresh_hint), (Some(7), Some(300)));
    }

    #[test]
    fn malformed_bundles_are_refused_with_the_key_and_reason() {
        for (doc, why) in [
            (r#"{"keys": "nope"}"#, "not a SPIFFE bundle"),
            (r#"["x"]"#, "not a SPIFFE bundle"),
            (
                r#"{"keys":[{"kty":"EC","x5c":["AA=="]}]}"#,
                "key 1 has no \"use\"",
            ),
            (
                r#"{"keys":[{"use":"x509-svid","kty":"EC"}]}"#,
                "key 1 (x509-svid) has no \"x5c\"",
            ),
            (
                r#"{"keys":[{"use":"x509-svid","x5c":["AA==","AA=="]}]}"#,
                "exactly one certificate, not 2",
            ),
            (
                r#"{"keys":[{"use":"x509-svid","x5c":["%%%"]}]}"#,
                "not base64",
            ),
            (
                r#"{"keys":[{"use":"jwt-svid","kty":"EC"}]}"#,
                "no x509-svid key",
            ),
            (r#"{"keys":[],"spiffe_sequence":-1}"#, "not a SPIFFE bundle"),
        ] {
            let e = parse(doc.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{doc}: {e}");
        }
        assert!(!is_json(b"-----BEGIN CERTIFICATE-----"));
    }
}
