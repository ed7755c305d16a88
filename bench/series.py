#!/usr/bin/env python3
"""Alternating series of run.py over node, vanilla and project; medians, ratios, the goal table.

  python series.py [--reps 5] [--targets node,vanilla,project] [--only targeted,fanout,...] [--out FILE]
  python series.py --table FILE        only print the tables of an earlier series (JSONL)

Each configuration below is run REPS times per target; within a repetition every target runs once,
back to back, and the order rotates from one repetition to the next, so that slow drifts of a
shared machine hit every target alike. Prints, per configuration, the medians of every figure,
the ratios project / node (the ratio of the medians, and the median of the ratios of the runs
paired within a repetition), what limited each run (`bottleneck`), and then the goal table
(the first version's performance goals, docs/performance.md) with a verdict per row. Writes
the raw JSON lines to --out and the tables beside it (.md).

The project runs from a copy of gateway/ and publisher/ taken when the series starts (the working
tree, uncommitted changes included; or --project-ref REF), so that edits made while a series runs
cannot mix two versions in one table. --live runs the checkout itself.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {
    "targeted": ["--scenario", "targeted", "--clients", "1000", "--events", "20000"],
    "fanout": ["--scenario", "fanout", "--clients", "1000", "--events", "100"],
    "idle": ["--scenario", "idle", "--clients", "5000"],
    "targeted_r3": ["--scenario", "targeted", "--clients", "1000", "--events", "20000", "--replicas", "3"],
    "targeted_rate2000": ["--scenario", "targeted", "--clients", "1000", "--events", "20000", "--rate", "2000"],
    # not in the goal table: Redis memory and commands of recovery history and sessions
    "recovery": ["--scenario", "recovery", "--clients", "1000", "--events", "20000"],
}
GOAL_CONFIGS = ["targeted", "fanout", "idle", "targeted_r3", "targeted_rate2000"]
# --quick: the same configurations, small, to check the tooling (figures not comparable)
QUICK = {"--clients": {"idle": "1000", None: "300"}, "--events": {"fanout": "20", None: "3000"}}


def lat(key):
    return lambda r: (r.get("latency_ms") or {}).get(key)


def rc(key):
    return lambda r: (r.get("recovery_cost") or {}).get(key)


FIGURES = {  # per kind of configuration: (label, getter)
    "delivery": [
        ("delivered/s", lambda r: r.get("per_s")),
        ("gw CPU us/delivery", lambda r: r.get("gw_cpu_us_per_delivery")),
        ("lat p50 ms", lat("p50")),
        ("lat p90 ms", lat("p90")),
        ("lat p99 ms", lat("p99")),
        ("lat max ms", lat("max")),
        ("lost", lambda r: r.get("lost")),
        ("duplicates", lambda r: r.get("duplicates")),
        ("gw core util", lambda r: r.get("gw_core_util_during")),
        ("cpu1 busy", lambda r: r.get("cpu1_busy")),
        ("cpu0 foreign", lambda r: r.get("cpu0_foreign")),
        ("loadgen cpu util", lambda r: r.get("loadgen_cpu_util")),
        ("producer cpu us/event", lambda r: r.get("producer_cpu_us_per_event")),
        ("redis cpu us/event", lambda r: r.get("redis_cpu_us_per_event")),
        ("gw CPU us/handshake", lambda r: r.get("gw_cpu_us_per_handshake")),
        ("gw RSS KiB/conn", lambda r: r.get("gw_rss_kib_per_conn")),
    ],
    "idle": [
        ("handshakes/s", lambda r: r.get("connect_per_s")),
        ("gw CPU us/handshake", lambda r: r.get("gw_cpu_us_per_handshake")),
        ("gw RSS KiB/conn", lambda r: r.get("gw_rss_kib_per_conn")),
        ("gw RSS base KiB", lambda r: r.get("gw_rss_kib_base")),
        ("connect errors", lambda r: r.get("connect_errors")),
        ("gw core util (connect)", lambda r: r.get("gw_core_util_connect")),
        ("loadgen cpu util (connect)", lambda r: r.get("loadgen_cpu_util_connect")),
        ("cpu0 foreign (connect)", lambda r: r.get("cpu0_foreign_connect")),
        ("idle gw core util", lambda r: r.get("idle_gw_core_util")),
    ],
    "recovery": [
        ("redis B/session (used_memory)", rc("redis_mem_b_per_session")),
        ("redis B/session (MEMORY USAGE of keys)", rc("redis_key_b_per_session")),
        ("redis keys/session", rc("redis_keys_per_session")),
        ("redis commands/session", rc("redis_commands_per_session")),
        ("redis B/event, user rooms (used_memory)", rc("redis_mem_b_per_event")),
        ("redis B/event, user rooms (MEMORY USAGE)", rc("redis_key_b_per_event")),
        ("redis B/event, one room (used_memory)", rc("redis_mem_b_per_event_one_room")),
        ("redis B/event, one room (MEMORY USAGE)", rc("redis_key_b_per_event_one_room")),
        ("redis commands/event", rc("redis_commands_per_event")),
        ("redis usec/event (commandstats, top level)", rc("redis_usec_per_event")),
        ("redis CPU us/event (/proc)", rc("redis_cpu_us_per_event")),
        ("heartbeat commands/s", rc("heartbeat_commands_per_s")),
        ("gw CPU us/delivery", lambda r: r.get("gw_cpu_us_per_delivery")),
        ("lost", lambda r: r.get("lost")),
    ],
}


def kind_of(cfg):
    return "idle" if cfg == "idle" else "recovery" if cfg == "recovery" else "delivery"


def num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def med(xs):
    xs = [x for x in xs if num(x)]
    return statistics.median(xs) if xs else None


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def ok_rows(rows, cfg, target):
    return [r for r in rows if r.get("config") == cfg and r.get("target") == target and "error" not in r]


def paired(rows, cfg, a, b, get):
    """Ratios get(a)/get(b) of the runs of one repetition."""
    out = []
    reps = sorted({r.get("rep") for r in rows if r.get("config") == cfg})
    for rep in reps:
        ra = [get(r) for r in ok_rows(rows, cfg, a) if r.get("rep") == rep]
        rb = [get(r) for r in ok_rows(rows, cfg, b) if r.get("rep") == rep]
        if ra and rb and num(ra[0]) and num(rb[0]) and rb[0]:
            out.append(ra[0] / rb[0])
    return out


def ratio_of_medians(rows, cfg, a, b, get):
    ma = med([get(r) for r in ok_rows(rows, cfg, a)])
    mb = med([get(r) for r in ok_rows(rows, cfg, b)])
    return (ma / mb) if (ma is not None and mb) else None


def verdicts(rows, cfg, target, key):
    counts = {}
    for r in ok_rows(rows, cfg, target):
        v = (r.get(key) or "-").split(" (")[0].replace("other load on CPU", "other load CPU")
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"{k} {v}/{sum(counts.values())}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def config_tables(rows, targets, base="node", probe="project"):
    out = []
    cfgs = [c for c in CONFIGS if any(r.get("config") == c for r in rows)]
    cmp = base in targets and probe in targets
    for cfg in cfgs:
        kind = kind_of(cfg)
        args = next((r.get("args") for r in rows if r.get("config") == cfg and r.get("args")), CONFIGS[cfg])
        out.append(f"\n### {cfg}  (`run.py {' '.join(args)}`)\n")
        n = {t: len(ok_rows(rows, cfg, t)) for t in targets}
        hdr = "| figure | " + " | ".join(f"{t} (n={n[t]})" for t in targets)
        if cmp:
            hdr += f" | {probe}/{base} (of medians) | {probe}/{base} (median of pairs)"
        out.append(hdr + " |")
        out.append("|" + "---|" * hdr.count("|"))
        for label, get in FIGURES[kind]:
            meds = {t: med([get(r) for r in ok_rows(rows, cfg, t)]) for t in targets}
            if all(v is None for v in meds.values()):
                continue
            line = f"| {label} | " + " | ".join(fmt(meds[t]) for t in targets)
            if cmp:
                line += (f" | {fmt(ratio_of_medians(rows, cfg, probe, base, get))}"
                         f" | {fmt(med(paired(rows, cfg, probe, base, get)))}")
            out.append(line + " |")
        key = "bottleneck_connect" if kind == "idle" else "bottleneck"
        out.append("")
        for t in targets:
            v = verdicts(rows, cfg, t, key)
            if v:
                out.append(f"- {t}: limited by {v}" + (" (connect phase)" if kind == "idle" else ""))
        for r in rows:
            if r.get("config") == cfg and ("error" in r or r.get("warning")):
                out.append(f"- {r.get('target')} rep {r.get('rep')}: {r.get('error') or r.get('warning')}")
    return "\n".join(out)


GOALS = [
    # (row, config, getter, goal, kind) kind: ratio to node, or the project's own R3/R1 growth
    ("gateway CPU per targeted event (us)", "targeted", lambda r: r.get("gw_cpu_us_per_delivery"), 0.67, "ratio"),
    ("gateway CPU per fan-out delivery (us)", "fanout", lambda r: r.get("gw_cpu_us_per_delivery"), 0.67, "ratio"),
    ("gateway CPU per handshake (us, C=5000)", "idle", lambda r: r.get("gw_cpu_us_per_handshake"), 0.75, "ratio"),
    ("RSS per idle connection at 5,000 (KiB)", "idle", lambda r: r.get("gw_rss_kib_per_conn"), 1.0, "ratio"),
    ("total CPU per targeted event, 3 replicas / 1", "targeted_r3", None, 1.2, "growth"),
    ("p99 latency at 2,000 targeted events/s (ms)", "targeted_rate2000", lat("p99"), 1.0, "ratio"),
]


def goal_table(rows, targets, base="node", probe="project"):
    if base not in targets or probe not in targets:
        return f"(goal table: needs targets {base} and {probe})"
    others = [t for t in targets if t not in (base, probe)]
    hdr = f"| figure | {base} | " + "".join(f"{t} | " for t in others) + \
          f"{probe} | {probe} / {base} (median of pairs; of medians) | goal | met? |"
    out = ["\n## Goal table: medians\n", hdr, "|" + "---|" * (hdr.count("|") - 1)]
    notes = []
    for label, cfg, get, goal, kind in GOALS:
        if kind == "growth":
            cpu = lambda r: r.get("gw_cpu_us_per_delivery")  # noqa: E731
            vals = {}
            for t in targets:
                r3 = med([cpu(r) for r in ok_rows(rows, "targeted_r3", t)])
                r1 = med([cpu(r) for r in ok_rows(rows, "targeted", t)])
                vals[t] = (r3 / r1) if (r3 is not None and r1) else None
            figure = vals.get(probe)
            ratio_txt = "(absolute)"
            met = None if figure is None else figure <= goal
            cells = [f"x {fmt(vals[t])}" if vals[t] is not None else "-" for t in (base, *others, probe)]
        else:
            meds = {t: med([get(r) for r in ok_rows(rows, cfg, t)]) for t in targets}
            pairs = paired(rows, cfg, probe, base, get)
            figure = med(pairs) if pairs else ratio_of_medians(rows, cfg, probe, base, get)
            rom = ratio_of_medians(rows, cfg, probe, base, get)
            ratio_txt = f"{fmt(med(pairs)) if pairs else '-'}; {fmt(rom)}"
            met = None if figure is None else figure <= goal
            cells = [fmt(meds[t]) for t in (base, *others, probe)]
        verdict = "-" if met is None else ("yes" if met else "**no**")
        out.append(f"| {label} | " + " | ".join(cells) + f" | {ratio_txt} | <= {goal} | {verdict} |")
        for t in (base, probe):
            key = "bottleneck_connect" if cfg == "idle" else "bottleneck"
            for c in (["targeted", "targeted_r3"] if kind == "growth" else [cfg]):
                v = verdicts(rows, c, t, key)
                for what, why in (("driver", "the rate is a lower bound; CPU per event holds, at that load"),
                                  ("other load", "the machine was shared: figures suspect")):
                    if what in v:
                        count = v.split(what)[1].split(",")[0].split()[-1]
                        note = f"- {c}, {t}: limited by {what}, not the gateway, in {count} runs: {why}"
                        if note not in notes:
                            notes.append(note)
    lost = sum((r.get("lost") or 0) for r in rows if r.get("target") == probe and "error" not in r)
    dup = sum((r.get("duplicates") or 0) for r in rows if r.get("target") == probe and "error" not in r)
    errs = sum(1 for r in rows if r.get("target") == probe and "error" in r)
    base_lost = sum((r.get("lost") or 0) + (r.get("duplicates") or 0) for r in rows
                    if r.get("target") == base and "error" not in r)
    out.append(f"| events lost / duplicated, all runs | {base_lost} | " + "".join("| " for _ in others) +
               f"{lost} / {dup} | | 0 | {'yes' if lost == 0 and dup == 0 and errs == 0 else '**no**'} |")
    if errs:
        notes.append(f"- {probe}: {errs} run(s) failed (see the errors above): they count as not met")
    noisy = [r for r in rows if (r.get("cpu0_foreign") or r.get("cpu0_foreign_connect") or 0) > 0.15]
    if noisy:
        notes.append(f"- {len(noisy)} run(s) had CPU 0 more than 15 % busy with other work than the gateway "
                     "(`cpu0_foreign`): other load on the machine; their figures are suspect")
    return "\n".join([*out, "", *notes])


def report(rows, targets):
    return goal_table(rows, targets) + "\n\n## Every figure, per configuration\n" + config_tables(rows, targets)


def quick_args(cfg, args):
    out = list(args)
    for flag, sizes in QUICK.items():
        if flag in out:
            k = out.index(flag)
            out[k + 1] = sizes.get(cfg, sizes[None])
    return out


def snapshot(a):
    """The project's source for the whole series: (extra run.py args, label)."""
    if a.live:
        return [], "live checkout"
    sys.path.insert(0, HERE)
    import run as runmod
    src, label = runmod.project_source(a.project_ref, snapshot=not a.project_ref)
    return ["--project-src", src], label


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--targets", default="node,vanilla,project")
    p.add_argument("--only", default=",".join(GOAL_CONFIGS),
                   help=f"configurations, comma-separated, among {', '.join(CONFIGS)} (default: the goal table's)")
    p.add_argument("--quick", action="store_true", help="small sizes, to check the tooling (not comparable)")
    p.add_argument("--project-ref", default=None, help="run the project as of this commit")
    p.add_argument("--live", action="store_true", help="run the live checkout, not a copy taken at the start")
    p.add_argument("--run-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for every run.py (repeatable), e.g. --run-arg=--gateway-env=X=Y")
    p.add_argument("--out", default=None, help="JSONL of the runs (default results/series-STAMP.jsonl)")
    p.add_argument("--table", default=None, help="print the tables of this JSONL and exit")
    a = p.parse_args()
    targets = a.targets.split(",")
    if a.table:
        with open(a.table) as f:
            rows = [json.loads(x) for x in f if x.strip()]
        print(report(rows, [t for t in targets if any(r.get("target") == t for r in rows)]))
        return 0
    out = a.out or os.path.join(HERE, "results", time.strftime("series-%Y%m%d-%H%M%S.jsonl"))
    if a.quick and not a.out:
        out = os.path.join(HERE, "results", "tmp", time.strftime("series-quick-%Y%m%d-%H%M%S.jsonl"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    load1 = os.getloadavg()[0]
    if load1 > 1.0:
        print(f"WARNING: load average {load1:.1f} before the series: other work on this 2-CPU machine will show "
              "as `cpu0_foreign` and make the figures noisy", file=sys.stderr)
    extra, label = snapshot(a) if "project" in targets else ([], None)
    if label:
        print(f"project: {label}", file=sys.stderr)
    rows = []
    t0 = time.time()
    cfgs = a.only.split(",")
    for cfg in cfgs:
        for rep in range(a.reps):
            k = rep % len(targets)
            for t in targets[k:] + targets[:k]:
                args = quick_args(cfg, CONFIGS[cfg]) if a.quick else CONFIGS[cfg]
                cmd = [sys.executable, os.path.join(HERE, "run.py"), "--target", t, *args, *a.run_arg]
                if t == "project":
                    cmd += extra
                print(f"[{time.time() - t0:6.0f} s] $ run.py --target {t} {' '.join(args)}", file=sys.stderr,
                      flush=True)
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                try:
                    stdout, _ = proc.communicate(timeout=100)
                    line = stdout.decode().strip().splitlines()[-1] if stdout.strip() else "{}"
                    r = json.loads(line)
                except subprocess.TimeoutExpired:
                    proc.terminate()  # run.py stops what it started on SIGTERM
                    try:
                        proc.communicate(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.communicate()
                    r = {"target": t, "error": "run.py exceeded 100 s"}
                except (json.JSONDecodeError, IndexError) as e:
                    r = {"target": t, "error": f"run failed: {e}"}
                r["config"], r["rep"], r["args"] = cfg, rep, args
                if a.quick:
                    r["quick"] = True
                if "error" in r:
                    print(f"    error: {r['error']}", file=sys.stderr, flush=True)
                rows.append(r)
                with open(out, "a") as f:
                    f.write(json.dumps(r, separators=(",", ":")) + "\n")
    text = report(rows, targets)
    head = (f"# Series {os.path.basename(out)}\n\n{a.reps} repetitions, targets {', '.join(targets)}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {time.time() - t0:.0f} s"
            + (f"; project: {label}" if label else "") + ("; QUICK sizes, not comparable" if a.quick else "") + "\n")
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(head + text + "\n")
    print(f"results: {out} (tables: {os.path.splitext(out)[0]}.md)")
    print(head + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
