#!/usr/bin/env python3
"""The storm runs of a JSONL file (run.py --scenario storm --out FILE) as a Markdown table.

  python storm_report.py results/connections-storm.jsonl

One row per run, in file order: who, how many clients from how many addresses, the machine's load
before it, then what run.py's storm figures say (README.md, "Scenarios").
"""
import json
import sys

COLUMNS = ("target", "clients", "addrs", "admission", "load", "all back s", "back / recovered",
           "refused (reason: n)", "lost (in window)", "dup", "replayed", "B CPU s", "B core avg / peak",
           "B µs / reconnect", "latency after all back p50 / p99 ms", "latency during storm p50 / p99 ms",
           "CPU 0 foreign")


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def row(d):
    if d.get("error"):
        return [d.get("target", "?"), "-", "-", "-", "-", f"error: {d['error'][:60]}"] + ["-"] * (len(COLUMNS) - 6)
    after = d.get("latency_ms_after_all_back") or {}
    during = d.get("latency_ms_during_storm") or {}
    refused = ", ".join(f"{k}: {v}" for k, v in (d.get("refused") or {}).items()) or "0"
    lost = d.get("lost")
    window = d.get("lost_within_window") if d.get("target") == "project" else "no recovery"
    foreign = (d.get("cpu0_busy_storm") or 0) - (d.get("b_core_util_storm") or 0)
    return [
        d.get("target"), d.get("clients"), d.get("source_addrs") or 1, d.get("admission") or "-",
        fmt((d.get("loadavg_before") or [None])[0], 2), fmt(d.get("all_back_s"), 2),
        f"{d.get('back')} / {d.get('recovered')}", refused, f"{lost} ({window})", d.get("duplicates"),
        d.get("replayed_events"), fmt(d.get("b_cpu_s_storm"), 2),
        f"{fmt(d.get('b_core_util_storm'), 2)} / {fmt(d.get('b_core_util_peak_500ms'), 2)}",
        fmt(d.get("b_cpu_us_per_reconnect"), 0),
        f"{fmt(after.get('p50'))} / {fmt(after.get('p99'))}",
        f"{fmt(during.get('p50'), 0)} / {fmt(during.get('p99'), 0)}",
        fmt(max(0.0, foreign), 2),
    ]


def main(argv):
    runs = []
    for path in argv:
        with open(path) as f:
            runs += [json.loads(line) for line in f if line.strip()]
    runs = [r for r in runs if r.get("scenario") == "storm"]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for d in runs:
        print("| " + " | ".join(str(c) for c in row(d)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
