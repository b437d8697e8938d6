//! The mesh benchmark's scripts stay runnable: `run.sh` parses, and the
//! report turns a results file into the table and judges the budgets the
//! way the README states them. (The benchmark itself is not run here: it
//! needs minutes of load and a quiet machine.)

mod common;

use std::path::Path;
use std::process::Command;

use common::have_tool;

fn bench_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/mesh"))
}

#[test]
fn run_script_parses() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(bench_dir().join("run.sh"))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn report_judges_the_budgets() {
    if !have_tool("python3", "report_judges_the_budgets") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("results.tsv");
    // portcullis meets some budgets and misses others against haproxy.
    let rows = [
        ("direct", "max_rps", "100000"),
        ("portcullis", "max_rps", "30000"),
        ("portcullis", "cpu_s_per_1k", "0.020"),
        ("portcullis", "rate_p99_ms", "0.50"),
        ("portcullis", "rss_kib_out", "9000"),
        ("portcullis", "rss_kib_in", "11000"),
        ("portcullis", "syscalls_per_req_out", "2.5"),
        ("portcullis", "syscalls_per_req_in", "4.5"),
        ("portcullis", "bulk_gbit", "6.0"),
        ("portcullis", "idle_mtls_kib_per_conn", "29.0"),
        ("portcullis", "idle_mtls_held", "10000"),
        ("portcullis", "instructions_per_req_out", "30000"),
        ("portcullis", "instructions_per_req_in", "40000"),
        ("haproxy", "instructions_per_req_out", "60000"),
        ("haproxy", "instructions_per_req_in", "80000"),
        ("haproxy", "max_rps", "20000"),
        ("haproxy", "cpu_s_per_1k", "0.050"),
        ("haproxy", "rate_p99_ms", "0.40"),
        ("stunnel", "bulk_gbit", "5.0"),
    ];
    let text: String = rows
        .iter()
        .map(|(t, k, v)| format!("{t}\t{k}\t{v}\n"))
        .collect();
    std::fs::write(&tsv, text).unwrap();
    let out = Command::new("python3")
        .arg(bench_dir().join("report.py"))
        .arg(&tsv)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table, with ratios to direct and to HAProxy.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| portcullis"))
        .expect("a portcullis row");
    assert!(
        row.contains("30,000") && row.contains("0.30x") && row.contains("1.50x"),
        "{row}"
    );
    assert!(row.contains("29.0 (10,000)"), "{row}");
    // User-space instructions per request, in thousands, and their ratio.
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(
        cells.windows(2).any(|w| w == ["30.0/40.0", "0.50x"]),
        "{row}"
    );
    for (verdict, budget) in [
        ("MISSED", "max rps >= 2x HAProxy: 1.50x"),
        ("ok", "CPU per request <= 0.5x HAProxy: 0.40x"),
        ("MISSED", "p99 at the fixed rate <= HAProxy"),
        ("ok", "idle RSS out <= 10 MB"),
        ("MISSED", "idle RSS in <= 10 MB"),
        ("ok", "syscalls per request out <= 4"),
        ("MISSED", "syscalls per request in <= 4"),
        ("ok", "per idle mTLS connection (inbound) <= 30 KiB"),
        ("MISSED", "L4 bulk >= 1.5x stunnel: 1.20x"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(verdict) && l.contains(budget)),
            "expected `{verdict} {budget}` in:\n{stdout}"
        );
    }
}
