#!/usr/bin/env python3
"""What one publish costs the producer: CPU µs per event for `publisher.Publisher`, against a
redis-server started here, beside the peers' producers measured the same way.

  python producer_cost.py [--events 20000] [--reps 3] [--modes ...] [--no-emitters] [--bridge] [--out FILE]

Two kinds of figures, each the median of --reps runs (modes alternate within a repetition):

- in-process (`mode`): a worker under bench/.venv-project imports `publisher`, publishes 500
  events to warm up (script cache, connections), then EVENTS events; its own CPU time
  (time.process_time, all threads) over those, divided by EVENTS. No start-up in it. Modes:
    emit          Publisher.emit(), queued: the sender thread writes what queued within its linger
                  (auto-pipelining; the figure includes that thread and the final flush)
    emit-wait     Publisher.emit().result(), one round trip each (a caller waiting for each)
    pipeline-N    Publisher.pipeline(), N emits per round trip (a burst)
    emit_many-N   Publisher.emit_many() of N messages
    async-emit-N  AsyncPublisher.emit(), N in flight (asyncio.gather windows, uvloop)
    async-pipeline-N  AsyncPublisher.pipeline(), N emits per round trip
    node-package-emit  the Node package clients/node-publisher (its dist/: `npm ci && npm run
                  build` there first), sendToUser() awaited one at a time; node-package-N: N in
                  flight (auto-pipelined by ioredis). Worker: node_package_worker.mjs,
                  process.cpuUsage() (Node's CPU, every thread) instead of time.process_time
- whole process (`emitter`): the bench producers as run.py starts them (`--bench 1000 EVENTS 0`),
  CPU from wait4 (start-up included, as run.py's producer_cpu_s and the yardstick's "~50 µs"
  for the Node emitter), and net of start-up: minus the CPU of the same command publishing 0 events.
    node           the Node peer's emit.js (@socket.io/redis-emitter, ioredis; bench/.peers)
    vanilla        the vanilla peer's emit.py (AsyncRedisManager, 64 in flight; BENCH_PEERS)
    project        project_emit.py, one emit() each;  project-batch64: pipeline() batches of 64

- through the bridge (`--bridge`): the real Node `@socket.io/redis-emitter` (tests/e2e/driver's
  node_modules) publishes EVENTS events to user:(i % 1000), `python -m publisher bridge` (under
  bench/.venv-project, pinned to CPU 0) carries them onto the bus; measured: the bridge's CPU
  and Redis's CPU (/proc) from the first event until the bridge's metrics count them all
  bridged, per event, net of what both burn idle (measured for 2 s before); after 500 to warm
  up; and the emitter process's CPU net of start-up.
  Back to back the bridge finds events waiting and sends them in pipelines; --bridge-pace-ms 2
  (a trickle) gives the cost of one event at a time.

Every event is the benchmark's coins:earned payload (with seq and sentAt) to user:(i % 1000),
history on, as run.py publishes them. Redis's own CPU per event (/proc) is reported beside each:
the Lua script with history costs Redis more than the peers' bare PUBLISH. The producer and
redis share CPU 1 (as in run.py); --split puts the producer on CPU 0. Prints a table and one
JSON line (also appended to --out).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402 - the yardstick's process and /proc helpers

PROJECT_PY = os.path.join(HERE, ".venv-project", "bin", "python")
MODES = ["emit", "pipeline-64", "pipeline-500", "emit_many-500", "async-emit-64", "async-pipeline-64"]
NODE_MODES = ["node-package-emit", "node-package-64"]
NODE_PACKAGE_DIST = os.path.join(HERE, "..", "clients", "node-publisher", "dist", "index.js")
EMITTERS = ["node", "vanilla", "project", "project-batch64"]
WARMUP = 500
USERS = 1000


# ---------------------------------------------------------------------------------------------
# the worker: runs under the project's venv
def payload(i):
    return {"amount": 50, "reason": "exercise_completed", "newBalance": i, "seq": i, "sentAt": time.time() * 1000}


def sync_mode(url, mode, n, start):
    from publisher import Message, Publisher
    pub = Publisher(url)
    size = int(mode.rsplit("-", 1)[1]) if mode[-1].isdigit() else 1

    def burst(lo, hi):
        if mode == "emit":
            for i in range(lo, hi):
                pub.emit("coins:earned", payload(i), room=f"user:{i % USERS}")
            pub.flush()
        elif mode == "emit-wait":
            for i in range(lo, hi):
                pub.emit("coins:earned", payload(i), room=f"user:{i % USERS}").result()
        elif mode.startswith("pipeline-"):
            for s in range(lo, hi, size):
                with pub.pipeline() as batch:
                    for i in range(s, min(hi, s + size)):
                        batch.emit("coins:earned", payload(i), room=f"user:{i % USERS}")
        elif mode.startswith("emit_many-"):
            for s in range(lo, hi, size):
                pub.emit_many(Message("coins:earned", payload(i), room=f"user:{i % USERS}")
                              for i in range(s, min(hi, s + size)))
        else:
            raise SystemExit(f"unknown mode {mode}")

    burst(0, WARMUP)
    start.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    burst(WARMUP, WARMUP + n)
    c1, t1 = time.process_time(), time.perf_counter()
    pub.close()
    return c1 - c0, t1 - t0


def async_mode(url, mode, n, start):
    import asyncio

    import uvloop

    from publisher import AsyncPublisher
    size = int(mode.rsplit("-", 1)[1])

    async def main():
        pub = AsyncPublisher(url)

        async def burst(lo, hi):
            for s in range(lo, hi, size):
                if mode.startswith("async-emit-"):
                    await asyncio.gather(*(pub.emit("coins:earned", payload(i), room=f"user:{i % USERS}")
                                           for i in range(s, min(hi, s + size))))
                else:
                    async with pub.pipeline() as batch:
                        for i in range(s, min(hi, s + size)):
                            batch.emit("coins:earned", payload(i), room=f"user:{i % USERS}")

        await burst(0, WARMUP)
        start.wait()
        c0, t0 = time.process_time(), time.perf_counter()
        await burst(WARMUP, WARMUP + n)
        c1, t1 = time.process_time(), time.perf_counter()
        await pub.close()
        return c1 - c0, t1 - t0

    return uvloop.run(main())


class Gate:
    """The worker says 'ready' after warming up and waits for 'go' (the parent samples redis)."""

    def wait(self):
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()


def worker(a):
    fn = async_mode if a.worker.startswith("async-") else sync_mode
    cpu, wall = fn(a.redis_url, a.worker, a.events, Gate())
    print(json.dumps({"cpu_s": cpu, "wall_s": wall}), flush=True)


# ---------------------------------------------------------------------------------------------
# through the bridge: the Node emitter -> classic pub/sub -> python -m publisher bridge -> the bus
DRIVER_DIR = os.path.join(os.path.dirname(HERE), "tests", "e2e", "driver")
BRIDGE_PORT = 9190
# argv: url key first count pace (ms between events; 0: back to back); publishes, then PINGs
# (so every PUBLISH was answered) and quits.
EMIT_JS = """
import { createClient } from "redis";
import { Emitter } from "@socket.io/redis-emitter";
const [url, key, first, count, pace] = process.argv.slice(-5);
const client = createClient({ url });
await client.connect();
const io = new Emitter(client, { key }).of("/notifications");
for (let i = Number(first); i < Number(first) + Number(count); i++) {
  io.to(`user:${i % 1000}`).emit("coins:earned",
    { amount: 50, reason: "exercise_completed", newBalance: i, seq: i, sentAt: Date.now() });
  if (Number(pace) > 0) await new Promise((resolve) => setTimeout(resolve, Number(pace)));
}
await client.ping();
await client.quit();
"""


def bridged(port):
    """The bridge's bridge_messages_bridged_total{source="emitter"}, and whether it is active
    (0 and False while its /metrics does not answer)."""
    got = bench.scrape_counters(port, ("bridge_messages_bridged_total", "bridge_role"))
    return got.get('bridge_messages_bridged_total{source="emitter"}', 0.0), got.get('bridge_role{role="active"}') == 1.0


def wait_bridged(port, want, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        count, active = bridged(port)
        if active and count >= want:
            return
        time.sleep(0.2)  # a poll costs the bridge ~1 ms: rarely enough not to weigh on it
    raise bench.BenchError(f"the bridge did not bridge {want:.0f} events within {timeout:.0f} s")


def node_emit(a, url, first, count):
    cmd = ["node", "--input-type=module", "-e", EMIT_JS, url, "socket.io", str(first), str(count),
           str(a.bridge_pace_ms if count else 0)]
    p = subprocess.Popen(bench.pinned(a.producer_cpu, cmd), cwd=DRIVER_DIR, env=a.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rc, cpu = bench.wait_rusage(p, 60)
    if rc != 0:
        raise bench.BenchError(f"the Node emitter failed ({rc}): {p.stderr.read().decode(errors='replace')[-300:]}")
    return cpu


def run_bridge(a, procs, redis, url):
    if not os.path.isdir(os.path.join(DRIVER_DIR, "node_modules", "@socket.io", "redis-emitter")):
        raise bench.BenchError(f"no @socket.io/redis-emitter: run `npm ci` in {DRIVER_DIR}")
    env = dict(a.env, REDIS_URL=url, BRIDGE_PORT=str(BRIDGE_PORT), BRIDGE_HOST="127.0.0.1",
               BRIDGE_SOURCES="emitter", LOG_LEVEL="warning")
    bridge = procs.start("bridge", [PROJECT_PY, "-m", "publisher", "bridge"], bench.GATEWAY_CPU, env=env)
    try:
        bench.wait_port(BRIDGE_PORT, bridge, 20, "the bridge")
        wait_bridged(BRIDGE_PORT, 0)
        node_emit(a, url, 0, WARMUP)
        wait_bridged(BRIDGE_PORT, WARMUP)
        base = node_emit(a, url, 0, 0)  # the emitter's start-up alone
        # What the bridge (lease renewals, metrics polls) and Redis (its cron) cost doing
        # nothing, per second: taken off the run's figures, which a trickle spreads thin.
        i0, j0, ti = bench.proc_cpu_s(bridge.pid), bench.proc_cpu_s(redis.pid), time.perf_counter()
        for _ in range(10):
            bridged(BRIDGE_PORT)
            time.sleep(0.2)
        idle_b = (bench.proc_cpu_s(bridge.pid) - i0) / (time.perf_counter() - ti)
        idle_r = (bench.proc_cpu_s(redis.pid) - j0) / (time.perf_counter() - ti)
        r0, b0 = bench.proc_cpu_s(redis.pid), bench.proc_cpu_s(bridge.pid)
        t0 = time.perf_counter()
        full = node_emit(a, url, WARMUP, a.events)
        wait_bridged(BRIDGE_PORT, WARMUP + a.events)
        t1 = time.perf_counter()
        r1, b1 = bench.proc_cpu_s(redis.pid), bench.proc_cpu_s(bridge.pid)
        rss = (bench.proc_rss_kib(bridge.pid) or 0) / 1024
    finally:
        if bridge.poll() is None:
            bridge.terminate()
            bridge.wait(5)
    wall = t1 - t0
    return {"bridge_us_per_event": (b1 - b0 - idle_b * wall) * 1e6 / a.events,
            "redis_us_per_event": (r1 - r0 - idle_r * wall) * 1e6 / a.events,
            "bridge_idle_ms_per_s": idle_b * 1e3, "redis_idle_ms_per_s": idle_r * 1e3,
            "emitter_us_per_event_net": (full - base) * 1e6 / a.events, "per_s": a.events / (t1 - t0),
            "bridge_rss_mib": rss}


# ---------------------------------------------------------------------------------------------
# the parent
def run_mode(mode, a, redis, url):
    cmd = [PROJECT_PY, os.path.abspath(__file__), "--worker", mode, "--events", str(a.events), "--redis-url", url]
    if mode.startswith("node-package-"):
        if not os.path.exists(NODE_PACKAGE_DIST):
            raise bench.BenchError("no clients/node-publisher/dist: run `npm ci && npm run build` there")
        cmd = ["node", os.path.join(HERE, "node_package_worker.mjs"), mode, str(a.events), url]
    p = subprocess.Popen(bench.pinned(a.producer_cpu, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=a.env, text=True)
    try:
        first = json.loads(p.stdout.readline() or "{}")
        if not first.get("ready"):
            raise bench.BenchError(f"worker {mode} did not start")
        r0 = bench.proc_cpu_s(redis.pid)
        p.stdin.write("go\n")
        p.stdin.flush()
        res = json.loads(p.stdout.readline() or "{}")
        r1 = bench.proc_cpu_s(redis.pid)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    if "cpu_s" not in res:
        raise bench.BenchError(f"worker {mode} failed")
    return {"us_per_event": res["cpu_s"] * 1e6 / a.events, "per_s": a.events / res["wall_s"],
            "redis_us_per_event": (r1 - r0) * 1e6 / a.events}


def emitter_cmd(name, events):
    args = ["--bench", str(USERS), str(events), "0"]
    if name == "node":
        return ["node", "emit.js", *args], bench.NODE_DIR
    if name == "vanilla":
        if not bench.VANILLA_DIR:
            raise bench.BenchError("emitter vanilla: set BENCH_PEERS (see README.md), or --no-emitters")
        return [bench.BENCH_PY, "emit.py", *args], bench.VANILLA_DIR
    batch = ["--batch", "64"] if name == "project-batch64" else []
    return [PROJECT_PY, os.path.join(HERE, "project_emit.py"), *args, *batch], HERE


def run_emitter(name, events, a, redis, url):
    cmd, cwd = emitter_cmd(name, events)
    env = dict(a.env, REDIS_URL=url)
    r0 = bench.proc_cpu_s(redis.pid)
    t0 = time.perf_counter()
    p = subprocess.Popen(bench.pinned(a.producer_cpu, cmd), cwd=cwd, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rc, cpu = bench.wait_rusage(p, 60)
    wall = time.perf_counter() - t0
    r1 = bench.proc_cpu_s(redis.pid)
    if rc != 0:
        err = p.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if rc is not None else "timeout"
        raise bench.BenchError(f"emitter {name} failed ({rc}): {err}")
    return cpu, wall, r1 - r0


def measure(a):
    procs = bench.Procs()
    url = f"redis://127.0.0.1:{a.redis_port}/0"
    if not bench.port_free(a.redis_port):
        raise bench.BenchError(f"port {a.redis_port} is in use (--redis-port)")
    if not os.path.exists(PROJECT_PY):
        raise bench.BenchError(f"no {PROJECT_PY}: {bench.SETUP_HINT}")
    a.env = dict(os.environ)
    if a.project_src:
        a.env["PYTHONPATH"] = os.path.abspath(a.project_src)
    modes = {m: [] for m in a.modes}
    emitters = {e: [] for e in a.emitters}
    bridge_runs = []
    try:
        redis = procs.start("redis", ["redis-server", "--port", str(a.redis_port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                            bench.DRIVER_CPU)
        bench.wait_port(a.redis_port, redis, 10, "redis-server")
        for rep in range(a.reps):
            for m in a.modes:
                bench.redis_cmd(a.redis_port, "FLUSHALL")
                modes[m].append(run_mode(m, a, redis, url))
                print(f"rep {rep} {m}: {modes[m][-1]['us_per_event']:.1f} us/event", file=sys.stderr, flush=True)
            for e in a.emitters:
                bench.redis_cmd(a.redis_port, "FLUSHALL")
                base = run_emitter(e, 0, a, redis, url)
                bench.redis_cmd(a.redis_port, "FLUSHALL")
                full = run_emitter(e, a.events, a, redis, url)
                emitters[e].append({
                    "us_per_event_gross": full[0] * 1e6 / a.events,
                    "us_per_event_net": (full[0] - base[0]) * 1e6 / a.events,
                    "startup_cpu_ms": base[0] * 1e3,
                    "per_s": a.events / max(1e-9, full[1] - base[1]),
                    "redis_us_per_event": full[2] * 1e6 / a.events,
                })
                print(f"rep {rep} {e}: {emitters[e][-1]['us_per_event_net']:.1f} us/event net", file=sys.stderr,
                      flush=True)
            if a.bridge:
                bench.redis_cmd(a.redis_port, "FLUSHALL")
                bridge_runs.append(run_bridge(a, procs, redis, url))
                print(f"rep {rep} bridge: {bridge_runs[-1]['bridge_us_per_event']:.1f} us/event (bridge), "
                      f"{bridge_runs[-1]['redis_us_per_event']:.1f} (redis)", file=sys.stderr, flush=True)
    finally:
        procs.stop_all()

    def summarise(runs):
        keys = runs[0].keys() if runs else []
        return {k: round(statistics.median(r[k] for r in runs if r[k] is not None), 1) for k in keys
                if any(r[k] is not None for r in runs)}

    return {"events": a.events, "reps": a.reps, "producer_cpu": a.producer_cpu,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "modes": {m: summarise(v) for m, v in modes.items()},
            "emitters": {e: summarise(v) for e, v in emitters.items()},
            **({"bridge": summarise(bridge_runs)} if bridge_runs else {})}


def table(res):
    out = [f"producer cost, {res['events']} events, median of {res['reps']} (producer on CPU {res['producer_cpu']}, "
           "redis on CPU 1)", "",
           "| publisher.Publisher, in-process | CPU us / event | events/s | redis CPU us / event |",
           "|---|---|---|---|"]
    for m, r in res["modes"].items():
        out.append(f"| {m} | {r.get('us_per_event')} | {r.get('per_s', 0):.0f} | {r.get('redis_us_per_event')} |")
    if res["emitters"]:
        out += ["", "| producer process (`--bench`) | CPU us / event, net of start-up | gross (as run.py) | "
                "start-up CPU ms | events/s | redis CPU us / event |", "|---|---|---|---|---|---|"]
        for e, r in res["emitters"].items():
            out.append(f"| {e} | {r.get('us_per_event_net')} | {r.get('us_per_event_gross')} | "
                       f"{r.get('startup_cpu_ms')} | {r.get('per_s', 0):.0f} | {r.get('redis_us_per_event')} |")
    if "bridge" in res:
        r = res["bridge"]
        out += ["", "| Node emitter -> bridge -> bus | bridge CPU us / event (net of idle) | "
                "redis CPU us / event (net of idle) | "
                "emitter CPU us / event, net | events/s | bridge RSS MiB |", "|---|---|---|---|---|---|",
                f"| bridge | {r.get('bridge_us_per_event')} | {r.get('redis_us_per_event')} | "
                f"{r.get('emitter_us_per_event_net')} | {r.get('per_s', 0):.0f} | {r.get('bridge_rss_mib')} |"]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--modes", default=",".join(MODES + NODE_MODES))
    p.add_argument("--emitters", default=",".join(EMITTERS), help="'' for none")
    p.add_argument("--no-emitters", action="store_true")
    p.add_argument("--bridge", action="store_true", help="also measure the Node emitter through the bridge")
    p.add_argument("--bridge-pace-ms", type=float, default=0,
                   help="ms between the emitter's events (0: back to back, the bridge batches; "
                        "a pace the bridge keeps up with: one round trip per event)")
    p.add_argument("--split", action="store_true", help="producer on CPU 0, redis on CPU 1")
    p.add_argument("--redis-port", type=int, default=6390)
    p.add_argument("--project-src", default=None, help="run this copy of gateway/ and publisher/ (PYTHONPATH)")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--redis-url", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return 0
    a.modes = [m for m in a.modes.split(",") if m]
    a.emitters = [] if a.no_emitters else [e for e in a.emitters.split(",") if e]
    a.producer_cpu = bench.GATEWAY_CPU if a.split else bench.DRIVER_CPU
    try:
        res = measure(a)
    except bench.BenchError as e:
        print(json.dumps({"error": str(e)}))
        print(f"producer_cost.py: {e}", file=sys.stderr)
        return 2
    print(table(res), file=sys.stderr)
    line = json.dumps(res, separators=(",", ":"))
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
