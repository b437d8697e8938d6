//! The pod for real: `portcullis init` sets its netfilter rules in a
//! network namespace of the test's own (as the init container does in a
//! pod), idempotently, and removes exactly them. Needs root and iptables:
//! skipped with the reason otherwise, a failure under
//! PORTCULLIS_REQUIRE_TOOLS=1 (CI installs both).

mod common;

use std::process::{Command, Output};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("pc-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn can_run(test: &str) -> bool {
    have_root(test) && have_tool("iptables", test) && have_tool("ip", test)
}

/// The nat table's rules that are ours, in order.
fn ours(ns: &Netns, tool_save: &str) -> Vec<String> {
    ns.ok(&[tool_save, "-t", "nat"])
        .lines()
        .filter(|l| l.contains("PORTCULLIS"))
        .map(str::to_string)
        .collect()
}

#[test]
fn init_sets_its_rules_once_and_cleanup_removes_only_them() {
    const TEST: &str = "init_sets_its_rules_once_and_cleanup_removes_only_them";
    if !can_run(TEST) {
        return;
    }
    let ns = Netns::new("init");
    // Someone else's rule, which must survive everything below.
    ns.ok(&[
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN",
    ]);

    // --dry-run prints the commands and changes nothing.
    let dry = ns.ok(&[BIN, "init", "--dry-run", "--ipv6", "off"]);
    assert!(
        dry.contains("iptables -t nat -A PORTCULLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006"),
        "{dry}"
    );
    assert!(ours(&ns, "iptables-save").is_empty());

    ns.ok(&[
        BIN,
        "init",
        "--skip-outbound-cidrs",
        "10.96.0.0/12,fd00::/8",
    ]);
    let first = ours(&ns, "iptables-save");
    ns.ok(&[
        BIN,
        "init",
        "--skip-outbound-cidrs",
        "10.96.0.0/12,fd00::/8",
    ]);
    assert_eq!(
        ours(&ns, "iptables-save"),
        first,
        "a second run changed the rules"
    );
    let jumps = |rules: &[String]| {
        rules
            .iter()
            .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
            .count()
    };
    assert_eq!(jumps(&first), 2, "{first:#?}");
    let text = first.join("\n");
    for want in [
        "-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A PORTCULLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006",
        "-A PORTCULLIS_OUTPUT -p tcp -m owner --uid-owner 2102 -j RETURN",
        "-A PORTCULLIS_OUTPUT -d 10.96.0.0/12 -p tcp -j RETURN",
        "-A PORTCULLIS_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    if have_tool("ip6tables", TEST) {
        let v6 = ours(&ns, "ip6tables-save").join("\n");
        assert!(
            v6.contains("-A PORTCULLIS_OUTPUT -d fd00::/8 -p tcp -j RETURN"),
            "{v6}"
        );
        assert!(!v6.contains("10.96.0.0"), "{v6}");
    }

    ns.ok(&[BIN, "init", "--cleanup"]);
    assert!(ours(&ns, "iptables-save").is_empty());
    if have_tool("ip6tables", TEST) {
        assert!(ours(&ns, "ip6tables-save").is_empty());
    }
    let left = ns.ok(&["iptables-save", "-t", "nat"]);
    assert!(
        left.contains("-A OUTPUT -p udp -m udp --dport 53 -j RETURN"),
        "{left}"
    );
    // Cleaning up twice is fine too.
    ns.ok(&[BIN, "init", "--cleanup"]);
}
