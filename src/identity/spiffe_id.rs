//! SPIFFE IDs and trust domain names, parsed and validated exactly as the
//! SPIFFE-ID specification says (section 2), so that every other module can
//! hold a [`SpiffeId`] and know it is well formed.

use std::fmt;
use std::str::FromStr;

/// The only scheme the specification allows, lowercase.
const SCHEME_PREFIX: &str = "spiffe://";
/// The specification caps the trust domain name at 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// URIs longer than this are not interoperable (SPIFFE-ID spec, 2.3).
const MAX_ID_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID. Each variant names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID must start with the lowercase scheme \"spiffe://\"")]
    WrongScheme,
    #[error("SPIFFE ID is {0} bytes long; at most 2048 are allowed")]
    TooLong(usize),
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain is {0} bytes long; at most 255 are allowed")]
    TrustDomainTooLong(usize),
    #[error("trust domain must not contain a port")]
    Port,
    #[error("trust domain must not contain userinfo (\"@\")")]
    UserInfo,
    #[error(
        "trust domain contains {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar(char),
    #[error("path has an empty segment (\"//\")")]
    EmptySegment,
    #[error("path has a \".\" or \"..\" segment")]
    DotSegment,
    #[error("path must not end with \"/\"")]
    TrailingSlash,
    #[error("SPIFFE ID must not have a query (\"?\")")]
    Query,
    #[error("SPIFFE ID must not have a fragment (\"#\")")]
    Fragment,
    #[error("SPIFFE ID must not be percent-encoded (\"%\")")]
    PercentEncoding,
    #[error("path contains {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    PathChar(char),
}

/// A validated trust domain name, e.g. `prod.example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Box<str>);

/// A validated SPIFFE ID, e.g. `spiffe://prod.example.org/ns/pay/sa/payments`.
///
/// Stored as the whole string plus the length of the trust domain, so that
/// displaying, comparing and hashing it costs nothing extra.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: Box<str>,
    td_len: usize,
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme), as written in config files.
    pub fn parse(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name)?;
        Ok(TrustDomain(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself (`spiffe://<name>`), which
    /// the specification uses to name a trust domain's bundle.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            id: format!("{SCHEME_PREFIX}{}", self.0).into(),
            td_len: self.0.len(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(id.len()));
        }
        let rest = id
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // A query or fragment may sit in the authority when there is no path.
        if let Some(c) = td.chars().find(|c| matches!(c, '?' | '#' | '%')) {
            return Err(match c {
                '?' => SpiffeIdError::Query,
                '#' => SpiffeIdError::Fragment,
                _ => SpiffeIdError::PercentEncoding,
            });
        }
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(SpiffeId {
            id: id.into(),
            td_len: td.len(),
        })
    }

    /// The trust domain name, without scheme.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME_PREFIX.len()..SCHEME_PREFIX.len() + self.td_len]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().into())
    }

    /// The path, including its leading `/`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[SCHEME_PREFIX.len() + self.td_len..]
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SpiffeId::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid SPIFFE ID {s:?}: {e}")))
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TrustDomain::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid trust domain {s:?}: {e}")))
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            other => return Err(SpiffeIdError::TrustDomainChar(other)),
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // The caller split at the first '/', so `path` starts with one.
    for c in path.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '/' => {}
            '?' => return Err(SpiffeIdError::Query),
            '#' => return Err(SpiffeIdError::Fragment),
            '%' => return Err(SpiffeIdError::PercentEncoding),
            other => return Err(SpiffeIdError::PathChar(other)),
        }
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError as E;

    #[test]
    fn valid_ids_parse_and_split() {
        let cases = [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/a", "example.org", "/a"),
            (
                "spiffe://prod.example.org/ns/pay/sa/payments",
                "prod.example.org",
                "/ns/pay/sa/payments",
            ),
            (
                "spiffe://a-b_c.9/x.y-z_Q/.../a..b",
                "a-b_c.9",
                "/x.y-z_Q/.../a..b",
            ),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain_name(), td, "{input}");
            assert_eq!(id.path(), path, "{input}");
            assert_eq!(id.to_string(), input);
            assert_eq!(id.trust_domain().as_str(), td);
        }
    }

    #[test]
    fn every_rule_is_enforced() {
        let long_td = format!("spiffe://{}", "a".repeat(256));
        let max_td = format!("spiffe://{}", "a".repeat(255));
        let long_id = format!("spiffe://example.org/{}", "a".repeat(2048));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("", E::Empty),
            ("http://example.org/a", E::WrongScheme),
            ("SPIFFE://example.org/a", E::WrongScheme),
            ("spiffe:/example.org/a", E::WrongScheme),
            ("example.org/a", E::WrongScheme),
            ("spiffe://", E::MissingTrustDomain),
            ("spiffe:///a", E::MissingTrustDomain),
            (&long_td, E::TrustDomainTooLong(256)),
            (&long_id, E::TooLong(long_id.len())),
            ("spiffe://example.org:8080/a", E::Port),
            ("spiffe://user@example.org/a", E::UserInfo),
            ("spiffe://user:pw@example.org/a", E::Port),
            ("spiffe://Example.org/a", E::TrustDomainChar('E')),
            ("spiffe://exa mple.org", E::TrustDomainChar(' ')),
            ("spiffe://example.org/", E::TrailingSlash),
            ("spiffe://example.org/a/", E::TrailingSlash),
            ("spiffe://example.org//a", E::EmptySegment),
            ("spiffe://example.org/a//b", E::EmptySegment),
            ("spiffe://example.org/./a", E::DotSegment),
            ("spiffe://example.org/a/..", E::DotSegment),
            ("spiffe://example.org/a?x=1", E::Query),
            ("spiffe://example.org?x=1", E::Query),
            ("spiffe://example.org/a#frag", E::Fragment),
            ("spiffe://example.org#frag", E::Fragment),
            ("spiffe://example.org/a%20b", E::PercentEncoding),
            ("spiffe://exa%41mple.org", E::PercentEncoding),
            ("spiffe://example.org/a b", E::PathChar(' ')),
            ("spiffe://example.org/a:b", E::PathChar(':')),
            ("spiffe://example.org/ü", E::PathChar('ü')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input:?}");
        }
        assert!(SpiffeId::parse(&max_td).is_ok());
        let max_id = format!("spiffe://example.org/{}", "a".repeat(2048 - 21));
        assert_eq!(max_id.len(), 2048);
        assert!(SpiffeId::parse(&max_id).is_ok());
    }

    #[test]
    fn trust_domain_names() {
        assert!(TrustDomain::parse("prod.example.org").is_ok());
        assert_eq!(TrustDomain::parse(""), Err(E::MissingTrustDomain));
        assert_eq!(TrustDomain::parse("a:1"), Err(E::Port));
        assert_eq!(TrustDomain::parse("A"), Err(E::TrustDomainChar('A')));
        let td = TrustDomain::parse("example.org").unwrap();
        assert_eq!(td.id().as_str(), "spiffe://example.org");
        assert_eq!(td.id().path(), "");
    }

    #[test]
    fn errors_name_the_rule() {
        let e = SpiffeId::parse("spiffe://example.org/a/").unwrap_err();
        assert!(e.to_string().contains("must not end with"), "{e}");
    }
}
