#!/usr/bin/env python3
"""(Copied from the benchmark yardstick's loadgen.py; lint fixes, and the reconnect storm's clients
(`--recover`, `--source-addrs`, `--reconnect-port`: see storm.py) added.)

A swarm of raw Socket.IO v5 / Engine.IO v4 clients over aiohttp websockets, for gateway benchmarks.

Each client: GET ws://HOST:PORT/socket.io/?EIO=4&transport=websocket, reads the '0{...}' open packet,
sends '40/notifications,{"token":"Bearer <jwt>"}', waits for '40/notifications,{"sid":...}', then
counts '42/notifications,["event",{...}]' packets (payload seq/sentAt), answering pings ('2' -> '3').
Latency = time.time()*1000 - payload.sentAt (ms). Client i gets sub=str(i % USERS).

Standalone: python loadgen.py --ports 3000 --clients 1000 --secret S --expect 20000
  connects, then waits for EXPECT events (or --idle-timeout s without one, or --deadline), prints
  a JSON summary line and exits.
Controlled (--control, used by run.py): prints {"phase":"connected",...}, then reads commands on
stdin: "go EXPECTED [DEADLINE_S]" (reset counters, start a measurement), "sent" (producer finished: the phase
ends EXPECTED events later or --idle-timeout s after the last one), "quit".
Storm (--recover, run.py --scenario storm): every client keeps the session id (`pid`) of its
CONNECT answer and the offset of the last event (the trailing string argument), as socket.io-client
>= 4.6 does, and when its connection drops it reconnects to --reconnect-port with socket.io-client's
backoff, presenting `{pid, offset, token}`. "killed T" tells it when the replica was killed; the
"done" line then carries a `storm` summary (storm.py).
Every wait is bounded.
"""
import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
import threading
import time
from array import array

import aiohttp
import jwt
import orjson
import storm

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

NS = b"/notifications"
EVENT = b"42/notifications,"
CONNECTED = b"40/notifications"
CONNECT_ERROR = b"44/notifications"
DISCONNECT = b"41/notifications"
TEXT, BINARY = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(sorted_vals, p):
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, round(p / 100.0 * (len(sorted_vals) - 1))))
    return round(sorted_vals[k], 3)


class Phase:
    """Counters of one measurement phase."""

    def __init__(self, nclients, expected):
        self.expected = expected
        self.received = 0
        self.unique = 0
        self.duplicates = 0
        self.dup_by_client = {}
        self.bad = 0
        self.lat = array("d")
        self.seen = [None] * nclients
        self.first_sent = None
        self.last_sent = None
        self.first_recv = None
        self.last_recv = None
        self.done = asyncio.Event()
        if expected is not None and expected <= 0:
            self.done.set()
        self.t0 = time.time()
        self.cpu0 = cpu_s()

    def on_event(self, i, raw):
        now = time.time() * 1000.0
        try:
            arr = orjson.loads(raw)
            payload = arr[1]
            seq = payload["seq"]
            sent = payload["sentAt"]
        except Exception:  # noqa: BLE001 - whatever the gateway sent, it is counted as malformed
            self.bad += 1
            return None
        self.received += 1
        s = self.seen[i]
        if s is None:
            s = self.seen[i] = set()
        if seq in s:
            self.duplicates += 1
            self.dup_by_client[i] = self.dup_by_client.get(i, 0) + 1
        else:
            s.add(seq)
            self.unique += 1
        self.lat.append(now - sent)
        if self.first_sent is None or sent < self.first_sent:
            self.first_sent = sent
        if self.last_sent is None or sent > self.last_sent:
            self.last_sent = sent
        if self.first_recv is None:
            self.first_recv = now
        self.last_recv = now
        if self.expected is not None and self.unique >= self.expected:
            self.done.set()
        return arr

    def summary(self):
        lat = sorted(self.lat)
        span_ms = (self.last_recv - self.first_sent) if self.received else None
        seqs = set()
        for s in self.seen:
            if s:
                seqs.update(s)
        return {
            "expected": self.expected,
            "received": self.received,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "lost": (self.expected - self.unique) if self.expected is not None else None,
            "distinct_seqs": len(seqs),
            "malformed": self.bad,
            "first_send_to_last_recv_s": round(span_ms / 1000.0, 4) if span_ms else None,
            "send_span_s": round((self.last_sent - self.first_sent) / 1000.0, 4) if self.received else None,
            "recv_span_s": round((self.last_recv - self.first_recv) / 1000.0, 4) if self.received else None,
            "per_s": round(self.received / (span_ms / 1000.0), 1) if span_ms else None,
            "latency_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
                           "max": round(lat[-1], 3) if lat else None,
                           "mean": round(sum(lat) / len(lat), 3) if lat else None},
            "loadgen_cpu_s": round(cpu_s() - self.cpu0, 3),
            "wall_s": round(time.time() - self.t0, 3),
        }


