//! The compiled policy: per service, an index from SPIFFE ID to the rules
//! whose `from` matches it, so a decision never scans the rule list.
//!
//! Per trust domain, a trie over path segments holds every pattern: a
//! literal segment is a hash lookup, `*` a second branch, `**` a list of
//! rules at the node where it starts, and a whole-trust-domain pattern a
//! list at the top. Looking an ID up costs one hash lookup per path segment
//! (plus the `*` branches that exist), whatever the number of rules.
//!
//! Every request on a connection comes from the same verified peer, so an
//! HTTP connection looks the peer up once ([`PeerRulesCache`]) and judges
//! each request against only the rules that peer matched: no hashing per
//! request. The cache is tied to the table it was made from and is made
//! again on the first request after a reload.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;

use super::model::{Action, Mode, PolicySpec, RateLimitSpec, RuleSpec};
use crate::identity::{Segment, SpiffeId};

/// An HTTP request's parts that rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the policy says.
    pub action: Action,
    /// The rule that said it, or "default".
    pub rule: Arc<str>,
    pub mode: Mode,
}

impl Decision {
    /// Whether the connection or request goes through: allowed, or denied
    /// only in audit mode.
    pub fn admitted(&self) -> bool {
        self.action == Action::Allow || self.mode == Mode::Audit
    }

    /// The `decision` label: allow, deny, or audit_deny (denied by the
    /// policy, let through by audit mode).
    pub fn label(&self) -> &'static str {
        match (self.action, self.mode) {
            (Action::Allow, _) => "allow",
            (Action::Deny, Mode::Enforce) => "deny",
            (Action::Deny, Mode::Audit) => "audit_deny",
        }
    }
}

struct CompiledRule {
    name: Arc<str>,
    action: Action,
    l7: bool,
    methods: Option<Vec<String>>,
    exact_paths: Vec<String>,
    /// Prefixes from `/p/*`, stored with their trailing '/'.
    prefixes: Vec<String>,
    any_path: bool,
}

impl CompiledRule {
    fn compile(r: &RuleSpec) -> Self {
        let mut exact_paths = Vec::new();
        let mut prefixes = Vec::new();
        if let Some(paths) = &r.paths {
            for p in paths {
                match p.strip_suffix('*') {
                    Some(prefix) if p.ends_with("/*") => prefixes.push(prefix.to_string()),
                    _ => exact_paths.push(p.clone()),
                }
            }
        }
        CompiledRule {
            name: r.name.as_str().into(),
            action: r.action,
            l7: r.is_l7(),
            methods: r.methods.clone(),
            exact_paths,
            prefixes,
            any_path: r.paths.is_none(),
        }
    }

    fn applies(&self, request: Option<&Request<'_>>) -> bool {
        let Some(req) = request else {
            // Plain TCP has no method or path. A deny rule that names them
            // denies the whole connection (what could be inside it is what
            // the rule forbids: fail closed, as Istio reads HTTP-only
            // fields in DENY policies); an allow rule that names them never
            // matches.
            return !self.l7 || self.action == Action::Deny;
        };
        if let Some(methods) = &self.methods
            && !methods.iter().any(|m| m == req.method)
        {
            return false;
        }
        self.any_path
            || self.exact_paths.iter().any(|p| p == req.path)
            || self
                .prefixes
                .iter()
                .any(|p| req.path.starts_with(p.as_str()))
    }
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    any: Option<Box<Node>>,
    /// Rules whose pattern ends exactly here.
    here: Vec<u32>,
    /// Rules whose pattern ends in `**` here: they match anything deeper.
    below: Vec<u32>,
}

impl Node {
    fn insert(&mut self, segments: &[Segment], rule: u32) {
        match segments.split_first() {
            None => self.here.push(rule),
            Some((Segment::Rest, _)) => self.below.push(rule),
            Some((Segment::Any, rest)) => self
                .any
                .get_or_insert_with(Default::default)
                .insert(rest, rule),
            Some((Segment::Literal(l), rest)) => self
                .children
                .entry(l.clone())
                .or_default()
                .insert(rest, rule),
        }
    }

    fn visit<'a>(&self, mut parts: impl Iterator<Item = &'a str> + Clone, f: &mut impl FnMut(u32)) {
        let mut ahead = parts.clone();
        match ahead.next() {
            None => self.here.iter().for_each(|r| f(*r)),
            Some(seg) => {
                self.below.iter().for_each(|r| f(*r));
                parts.next();
                if let Some(child) = self.children.get(seg) {
                    child.visit(parts.clone(), f);
                }
                if let Some(any) = &self.any {
                    any.visit(parts, f);
                }
            }
        }
    }
}

