//! `portcullis init`: the pod's netfilter rules, as linkerd-init and
//! istio-init set them, run as the init container of the same image.
//!
//! In the `nat` table of each family (`iptables`, and `ip6tables` when it
//! is there) it owns two chains and one jump to each:
//!
//! - `PORTCULLIS_INBOUND`, from `PREROUTING`: TCP arriving at the pod goes
//!   to the inbound capture port, except the skipped ports (the probe and
//!   admin ports by default: kubelet speaks plaintext to them).
//! - `PORTCULLIS_OUTPUT`, from `OUTPUT`: TCP the app starts goes to the
//!   outbound capture port, except what the sidecar's own UID sends (its
//!   mTLS to upstreams and plaintext to the app), what goes to loopback,
//!   and the skipped ports and CIDRs.
//!
//! Running it again rebuilds its chains and leaves one jump each, so it is
//! idempotent; `--cleanup` removes exactly its own chains and jumps, and
//! `--dry-run` prints the commands instead of running them. The commands
//! are run one by one with `iptables` as Debian ships it (the nft backend).

use std::process::Command;

use clap::Args;

use crate::config::Cidr;

pub const INBOUND_CHAIN: &str = "PORTCULLIS_INBOUND";
pub const OUTPUT_CHAIN: &str = "PORTCULLIS_OUTPUT";

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The port inbound TCP is redirected to (the capture listener).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The port the app's outbound TCP is redirected to.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The UID the sidecar runs as: its own traffic is never redirected.
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Inbound ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [15021, 15000])]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone (comma-separated, either family).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// Capture inbound only (no OUTPUT rules).
    #[arg(long)]
    pub inbound_only: bool,
    /// Also set IPv6 rules: `auto` when ip6tables is installed.
    #[arg(long, value_enum, default_value_t = Ipv6::Auto)]
    pub ipv6: Ipv6,
    /// Print the commands instead of running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove portcullis's chains and jumps instead of setting them.
    #[arg(long)]
    pub cleanup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    Auto,
    On,
    Off,
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s)
}

/// The IP family one set of commands is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, c: &Cidr) -> bool {
        c.addr.is_ipv4() == (self == Family::V4)
    }
}

/// One command: the tool and its arguments; `check` marks a `-C` probe
/// whose failure means "not there" rather than an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub args: Vec<String>,
    pub kind: StepKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Must succeed.
    Run,
    /// Creating a chain that may exist already: "exists" is fine.
    Create,
    /// Adding a jump only when `-C` says it is missing.
    AddJump,
    /// Removing a jump while `-C` says it is there; removing a chain that
    /// may not exist.
    Remove,
}

fn step(kind: StepKind, args: &[&str]) -> Step {
    Step {
        args: args.iter().map(|s| s.to_string()).collect(),
        kind,
    }
}