class Swarm:
    def __init__(self, a):
        self.a = a
        self.n = a.clients
        self.phase = Phase(self.n, None)
        self.connected = 0
        self.connect_errors = {}
        self.dropped = 0
        self.server_disconnects = 0
        self.pings = 0
        self.connect_times = array("d")
        self.ready = asyncio.Event()
        self.pending = self.n
        self.storm = None

    def err(self, kind):
        self.connect_errors[kind] = self.connect_errors.get(kind, 0) + 1
        self._one_done()

    def _one_done(self):
        self.pending -= 1
        if self.pending <= 0:
            self.ready.set()

    async def client(self, i, session, url, auth_packet, sem):
        a = self.a
        async with sem:
            t = time.perf_counter()
            try:
                async with asyncio.timeout(a.connect_timeout):
                    ws = await session.ws_connect(url, autoping=True, heartbeat=None, compress=0,
                                                  max_msg_size=1 << 20, decode_text=False)
                    msg = await ws.receive()
                    if msg.type is not TEXT or not msg.data.startswith(b"0"):
                        await ws.close()
                        return self.err("no_open_packet")
                    await ws.send_str(auth_packet)
                    while True:
                        msg = await ws.receive()
                        if msg.type is not TEXT:
                            return self.err("closed_during_connect")
                        d = msg.data
                        if d.startswith(CONNECTED):
                            break
                        if d.startswith(CONNECT_ERROR):
                            await ws.close()
                            return self.err("connect_error:" + d[len(CONNECT_ERROR) + 1:].decode()[:80])
                        if d == b"2":
                            await ws.send_str("3")
            except TimeoutError:
                return self.err("timeout")
            except aiohttp.WSServerHandshakeError as e:
                return self.err(f"handshake_{e.status}")
            except (aiohttp.ClientError, OSError) as e:
                return self.err(type(e).__name__)
            self.connect_times.append(time.perf_counter() - t)
            self.connected += 1
            self.last_connect = time.perf_counter()
            self._one_done()
        await self.receive(i, ws, Phase.on_event)
        self.dropped += 1
        return None

    async def receive(self, i, ws, on_event):
        """Client i's receive loop, until its connection closes: each event goes to
        on_event(current phase, i, raw), pings are answered. No await on the hot path except
        ws.receive(). (storm.py's clients run it too, with their own on_event.)"""
        n_ev = len(EVENT)
        while True:
            msg = await ws.receive()
            if msg.type is TEXT:
                d = msg.data
                if d[:n_ev] == EVENT:
                    on_event(self.phase, i, d[n_ev:])
                elif d == b"2":
                    self.pings += 1
                    with contextlib.suppress(Exception):  # a closing socket: the next receive() ends the loop
                        await ws.send_str("3")
                elif d.startswith(DISCONNECT):
                    self.server_disconnects += 1
            elif msg.type is BINARY:
                continue
            else:
                return

    def connect_summary(self, t0, t1, cpu):
        ct = sorted(self.connect_times)
        wall = (t1 - t0) if self.connected else None
        return {
            "clients": self.n,
            "connected": self.connected,
            "connect_errors": sum(self.connect_errors.values()),
            "connect_error_kinds": self.connect_errors,
            "connect_wall_s": round(wall, 4) if wall else None,
            "connect_per_s": round(self.connected / wall, 1) if wall else None,
            "handshake_ms": {"p50": pct(ct, 50) and round(pct(ct, 50) * 1000, 3),
                             "p99": pct(ct, 99) and round(pct(ct, 99) * 1000, 3)},
            "loadgen_connect_cpu_s": round(cpu, 3),
        }


