#!/usr/bin/env python3
"""Summarise a CPU profile written by `run.py --profile`: where the gateway's CPU went.

  python profsum.py FILE [--top 25] [--match TEXT]

FILE: a V8 .cpuprofile (node --cpu-prof) or py-spy's raw/collapsed stacks ("f1;f2;f3 COUNT").
Prints the functions with the most self time and the most inclusive time, in % of the samples
(idle excluded for V8; py-spy --idle is not used, so its samples are on-CPU only). --match keeps the
stacks that contain TEXT (e.g. a module name) and reports their share.
(From the benchmark yardstick's profsum.py; run.py imports it to write FILE.summary.txt.)
"""
import argparse
import collections
import json
import os
import re


def v8(path):
    with open(path) as f:
        p = json.load(f)
    nodes = {n["id"]: n for n in p["nodes"]}
    parent = {c: n["id"] for n in p["nodes"] for c in n.get("children", [])}
    hits = collections.Counter()
    for s, d in zip(p["samples"], p["timeDeltas"], strict=False):
        hits[s] += max(d, 0)

    def name(nid):
        cf = nodes[nid]["callFrame"]
        url = cf["url"].split("/node_modules/")[-1].replace("file://", "")
        where = os.path.basename(url) if "/" in url and "node_modules" not in cf["url"] else url
        return f"{cf['functionName'] or '(anonymous)'} ({where}:{cf['lineNumber'] + 1})"

    stacks = collections.Counter()
    for nid, us in hits.items():
        if nodes[nid]["callFrame"]["functionName"] in ("(idle)",):
            continue
        st = []
        x = nid
        while x is not None:
            st.append(name(x))
            x = parent.get(x)
        stacks[tuple(reversed(st))] += us
    return stacks


def collapsed(path):
    stacks = collections.Counter()
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line:
                continue
            st, _, n = line.rpartition(" ")
            try:
                stacks[tuple(st.split(";"))] += int(n)
            except ValueError:
                continue
    return stacks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", action="append", default=[])
    ap.add_argument("--functions", action="store_true",
                    help="merge the lines of a function (py-spy names frames by line: 'f (file.py:12)')")
    a = ap.parse_args(argv)
    stacks = v8(a.file) if a.file.endswith(".cpuprofile") else collapsed(a.file)
    if a.functions:
        merged = collections.Counter()
        for st, n in stacks.items():
            merged[tuple(re.sub(r":\d+\)$", ")", f) for f in st)] += n
        stacks = merged
    total = sum(stacks.values()) or 1
    self_t, incl = collections.Counter(), collections.Counter()
    for st, n in stacks.items():
        self_t[st[-1]] += n
        for f in set(st):
            incl[f] += n
    unit = "ms of CPU" if a.file.endswith(".cpuprofile") else "samples"
    print(f"{a.file}: {total / 1000 if unit.startswith('ms') else total:.0f} {unit}"
          + (" (lines of a function merged)" if a.functions else ""))
    print("-- self")
    for f, n in self_t.most_common(a.top):
        print(f"{100 * n / total:6.1f}%  {f}")
    print("-- inclusive")
    for f, n in incl.most_common(a.top + 15):
        print(f"{100 * n / total:6.1f}%  {f}")
    for m in a.match:
        n = sum(v for st, v in stacks.items() if any(m in f for f in st))
        print(f"-- stacks containing {m!r}: {100 * n / total:.1f}%")


if __name__ == "__main__":
    main()
