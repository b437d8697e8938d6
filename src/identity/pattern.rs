//! Patterns over SPIFFE IDs, as policy rules write them in `from:`:
//!
//! | pattern | matches |
//! |---|---|
//! | `spiffe://td/ns/web/sa/frontend` | exactly that ID |
//! | `spiffe://td/ns/batch/*` | `*` is exactly one whole segment, anywhere in the path |
//! | `spiffe://td/ns/ops/**` | one or more segments below `/ns/ops`; `**` only at the end |
//! | `spiffe://td` | every ID in trust domain `td` |
//!
//! Patterns are parsed and validated at load: with the wildcards replaced by
//! a plain segment, a pattern must be a valid SPIFFE ID. There are no
//! regular expressions and no partial-segment globs.

use std::fmt;

use super::spiffe_id::{SpiffeId, SpiffeIdError};

/// One segment of a pattern's path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    Any,
    /// `**`: one or more segments; only ever last.
    Rest,
}

/// A validated SPIFFE ID pattern.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdPattern {
    text: Box<str>,
    trust_domain: Box<str>,
    /// Empty: the whole trust domain.
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0}")]
    Id(#[from] SpiffeIdError),
    #[error("\"**\" may only be the last segment")]
    RestNotLast,
    #[error("wildcards must be whole segments (\"*\" or \"**\"), found {0:?}")]
    PartialWildcard(String),
}

impl IdPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        // Validate the shape as a SPIFFE ID with each wildcard segment
        // replaced by a plain one, so every SPIFFE rule applies.
        let mut probe = String::with_capacity(text.len());
        let mut segments = Vec::new();
        let (head, path) = match text.strip_prefix("spiffe://") {
            Some(rest) => match rest.find('/') {
                Some(i) => (&text[..9 + i], &rest[i..]),
                None => (text, ""),
            },
            None => (text, ""),
        };
        probe.push_str(head);
        if !path.is_empty() {
            let parts: Vec<&str> = path[1..].split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                probe.push('/');
                match *part {
                    "*" => {
                        segments.push(Segment::Any);
                        probe.push('x');
                    }
                    "**" => {
                        if i + 1 != parts.len() {
                            return Err(PatternError::RestNotLast);
                        }
                        segments.push(Segment::Rest);
                        probe.push('x');
                    }
                    p if p.contains('*') => {
                        return Err(PatternError::PartialWildcard(p.to_string()));
                    }
                    p => {
                        segments.push(Segment::Literal(p.into()));
                        probe.push_str(p);
                    }
                }
            }
        }
        let id = SpiffeId::parse(&probe)?;
        Ok(IdPattern {
            text: text.into(),
            trust_domain: id.trust_domain_name().into(),
            segments,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Direct matching, segment by segment. The policy table uses a
    /// compiled index instead; this is the reference it is tested against.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain_name() != &*self.trust_domain {
            return false;
        }
        if self.segments.is_empty() {
            return true;
        }
        let path = id.path();
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path[1..].split('/').collect()
        };
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Rest => return parts.len() > i,
                Segment::Any => {
                    if i >= parts.len() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&&**l) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == parts.len()
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdPattern({})", self.text)
    }
}

impl serde::Serialize for IdPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for IdPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        IdPattern::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid SPIFFE ID pattern {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn each_kind_matches_and_does_not() {
        let cases: &[(&str, &str, bool)] = &[
            ("spiffe://td/ns/web/sa/fe", "spiffe://td/ns/web/sa/fe", true),
            (
                "spiffe://td/ns/web/sa/fe",
                "spiffe://td/ns/web/sa/fe2",
                false,
            ),
            (
                "spiffe://td/ns/web/sa/fe",
                "spiffe://td/ns/web/sa/fe/x",
                false,
            ),
            (
                "spiffe://td/ns/web/sa/fe",
                "spiffe://other/ns/web/sa/fe",
                false,
            ),
            ("spiffe://td/ns/batch/*", "spiffe://td/ns/batch/job1", true),
            ("spiffe://td/ns/batch/*", "spiffe://td/ns/batch", false),
            (
                "spiffe://td/ns/batch/*",
                "spiffe://td/ns/batch/job1/x",
                false,
            ),
            ("spiffe://td/ns/*/sa/fe", "spiffe://td/ns/web/sa/fe", true),
            ("spiffe://td/ns/*/sa/fe", "spiffe://td/ns/web/sa/be", false),
            ("spiffe://td/ns/ops/**", "spiffe://td/ns/ops/a", true),
            ("spiffe://td/ns/ops/**", "spiffe://td/ns/ops/a/b/c", true),
            ("spiffe://td/ns/ops/**", "spiffe://td/ns/ops", false),
            ("spiffe://td/ns/ops/**", "spiffe://td/ns/opsx/a", false),
            ("spiffe://td", "spiffe://td/anything/at/all", true),
            ("spiffe://td", "spiffe://td", true),
            ("spiffe://td", "spiffe://td2/x", false),
            ("spiffe://td/**", "spiffe://td/a", true),
            ("spiffe://td/**", "spiffe://td", false),
        ];
        for (pattern, candidate, want) in cases {
            let p = IdPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(&id(candidate)), *want, "{pattern} vs {candidate}");
        }
    }

    #[test]
    fn invalid_patterns_are_refused_with_the_rule() {
        assert_eq!(
            IdPattern::parse("spiffe://td/**/x"),
            Err(PatternError::RestNotLast)
        );
        assert!(matches!(
            IdPattern::parse("spiffe://td/fe*"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            IdPattern::parse("spiffe://td/a/"),
            Err(PatternError::Id(SpiffeIdError::TrailingSlash))
        ));
        assert!(matches!(
            IdPattern::parse("spiffe://TD/a"),
            Err(PatternError::Id(_))
        ));
        assert!(matches!(
            IdPattern::parse("https://td/a"),
            Err(PatternError::Id(SpiffeIdError::WrongScheme))
        ));
        assert!(matches!(
            IdPattern::parse("spiffe://td/a/.*"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            IdPattern::parse("spiffe://*/a"),
            Err(PatternError::Id(_))
        ));
    }
}