def make_tokens(a):
    now = int(time.time())
    classrooms = [c for c in (a.classrooms or "").split(",") if c]
    out = []
    for i in range(a.clients):
        claims = {"sub": str(i % a.users), "role": "student", "iat": now, "exp": now + 3600}
        if classrooms:
            claims["classrooms"] = classrooms
        tok = jwt.encode(claims, a.secret, algorithm="HS256")
        out.append("40/notifications," + orjson.dumps({"token": "Bearer " + tok}).decode())
    return out


def emit_line(obj):
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


async def measure(sw, a, expected, sent, deadline_s=None):
    """One phase: until EXPECTED unique deliveries, or --idle-timeout s without an event once the
    producer is done (standalone: from the start), or DEADLINE_S (default --deadline) s."""
    ph = Phase(sw.n, expected)
    sw.phase = ph
    deadline = ph.t0 + (deadline_s or a.deadline)
    while not ph.done.is_set():
        try:
            await asyncio.wait_for(ph.done.wait(), 0.1)
            break
        except TimeoutError:
            pass
        now = time.time()
        if now > deadline:
            break
        if sw.storm is not None and not sw.storm.settled():
            continue  # a storm phase lasts until every dropped client is back (or the deadline)
        if sent is None or sent.time is not None:
            ref = sent.time if sent is not None else ph.t0
            if ph.last_recv is not None:
                ref = max(ref, ph.last_recv / 1000.0)
            if now - ref > a.idle_timeout:
                break
    out = ph.summary()
    out["timed_out"] = not ph.done.is_set()
    if sw.storm is not None:
        out["storm"] = sw.storm.summary(ph, expected or 0, a.recovery_window)
    return out


class Flag:
    time = None

    def set(self):
        self.time = time.time()


