#!/usr/bin/env python3
"""Prints the mesh benchmark's table from results.tsv (target, key, value),
with ratios to direct and to HAProxy, and checks portcullis against the
budgets in the README. Exit status 0 either way: budgets are reported, the
machine's speed swings too much for them to fail a script."""

import sys
from collections import defaultdict


def load(path):
    r = defaultdict(dict)
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3:
            continue
        t, k, v = parts
        try:
            r[t][k] = float(v)
        except ValueError:
            r[t][k] = v
    return r


def num(r, t, k):
    v = r.get(t, {}).get(k)
    return v if isinstance(v, float) else None


def fmt(v, digits=1):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def main():
    r = load(sys.argv[1])
    order = [t for t in ("direct", "portcullis", "haproxy", "haproxy-h2", "nginx", "stunnel") if t in r]
    rows = []
    for t in order:
        rps = num(r, t, "max_rps")
        cpu = num(r, t, "cpu_s_per_1k")
        rss = [num(r, t, "rss_kib_out"), num(r, t, "rss_kib_in")]
        warm = [num(r, t, "warm_rss_kib_out"), num(r, t, "warm_rss_kib_in")]
        sc = [num(r, t, "syscalls_per_req_out"), num(r, t, "syscalls_per_req_in")]
        ins = [num(r, t, "instructions_per_req_out"), num(r, t, "instructions_per_req_in")]
        ins_h = [num(r, "haproxy", "instructions_per_req_out"), num(r, "haproxy", "instructions_per_req_in")]
        idle = [num(r, t, "idle_l4_kib_per_conn_out"), num(r, t, "idle_l4_kib_per_conn_in")]
        rows.append(
            [
                t,
                fmt(rps, 0),
                ratio(rps, num(r, "direct", "max_rps")),
                ratio(rps, num(r, "haproxy", "max_rps")),
                fmt(cpu, 3),
                ratio(cpu, num(r, "haproxy", "cpu_s_per_1k")),
                fmt(num(r, t, "rate_p50_ms"), 2),
                fmt(num(r, t, "rate_p99_ms"), 2),
                fmt(num(r, t, "rate_p999_ms"), 2),
                "/".join(fmt(x / 1024 if x else None, 1) for x in rss),
                "/".join(fmt(x / 1024 if x else None, 1) for x in warm),
                "/".join(fmt(x, 1) for x in sc),
                "/".join(fmt(x / 1000 if x else None, 1) for x in ins),
                ratio(sum(ins) if None not in ins else None, sum(ins_h) if None not in ins_h else None),
                fmt(num(r, t, "bulk_gbit"), 2),
                ratio(num(r, t, "bulk_gbit"), num(r, "stunnel", "bulk_gbit")),
                fmt(num(r, t, "idle_mtls_kib_per_conn"), 1)
                + (f" ({num(r, t, 'idle_mtls_held'):,.0f})" if num(r, t, "idle_mtls_held") else ""),
                "/".join(fmt(x, 1) for x in idle),
                fmt(num(r, t, "handshakes_per_s"), 0),
                fmt(num(r, t, "handshakes_per_cpu_s"), 0),
            ]
        )
    head = [
        "target", "max rps", "/direct", "/haproxy", "cpu-s/1k req", "/haproxy",
        "p50 ms", "p99 ms", "p99.9 ms", "idle RSS MiB out/in", "warm RSS MiB", "syscalls/req out/in",
        "k instr/req out/in", "/haproxy", "L4 Gbit/s", "/stunnel", "KiB/idle mTLS conn (n)", "KiB/idle L4 conn out/in", "handshakes/s", "per core",
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    for t in order:
        for k, v in r[t].items():
            if k.startswith("syscall_mix_") and v:
                print(f"{t} {k[len('syscall_mix_'):]} per request: {v}")
            if k.endswith("_error") or (k.endswith("errors") and v):
                print(f"{t} {k}: {v}")
            if k == "handshakes_failed" and v:
                print(f"{t} failed handshakes: {v:.0f}")

    if "portcullis" not in r or "haproxy" not in r:
        return
    p, h = r["portcullis"], r["haproxy"]
    g = lambda d, k: d.get(k) if isinstance(d.get(k), float) else None
    checks = []

    def budget(name, ok, detail):
        checks.append((name, "ok" if ok else "MISSED", detail))

    a, b = g(p, "max_rps"), g(h, "max_rps")
    if a and b:
        budget("max rps >= 2x HAProxy", a >= 2 * b, f"{a / b:.2f}x")
    a, b = g(p, "cpu_s_per_1k"), g(h, "cpu_s_per_1k")
    if a and b:
        budget("CPU per request <= 0.5x HAProxy", a <= 0.5 * b, f"{a / b:.2f}x")
    a, b = g(p, "rate_p99_ms"), g(h, "rate_p99_ms")
    if a and b:
        budget("p99 at the fixed rate <= HAProxy", a <= b, f"{a:.2f} ms vs {b:.2f} ms")
    for side in ("out", "in"):
        v = g(p, f"rss_kib_{side}")
        if v:
            w = g(p, f"warm_rss_kib_{side}")
            warm = f", warm {w / 1024:.1f} MiB" if w else ""
            budget(f"idle RSS {side} <= 10 MB", v <= 10 * 1000 * 1000 / 1024, f"{v / 1024:.1f} MiB{warm}")
        v = g(p, f"idle_l4_kib_per_conn_{side}")
        if v is not None:
            budget(f"per idle L4 connection {side} <= 30 KiB", v <= 30, f"{v:.1f} KiB")
        v = g(p, f"syscalls_per_req_{side}")
        if v is not None:
            budget(f"syscalls per request {side} <= 4", v <= 4, f"{v:.2f}")
    v = g(p, "idle_mtls_kib_per_conn")
    if v is not None:
        budget("per idle mTLS connection (inbound) <= 30 KiB", v <= 30, f"{v:.1f} KiB")
    a, b = g(p, "bulk_gbit"), g(r.get("stunnel", {}), "bulk_gbit")
    if a and b:
        budget("L4 bulk >= 1.5x stunnel", a >= 1.5 * b, f"{a / b:.2f}x")
    h2 = r.get("haproxy-h2", {})
    a, b = g(p, "max_rps"), g(h2, "max_rps")
    c, d = g(p, "cpu_s_per_1k"), g(h2, "cpu_s_per_1k")
    if a and b and c and d:
        checks.append(
            ("against haproxy-h2 (for information)", "", f"rps {a / b:.2f}x, CPU per request {c / d:.2f}x")
        )
    print()
    print("portcullis budgets (against the haproxy target):")
    for name, verdict, detail in checks:
        print(f"  {verdict:6} {name}: {detail}")


if __name__ == "__main__":
    main()
