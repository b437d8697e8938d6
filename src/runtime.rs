//! Sizing and building the tokio runtime, and setting up logs.
//!
//! A sidecar usually gets a fraction of a core. Running as many worker
//! threads as the node has CPUs would make them fight over that quota and
//! get throttled, so the worker count comes from the container's cgroup
//! CPU limit unless the config or a flag sets it.

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The CPU limit of this process's cgroup, in cores, if one is set.
pub fn cgroup_cpu_limit() -> Option<f64> {
    let root = Path::new("/sys/fs/cgroup");
    if let Ok(s) = std::fs::read_to_string(root.join("cpu.max")) {
        return parse_cgroup_v2(&s);
    }
    let quota = std::fs::read_to_string(root.join("cpu/cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(root.join("cpu/cpu.cfs_period_us")).ok()?;
    parse_cgroup_v1(&quota, &period)
}

/// cgroup v2 `cpu.max`: `"<quota> <period>"` or `"max <period>"`.
fn parse_cgroup_v2(cpu_max: &str) -> Option<f64> {
    let mut it = cpu_max.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

/// cgroup v1: `cpu.cfs_quota_us` is -1 when unlimited.
fn parse_cgroup_v1(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Worker threads: `explicit` (flag, then config) if given; otherwise the
/// cgroup limit rounded up; otherwise the CPUs we may run on.
pub fn worker_threads(explicit: Option<usize>) -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if let Some(n) = explicit {
        return n.max(1);
    }
    threads_for(cgroup_cpu_limit(), cpus)
}

fn threads_for(limit: Option<f64>, cpus: usize) -> usize {
    match limit {
        Some(cores) => (cores.ceil() as usize).clamp(1, cpus.max(1)),
        None => cpus.max(1),
    }
}

/// Builds the runtime: a single-threaded one for one worker (no work
/// stealing, no cross-thread wakeups), a multi-threaded one otherwise.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("portcullis-worker")
            .enable_all()
            .build()
    }
}

/// Sets up logging to stderr. `RUST_LOG`, when set, wins over `level`.
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    // `level,target=level,...` directives. Not EnvFilter: its span and
    // field matching pulls in a regex engine, megabytes of resident code
    // in every sidecar for a feature nobody sets on a proxy.
    let filter: Targets = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => v.parse().map_err(|e| format!("RUST_LOG {v:?}: {e}"))?,
        _ => level
            .parse()
            .map_err(|e| format!("log level {level:?}: {e}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Text => builder.finish().with(filter).try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        assert_eq!(parse_cgroup_v2("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cgroup_v2("250000 100000"), Some(2.5));
        assert_eq!(parse_cgroup_v2("max 100000\n"), None);
        assert_eq!(parse_cgroup_v2("garbage"), None);
        assert_eq!(parse_cgroup_v1("-1\n", "100000\n"), None);
        assert_eq!(parse_cgroup_v1("150000\n", "100000\n"), Some(1.5));
    }

    #[test]
    fn threads_follow_the_quota() {
        assert_eq!(threads_for(Some(0.5), 16), 1);
        assert_eq!(threads_for(Some(2.5), 16), 3);
        assert_eq!(threads_for(Some(64.0), 4), 4);
        assert_eq!(threads_for(None, 8), 8);
        assert_eq!(worker_threads(Some(3)), 3);
    }
}