async def main(a):
    ports = [int(p) for p in a.ports.split(",")]
    tokens = make_tokens(a)
    sw = Swarm(a)
    # one session per source address: client i connects from addrs[i % K] (all of 127/8 is lo)
    addrs = [s for s in a.source_addrs.split(",") if s] if a.source_addrs else [None]
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        limit=0, force_close=False, ttl_dns_cache=None, local_addr=(ad, 0) if ad else None)) for ad in addrs]
    sem = asyncio.Semaphore(a.concurrency)
    urls = [f"ws://{a.host}:{p}/socket.io/?EIO=4&transport=websocket" for p in ports]
    cpu0, t0 = cpu_s(), time.perf_counter()
    sw.last_connect = t0
    # keep the tasks referenced: the event loop holds them weakly
    if a.recover:
        again = f"ws://{a.host}:{a.reconnect_port}/socket.io/?EIO=4&transport=websocket" if a.reconnect_port else None
        sw.storm = storm.Storm(a.clients, a.users, again, a.deadline)
        auths = [orjson.loads(t.split(",", 1)[1]) for t in tokens]
        sw.tasks = [asyncio.ensure_future(storm.client(sw, sw.storm, i, sessions[i % len(sessions)],
                                                       urls[i % len(urls)], auths[i], sem))
                    for i in range(a.clients)]
    else:
        sw.tasks = [asyncio.ensure_future(sw.client(i, sessions[i % len(sessions)], urls[i % len(urls)],
                                                    tokens[i], sem))
                    for i in range(a.clients)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(sw.ready.wait(), a.connect_deadline)
    cs = sw.connect_summary(t0, sw.last_connect, cpu_s() - cpu0)
    cs["connect_deadline_hit"] = not sw.ready.is_set()
    if not a.control:
        res = await measure(sw, a, a.expect, None)
        res.update(cs)
        res.update({"dropped": sw.dropped, "server_disconnects": sw.server_disconnects, "pings": sw.pings})
        emit_line(res)
        os._exit(0)
    cs["phase"] = "connected"
    emit_line(cs)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    hard_end = time.monotonic() + a.deadline * 3
    while time.monotonic() < hard_end:
        try:
            line = await asyncio.wait_for(reader.readline(), hard_end - time.monotonic())
        except TimeoutError:
            break
        cmd = line.decode().split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "go":
            sent = Flag()
            m = asyncio.ensure_future(measure(sw, a, int(cmd[1]) if len(cmd) > 1 else None, sent,
                                              float(cmd[2]) if len(cmd) > 2 else None))
            # wait for "sent" (or the phase to end by itself)
            while not m.done():
                rl = asyncio.ensure_future(reader.readline())
                await asyncio.wait({m, rl}, timeout=a.deadline, return_when=asyncio.FIRST_COMPLETED)
                if rl.done():
                    c = rl.result().decode().split()
                    if not c or c[0] == "quit":
                        m.cancel()
                        os._exit(0)
                    if c[0] == "sent":
                        sent.set()
                    elif c[0] == "killed" and sw.storm is not None:
                        sw.storm.killed_at = float(c[1])
                else:
                    rl.cancel()
                    if not m.done():
                        break
            res = await m if m.done() else {"error": "measure did not finish"}
            res.update({"phase": "done", "connected_now": sw.connected - sw.dropped, "dropped": sw.dropped,
                        "server_disconnects": sw.server_disconnects, "pings": sw.pings})
            emit_line(res)
        elif cmd[0] == "killed" and sw.storm is not None:  # outside a phase: the storm starts now
            sw.storm.killed_at = float(cmd[1])
        elif cmd[0] == "stats":
            emit_line({"phase": "stats", "connected_now": sw.connected - sw.dropped, "dropped": sw.dropped,
                       "pings": sw.pings, "loadgen_cpu_s": round(cpu_s(), 3)})
    # Leave without a close handshake per socket: the kernel closes them; the gateway is measured before.
    sys.stdout.flush()
    os._exit(0)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ports", default="3000", help="comma-separated gateway ports; client i -> ports[i %% n]")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--users", type=int, default=0, help="distinct subs (default: --clients)")
    p.add_argument("--classrooms", default="", help="comma-separated classroom ids put in every token")
    p.add_argument("--secret", default=os.environ.get("JWT_SECRET", "dev-secret"))
    p.add_argument("--concurrency", type=int, default=64, help="handshakes in flight at once")
    p.add_argument("--connect-timeout", type=float, default=15.0)
    p.add_argument("--connect-deadline", type=float, default=40.0)
    p.add_argument("--expect", type=int, default=None, help="unique (client, seq) deliveries to wait for")
    p.add_argument("--idle-timeout", type=float, default=3.0)
    p.add_argument("--deadline", type=float, default=40.0, help="max seconds of one measurement phase")
    p.add_argument("--control", action="store_true", help="take go/sent/quit commands on stdin")
    p.add_argument("--recover", action="store_true",
                   help="storm clients: keep pid/offset and reconnect with socket.io-client's backoff (storm.py)")
    p.add_argument("--reconnect-port", type=int, default=0, help="--recover: where dropped clients reconnect")
    p.add_argument("--recovery-window", type=float, default=120.0,
                   help="--recover: the gateway's RECOVERY_WINDOW, s (loss counted apart for clients back within it)")
    p.add_argument("--source-addrs", default="",
                   help="comma-separated local addresses; client i connects from the (i %% K)th (e.g. 127.0.0.1..20)")
    a = p.parse_args(argv)
    a.users = a.users or a.clients
    return a


def watch_signals():
    """Say who stopped us: SIGTERM/SIGINT/SIGHUP are taken by a thread that logs the sender's PID
    and command line (stderr: loadgen.log), then exits 128+signal. On a shared machine a load
    generator killed by someone else's clean-up should not look like a gateway failure."""
    sigs = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)  # before any other thread: they inherit it

    def wait():
        info = signal.sigwaitinfo(sigs)
        try:
            with open(f"/proc/{info.si_pid}/cmdline", "rb") as f:
                who = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:300]
        except OSError:
            who = "?"
        parent = " (run.py, our parent)" if info.si_pid == os.getppid() else ""
        sys.stderr.write(f"loadgen: signal {info.si_signo} from pid {info.si_pid}{parent}: {who}\n")
        sys.stderr.flush()
        os._exit(128 + info.si_signo)

    threading.Thread(target=wait, name="signals", daemon=True).start()


if __name__ == "__main__":
    args = parse()
    watch_signals()
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(main(args))
    else:
        asyncio.run(main(args))
    sys.stdout.flush()
    os._exit(0)