#[derive(Default)]
struct DomainIndex {
    whole: Vec<u32>,
    root: Node,
}

struct ServiceTable {
    mode: Mode,
    rules: Vec<CompiledRule>,
    domains: HashMap<Box<str>, DomainIndex>,
    rate_limit: Option<RateLimitSpec>,
}

impl ServiceTable {
    /// Calls `f` with the index of every rule whose `from` matches `peer`
    /// (a rule may come up more than once).
    fn for_each_match(&self, peer: &SpiffeId, mut f: impl FnMut(u32)) {
        let Some(domain) = self.domains.get(peer.trust_domain_name()) else {
            return;
        };
        domain.whole.iter().for_each(|i| f(*i));
        let path = peer.path();
        if path.is_empty() {
            domain.root.here.iter().for_each(|i| f(*i));
        } else {
            domain.root.visit(path[1..].split('/'), &mut f);
        }
    }
}

/// The compiled, immutable policy. Swapped whole on reload.
pub struct PolicyTable {
    default: Action,
    default_rule: Arc<str>,
    services: Vec<ServiceTable>,
    by_name: HashMap<Box<str>, u32>,
    /// Unique per compiled table: what a [`PeerRules`] was made from.
    generation: u64,
}

/// The rules of one service that one peer's `from` patterns match, in
/// file order, found once per connection.
struct PeerRules {
    generation: u64,
    /// The service's index, or `None` when the policy does not name it.
    service: Option<u32>,
    /// `None` when the peer matches more than [`MAX_CACHED_RULES`]: such a
    /// peer is looked up on each request instead, so a policy of many
    /// broad rules cannot make every connection hold a long list.
    rules: Option<Box<[u32]>>,
}

/// The most rules a connection keeps for its peer.
const MAX_CACHED_RULES: usize = 64;

/// A connection's resolved rules (the peer's matches), made again when the policy changes.
#[derive(Default)]
pub struct PeerRulesCache(ArcSwapOption<PeerRules>);

fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl PolicyTable {
    pub fn compile(spec: &PolicySpec) -> Self {
        let mut services = Vec::with_capacity(spec.services.len());
        let mut by_name = HashMap::with_capacity(spec.services.len());
        for s in &spec.services {
            let mut domains: HashMap<Box<str>, DomainIndex> = HashMap::new();
            for (i, r) in s.rules.iter().enumerate() {
                for p in &r.from {
                    let d = domains.entry(p.trust_domain().into()).or_default();
                    if p.segments().is_empty() {
                        d.whole.push(i as u32);
                    } else {
                        d.root.insert(p.segments(), i as u32);
                    }
                }
            }
            by_name.insert(s.name.as_str().into(), services.len() as u32);
            services.push(ServiceTable {
                mode: s.mode,
                rules: s.rules.iter().map(CompiledRule::compile).collect(),
                domains,
                rate_limit: s.rate_limit,
            });
        }
        PolicyTable {
            default: spec.default,
            default_rule: "default".into(),
            services,
            by_name,
            generation: next_generation(),
        }
    }

    /// A policy that admits every peer: used when no policy file is set.
    pub fn allow_all() -> Self {
        PolicyTable {
            default: Action::Allow,
            default_rule: "default".into(),
            services: Vec::new(),
            by_name: HashMap::new(),
            generation: next_generation(),
        }
    }

    fn service(&self, name: &str) -> Option<&ServiceTable> {
        let i = *self.by_name.get(name)?;
        self.services.get(i as usize)
    }

    pub fn rate_limit(&self, service: &str) -> Option<RateLimitSpec> {
        self.service(service).and_then(|s| s.rate_limit)
    }

    /// Decides whether `peer` may reach `service`: a connection when
    /// `request` is `None`, an HTTP request otherwise. A matching deny
    /// beats every allow; among rules of one kind the first in the file
    /// names the decision; no match falls to the file's default.
    pub fn decide(
        &self,
        service: &str,
        peer: &SpiffeId,
        request: Option<&Request<'_>>,
    ) -> Decision {
        match self.service(service) {
            None => self.default_decision(),
            Some(svc) => self.judge(svc, |f| svc.for_each_match(peer, f), request),
        }
    }

    /// [`PolicyTable::decide`] for a request on a connection whose peer
    /// was looked up already: `cache` holds the rules it matched, made
    /// here on first use and again whenever the table is not the one they
    /// were made from.
    pub fn decide_cached(
        &self,
        cache: &PeerRulesCache,
        service: &str,
        peer: &SpiffeId,
        request: Option<&Request<'_>>,
    ) -> Decision {
        let guard = cache.0.load();
        let fresh;
        let rules = match &*guard {
            Some(r) if r.generation == self.generation => r,
            _ => {
                fresh = Arc::new(self.resolve(service, peer));
                cache.0.store(Some(fresh.clone()));
                &fresh
            }
        };
        let Some(svc) = rules.service.and_then(|i| self.services.get(i as usize)) else {
            return self.default_decision();
        };
        match &rules.rules {
            Some(list) => self.judge(svc, |f| list.iter().for_each(|i| f(*i)), request),
            None => self.judge(svc, |f| svc.for_each_match(peer, f), request),
        }
    }

    /// The rules of `service` whose `from` matches `peer`.
    fn resolve(&self, service: &str, peer: &SpiffeId) -> PeerRules {
        let index = self.by_name.get(service).copied();
        let mut rules = Vec::new();
        if let Some(svc) = index.and_then(|i| self.services.get(i as usize)) {
            svc.for_each_match(peer, |i| rules.push(i));
            rules.sort_unstable();
            rules.dedup();
        }
        PeerRules {
            generation: self.generation,
            service: index,
            rules: (rules.len() <= MAX_CACHED_RULES).then(|| rules.into()),
        }
    }

    fn default_decision(&self) -> Decision {
        Decision {
            action: self.default,
            rule: self.default_rule.clone(),
            mode: Mode::Enforce,
        }
    }

    /// The decision over the candidate rules `each` yields: a matching
    /// deny beats every allow; among rules of one kind the first in the
    /// file names the decision; none falls to the file's default.
    fn judge(
        &self,
        svc: &ServiceTable,
        each: impl FnOnce(&mut dyn FnMut(u32)),
        request: Option<&Request<'_>>,
    ) -> Decision {
        let mut first_deny = u32::MAX;
        let mut first_allow = u32::MAX;
        each(&mut |i| {
            let Some(rule) = svc.rules.get(i as usize) else {
                return;
            };
            if rule.applies(request) {
                let slot = match rule.action {
                    Action::Deny => &mut first_deny,
                    Action::Allow => &mut first_allow,
                };
                *slot = (*slot).min(i);
            }
        });
        let (action, rule) = if first_deny != u32::MAX {
            (Action::Deny, svc.rules[first_deny as usize].name.clone())
        } else if first_allow != u32::MAX {
            (Action::Allow, svc.rules[first_allow as usize].name.clone())
        } else {
            (self.default, self.default_rule.clone())
        };
        Decision {
            action,
            rule,
            mode: svc.mode,
        }
    }

    /// Whether any allow rule could admit `peer` to `service` for some
    /// request: the connection-level gate in front of per-request checks.
    pub fn may_allow_requests(&self, service: &str, peer: &SpiffeId) -> bool {
        let Some(svc) = self.service(service) else {
            return self.default == Action::Allow;
        };
        if svc.mode == Mode::Audit || self.default == Action::Allow {
            return true;
        }
        let mut any_allow = false;
        svc.for_each_match(peer, |i| {
            any_allow |= svc.rules[i as usize].action == Action::Allow
        });
        any_allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::parse;
    use std::path::Path;

    fn table(yaml: &str) -> PolicyTable {
        PolicyTable::compile(&parse(yaml, Path::new("policy.yaml")).unwrap())
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    const POLICY: &str = "\
default: deny
services:
  orders:
    rules:
      - name: frontend
        action: allow
        from: [spiffe://prod.example.org/ns/web/sa/frontend]
      - name: batch
        action: allow
        from: [spiffe://prod.example.org/ns/batch/*]
      - name: ops
        action: allow
        from: [spiffe://prod.example.org/ns/ops/**]
      - name: partner
        action: allow
        from: [spiffe://partner.example.com]
      - name: no-evil-batch
        action: deny
        from: [spiffe://prod.example.org/ns/batch/evil]
      - name: readers
        action: allow
        from: [spiffe://prod.example.org/ns/web/sa/reader]
        methods: [GET, HEAD]
        paths: [/orders, /orders/*]
      - name: no-admin
        action: deny
        from: [spiffe://prod.example.org/ns/ops/**]
        paths: [/admin/*]
  audited:
    mode: audit
    rules:
      - name: only-frontend
        action: allow
        from: [spiffe://prod.example.org/ns/web/sa/frontend]
";

    #[test]
    fn table_driven_decisions() {
        let t = table(POLICY);
        let get = |path| Request {
            method: "GET",
            path,
        };
        let post = |path| Request {
            method: "POST",
            path,
        };
        let cases: Vec<(&str, &str, Option<Request<'_>>, &str, &str)> = vec![
            // (service, peer, request, action, rule)
            (
                "orders",
                "spiffe://prod.example.org/ns/web/sa/frontend",
                None,
                "allow",
                "frontend",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/web/sa/frontend2",
                None,
                "deny",
                "default",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/batch/job",
                None,
                "allow",
                "batch",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/batch/job/x",
                None,
                "deny",
                "default",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/batch",
                None,
                "deny",
                "default",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/batch/evil",
                None,
                "deny",
                "no-evil-batch",
            ),
            // At L4 a deny rule that names paths denies the whole
            // connection: nothing tells what the bytes ask for.
            (
                "orders",
                "spiffe://prod.example.org/ns/ops/a/b",
                None,
                "deny",
                "no-admin",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/ops",
                None,
                "deny",
                "default",
            ),
            (
                "orders",
                "spiffe://partner.example.com/anything",
                None,
                "allow",
                "partner",
            ),
            (
                "orders",
                "spiffe://partner.example.com",
                None,
                "allow",
                "partner",
            ),
            (
                "orders",
                "spiffe://other.example.com/ns/web/sa/frontend",
                None,
                "deny",
                "default",
            ),
            // L7-only rules never match plain TCP: readers get the default.
            (
                "orders",
                "spiffe://prod.example.org/ns/web/sa/reader",
                None,
                "deny",
                "default",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/web/sa/reader",
                Some(get("/orders")),
                "allow",
                "readers",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/web/sa/reader",
                Some(get("/orders/7")),
                "allow",
                "readers",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/web/sa/reader",
                Some(get("/ordersx")),
                "deny",
                "default",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/web/sa/reader",
                Some(post("/orders")),
                "deny",
                "default",
            ),
            // An L7 deny beats an L4 allow for matching requests only.
            (
                "orders",
                "spiffe://prod.example.org/ns/ops/a",
                Some(get("/admin/users")),
                "deny",
                "no-admin",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/ops/a",
                Some(get("/orders")),
                "allow",
                "ops",
            ),
            (
                "orders",
                "spiffe://prod.example.org/ns/ops/a",
                None,
                "deny",
                "no-admin",
            ),
            // Unlisted service: the file's default.
            (
                "payments",
                "spiffe://prod.example.org/ns/web/sa/frontend",
                None,
                "deny",
                "default",
            ),
        ];
        for (svc, peer, req, action, rule) in cases {
            let d = t.decide(svc, &id(peer), req.as_ref());
            assert_eq!(
                (d.action.as_str(), &*d.rule),
                (action, rule),
                "{svc} {peer} {req:?}"
            );
            // A connection's cached lookup decides the same, made fresh
            // and reused.
            let cache = PeerRulesCache::default();
            for _ in 0..2 {
                let c = t.decide_cached(&cache, svc, &id(peer), req.as_ref());
                assert_eq!(c, d, "cached: {svc} {peer} {req:?}");
            }
        }
    }

    #[test]
    fn a_connections_cached_rules_follow_a_new_table() {
        let peer = id("spiffe://prod.example.org/ns/web/sa/reader");
        let get = Request {
            method: "GET",
            path: "/orders",
        };
        let cache = PeerRulesCache::default();
        let old = table(POLICY);
        let d = old.decide_cached(&cache, "orders", &peer, Some(&get));
        assert_eq!((d.action, &*d.rule), (Action::Allow, "readers"));

        // The same file compiled again is a new table; then one where the
        // reader may no longer GET. Both are judged on their own rules,
        // not on what the connection looked up in the old one.
        let same = table(POLICY);
        let d = same.decide_cached(&cache, "orders", &peer, Some(&get));
        assert_eq!((d.action, &*d.rule), (Action::Allow, "readers"));
        let new = table(&POLICY.replace(
            "from: [spiffe://prod.example.org/ns/web/sa/reader]",
            "from: [spiffe://prod.example.org/ns/web/sa/other]",
        ));
        let d = new.decide_cached(&cache, "orders", &peer, Some(&get));
        assert_eq!((d.action, &*d.rule), (Action::Deny, "default"));
        // A peer that matches more rules than a connection keeps is
        // judged on the full lookup, with the same result.
        let many: String = (0..MAX_CACHED_RULES + 2)
            .map(|i| {
                let action = if i == MAX_CACHED_RULES + 1 { "deny" } else { "allow" };
                format!(
                    "      - name: r{i}\n        action: {action}\n        from: [spiffe://prod.example.org/ns/web/**]\n        paths: [/p{i}]\n"
                )
            })
            .collect();
        let many = table(&format!("services:\n  orders:\n    rules:\n{many}"));
        assert!(many.resolve("orders", &peer).rules.is_none());
        let cache = PeerRulesCache::default();
        let last = MAX_CACHED_RULES + 1;
        for (i, action) in [(0, Action::Allow), (3, Action::Allow), (last, Action::Deny)] {
            let path = format!("/p{i}");
            let req = Request {
                method: "GET",
                path: &path,
            };
            let d = many.decide_cached(&cache, "orders", &peer, Some(&req));
            assert_eq!(d, many.decide("orders", &peer, Some(&req)), "{path}");
            assert_eq!((d.action, &*d.rule), (action, format!("r{i}").as_str()));
        }
        // A policy without the service at all falls to its default.
        let d = table("default: allow\n").decide_cached(&cache, "orders", &peer, Some(&get));
        assert_eq!((d.action, &*d.rule), (Action::Allow, "default"));
    }

    #[test]
    fn audit_mode_admits_but_reports_the_denial() {
        let t = table(POLICY);
        let d = t.decide("audited", &id("spiffe://prod.example.org/ns/x/sa/y"), None);
        assert_eq!(d.action, Action::Deny);
        assert!(d.admitted());
        assert_eq!(d.label(), "audit_deny");
        let d = t.decide("orders", &id("spiffe://prod.example.org/ns/x/sa/y"), None);
        assert!(!d.admitted());
        assert_eq!(d.label(), "deny");
    }

    #[test]
    fn default_allow_and_allow_all() {
        let t = table("default: allow\n");
        assert!(t.decide("any", &id("spiffe://a/b"), None).admitted());
        assert!(
            PolicyTable::allow_all()
                .decide("x", &id("spiffe://a/b"), None)
                .admitted()
        );
    }

    #[test]
    fn may_allow_requests_sees_l7_allows() {
        let t = table(POLICY);
        assert!(t.may_allow_requests("orders", &id("spiffe://prod.example.org/ns/web/sa/reader")));
        assert!(!t.may_allow_requests("orders", &id("spiffe://prod.example.org/ns/nobody")));
    }

    #[test]
    fn index_agrees_with_direct_matching() {
        // Every pattern kind against many IDs: the trie and IdPattern::matches agree.
        let patterns = [
            "spiffe://td/a/b",
            "spiffe://td/a/*",
            "spiffe://td/*/b",
            "spiffe://td/a/**",
            "spiffe://td/**",
            "spiffe://td",
            "spiffe://td/*/*/c",
            "spiffe://td2/a",
        ];
        let ids = [
            "spiffe://td",
            "spiffe://td/a",
            "spiffe://td/a/b",
            "spiffe://td/a/c",
            "spiffe://td/x/b",
            "spiffe://td/a/b/c",
            "spiffe://td/x/y/c",
            "spiffe://td2/a",
            "spiffe://td3/a",
        ];
        for p in patterns {
            let yaml = format!(
                "services:\n  s:\n    rules:\n      - name: r\n        action: allow\n        from: [\"{p}\"]\n"
            );
            let t = table(&yaml);
            let pat = crate::identity::IdPattern::parse(p).unwrap();
            for i in ids {
                let want = pat.matches(&id(i));
                let got = t.decide("s", &id(i), None).action == Action::Allow;
                assert_eq!(got, want, "pattern {p} id {i}");
                let cached = t.decide_cached(&PeerRulesCache::default(), "s", &id(i), None);
                assert_eq!(
                    cached.action == Action::Allow,
                    want,
                    "cached: pattern {p} id {i}"
                );
            }
        }
    }
}
