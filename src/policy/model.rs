//! The policy file as operators write it, and its validation. The result,
//! [`PolicySpec`], is plain data; `table.rs` compiles it for lookups.
//!
//! ```yaml
//! default: deny                 # deny | allow, for services the file does not list
//! services:
//!   orders:                     # an inbound listener's name
//!     mode: enforce             # enforce | audit
//!     rules:
//!       - name: frontend-read
//!         action: allow         # allow | deny; a matching deny beats every allow
//!         from: [spiffe://prod.example.org/ns/web/sa/frontend]
//!         methods: [GET, HEAD]  # optional, L7 only
//!         paths: [/orders, /orders/*]   # optional, exact or prefix, L7 only
//!     rate_limit: { per_identity_per_second: 100, burst: 200 }
//! ```

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::{Check, ConfigError, Pairs};
use crate::identity::IdPattern;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denials are enforced.
    #[default]
    Enforce,
    /// Would-be denials are logged and counted, and let through.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// A validated policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicySpec {
    pub default: Action,
    pub services: Vec<ServiceSpec>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceSpec {
    pub name: String,
    pub mode: Mode,
    pub rules: Vec<RuleSpec>,
    pub rate_limit: Option<RateLimitSpec>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleSpec {
    pub name: String,
    pub action: Action,
    pub from: Vec<IdPattern>,
    /// Upper-case HTTP methods; `None`: any. A rule with methods or paths
    /// never allows an L4 connection, and as a deny it denies it whole.
    pub methods: Option<Vec<String>>,
    /// Exact paths (`/orders`) and prefixes (`/orders/*`); `None`: any.
    pub paths: Option<Vec<String>>,
}

impl RuleSpec {
    /// Rules with method or path conditions apply only to HTTP requests.
    pub fn is_l7(&self) -> bool {
        self.methods.is_some() || self.paths.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RateLimitSpec {
    pub per_identity_per_second: f64,
    pub burst: u32,
}

struct RawPolicy {
    default: Option<Action>,
    services: Vec<(Spanned<String>, RawService)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    rules: Vec<RawRule>,
    rate_limit: Option<Spanned<RawRateLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    action: Action,
    from: Spanned<Vec<IdPattern>>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_identity_per_second: f64,
    burst: Option<u32>,
}

/// Parses and validates a policy file's text.
pub fn parse(text: &str, file: &Path) -> Result<PolicySpec, ConfigError> {
    let c = Check::new(file);
    let raw: RawPolicy =
        deserialize_map_as_pairs(text).map_err(|e| crate::config::yaml_error(&e, file))?;
    let mut services = Vec::with_capacity(raw.services.len());
    let mut seen_services = HashSet::new();
    for (name, svc) in raw.services {
        if !crate::config::valid_name(&name.value) {
            return Err(c.at(
                name.referenced,
                format!(
                    "service name {:?} must be 1-63 characters of a-z, 0-9, '-' and '_'",
                    name.value
                ),
            ));
        }
        if !seen_services.insert(name.value.clone()) {
            return Err(c.at(
                name.referenced,
                format!("service {:?} is listed twice", name.value),
            ));
        }
        let mut rules = Vec::with_capacity(svc.rules.len());
        let mut seen_rules = HashSet::new();
        for r in svc.rules {
            if r.name.value.is_empty()
                || r.name.value.len() > 128
                || r.name.value.chars().any(|c| c.is_control() || c == '"')
            {
                return Err(c.at(
                    r.name.referenced,
                    "rule name must be 1-128 printable characters without '\"'",
                ));
            }
            if r.name.value == "default" {
                return Err(c.at(
                    r.name.referenced,
                    "\"default\" is reserved for decisions no rule made",
                ));
            }
            if !seen_rules.insert(r.name.value.clone()) {
                return Err(c.at(
                    r.name.referenced,
                    format!(
                        "rule name {:?} is used twice in service {:?}",
                        r.name.value, name.value
                    ),
                ));
            }
            if r.from.value.is_empty() {
                return Err(c.at(
                    r.from.referenced,
                    format!("rule {:?} has an empty `from`", r.name.value),
                ));
            }
            let methods = match r.methods {
                None => None,
                Some(m) => {
                    if m.value.is_empty() {
                        return Err(c.at(
                            m.referenced,
                            "`methods` must not be empty (leave it out to allow any)",
                        ));
                    }
                    let mut out = Vec::with_capacity(m.value.len());
                    for method in m.value {
                        let upper = method.value.to_ascii_uppercase();
                        let token = !upper.is_empty()
                            && upper.len() <= 32
                            && upper
                                .bytes()
                                .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_');
                        if !token {
                            return Err(c.at(
                                method.referenced,
                                format!("{:?} is not an HTTP method", method.value),
                            ));
                        }
                        out.push(upper);
                    }
                    Some(out)
                }
            };
            let paths = match r.paths {
                None => None,
                Some(p) => {
                    if p.value.is_empty() {
                        return Err(c.at(
                            p.referenced,
                            "`paths` must not be empty (leave it out to allow any)",
                        ));
                    }
                    let mut out = Vec::with_capacity(p.value.len());
                    for path in p.value {
                        check_path_pattern(&path.value)
                            .map_err(|why| c.at(path.referenced, why))?;
                        out.push(path.value);
                    }
                    Some(out)
                }
            };
            rules.push(RuleSpec {
                name: r.name.value,
                action: r.action,
                from: r.from.value,
                methods,
                paths,
            });
        }
        let rate_limit = match svc.rate_limit {
            None => None,
            Some(rl) => {
                let per = rl.value.per_identity_per_second;
                if !(per.is_finite() && per > 0.0) {
                    return Err(c.at(
                        rl.referenced,
                        "rate_limit.per_identity_per_second must be more than 0",
                    ));
                }
                let burst = rl.value.burst.unwrap_or_else(|| per.ceil().max(1.0) as u32);
                if burst == 0 {
                    return Err(c.at(rl.referenced, "rate_limit.burst must be at least 1"));
                }
                Some(RateLimitSpec {
                    per_identity_per_second: per,
                    burst,
                })
            }
        };
        services.push(ServiceSpec {
            name: name.value,
            mode: svc.mode,
            rules,
            rate_limit,
        });
    }
    Ok(PolicySpec {
        default: raw.default.unwrap_or(Action::Deny),
        services,
    })
}

/// YAML mappings keep their order and places when read as pairs; serde's
/// maps would lose both.
fn deserialize_map_as_pairs(text: &str) -> Result<RawPolicy, serde_saphyr::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        default: Option<Action>,
        #[serde(default)]
        services: Option<Pairs<Spanned<String>, RawService>>,
    }
    let outer: Outer = serde_saphyr::from_str(text)?;
    Ok(RawPolicy {
        default: outer.default,
        services: outer.services.map(|p| p.0).unwrap_or_default(),
    })
}

/// `/exact` or `/prefix/*`; `*` nowhere else.
fn check_path_pattern(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with '/'"));
    }
    let body = p.strip_suffix("/*").unwrap_or(p);
    if body.contains('*') {
        return Err(format!(
            "path {p:?}: '*' is only allowed as a final \"/*\" (a prefix match)"
        ));
    }
    if p.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(format!(
            "path {p:?} must be a plain path without spaces, query or fragment"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
default: deny
services:
  orders:
    mode: audit
    rules:
      - name: frontend-read
        action: allow
        from:
          - spiffe://prod.example.org/ns/web/sa/frontend
          - spiffe://prod.example.org/ns/batch/*
        methods: [get, HEAD]
        paths: [/orders, /orders/*]
    rate_limit: { per_identity_per_second: 100, burst: 200 }
";

    fn err(text: &str) -> ConfigError {
        parse(text, Path::new("policy.yaml")).expect_err("policy should be refused")
    }

    #[test]
    fn good_policy_parses() {
        let p = parse(GOOD, Path::new("policy.yaml")).unwrap();
        assert_eq!(p.default, Action::Deny);
        let s = &p.services[0];
        assert_eq!((s.name.as_str(), s.mode), ("orders", Mode::Audit));
        assert_eq!(
            s.rules[0].methods.as_deref(),
            Some(&["GET".to_string(), "HEAD".to_string()][..])
        );
        assert!(s.rules[0].is_l7());
        assert_eq!(
            s.rate_limit,
            Some(RateLimitSpec {
                per_identity_per_second: 100.0,
                burst: 200
            })
        );
        // An empty file is a valid policy: deny everything.
        let empty = parse("{}", Path::new("p.yaml")).unwrap();
        assert_eq!(empty.default, Action::Deny);
    }

    #[test]
    fn errors_have_file_line_column_and_reason() {
        let e = err(&GOOD.replace("ns/batch/*", "ns/batch/**/x"));
        assert_eq!(e.line, Some(10), "{e}");
        assert!(
            e.reason.contains("\"**\" may only be the last segment"),
            "{e}"
        );

        let e = err(&GOOD.replace("action: allow", "action: permit"));
        assert_eq!(e.line, Some(7), "{e}");

        let e = err(&GOOD.replace("/orders/*]", "/ord*rs]"));
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.reason.contains("prefix"), "{e}");

        let e = err(&GOOD.replace("mode: audit", "mode: loud"));
        assert_eq!(e.line, Some(4), "{e}");

        let e = err(&GOOD.replace("per_identity_per_second: 100", "per_identity_per_second: 0"));
        assert_eq!(e.line, Some(13), "{e}");

        let e = err(&GOOD.replace("  orders:", "  Orders:"));
        assert_eq!(e.line, Some(3), "{e}");

        let e = err(&format!("{GOOD}  orders:\n    rules: []\n"));
        assert!(
            e.reason.contains("duplicate") || e.reason.contains("twice"),
            "{e}"
        );

        let dup_rule = GOOD.replace(
            "    rate_limit:",
            "      - name: frontend-read\n        action: deny\n        from: [spiffe://a/b]\n    rate_limit:",
        );
        let e = err(&dup_rule);
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.reason.contains("used twice"), "{e}");

        let e = err(&GOOD.replace("methods: [get, HEAD]", "methods: [\"GET /\"]"));
        assert!(e.reason.contains("not an HTTP method"), "{e}");

        let e = err(
            "default: deny\nservices:\n  orders:\n    rules:\n      - name: r\n        action: allow\n        from: []\n",
        );
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.reason.contains("empty `from`"), "{e}");

        let e = err("defualt: deny\n");
        assert!(e.reason.contains("unknown field"), "{e}");
        assert_eq!(e.to_string(), format!("policy.yaml:1:1: {}", e.reason));
    }
}
