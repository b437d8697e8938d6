//! `portcullis check`: validate a config file and every file it names (our
//! SVID, key and bundles, CRLs, the policy), or a policy file on its own,
//! without starting; print what a sidecar would run with.

use std::process::ExitCode;

use crate::config::Config;

/// What rules with methods or paths do on a listener that carries TCP:
/// one line per such rule of `service`, for a listener of `protocol`.
fn l4_warnings(
    service: &crate::policy::ServiceSpec,
    protocol: Option<crate::config::Protocol>,
) -> Vec<String> {
    use crate::config::Protocol;
    let on = match protocol {
        Some(Protocol::Tcp) => "its `tcp` listener",
        Some(Protocol::Auto) => "connections its `auto` listener takes as TCP",
        // HTTP listeners judge requests; no listener: said per policy.
        Some(Protocol::Http) => return Vec::new(),
        None => "a `tcp` listener (and TCP on an `auto` one)",
    };
    service
        .rules
        .iter()
        .filter(|r| r.is_l7())
        .map(|r| match r.action {
            crate::policy::Action::Deny => format!(
                "warning:    service {:?}: deny rule {:?} names methods or paths, so on {on} it denies the whole connection of every peer it names",
                service.name, r.name
            ),
            crate::policy::Action::Allow => format!(
                "warning:    service {:?}: allow rule {:?} names methods or paths, so on {on} it never admits anyone",
                service.name, r.name
            ),
        })
        .collect()
}

fn print_policy(path: &std::path::Path, spec: &crate::policy::PolicySpec, sha: &str) {
    let rules: usize = spec.services.iter().map(|s| s.rules.len()).sum();
    println!(
        "  policy:     {} (sha256 {sha}): default {}, {} service(s), {rules} rule(s)",
        path.display(),
        spec.default.as_str(),
        spec.services.len()
    );
}

pub fn check_policy(path: &std::path::Path) -> ExitCode {
    match crate::policy::load_file(path) {
        Ok((spec, sha)) => {
            println!("{}: ok", path.display());
            print_policy(path, &spec, &sha);
            for service in &spec.services {
                for w in l4_warnings(service, None) {
                    println!("  {w}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis check: {e}");
            ExitCode::from(2)
        }
    }
}

pub fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis check: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = match &config.policy {
        None => None,
        Some(p) => match crate::policy::load_file(p) {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                eprintln!("portcullis check: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // Identity from the Workload API arrives on its stream when the
    // sidecar runs: check has nothing to load, and says where it will come from.
    let loaded = match config.identity.workload_api() {
        Some(_) => Ok(None),
        None => crate::sidecar::load_tls(&config).map(Some),
    }
    .map(|l| (l, config.identity.workload_api()));
    match loaded {
        Ok((loaded, workload_api)) => {
            println!("{}: ok", path.display());
            if let Some((identity, trust)) = loaded {
                println!(
                    "  identity:   {} (serial {}, expires {})",
                    identity.leaf.id,
                    identity.leaf.serial,
                    crate::clock::fmt_time(identity.leaf.not_after)
                );
                for b in trust.bundles() {
                    println!(
                        "  trust:      {} ({} root(s))",
                        b.trust_domain,
                        b.roots.len()
                    );
                }
            }
            if let Some(w) = workload_api {
                println!(
                    "  identity:   from the Workload API at {}{} (SVID and bundles arrive when the sidecar runs)",
                    w.socket,
                    w.hint
                        .as_deref()
                        .map(|h| format!(", hint {h:?}"))
                        .unwrap_or_default()
                );
            }
            for (td, e) in config.identity.endpoints() {
                println!("  federation: {td} from {} ({:?})", e.url, e.profile);
            }
            for l in &config.inbound {
                let at = match (l.listen, l.port) {
                    (Some(a), Some(p)) => format!("{a} and captured port {p}"),
                    (Some(a), None) => a.to_string(),
                    (None, Some(p)) => format!("captured port {p}"),
                    (None, None) => String::new(),
                };
                println!("  inbound:    {} {at} -> {}", l.name, l.forward);
            }
            for l in &config.outbound {
                let eps: Vec<String> = l.endpoints.iter().map(|e| e.to_string()).collect();
                let mut at: Vec<String> = l.listen.iter().map(|a| a.to_string()).collect();
                if !l.destinations.is_empty() {
                    at.push(format!("{} captured destination(s)", l.destinations.len()));
                }
                println!(
                    "  outbound:   {} {} -> [{}] as {}",
                    l.name,
                    at.join(" and "),
                    eps.join(", "),
                    l.identity
                );
            }
            println!("  admin:      {}", config.admin.listen);
            match (&config.policy, &policy) {
                (Some(path), Some((spec, sha))) => {
                    print_policy(path, spec, sha);
                    for l in &config.inbound {
                        if let Some(service) = spec.services.iter().find(|s| s.name == l.name) {
                            for w in l4_warnings(service, Some(l.protocol)) {
                                println!("  {w}");
                            }
                        }
                        if !spec.services.iter().any(|s| s.name == l.name) {
                            println!(
                                "  note:       inbound {:?} is not in the policy: it gets `default: {}`",
                                l.name,
                                spec.default.as_str()
                            );
                        }
                    }
                }
                _ => println!(
                    "  policy:     none (every authenticated peer of a trusted trust domain is admitted)"
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis check: {e}");
            ExitCode::from(2)
        }
    }
}
