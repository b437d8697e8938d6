//! `portcullis check`: validate a config file and every file it names (our
//! SVID, key and bundles, CRLs, the policy), or a policy file on its own,
//! without starting; print what a sidecar would run with.

use std::process::ExitCode;

use crate::config::Config;

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
    match crate::sidecar::load_tls(&config) {
        Ok((identity, trust)) => {
            println!("{}: ok", path.display());
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
            for l in &config.inbound {
                println!("  inbound:    {} {} -> {}", l.name, l.listen, l.forward);
            }
            for l in &config.outbound {
                let eps: Vec<String> = l.endpoints.iter().map(|e| e.to_string()).collect();
                println!(
                    "  outbound:   {} {} -> [{}] as {}",
                    l.name,
                    l.listen,
                    eps.join(", "),
                    l.identity
                );
            }
            println!("  admin:      {}", config.admin.listen);
            match (&config.policy, &policy) {
                (Some(path), Some((spec, sha))) => {
                    print_policy(path, spec, sha);
                    for l in &config.inbound {
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
