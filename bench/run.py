#!/usr/bin/env python3
"""One benchmark run of a Socket.IO gateway: prints one JSON line.

  python run.py --target node|vanilla|project --scenario targeted|fanout|idle|recovery|storm [--replicas R] ...

Starts its own redis-server (spare port, no persistence), R gateway replicas of TARGET on
consecutive ports pinned to CPU 0 (taskset), and the load generator (loadgen.py), the producer
and redis pinned to CPU 1; spreads the clients over the replicas; runs the scenario; samples each
gateway's CPU seconds (/proc/PID/stat utime+stime) and RSS (/proc/PID/status VmRSS) around each
phase; stops everything it started (by PID) and prints the figures. See README.md.

Adapted from the organisation's benchmark yardstick (its run.py; kept outside this repository),
same measurement method, so that figures compare with the yardstick's published results. The
peers (the Node gateway, stock python-socketio) come from the yardstick too: BENCH_PEERS names
the folder that holds them (see README.md). Added here: the paths of this checkout
(bench/.venv, bench/.venv-project, bench/.peers), the `recovery` scenario (Redis memory and
commands per session and per event of history), a verdict on what limited each phase
(`bottleneck`, `bottleneck_connect`), the foreign load on the gateway's core (`cpu0_foreign`),
the project producer's batching (`--producer-batch`), a py-spy summary with `--profile`, and
`--redis cluster`: a 3-primary Redis Cluster instead of the one redis-server (REDIS_URL=
redis+cluster://... for the gateways and the producer), each redis-server's CPU sampled apart and
reported per shard (`redis_shards`: CPU µs per event, the events it took and their share),
and the `storm` scenario: replica A killed with SIGKILL while events flow, its clients reconnecting
to B with socket.io-client's backoff and recovery (loadgen --recover, storm.py), from --source-addrs
addresses, with the project's per-IP admission on (--admission).
"""
import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# The yardstick's peers live outside this repository: BENCH_PEERS is the folder holding
# node-socketio/ and python-socketio-vanilla/. Only the node and vanilla targets need it.
PEERS = os.path.abspath(os.environ["BENCH_PEERS"]) if os.environ.get("BENCH_PEERS") else None
NODE_DIR = os.path.join(HERE, ".peers", "node-socketio")  # a copy with node_modules (setup.sh)
VANILLA_DIR = os.path.join(PEERS, "python-socketio-vanilla") if PEERS else ""  # run in place, bench venv
BENCH_PY = os.path.join(HERE, ".venv", "bin", "python")
RESULTS = os.path.join(HERE, "results")
CLK = os.sysconf("SC_CLK_TCK")
GATEWAY_CPU, DRIVER_CPU = 0, 1
CLUSTER_PRIMARIES = 3  # --redis cluster
RUN_BUDGET_S = 85.0  # every run must end well under 90 s
SETUP_HINT = "run bench/setup.sh"
# Settings given to the project's gateways on top of its defaults. Every client of a run comes
# from 127.0.0.1, which the default per-IP handshake limit (100/s, burst 500) would refuse past
# the first five hundred; behind a load balancer the real clients have their own addresses.
# Everything else, recovery history included, stays at the project's defaults. --gateway-env
# overrides. The storm scenario runs with admission on instead (--admission, --source-addrs).
PROJECT_ENV = {"HANDSHAKE_RATE_PER_IP": "100000"}
SCRIPT_COMMANDS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}
# Phase verdicts: a core busier than this was the limit.
SATURATED = 0.9
# Commands that run.py itself sends to redis while measuring: left out of commands per event.
OWN_COMMANDS = {"info", "client|list", "dbsize", "ping", "command", "command|docs", "hello", "scan",
                "memory|usage", "flushall"}


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# /proc sampling
def proc_cpu(pid):
    """(utime, stime) of the whole process (all threads), seconds; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) / CLK, int(rest[12]) / CLK
    except (OSError, IndexError, ValueError):
        return None


def proc_cpu_s(pid):
    c = proc_cpu(pid)
    return None if c is None else c[0] + c[1]


def proc_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def core_times():
    """{cpuN: (busy_ticks, total_ticks, steal_ticks)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *v = line.split()
                v = [int(x) for x in v]
                total = sum(v[:8])
                idle = v[3] + v[4]
                out[name] = (total - idle, total, v[7] if len(v) > 7 else 0)
    return out


def core_util(a, b):
    res = {}
    for k in b:
        if k in a:
            dt = b[k][1] - a[k][1]
            res[k] = {"busy": round((b[k][0] - a[k][0]) / dt, 3) if dt else None,
                      "steal": round((b[k][2] - a[k][2]) / dt, 3) if dt else None}
    return res


class Sample:
    def __init__(self, gateways, others):
        self.t = time.time()
        self.gw_us = [proc_cpu(p.pid) for p in gateways]
        self.gw_cpu = [None if c is None else c[0] + c[1] for c in self.gw_us]
        self.gw_rss = [proc_rss_kib(p.pid) for p in gateways]
        self.other_cpu = {k: (proc_cpu_s(p.pid) if p is not None else None) for k, p in others.items()}
        self.cores = core_times()


def delta(a, b):
    gw = [(y - x) if (x is not None and y is not None) else None for x, y in zip(a.gw_cpu, b.gw_cpu, strict=True)]
    rss = [(y - x) if (x is not None and y is not None) else None for x, y in zip(a.gw_rss, b.gw_rss, strict=True)]
    other = {k: round(b.other_cpu[k] - v, 3) for k, v in a.other_cpu.items()
             if v is not None and b.other_cpu.get(k) is not None}
    wall = b.t - a.t
    total = sum(x for x in gw if x is not None)
    sys_s = sum(y[1] - x[1] for x, y in zip(a.gw_us, b.gw_us, strict=True) if x is not None and y is not None)
    return {
        "wall_s": round(wall, 3),
        "gw_cpu_s": round(total, 3),
        "gw_cpu_s_each": [round(x, 3) if x is not None else None for x in gw],
        "gw_sys_s": round(sys_s, 3),
        "gw_core_util": round(total / wall, 3) if wall > 0 else None,
        "gw_rss_delta_kib": sum(x for x in rss if x is not None),
        "gw_rss_kib_after": sum(x for x in b.gw_rss if x is not None),
        "other_cpu_s": other,
        "cores": core_util(a.cores, b.cores),
    }


# ---------------------------------------------------------------------------------------------
# processes
def pinned(cpu, cmd):
    """cmd run on one CPU: taskset execs it, so the PID is the command's own."""
    return ["taskset", "-c", str(cpu), *cmd]


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_port(port, proc, timeout, name):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on port {port} within {timeout:.0f} s")


def http_get_status(port, path, timeout=1.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        line = s.makefile("rb").readline().decode(errors="replace").split()
        return int(line[1]) if len(line) > 1 else None


def ready_status(port):
    try:
        return http_get_status(port, "/readyz")
    except (OSError, ValueError):
        return None


class Procs:
    """Every process this run started; stopped by PID, in reverse order."""

    def __init__(self):
        self.items = []

    def start(self, name, cmd, cpu, env=None, cwd=None, log=None, **kw):
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
        try:
            # own session: a Ctrl-C on run.py does not hit it; we stop it by PID
            p = subprocess.Popen(pinned(cpu, cmd), env=env, cwd=cwd, stdout=kw.pop("stdout", out),
                                 stderr=out if log else subprocess.DEVNULL, start_new_session=True, **kw)
        finally:
            if log:
                out.close()
        self.items.append((name, p))
        return p

    def stop_all(self):
        """SIGTERM, a bounded wait, SIGKILL; redis last, so that no gateway sees its bus vanish."""
        first = [(n, p) for n, p in reversed(self.items) if not n.startswith("redis")]
        last = [(n, p) for n, p in self.items if n.startswith("redis")]
        for group in (first, last):
            for _, p in group:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.send_signal(signal.SIGTERM)
            end = time.time() + 3
            for _, p in group:
                try:
                    p.wait(max(0.05, end - time.time()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(2)
        self.items = []


def wait_rusage(p, timeout):
    """Wait for p (bounded) and return (exit code, its CPU seconds from wait4), or (None, None)."""
    end = time.time() + timeout
    while time.time() < end:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru.ru_utime + ru.ru_stime
        time.sleep(0.01)
    return None, None


# ---------------------------------------------------------------------------------------------
# targets
def target_spec(a):
    """-> dict(gateway=callable(port)->(cmd, cwd), producer=callable(args)->(cmd, cwd), env={...})."""
    if a.target == "node":
        node = shutil.which("node")
        if not node or not os.path.isdir(os.path.join(NODE_DIR, "node_modules")):
            raise BenchError(f"target node needs `node` on PATH and {NODE_DIR}/node_modules: {SETUP_HINT}")
        prof = ["--cpu-prof", f"--cpu-prof-dir={a.logdir}"] if a.profile else []
        return {"gateway": lambda port: ([node, *prof, "server.js"], NODE_DIR),
                "producer": lambda args: ([node, "emit.js", *args], NODE_DIR), "env": {}}
    if a.target == "vanilla":
        if not os.path.exists(BENCH_PY):
            raise BenchError(f"target vanilla needs the bench venv {BENCH_PY}: {SETUP_HINT}")
        if not VANILLA_DIR or not os.path.exists(os.path.join(VANILLA_DIR, "server.py")):
            raise BenchError("target vanilla: set BENCH_PEERS to the folder holding the yardstick's "
                             f"python-socketio-vanilla/ (now: {PEERS or 'unset'})")
        return {"gateway": lambda port: ([BENCH_PY, "server.py"], VANILLA_DIR),
                "producer": lambda args: ([BENCH_PY, "emit.py", *args], VANILLA_DIR), "env": {}}
    if a.target == "project":
        venv = os.path.abspath(a.project_venv)
        gw, py = os.path.join(venv, "bin", "gateway"), os.path.join(venv, "bin", "python")
        how = f"{SETUP_HINT} (it makes {venv} with `pip install -e ..`), or pass --project-venv"
        if not os.path.exists(py):
            raise BenchError(f"target project: no venv at {venv}; {how}")
        if not os.access(gw, os.X_OK):
            raise BenchError(f"target project: no `gateway` console script at {gw}; {how}")
        chk_env = dict(os.environ, PYTHONPATH=os.path.abspath(a.project_src)) if a.project_src else None
        chk = subprocess.run([py, "-c", "from publisher import Publisher; import gateway.__main__"],
                             capture_output=True, timeout=30, check=False, env=chk_env)
        if chk.returncode != 0:
            raise BenchError("target project: `from publisher import Publisher` fails in "
                             f"{venv}: {chk.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
        batch = ["--batch", str(a.producer_batch)] if a.producer_batch > 1 else []
        env = dict(PROJECT_ENV)
        if a.project_src:
            env["PYTHONPATH"] = os.path.abspath(a.project_src)
        return {"gateway": lambda port: ([gw], HERE),
                "producer": lambda args: ([py, os.path.join(HERE, "project_emit.py"), *args, *batch], HERE),
                "env": env, "producer_env": {k: v for k, v in env.items() if k == "PYTHONPATH"}}
    raise BenchError(f"unknown target {a.target}")


def git(*args):
    try:
        p = subprocess.run(["git", "-C", REPO, *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def project_commit():
    """The checkout's commit, with '+dirty' when gateway/ or publisher/ differ from it."""
    head = (git("rev-parse", "--short", "HEAD") or b"").decode().strip()
    dirty = (git("status", "--porcelain", "--", "gateway", "publisher") or b"").strip()
    return (head + ("+dirty" if dirty else "")) or None


PROJECT_PACKAGES = ("gateway", "publisher")


def project_source(ref=None, snapshot=False):
    """A frozen copy of the project's packages, to run instead of the live checkout (which other
    people may be editing while a series runs): -> (directory for PYTHONPATH, commit label).

    ref: `git archive REF` (cached by commit); snapshot: the working tree as it is now, uncommitted
    changes included. The venv (bench/.venv-project) still supplies the dependencies.
    """
    os.makedirs(os.path.join(RESULTS, "tmp"), exist_ok=True)
    if ref:
        sha = (git("rev-parse", "--verify", f"{ref}^{{commit}}") or b"").decode().strip()
        if not sha:
            raise BenchError(f"--project-ref {ref}: not a commit of {REPO}")
        dest = os.path.join(RESULTS, "tmp", f"src-{sha[:12]}")
        if not os.path.isdir(os.path.join(dest, "gateway")):
            tar = git("archive", sha, *PROJECT_PACKAGES)
            if tar is None:
                raise BenchError(f"git archive {sha} failed")
            tmp = dest + f".part{os.getpid()}"
            os.makedirs(tmp, exist_ok=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=tar, check=True, timeout=60)
            os.replace(tmp, dest)
        with open(os.path.join(dest, "COMMIT"), "w") as f:
            f.write(sha[:12])
        return dest, sha[:12]
    if snapshot:
        dest = os.path.join(RESULTS, "tmp", time.strftime("src-worktree-%Y%m%d-%H%M%S") + f"-{os.getpid()}")
        for pkg in PROJECT_PACKAGES:
            shutil.copytree(os.path.join(REPO, pkg), os.path.join(dest, pkg),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        label = f"{project_commit()} (snapshot {time.strftime('%H:%M:%S')})"
        with open(os.path.join(dest, "COMMIT"), "w") as f:
            f.write(label)
        return dest, label
    return None, project_commit()


# ---------------------------------------------------------------------------------------------
def _resp(args):
    parts = [f"*{len(args)}\r\n".encode()]
    for x in args:
        b = str(x).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def _read_reply(f):
    line = f.readline().rstrip(b"\r\n")
    t, rest = line[:1], line[1:]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise BenchError("redis: " + rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise BenchError(f"redis: bad reply {line!r}")


def redis_cmd(port, *args, timeout=2.0):
    """Minimal RESP client: one command, returns the decoded reply (str/int/list)."""
    return redis_pipeline(port, [args], timeout)[0]


def redis_pipeline(port, commands, timeout=10.0):
    """Several commands on one connection, sent at once; their replies in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(_resp(c) for c in commands))
        f = s.makefile("rb")
        return [_read_reply(f) for _ in commands]


def redis_subscribers(port):
    """Connections with at least one (p/s)subscription."""
    n = 0
    for line in redis_cmd(port, "CLIENT", "LIST").splitlines():
        kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
        if any(int(kv.get(k, "0") or 0) > 0 for k in ("sub", "psub", "ssub")):
            n += 1
    return n


def cluster_ports(base):
    """--redis cluster: the 3 primaries on BASE, BASE+1, BASE+2 and their cluster bus ports on
    BASE+3..BASE+5 (given with --cluster-port: the default, port + 10000, may be another's)."""
    nodes = [base + k for k in range(CLUSTER_PRIMARIES)]
    return nodes, [base + CLUSTER_PRIMARIES + k for k in range(CLUSTER_PRIMARIES)]


def start_cluster(procs, a, logdir, left):
    """3 redis-server --cluster-enabled yes (no persistence, pinned like the single redis),
    `redis-cli --cluster create ... --cluster-replicas 0`, until every node says cluster_state:ok.
    -> [(port, Popen)]."""
    nodes, buses = cluster_ports(a.redis_port)
    out = []
    for port, bus in zip(nodes, buses, strict=True):
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--protected-mode", "no", "--cluster-enabled", "yes", "--cluster-port", str(bus),
               "--cluster-config-file", os.path.join(logdir, f"nodes-{port}.conf"), "--dir", logdir]
        out.append((port, procs.start(f"redis:{port}", cmd, DRIVER_CPU, log=os.path.join(logdir, f"redis-{port}.log"))))
    for port, proc in out:
        wait_port(port, proc, 10, f"redis-server :{port}")
    create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in nodes),
              "--cluster-replicas", "0", "--cluster-yes"]
    try:
        done = subprocess.run(create, capture_output=True, text=True, timeout=left(30), check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(create)} did not finish") from None
    if done.returncode != 0 or "All 16384 slots covered" not in done.stdout:
        raise BenchError(f"redis-cli --cluster create failed ({done.returncode}): "
                         f"{done.stdout[-400:]} {done.stderr[-400:]}")
    end = time.time() + left(20)
    while True:
        states = {p: redis_cmd(p, "CLUSTER", "INFO").split("cluster_state:", 1)[1].split()[0] for p in nodes}
        if all(v == "ok" for v in states.values()):
            return out
        if time.time() > end:
            raise BenchError(f"the cluster is not ok: {states}")
        time.sleep(0.1)


def shard_events(ports):
    """{port: XADD calls} from INFO commandstats (commands run by scripts included): one XADD per
    event (publish.lua), so the events each shard took."""
    return {p: commandstats(p).get("xadd", (0, 0))[0] for p in ports}


def redis_shards(phase, shards, events, total_events, span):
    """--redis cluster, per shard over the delivery phase: its redis-server's CPU (/proc), per
    event of the run (the shards' figures add up to redis_cpu_us_per_event) and per event it took
    itself, the events it took (XADD calls) and their share, its core use over first send -> last
    receipt."""
    out = []
    n = sum(events.values())
    for port, _ in shards:
        cpu = phase["other_cpu_s"].get(f"redis:{port}")
        mine = events.get(port, 0)
        out.append({
            "port": port,
            "cpu_s": cpu,
            "cpu_us_per_event": round(cpu * 1e6 / total_events, 1) if cpu is not None and total_events else None,
            "events": mine,
            "events_share": round(mine / n, 3) if n else None,
            "cpu_us_per_own_event": round(cpu * 1e6 / mine, 1) if cpu is not None and mine else None,
            "core_util_during": round(cpu / span, 3) if cpu is not None and span else None,
        })
    return out


def expected_deliveries(a):
    if a.scenario == "idle":
        return 0
    if a.scenario == "fanout":
        return a.events * a.clients
    per_user = [0] * a.users
    for i in range(a.clients):
        per_user[i % a.users] += 1
    return sum(per_user[i % a.users] for i in range(a.events))


def read_json_line(proc, timeout, what):
    """Next JSON line from proc.stdout within timeout (non-JSON lines are skipped)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.time() + timeout
    buf = getattr(proc, "_buf", b"")
    try:
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if line.startswith(b"{"):
                    proc._buf = buf
                    return json.loads(line)
            left = end - time.time()
            if left <= 0:
                raise BenchError(f"load generator: no {what} within {timeout:.0f} s")
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    code = proc.wait(5)
                    raise BenchError(f"load generator exited with code {code} before {what}")
                buf += chunk
    finally:
        sel.close()


def send(proc, line):
    try:
        proc.stdin.write((line + "\n").encode())
        proc.stdin.flush()
    except (BrokenPipeError, OSError):
        pass


# ---------------------------------------------------------------------------------------------
# redis figures (recovery scenario)
def redis_info(port, section):
    """INFO SECTION as {key: value} (numbers as int/float where they parse)."""
    out = {}
    for line in (redis_cmd(port, "INFO", section) or "").splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        k, v = line.split(":", 1)
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def commandstats(port):
    """{command: (calls, usec)} from INFO commandstats (commands run by scripts included)."""
    out = {}
    for k, v in redis_info(port, "commandstats").items():
        if not k.startswith("cmdstat_"):
            continue
        kv = dict(x.split("=", 1) for x in str(v).split(",") if "=" in x)
        out[k[len("cmdstat_"):]] = (int(kv.get("calls", 0)), int(kv.get("usec", 0)))
    return out


KEY_CLASSES = (  # (class, key prefix) of docs/wire-protocol.md, with the default KEY_PREFIX
    ("session", "ngw:s:"), ("user_sessions", "ngw:u:"), ("history", "ngw:h:"), ("online", "ngw:online:"),
    ("bus", "ngw:"),
)


def key_memory(port):
    """{class: [keys, bytes]}: MEMORY USAGE (exact: SAMPLES 0) of every key, by class. Unlike
    used_memory, it does not move with client buffers or the allocator."""
    keys, cursor = [], "0"
    while True:
        cursor, batch = redis_cmd(port, "SCAN", cursor, "COUNT", "10000")
        keys += batch
        if cursor == "0":
            break
    out = {}
    sizes = redis_pipeline(port, [("MEMORY", "USAGE", k, "SAMPLES", "0") for k in keys]) if keys else []
    for k, size in zip(keys, sizes, strict=True):
        cls = next((c for c, prefix in KEY_CLASSES if k.startswith(prefix)), "other")
        n, b = out.get(cls, (0, 0))
        out[cls] = (n + 1, b + (size or 0))
    return out


class RedisSample:
    def __init__(self, port, redis_proc):
        self.t = time.time()
        self.cmds = commandstats(port)  # first: the commands below are run.py's own
        mem = redis_info(port, "memory")
        self.used = mem.get("used_memory")
        self.dataset = mem.get("used_memory_dataset")
        self.keys = redis_cmd(port, "DBSIZE")
        self.key_mem = key_memory(port)
        self.cpu = proc_cpu_s(redis_proc.pid)


def redis_delta(a, b, per, rest_rate=None):
    """Redis memory, keys and commands between two samples, per unit (session or event).

    rest_rate: {command: calls/s} seen with nothing happening (the gateways' heartbeats), taken
    off before dividing (`net`), so that a heartbeat falling in the window is not billed to it.
    """
    wall = b.t - a.t
    calls = {k: b.cmds.get(k, (0, 0))[0] - v[0] for k, v in a.cmds.items()}
    calls.update({k: v[0] for k, v in b.cmds.items() if k not in a.cmds})
    usec = {k: b.cmds.get(k, (0, 0))[1] - a.cmds.get(k, (0, 0))[1] for k in calls}
    calls = {k: v for k, v in calls.items() if v > 0 and k not in OWN_COMMANDS}
    out = {
        "n": per,
        "wall_s": round(wall, 3),
        "used_memory_delta_b": b.used - a.used,
        "dataset_delta_b": (b.dataset - a.dataset) if (a.dataset is not None and b.dataset is not None) else None,
        "keys_delta": b.keys - a.keys,
        "calls": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        "redis_cpu_s": round(b.cpu - a.cpu, 3) if (a.cpu is not None and b.cpu is not None) else None,
    }
    classes = sorted(set(a.key_mem) | set(b.key_mem))
    out["key_memory_delta"] = {c: {"keys": b.key_mem.get(c, (0, 0))[0] - a.key_mem.get(c, (0, 0))[0],
                                   "bytes": b.key_mem.get(c, (0, 0))[1] - a.key_mem.get(c, (0, 0))[1]}
                               for c in classes}
    if per:
        out["mem_b_per"] = round((b.used - a.used) / per, 1)
        if out["dataset_delta_b"] is not None:
            out["dataset_b_per"] = round(out["dataset_delta_b"] / per, 1)
        out["key_b_per"] = round(sum(v["bytes"] for v in out["key_memory_delta"].values()) / per, 1)
        out["key_b_per_class"] = {c: round(v["bytes"] / per, 1) for c, v in out["key_memory_delta"].items()
                                  if v["bytes"]}
        out["keys_per"] = round((b.keys - a.keys) / per, 3)
        out["calls_per"] = {k: round(v / per, 3) for k, v in out["calls"].items()}
        out["commands_per"] = round(sum(calls.values()) / per, 2)
        # Redis's own time, top-level commands only: a script's usec already includes the commands
        # it calls (which commandstats also counts on their own lines)
        scripts = [k for k in calls if k in SCRIPT_COMMANDS]
        out["redis_usec_per"] = round(sum(usec[k] for k in (scripts or calls)) / per, 2)
        if out["redis_cpu_s"] is not None:
            out["redis_cpu_us_per"] = round(out["redis_cpu_s"] * 1e6 / per, 1)
        if rest_rate:
            net = {k: v - rest_rate.get(k, 0) * wall for k, v in calls.items()}
            out["commands_per_net"] = round(sum(max(0.0, v) for v in net.values()) / per, 2)
            out["calls_per_net"] = {k: round(v / per, 3) for k, v in net.items() if v / per >= 0.005}
    return out


def wait_redis_quiet(port, timeout, still=0.6):
    """Until DBSIZE stops moving for `still` s (the gateways' queued writes landed), bounded.
    (used_memory never settles: client buffers and heartbeats move it.)"""
    end = time.time() + timeout
    last, since = None, time.time()
    while time.time() < end:
        now = redis_cmd(port, "DBSIZE")
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= still:
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------
# verdicts
def verdict(gw_util, cpu0_busy, cpu1_busy, driver_util, driver_what):
    """What limited a phase:
    'gateway'        its core was >= 90 % busy with it;
    'other load ...' a core was >= 90 % busy, mostly with processes that are not ours (other people's
                     work on a shared machine): the gateway was starved, or the driver was;
    'driver ...'     CPU 1 >= 90 % busy, mostly with our load generator, producer and redis, while the
                     gateway was not: the rate is a lower bound of the gateway's;
    'neither'        the offered load set the pace (a fixed rate, or a latency chain)."""
    g = gw_util if gw_util is not None else 0.0
    if g >= SATURATED:
        return "gateway"
    if cpu0_busy is not None and cpu0_busy >= SATURATED and cpu0_busy - g >= 0.2:
        return f"other load on CPU 0 (busy {cpu0_busy:.2f}, gateway {g:.2f})"
    if cpu1_busy is not None and cpu1_busy >= SATURATED:
        if driver_util is not None and driver_util < 0.6:
            return f"other load on CPU 1 (busy {cpu1_busy:.2f}, {driver_what} {driver_util:.2f}, gateway {g:.2f})"
        return f"driver (CPU 1 busy {cpu1_busy:.2f}, {driver_what} {driver_util or 0:.2f}, gateway {g:.2f})"
    return "neither"


def driver_util(phase, procs=("loadgen", "producer", "redis", "py-spy")):
    """CPU share of CPU 1 taken by our own driver processes over the phase (every redis-server of
    a cluster, `redis:PORT`, counts as redis)."""
    wall = phase.get("wall_s")
    if not wall:
        return None
    return round(sum(v for k, v in phase.get("other_cpu_s", {}).items()
                     if (k in procs or k.split(":")[0] in procs) and v) / wall, 3)


def busy(phase, cpu):
    return (phase.get("cores") or {}).get(f"cpu{cpu}", {}).get("busy")


def foreign(phase):
    """CPU 0's busy share not spent by the gateways: other tenants (and the kernel's loopback work
    for the driver). Large values mean the gateway figures of this run are suspect."""
    b = busy(phase, GATEWAY_CPU)
    if b is None or not phase.get("wall_s"):
        return None
    return round(max(0.0, b - phase["gw_core_util"]), 3)


# ---------------------------------------------------------------------------------------------
# profiling
def start_pyspy(a, procs, gw, phase):
    """py-spy on a Python gateway (pinned to the driver CPU); None for node (it has --cpu-prof)."""
    if a.target == "node":
        return None
    exe = os.path.join(os.path.dirname(BENCH_PY), "py-spy")
    if not os.path.exists(exe):
        raise BenchError(f"--profile needs py-spy in the bench venv: {SETUP_HINT}")
    out = os.path.join(a.logdir, f"pyspy-{phase}.txt")
    cmd = [exe, "record", "--pid", str(gw.pid), "--rate", str(a.profile_rate), "--format", "raw", "--output", out]
    if a.profile_native:
        cmd.append("--native")
    p = procs.start("py-spy", cmd, DRIVER_CPU, log=os.path.join(a.logdir, f"pyspy-{phase}.log"))
    time.sleep(1.0)  # let it attach
    p.out = out
    return p


def stop_pyspy(p, result):
    if p is None:
        return
    p.send_signal(signal.SIGINT)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
    result.setdefault("profiles", []).append(p.out)


def summarise_profiles(result, top=25):
    """profsum.py over every profile of the run: FILE.summary.txt beside it, the top self items in
    the JSON line (`profile_top`)."""
    import io

    import profsum
    for path in result.get("profiles", []):
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            result.setdefault("profile_errors", []).append(f"empty profile {path}")
            continue
        text = ""
        for extra in (["--functions"], []):  # by function first, then by line
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                profsum.main([path, "--top", str(top), *extra, "--match", "gateway/", "--match", "engineio/",
                              "--match", "socketio/", "--match", "aiohttp/", "--match", "publisher/"])
            text += buf.getvalue() + "\n"
        with open(path + ".summary.txt", "w") as f:
            f.write(text)
        result.setdefault("profile_summaries", []).append(path + ".summary.txt")
        lines = text.splitlines()
        if "-- self" in lines:
            k = lines.index("-- self")
            result.setdefault("profile_top", {})[os.path.basename(path)] = lines[k + 1:k + 13]


# ---------------------------------------------------------------------------------------------
# storm scenario
class CpuSampler(threading.Thread):
    """(wall time, CPU seconds) of one process every `every` s, and /proc/stat's cores, from a
    thread: the storm's figures are cut at times known only afterwards (the last client back)."""

    def __init__(self, pid, every=0.05):
        super().__init__(daemon=True, name="cpu-sampler")
        self.pid, self.every = pid, every
        self.samples = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            self.samples.append((time.time(), proc_cpu_s(self.pid), core_times()))
            self.halt.wait(self.every)

    def stop(self):
        self.halt.set()
        self.join(5)

    def _at(self, t, after):
        """The last sample at or before t (after=False), the first at or after t (after=True)."""
        good = [x for x in self.samples if x[1] is not None]
        if not good:
            return None
        if after:
            return next((x for x in good if x[0] >= t), good[-1])
        return next((x for x in reversed(good) if x[0] <= t), good[0])

    def between(self, t0, t1):
        a, b = self._at(t0, False), self._at(t1, True)
        if a is None or b is None or b[0] <= a[0]:
            return None
        util = core_util(a[2], b[2])
        return {"wall_s": round(b[0] - a[0], 3), "cpu_s": round(b[1] - a[1], 3),
                "core_util": round((b[1] - a[1]) / (b[0] - a[0]), 3),
                "cpu0_busy": util.get(f"cpu{GATEWAY_CPU}", {}).get("busy"),
                "cpu1_busy": util.get(f"cpu{DRIVER_CPU}", {}).get("busy")}

    def peak(self, t0, t1, window=0.5):
        """The busiest `window` s of the process between t0 and t1 (core share)."""
        good = [x for x in self.samples if x[1] is not None and t0 <= x[0] <= t1 + window]
        best = None
        for k, x in enumerate(good):
            y = next((z for z in good[k:] if z[0] - x[0] >= window), None)
            if y is None:
                break
            u = (y[1] - x[1]) / (y[0] - x[0])
            best = u if best is None else max(best, u)
        return round(best, 3) if best is not None else None


def wait_subscribed(a, shards, timeout, warn):
    """Every replica on the bus before the producer starts (a cluster: on every shard, since the
    clients' rooms hash to all of them); a warning after `timeout` s."""
    def subscribed():
        return min(redis_subscribers(p) for p, _ in shards) if shards else redis_subscribers(a.redis_port)
    end = time.time() + timeout
    subs = subscribed()
    while subs < a.replicas and time.time() < end:
        time.sleep(0.1)
        subs = subscribed()
    if subs < a.replicas:
        warn(f"only {subs}/{a.replicas} gateways subscribed to redis" + (" on every shard" if shards else ""))


def scrape_counters(port, names):
    """{name{labels}: value} of the Prometheus counters NAMES on a replica's /metrics."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
    except OSError as e:
        return {"error": str(e)}
    out = {}
    for line in body.decode(errors="replace").split("\r\n\r\n", 1)[-1].splitlines():
        if line.startswith(tuple(names)) and " " in line:
            k, v = line.rsplit(" ", 1)
            with contextlib.suppress(ValueError):
                out[k] = float(v)
    return out


def storm_phase(a, procs, gateways, others, lg, result, spec, prod_env, left, lg_why):
    """Events flow at --rate to the clients, all on replica A; after --kill-after s, A gets
    SIGKILL; the clients reconnect to B (storm.py); the phase ends once all are back and every
    event arrived (or --idle-timeout s after the last one). B's CPU is sampled all along."""
    a_gw, b_gw = gateways[0], gateways[1]
    s1 = Sample(gateways, others)
    send(lg, f"go {a.events} {max(2.0, left(60) - 8):.1f}")
    pcmd, pcwd = spec["producer"](["--bench", str(a.users), str(a.events), str(a.rate)])
    prod = procs.start("producer", pcmd, DRIVER_CPU, env=prod_env, cwd=pcwd,
                       log=os.path.join(a.logdir, "producer.log"))
    sampler = CpuSampler(b_gw.pid)
    sampler.start()
    time.sleep(a.kill_after)
    t_kill = time.time()
    os.kill(a_gw.pid, signal.SIGKILL)
    a_gw.wait(5)
    send(lg, f"killed {t_kill:.6f}")
    rc, prod_cpu = wait_rusage(prod, left(60))
    if rc is None:
        result["warning"] = "producer did not finish in time"
    send(lg, "sent")
    try:
        done = read_json_line(lg, left(a.idle_timeout + 50), "storm summary")
    except BenchError as e:
        sampler.stop()
        raise BenchError(f"{e}; loadgen.log: {lg_why()}") from None
    t_end = time.time()
    sampler.stop()
    s2 = Sample(gateways, others)
    st = done.pop("storm", {}) or {}
    result["delivery"] = done
    result["delivery_phase"] = delta(s1, s2)
    result["producer_cpu_s"] = round(prod_cpu, 3) if prod_cpu is not None else None
    back_at = st.get("all_back_at") or t_end
    during = sampler.between(t_kill, back_at) or {}
    result["storm"] = st
    result["b_storm"] = during
    back = st.get("back") or 0
    result.update({
        "kill_after_s": a.kill_after,
        "all_back_s": st.get("all_back_s"),
        "back": back,
        "recovered": st.get("recovered"),
        "not_recovered": st.get("not_recovered"),
        "gave_up": st.get("gave_up"),
        "refused": st.get("refused"),
        "refused_total": st.get("refused_total"),
        "lost": st.get("lost_total"),
        "lost_within_window": st.get("lost_within_window"),
        "clients_with_loss": st.get("clients_with_loss"),
        "duplicates": st.get("duplicates_total"),
        "clients_with_duplicates": st.get("clients_with_duplicates"),
        "replayed_events": st.get("replayed_events"),
        "b_cpu_s_storm": during.get("cpu_s"),
        "b_core_util_storm": during.get("core_util"),
        "b_core_util_peak_500ms": sampler.peak(t_kill, back_at),
        "b_cpu_us_per_reconnect": round(during["cpu_s"] * 1e6 / back, 1) if back and during.get("cpu_s") else None,
        "cpu1_busy_storm": during.get("cpu1_busy"),
        "cpu0_busy_storm": during.get("cpu0_busy"),
        "latency_ms_after_all_back": (st.get("latency_ms") or {}).get("after_all_back"),
        "latency_ms_first_s_after_all_back": (st.get("latency_ms") or {}).get("first_s_after_all_back"),
        "latency_ms_during_storm": (st.get("latency_ms") or {}).get("during_storm"),
    })
    # the verdict: the gateway's core saturated by B, or the driver's by the load generator
    # (the driver's share: over the whole phase, its processes are not sampled at the kill)
    result["bottleneck_storm"] = verdict(during.get("core_util"), during.get("cpu0_busy"),
                                         during.get("cpu1_busy"), driver_util(result["delivery_phase"]),
                                         "driver")
    if a.target == "project":
        result["b_counters"] = scrape_counters(a.base_port + 1, ("ws_handshakes_total", "ws_recoveries_total",
                                                                 "ws_errors_total"))


# ---------------------------------------------------------------------------------------------
def run(a):
    t_start = time.time()
    deadline = t_start + RUN_BUDGET_S

    def left(cap):
        return max(1.0, min(cap, deadline - time.time()))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if not a.logdir:
        a.logdir = os.path.join(RESULTS, "prof" if a.profile else "tmp",
                                f"{stamp}-{a.target}-{a.scenario}-{os.getpid()}")
    a.logdir = os.path.abspath(a.logdir)
    os.makedirs(a.logdir, exist_ok=True)
    spec = target_spec(a)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = max(soft, min(hard, 4 * a.clients + 1024))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass
    os.sched_setaffinity(0, {DRIVER_CPU})
    ports = [a.base_port + k for k in range(a.replicas)]
    cluster = a.redis == "cluster"
    redis_ports = [a.redis_port]
    if cluster:
        if a.target != "project" or a.scenario not in ("targeted", "fanout"):
            raise BenchError("--redis cluster: only --target project, scenarios targeted and fanout")
        nodes, buses = cluster_ports(a.redis_port)
        redis_ports = nodes + buses
    if 6379 in redis_ports:
        raise BenchError("port 6379 is the machine's own Redis: choose another --redis-port")
    for p in [*redis_ports, *ports]:
        if not port_free(p):
            raise BenchError(f"port {p} is in use (choose --redis-port / --base-port)")
    logdir = a.logdir
    secret = secrets.token_hex(32)
    redis_url = f"redis://127.0.0.1:{a.redis_port}/0"
    if cluster:
        redis_url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in nodes)
    procs = Procs()
    prod_env = dict(os.environ, REDIS_URL=redis_url, **spec.get("producer_env", {}))
    gw_env = dict(spec["env"])
    if a.target == "project" and a.admission == "on":
        # the per-IP limit at its defaults, loopback not exempt: each 127.0.0.x is a client host
        gw_env.pop("HANDSHAKE_RATE_PER_IP", None)
        gw_env["HANDSHAKE_RATE_EXEMPT"] = ""
    gw_env.update(kv.split("=", 1) for kv in a.gateway_env)
    result = {"target": a.target, "scenario": a.scenario, "replicas": a.replicas, "clients": a.clients,
              "events": a.events if a.scenario != "idle" else None, "rate": a.rate or None,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "logdir": logdir,
              "loadavg_before": [round(x, 2) for x in os.getloadavg()],
              "source_addrs": a.source_addrs, "admission": a.admission if a.target == "project" else None}
    if a.target == "project":
        result["project_commit"] = a.project_commit
        result["project_src"] = a.project_src or REPO
        result["producer_batch"] = a.producer_batch
    if a.profile:
        result["profiled"] = True
    if gw_env:
        result["gateway_env"] = [f"{k}={v}" for k, v in gw_env.items()]
    if cluster:
        result["redis"] = "cluster"
        result["redis_url"] = redis_url

    def warn(msg):
        result["warning"] = (result["warning"] + "; " + msg) if result.get("warning") else msg
    try:
        if cluster:
            shards = start_cluster(procs, a, logdir, left)
            redis = None
        else:
            shards = []
            redis = procs.start("redis", ["redis-server", "--port", str(a.redis_port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                                DRIVER_CPU, log=os.path.join(logdir, "redis.log"))
            wait_port(a.redis_port, redis, 10, "redis-server")
            end = time.time() + 5
            while redis_cmd(a.redis_port, "PING") != "PONG" and time.time() < end:
                time.sleep(0.05)

        gateways = []
        for k, port in enumerate(ports):
            cmd, cwd = spec["gateway"](port)
            env = dict(os.environ, PORT=str(port), REDIS_URL=redis_url, JWT_SECRET=secret,
                       FRONTEND_URL="http://localhost:5173", HOST="127.0.0.1", NODE_ENV="production")
            env.update(gw_env)
            gateways.append(procs.start(f"gateway{k}", cmd, GATEWAY_CPU, env=env, cwd=cwd,
                                        log=os.path.join(logdir, f"gateway{k}.log")))
        for k, (port, g) in enumerate(zip(ports, gateways, strict=True)):
            wait_port(port, g, left(20), f"gateway {k} ({a.target})")
        if a.target == "project":  # the contract's readiness probe: bus connected
            end = time.time() + left(10)
            while any(ready_status(p) != 200 for p in ports):
                if time.time() > end:
                    raise BenchError("target project: /readyz did not answer 200 within 10 s")
                time.sleep(0.1)
        time.sleep(a.settle)

        lg_ports = ports[:1] if a.scenario == "storm" else ports  # storm: everyone on A, then B
        lg_cmd = [BENCH_PY, os.path.join(HERE, "loadgen.py"), "--control", "--ports", ",".join(map(str, lg_ports)),
                  "--clients", str(a.clients), "--users", str(a.users), "--secret", secret,
                  "--concurrency", str(a.concurrency), "--idle-timeout", str(a.idle_timeout),
                  "--deadline", str(min(45.0, RUN_BUDGET_S - 25)), "--connect-deadline", "35"]
        if a.scenario == "fanout":
            lg_cmd += ["--classrooms", "1"]
        if a.source_addrs > 0:
            lg_cmd += ["--source-addrs", ",".join(f"127.0.0.{x}" for x in range(1, a.source_addrs + 1))]
        if a.scenario == "storm":
            window = gw_env.get("RECOVERY_WINDOW", "120") if a.target == "project" else "0"
            lg_cmd += ["--recover", "--reconnect-port", str(ports[1]), "--recovery-window", window]
        others = {f"redis:{p}": proc for p, proc in shards} if cluster else {"redis": redis}
        spy = None
        if a.profile and a.scenario == "idle":
            spy = start_pyspy(a, procs, gateways[0], "connect")
        rs0 = RedisSample(a.redis_port, redis) if a.scenario == "recovery" else None
        s0 = Sample(gateways, others)
        lg = procs.start("loadgen", lg_cmd, DRIVER_CPU, stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                         log=os.path.join(logdir, "loadgen.log"))
        others["loadgen"] = lg
        lg_log = os.path.join(logdir, "loadgen.log")

        def lg_why():
            """The load generator's last words (who signalled it), for the error message."""
            with contextlib.suppress(OSError), open(lg_log, errors="replace") as f:
                lines = [x.strip() for x in f if x.strip()]
                return lines[-1][:400] if lines else None
            return None
        try:
            conn = read_json_line(lg, left(45), "connect summary")
        except BenchError as e:
            raise BenchError(f"{e}; loadgen.log: {lg_why()}") from None
        time.sleep(a.settle)  # let the gateways finish connect bookkeeping (and GC) before sampling
        s1 = Sample(gateways, others)
        result["connect"] = conn
        cd = delta(s0, s1)
        result["connect_phase"] = cd
        n = conn.get("connected") or 0
        result["connect_per_s"] = conn.get("connect_per_s")
        result["connect_errors"] = conn.get("connect_errors")
        result["gw_cpu_us_per_handshake"] = round(cd["gw_cpu_s"] * 1e6 / n, 1) if n else None
        cw = conn.get("connect_wall_s")
        result["gw_core_util_connect"] = round(cd["gw_cpu_s"] / cw, 3) if cw else None
        lc = conn.get("loadgen_connect_cpu_s")
        result["loadgen_cpu_util_connect"] = round(lc / cw, 3) if (cw and lc is not None) else None
        result["gw_rss_kib_per_conn"] = round(cd["gw_rss_delta_kib"] / n, 2) if n else None
        result["gw_rss_kib_base"] = sum(x for x in s0.gw_rss if x is not None)
        result["bottleneck_connect"] = verdict(result["gw_core_util_connect"], busy(cd, GATEWAY_CPU),
                                               busy(cd, DRIVER_CPU), result["loadgen_cpu_util_connect"],
                                               "load generator")
        result["cpu0_foreign_connect"] = foreign(cd)
        if n < a.clients:
            warn(f"only {n}/{a.clients} clients connected")

        if a.scenario == "recovery":
            # sessions: what the gateways wrote to redis for n connections, once it landed
            wait_redis_quiet(a.redis_port, left(10))
            rs1 = RedisSample(a.redis_port, redis)
            # at rest: the heartbeats' commands per second, taken off the event phase below
            time.sleep(min(a.hold, max(0.0, deadline - time.time() - 30)))
            rs2 = RedisSample(a.redis_port, redis)
            rest = redis_delta(rs1, rs2, 0)
            rest_rate = {k: v / rest["wall_s"] for k, v in rest["calls"].items()} if rest["wall_s"] else {}
            result["redis_sessions"] = redis_delta(rs0, rs1, n)
            result["redis_rest"] = dict(rest, calls_per_s={k: round(v, 1) for k, v in rest_rate.items()})

        if a.scenario == "storm":
            wait_subscribed(a, shards, left(10), warn)
            storm_phase(a, procs, gateways, others, lg, result, spec, prod_env, left, lg_why)
        elif a.scenario == "idle":
            time.sleep(min(a.hold, max(0.0, deadline - time.time() - 10)))
            s2 = Sample(gateways, others)
            stop_pyspy(spy, result)
            hd = delta(s1, s2)
            result["hold_phase"] = hd
            result["idle_gw_core_util"] = hd["gw_core_util"]
        else:
            wait_subscribed(a, shards, left(10), warn)
            expected = expected_deliveries(a)
            if a.profile:
                spy = start_pyspy(a, procs, gateways[0], "delivery")
            if rs0 is not None:
                rs3 = RedisSample(a.redis_port, redis)
            ev0 = shard_events([p for p, _ in shards]) if cluster else None
            s1 = Sample(gateways, others)
            send(lg, f"go {expected} {max(2.0, left(50) - 8):.1f}")
            args = ["--bench", str(a.users), str(a.events), str(a.rate)]
            if a.scenario == "fanout":
                args += ["--room", "classroom:1"]
            pcmd, pcwd = spec["producer"](args)
            prod = procs.start("producer", pcmd, DRIVER_CPU, env=prod_env, cwd=pcwd,
                               log=os.path.join(logdir, "producer.log"))
            rc, prod_cpu = wait_rusage(prod, left(60))
            if rc is None:
                warn("producer did not finish in time")
            elif rc != 0:
                warn(f"producer exited with code {rc} (see {logdir}/producer.log)")
            send(lg, "sent")
            try:
                done = read_json_line(lg, left(a.idle_timeout + 50), "delivery summary")
            except BenchError as e:
                raise BenchError(f"{e}; loadgen.log: {lg_why()}") from None
            s2 = Sample(gateways, others)
            stop_pyspy(spy, result)
            dd = delta(s1, s2)
            dd["other_cpu_s"]["producer"] = round(prod_cpu, 3) if prod_cpu is not None else None
            result["delivery"] = done
            result["delivery_phase"] = dd
            recv = done.get("received") or 0
            result["delivered"] = recv
            result["expected"] = expected
            result["lost"] = done.get("lost")
            result["duplicates"] = done.get("duplicates")
            result["per_s"] = done.get("per_s")
            result["latency_ms"] = done.get("latency_ms")
            result["gw_cpu_us_per_delivery"] = round(dd["gw_cpu_s"] * 1e6 / recv, 2) if recv else None
            # gateway busy time over the window first send -> last receipt (CPU 0 is the gateways' only)
            span = done.get("first_send_to_last_recv_s")
            result["gw_core_util_during"] = round(dd["gw_cpu_s"] / span, 3) if span else None
            result["producer_send_s"] = done.get("send_span_s")
            result["producer_cpu_s"] = dd["other_cpu_s"].get("producer")
            if result["producer_cpu_s"] is not None and a.events:
                result["producer_cpu_us_per_event"] = round(result["producer_cpu_s"] * 1e6 / a.events, 1)
            rcpu = dd["other_cpu_s"].get("redis")
            if cluster:
                ev = shard_events([p for p, _ in shards])
                ev = {p: ev[p] - ev0[p] for p in ev}
                rcpu = sum(dd["other_cpu_s"].get(f"redis:{p}") or 0.0 for p, _ in shards)
                result["redis_shards"] = redis_shards(dd, shards, ev, a.events, span)
                result["redis_cpu_s"] = round(rcpu, 3)
                result["redis_shard_events"] = sum(ev.values())
            if rcpu is not None and a.events:
                result["redis_cpu_us_per_event"] = round(rcpu * 1e6 / a.events, 1)
            lgc = done.get("loadgen_cpu_s")
            result["loadgen_cpu_util"] = round(lgc / done["wall_s"], 3) if lgc and done.get("wall_s") else None
            result["cpu1_busy"] = busy(dd, DRIVER_CPU)
            result["cpu0_busy"] = busy(dd, GATEWAY_CPU)
            result["cpu0_foreign"] = foreign(dd)
            result["driver_cpu_util"] = driver_util(dd)
            result["bottleneck"] = verdict(result["gw_core_util_during"], result["cpu0_busy"], result["cpu1_busy"],
                                           result["driver_cpu_util"], "driver")
            if rs0 is not None:
                # history: what the events left in redis, and the commands they cost
                wait_redis_quiet(a.redis_port, left(10))
                rs4 = RedisSample(a.redis_port, redis)
                result["redis_events"] = redis_delta(rs3, rs4, a.events, rest_rate)
                # one long stream: the cost of an entry without the per-room overhead
                one = min(a.events, a.one_room_events)
                pcmd, pcwd = spec["producer"](["--bench", "1", str(one), "0", "--room", "classroom:bench"])
                prod = procs.start("producer", pcmd, DRIVER_CPU, env=prod_env, cwd=pcwd,
                                   log=os.path.join(logdir, "producer-one-room.log"))
                wait_rusage(prod, left(30))
                wait_redis_quiet(a.redis_port, left(10))
                rs5 = RedisSample(a.redis_port, redis)
                result["redis_events_one_room"] = redis_delta(rs4, rs5, one, rest_rate)
                rse, rss, r1 = result["redis_events"], result["redis_sessions"], result["redis_events_one_room"]
                result["recovery_cost"] = {
                    "redis_mem_b_per_session": rss.get("mem_b_per"),
                    "redis_key_b_per_session": rss.get("key_b_per"),
                    "redis_dataset_b_per_session": rss.get("dataset_b_per"),
                    "redis_keys_per_session": rss.get("keys_per"),
                    "redis_commands_per_session": rss.get("commands_per"),
                    "redis_mem_b_per_event": rse.get("mem_b_per"),
                    "redis_key_b_per_event": rse.get("key_b_per"),
                    "redis_dataset_b_per_event": rse.get("dataset_b_per"),
                    "events_per_room": round(a.events / min(a.users, a.events), 1),
                    "redis_mem_b_per_event_one_room": r1.get("mem_b_per"),
                    "redis_key_b_per_event_one_room": r1.get("key_b_per"),
                    "one_room_events": one,
                    "redis_commands_per_event": rse.get("commands_per_net", rse.get("commands_per")),
                    "redis_calls_per_event": rse.get("calls_per_net", rse.get("calls_per")),
                    "redis_usec_per_event": rse.get("redis_usec_per"),
                    "redis_cpu_us_per_event": rse.get("redis_cpu_us_per"),
                    "heartbeat_commands_per_s": round(sum(result["redis_rest"]["calls_per_s"].values()), 1),
                }
        for k, g in enumerate(gateways):
            if g.poll() is not None and not (a.scenario == "storm" and k == 0):  # storm: A was killed
                warn(f"gateway {k} exited with code {g.returncode} (see {logdir})")
        if lg.poll() is not None:
            warn(f"the load generator ended early, code {lg.returncode}: {lg_why()}")
        fo = result.get("cpu0_foreign", result.get("cpu0_foreign_connect"))
        if fo is not None and fo > 0.15:
            warn(f"CPU 0 was {fo:.0%} busy with other work than the gateway: noisy run")
        send(lg, "quit")
    finally:
        procs.stop_all()
    if a.profile and a.target == "node":
        result["profiles"] = sorted(os.path.join(logdir, f) for f in os.listdir(logdir) if f.endswith(".cpuprofile"))
    if a.profile:
        summarise_profiles(result)
    result["run_s"] = round(time.time() - t_start, 2)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, choices=["node", "vanilla", "project"])
    p.add_argument("--scenario", default="targeted", choices=["targeted", "fanout", "idle", "recovery", "storm"])
    p.add_argument("--clients", type=int, default=None, help="default: 1000 (idle: 5000, storm: 2000)")
    p.add_argument("--users", type=int, default=None, help="distinct users (default: --clients)")
    p.add_argument("--events", type=int, default=None,
                   help="targeted/recovery: events to user rooms (default 20000); fanout: events to "
                        "classroom:1 (100)")
    p.add_argument("--rate", type=float, default=0, help="producer events/s (0: as fast as it can)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    p.add_argument("--redis-port", type=int, default=6381,
                   help="the redis-server's port; --redis cluster: the 3 primaries on PORT..PORT+2, their "
                        "cluster bus ports on PORT+3..PORT+5")
    p.add_argument("--redis", default="single", choices=["single", "cluster"],
                   help="cluster (--target project): a 3-primary Redis Cluster, no replicas, all on CPU 1; "
                        "REDIS_URL=redis+cluster://... for the gateways and the producer; Redis CPU and "
                        "events per shard in `redis_shards`")
    p.add_argument("--base-port", type=int, default=3101, help="replica k listens on BASE_PORT+k")
    p.add_argument("--idle-timeout", type=float, default=3.0, help="end delivery this long after the last event")
    p.add_argument("--settle", type=float, default=1.0, help="pause after start and after connecting")
    p.add_argument("--hold", type=float, default=None,
                   help="idle: seconds to hold the connections (3); recovery: seconds at rest to measure "
                        "the heartbeats (6)")
    p.add_argument("--one-room-events", type=int, default=1000,
                   help="recovery: events published to one room to measure an entry of a long stream "
                        "(at most the gateway's HISTORY_MAX_LEN, 1000, or trimming hides them)")
    p.add_argument("--producer-batch", type=int, default=None,
                   help="project: emits per round trip with Publisher.pipeline() (1: one emit() each). "
                        "Default: 64 as fast as possible (like the vanilla producer's 64 in flight and "
                        "ioredis' pipelining in the node emitter), 1 at a fixed --rate")
    p.add_argument("--project-venv", default=os.environ.get("PROJECT_VENV", os.path.join(HERE, ".venv-project")),
                   help="the venv with the project's dependencies and `gateway` script (default bench/.venv-project)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--project-src", default=None,
                     help="run the gateway/ and publisher/ packages of this directory (PYTHONPATH) instead of "
                          "the live checkout, e.g. a copy made by series.py")
    src.add_argument("--project-ref", default=None,
                     help="run the project as of this git commit (git archive into bench/results/tmp/src-SHA)")
    src.add_argument("--project-snapshot", action="store_true",
                     help="copy the working tree's gateway/ and publisher/ first and run the copy")
    p.add_argument("--logdir", default=None,
                   help="gateway/redis/loadgen logs and profiles (default: bench/results/tmp/RUN or, with "
                        "--profile, bench/results/prof/RUN)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the gateways (repeatable), e.g. NODE_OPTIONS=... or "
                        "RECOVERY_WINDOW=0")
    p.add_argument("--profile", action="store_true",
                   help="profile gateway 0 into the logdir: node --cpu-prof (whole life), py-spy for Python "
                        "targets (the delivery phase; idle: the connect phase), summarised by profsum.py "
                        "into FILE.summary.txt. Figures of a profiled run are not comparable")
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native: C frames too (uvloop, orjson)")
    p.add_argument("--out", default=None, help="also append the JSON line to this file")
    p.add_argument("--source-addrs", type=int, default=None, metavar="K",
                   help="client i connects from 127.0.0.(i %% K + 1), one 'client host' each, as behind a load "
                        "balancer (Linux routes 127/8 to lo). Default: 20 for storm, else 0 (127.0.0.1)")
    p.add_argument("--admission", choices=["on", "off"], default=None,
                   help="project: `on` runs the gateways with the per-IP handshake limit at its defaults and "
                        "no loopback exemption (HANDSHAKE_RATE_EXEMPT=); `off` with HANDSHAKE_RATE_PER_IP=100000 "
                        "(the bench's usual). Default: on for storm, else off")
    p.add_argument("--kill-after", type=float, default=2.0,
                   help="storm: seconds of events flowing to replica A before it gets SIGKILL")
    a = p.parse_args(argv)
    storm = a.scenario == "storm"
    if a.clients is None:
        a.clients = {"idle": 5000, "storm": 2000}.get(a.scenario, 1000)
    if storm:
        a.replicas = 2  # A, killed, and B, where everyone reconnects
        a.rate = a.rate or 1000.0
    if a.events is None:
        # storm: events flow through the kill, the storm and ~8 s after it
        a.events = 100 if a.scenario == "fanout" else int(a.rate * (a.kill_after + 12)) if storm else 20000
    if a.source_addrs is None:
        a.source_addrs = 20 if storm else 0
    if a.admission is None:
        a.admission = "on" if storm else "off"
    if a.hold is None:
        a.hold = 6.0 if a.scenario == "recovery" else 3.0
    if a.producer_batch is None:
        a.producer_batch = 64 if not a.rate else 1
    a.users = a.users or a.clients
    if os.cpu_count() < 2:
        print(json.dumps({"error": "needs 2 CPUs (gateway on CPU 0, driver on CPU 1)"}))
        return 2
    if not shutil.which("taskset"):
        print(json.dumps({"error": f"needs taskset (util-linux): {SETUP_HINT}"}))
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if a.target == "project":
            if a.project_src:
                try:
                    with open(os.path.join(a.project_src, "COMMIT")) as f:
                        a.project_commit = f.read().strip()
                except OSError:
                    a.project_commit = f"unknown ({a.project_src})"
            else:
                a.project_src, a.project_commit = project_source(a.project_ref, a.project_snapshot)
        res = run(a)
        code = 0
    except BenchError as e:
        res = {"target": a.target, "scenario": a.scenario, "error": str(e)}
        code = 2
    except KeyboardInterrupt:
        res = {"target": a.target, "scenario": a.scenario, "error": "interrupted"}
        code = 130
    line = json.dumps(res, separators=(",", ":"))
    print(line, flush=True)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "a") as f:
            f.write(line + "\n")
    if code:
        print(f"run.py: {res['error']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