/// What `init` does for one family, in order.
pub fn plan(a: &InitArgs, family: Family) -> Vec<Step> {
    let mut steps = Vec::new();
    let jumps: Vec<(&str, &str)> = if a.inbound_only {
        vec![("PREROUTING", INBOUND_CHAIN)]
    } else {
        vec![("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)]
    };
    if a.cleanup {
        for (from, chain) in [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)] {
            steps.push(step(
                StepKind::Remove,
                &["-t", "nat", "-D", from, "-p", "tcp", "-j", chain],
            ));
            steps.push(step(StepKind::Remove, &["-t", "nat", "-F", chain]));
            steps.push(step(StepKind::Remove, &["-t", "nat", "-X", chain]));
        }
        return steps;
    }
    for (_, chain) in &jumps {
        steps.push(step(StepKind::Create, &["-t", "nat", "-N", chain]));
        steps.push(step(StepKind::Run, &["-t", "nat", "-F", chain]));
    }
    // One rule: `-A chain -p tcp <matches> -j <target>`.
    let append = |chain: &str, matches: &[&str], target: &[&str]| {
        let mut args = vec!["-t", "nat", "-A", chain, "-p", "tcp"];
        args.extend_from_slice(matches);
        args.push("-j");
        args.extend_from_slice(target);
        step(StepKind::Run, &args)
    };
    for port in &a.skip_inbound_ports {
        steps.push(append(
            INBOUND_CHAIN,
            &["--dport", &port.to_string()],
            &["RETURN"],
        ));
    }
    let inbound = a.inbound_port.to_string();
    steps.push(append(
        INBOUND_CHAIN,
        &[],
        &["REDIRECT", "--to-ports", &inbound],
    ));
    if !a.inbound_only {
        let uid = a.proxy_uid.to_string();
        let ret = |matches: &[&str]| append(OUTPUT_CHAIN, matches, &["RETURN"]);
        steps.push(ret(&["-m", "owner", "--uid-owner", &uid]));
        steps.push(ret(&["-d", family.loopback()]));
        steps.push(ret(&["-o", "lo"]));
        for port in &a.skip_outbound_ports {
            steps.push(ret(&["--dport", &port.to_string()]));
        }
        for cidr in a.skip_outbound_cidrs.iter().filter(|c| family.holds(c)) {
            steps.push(ret(&["-d", &cidr.to_string()]));
        }
        let outbound = a.outbound_port.to_string();
        steps.push(append(
            OUTPUT_CHAIN,
            &[],
            &["REDIRECT", "--to-ports", &outbound],
        ));
    }
    for (from, chain) in &jumps {
        steps.push(step(
            StepKind::AddJump,
            &["-t", "nat", "-A", from, "-p", "tcp", "-j", chain],
        ));
    }
    steps
}

/// The families to set: IPv4 always, IPv6 as `--ipv6` says.
pub fn families(a: &InitArgs) -> Result<Vec<Family>, String> {
    let have_v6 = Command::new("ip6tables")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    Ok(match a.ipv6 {
        Ipv6::Off => vec![Family::V4],
        Ipv6::Auto if !have_v6 => vec![Family::V4],
        Ipv6::On if !have_v6 => return Err("--ipv6 on: ip6tables is not installed".into()),
        _ => vec![Family::V4, Family::V6],
    })
}

/// The commands as a shell would read them.
pub fn render(family: Family, s: &Step) -> String {
    let cmd = format!("{} {}", family.tool(), s.args.join(" "));
    match s.kind {
        StepKind::Run => cmd,
        StepKind::Create => format!("{cmd} 2>/dev/null || true"),
        StepKind::AddJump => {
            let check = cmd.replacen(" -A ", " -C ", 1);
            format!("{check} 2>/dev/null || {cmd}")
        }
        StepKind::Remove if s.args.iter().any(|a| a == "-D") => {
            let check = cmd.replacen(" -D ", " -C ", 1);
            format!("while {check} 2>/dev/null; do {cmd}; done")
        }
        StepKind::Remove => format!("{cmd} 2>/dev/null || true"),
    }
}

/// Runs `init`: prints (with `--dry-run`) or applies every step. The
/// error names the command that failed and, for a permission error, the
/// capability the init container needs.
pub fn run(a: &InitArgs) -> Result<String, String> {
    let mut out = String::new();
    for family in families(a)? {
        for s in plan(a, family) {
            if a.dry_run {
                out.push_str(&render(family, &s));
                out.push('\n');
                continue;
            }
            apply(family, &s)?;
        }
    }
    if !a.dry_run {
        out.push_str(if a.cleanup {
            "portcullis init: rules removed\n"
        } else {
            "portcullis init: rules set\n"
        });
    }
    Ok(out)
}

fn apply(family: Family, s: &Step) -> Result<(), String> {
    let exec = |args: &[String]| {
        Command::new(family.tool())
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", family.tool()))
    };
    let probe = |verb: &str| {
        let mut args = s.args.clone();
        if let Some(v) = args.iter_mut().find(|a| *a == verb) {
            *v = "-C".into();
        }
        exec(&args).map(|o| o.status.success())
    };
    match s.kind {
        StepKind::AddJump => {
            if probe("-A")? {
                return Ok(());
            }
        }
        StepKind::Remove if s.args.iter().any(|a| a == "-D") => {
            // Every copy, in case an older run left more than one.
            while probe("-D")? {
                checked(family, &s.args, exec(&s.args)?)?;
            }
            return Ok(());
        }
        StepKind::Remove => {
            let _ = exec(&s.args)?;
            return Ok(());
        }
        StepKind::Create => {
            let o = exec(&s.args)?;
            if o.status.success() || String::from_utf8_lossy(&o.stderr).contains("exists") {
                return Ok(());
            }
            return checked(family, &s.args, o);
        }
        StepKind::Run => {}
    }
    checked(family, &s.args, exec(&s.args)?)
}

fn checked(family: Family, args: &[String], o: std::process::Output) -> Result<(), String> {
    if o.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    let hint = if err.contains("Permission denied") || err.contains("Operation not permitted") {
        " (the init container needs the NET_ADMIN capability)"
    } else {
        ""
    };
    Err(format!(
        "`{} {}` failed: {err}{hint}",
        family.tool(),
        args.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: InitArgs,
    }

    fn args(extra: &[&str]) -> InitArgs {
        let mut v = vec!["t"];
        v.extend_from_slice(extra);
        T::parse_from(v).a
    }

    fn rendered(a: &InitArgs, f: Family) -> Vec<String> {
        plan(a, f).iter().map(|s| render(f, s)).collect()
    }

    #[test]
    fn the_default_rules() {
        let r = rendered(&args(&[]), Family::V4);
        let want = [
            "iptables -t nat -N PORTCULLIS_INBOUND 2>/dev/null || true",
            "iptables -t nat -F PORTCULLIS_INBOUND",
            "iptables -t nat -N PORTCULLIS_OUTPUT 2>/dev/null || true",
            "iptables -t nat -F PORTCULLIS_OUTPUT",
            "iptables -t nat -A PORTCULLIS_INBOUND -p tcp --dport 15021 -j RETURN",
            "iptables -t nat -A PORTCULLIS_INBOUND -p tcp --dport 15000 -j RETURN",
            "iptables -t nat -A PORTCULLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006",
            "iptables -t nat -A PORTCULLIS_OUTPUT -p tcp -m owner --uid-owner 2102 -j RETURN",
            "iptables -t nat -A PORTCULLIS_OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN",
            "iptables -t nat -A PORTCULLIS_OUTPUT -p tcp -o lo -j RETURN",
            "iptables -t nat -A PORTCULLIS_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            "iptables -t nat -C PREROUTING -p tcp -j PORTCULLIS_INBOUND 2>/dev/null || iptables -t nat -A PREROUTING -p tcp -j PORTCULLIS_INBOUND",
            "iptables -t nat -C OUTPUT -p tcp -j PORTCULLIS_OUTPUT 2>/dev/null || iptables -t nat -A OUTPUT -p tcp -j PORTCULLIS_OUTPUT",
        ];
        assert_eq!(r, want);
    }

    #[test]
    fn skips_go_to_their_family_and_cleanup_undoes_only_ours() {
        let a = args(&[
            "--skip-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
            "--skip-outbound-ports",
            "5432",
            "--proxy-uid",
            "1337",
        ]);
        let v4 = rendered(&a, Family::V4).join("\n");
        let v6 = rendered(&a, Family::V6).join("\n");
        assert!(v4.contains("-d 10.96.0.0/12 -j RETURN") && !v4.contains("fd00::/8"));
        assert!(v6.contains("ip6tables -t nat -A PORTCULLIS_OUTPUT -p tcp -d fd00::/8 -j RETURN"));
        assert!(v6.contains("-d ::1/128 -j RETURN") && !v6.contains("10.96.0.0"));
        assert!(v4.contains("--dport 5432 -j RETURN") && v4.contains("--uid-owner 1337"));

        let c = rendered(&args(&["--cleanup"]), Family::V4);
        assert!(c.iter().all(|l| l.contains("PORTCULLIS_")), "{c:?}");
        assert!(
            c[0].starts_with("while iptables -t nat -C PREROUTING"),
            "{c:?}"
        );
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(parse_cidr("nope").is_err());
    }
}
