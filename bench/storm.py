"""The reconnect storm's clients, for loadgen.py --recover (run.py --scenario storm).

What a socket.io-client >= 4.6 does when its server vanishes, imitated per client, so that a
few thousand of them fit in one load generator process on the driver's core:
- it keeps the `pid` of its CONNECT answer and, while it has one, the last argument of each event
  when that is a string (`_lastOffset`), and sends `{pid, offset, ...auth}` in its next CONNECT
  (socket.io-client's Socket._sendConnectPacket); `recovered` is `pid === previous pid`;
- when the transport closes it waits `Backoff.duration()` and opens a new one, again after each
  failed attempt (Manager.reconnect, reconnectionAttempts Infinity), and gives up only on a
  CONNECT_ERROR packet (a middleware refusal: socket.io-client does not retry those);
- an attempt whose Engine.IO OPEN has not arrived within `timeout` (20 s) fails and is retried
  (Manager.open's timer, cleared once the engine is open); the Socket.IO CONNECT's answer is
  then awaited with no timer of its own, only the engine's heartbeat: no ping for
  pingInterval + pingTimeout (45 s) closes the engine, and that is an attempt failed.
The refusals are counted by reason (`handshake_429`, `handshake_503`, `ClientConnectorError`
for a refused TCP connection, `timeout`, ...).

The backoff is socket.io-client's backo2, formula for formula (reconnectionDelay 1000,
reconnectionDelayMax 5000, randomizationFactor 0.5): the first attempt comes 500-1500 ms after the
drop, which is what spreads (or fails to spread) a storm.
"""
import asyncio
import contextlib
import math
import random
import time
from array import array

import aiohttp
import orjson

EVENT = b"42/notifications,"
CONNECTED = b"40/notifications"
CONNECT_ERROR = b"44/notifications"
TEXT = aiohttp.WSMsgType.TEXT
CONNECT_TIMEOUT_S = 20.0  # socket.io-client's `timeout` default: up to the Engine.IO OPEN
HEARTBEAT_S = 45.0  # pingInterval + pingTimeout (the gateways' and socket.io's defaults)


class Backoff:
    """socket.io-client's contrib/backo2.js."""

    def __init__(self, min_ms=1000, max_ms=5000, jitter=0.5, factor=2):
        self.ms, self.max, self.factor = min_ms, max_ms, factor
        self.jitter = jitter if 0 < jitter <= 1 else 0
        self.attempts = 0

    def duration(self):
        ms = self.ms * self.factor ** self.attempts
        self.attempts += 1
        if self.jitter:
            rand = random.random()  # jitter, not a secret
            deviation = math.floor(rand * self.jitter * ms)
            ms = ms - deviation if (math.floor(rand * 10) & 1) == 0 else ms + deviation
        return int(min(ms, self.max))

    def reset(self):
        self.attempts = 0


class Refused(Exception):
    """One connection attempt failed; `reason` says how. `final`: socket.io-client would not retry."""

    def __init__(self, reason, final=False):
        super().__init__(reason)
        self.reason, self.final = reason, final


def pct(vals, p):
    if not vals:
        return None
    vals = sorted(vals)
    return round(vals[min(len(vals) - 1, max(0, round(p / 100.0 * (len(vals) - 1))))], 3)


def dist(vals, scale=1.0):
    vals = [v * scale for v in vals]
    return {"n": len(vals), "p50": pct(vals, 50), "p90": pct(vals, 90), "p99": pct(vals, 99),
            "max": round(max(vals), 3) if vals else None}


class Storm:
    """Per-client recovery state and the storm's timeline."""

    def __init__(self, n, users, reconnect_url, deadline_s):
        self.n, self.users, self.reconnect_url = n, users, reconnect_url
        self.pid = [None] * n
        self.offset = [None] * n
        self.t_drop = [None] * n
        self.t_back = [None] * n
        self.recovered = [None] * n
        self.attempts = [0] * n
        self.refused = {}
        self.first_refused = {}  # refusals of first connections (retried like reconnections)
        self.gave_up = 0
        self.dropped = 0
        self.back = 0
        self.killed_at = None
        self.deadline_s = deadline_s
        # every event received: client, sentAt (ms), receipt (ms)
        self.ev_client = array("i")
        self.ev_sent = array("d")
        self.ev_recv = array("d")

    def settled(self):
        """Every dropped client is back or has given up."""
        return self.back + self.gave_up >= self.dropped

    def auth(self, i, token_obj):
        """The CONNECT payload: socket.io-client's Object.assign({pid, offset}, auth)."""
        pid = self.pid[i]
        if pid is None:
            return token_obj
        out = {"pid": pid}
        if self.offset[i] is not None:
            out["offset"] = self.offset[i]
        out.update(token_obj)
        return out

    def on_event(self, phase, i, raw):
        arr = phase.on_event(i, raw)
        if arr is None:
            return
        if self.pid[i] is not None and len(arr) > 1 and isinstance(arr[-1], str):
            self.offset[i] = arr[-1]
        payload = arr[1] if len(arr) > 1 else None
        if isinstance(payload, dict) and "sentAt" in payload:
            self.ev_client.append(i)
            self.ev_sent.append(float(payload["sentAt"]))
            self.ev_recv.append(time.time() * 1000.0)

    def connected(self, i, reply):
        """A CONNECT answer `{"sid", "pid"?}`: -> recovered, as socket.io-client decides it."""
        pid = reply.get("pid") if isinstance(reply, dict) else None
        recovered = bool(pid) and pid == self.pid[i]
        self.pid[i] = pid
        if pid is None:
            self.offset[i] = None
        return recovered

    def refuse(self, reason):
        self.refused[reason] = self.refused.get(reason, 0) + 1

    # -- summary --------------------------------------------------------------------------------
    def summary(self, phase, events, window_s):
        """Times back, refusals, and per client: events lost and duplicated (client i expects
        seq k for every k < EVENTS with k % USERS == i % USERS, the producer's round robin)."""
        k0 = self.killed_at or min((t for t in self.t_drop if t is not None), default=None)
        back_after = [self.t_back[i] - k0 for i in range(self.n) if self.t_back[i] is not None and k0]
        away = [self.t_back[i] - self.t_drop[i] for i in range(self.n)
                if self.t_back[i] is not None and self.t_drop[i] is not None]
        all_back = (k0 + max(back_after)) if back_after and self.settled() else None
        lost, lost_in_window, dups = [], 0, []
        for i in range(self.n):
            want = len(range(i % self.users, events, self.users)) if events else 0
            seen = phase.seen[i] or ()
            miss = want - sum(1 for s in seen if isinstance(s, int) and s < events)
            lost.append(miss)
            if self.t_back[i] is not None and self.t_back[i] - self.t_drop[i] <= window_s:
                lost_in_window += miss
            dups.append(phase.dup_by_client.get(i, 0))
        # latency by when the event was sent: before the kill, during the storm, after all were back
        buckets = {"before_kill": [], "during_storm": [], "after_all_back": [], "first_s_after_all_back": []}
        replayed = 0
        kill_ms = k0 * 1000 if k0 else None
        back_ms = all_back * 1000 if all_back else None
        for c, s, r in zip(self.ev_client, self.ev_sent, self.ev_recv, strict=True):
            lat = r - s
            if kill_ms is None or s < kill_ms:
                buckets["before_kill"].append(lat)
            elif back_ms is None or s < back_ms:
                buckets["during_storm"].append(lat)
            else:
                buckets["after_all_back"].append(lat)
                if s < back_ms + 1000:
                    buckets["first_s_after_all_back"].append(lat)
            tb, td = self.t_back[c], self.t_drop[c]
            if tb is not None and td is not None and td * 1000 <= s < tb * 1000:
                replayed += 1
        return {
            "clients": self.n,
            "dropped": self.dropped,
            "back": self.back,
            "recovered": sum(1 for i in range(self.n) if self.t_back[i] is not None and self.recovered[i]),
            "not_recovered": sum(1 for i in range(self.n) if self.t_back[i] is not None and not self.recovered[i]),
            "gave_up": self.gave_up,
            "never_back": self.dropped - self.back,
            "all_back_s": round(max(back_after), 3) if back_after and self.settled() else None,
            "back_after_kill_s": dist(back_after),
            "away_s": dist(away),
            "reconnect_attempts": sum(self.attempts),
            "max_attempts_per_client": max(self.attempts) if self.attempts else 0,
            "refused": dict(sorted(self.refused.items(), key=lambda kv: -kv[1])),
            "refused_total": sum(self.refused.values()),
            "first_connect_refused": self.first_refused,
            "lost_total": sum(lost),
            "lost_within_window": lost_in_window,
            "clients_with_loss": sum(1 for x in lost if x > 0),
            "max_lost_per_client": max(lost) if lost else 0,
            "duplicates_total": sum(dups),
            "clients_with_duplicates": sum(1 for x in dups if x > 0),
            "max_duplicates_per_client": max(dups) if dups else 0,
            "replayed_events": replayed,
            "latency_ms": {k: dist(v) for k, v in buckets.items()},
            "killed_at": k0,
            "all_back_at": all_back,
        }


async def open_socket(session, url, auth, on_event, timeout=CONNECT_TIMEOUT_S):
    """One connection attempt: WebSocket, Engine.IO OPEN, Socket.IO CONNECT with `auth`.
    -> (ws, CONNECT answer). Events that arrive before the answer are handed to on_event (a
    recovering server may replay before it). Raises Refused."""
    ws = None
    waiting = "timeout"  # what a TimeoutError means: no OPEN in time, or a silent engine
    try:
        async with asyncio.timeout(timeout):
            ws = await session.ws_connect(url, autoping=True, heartbeat=None, compress=0,
                                          max_msg_size=1 << 20, decode_text=False)
            msg = await ws.receive()
        if msg.type is not TEXT or not msg.data.startswith(b"0"):
            raise Refused("no_open_packet")
        await ws.send_str("40/notifications," + orjson.dumps(auth).decode())
        waiting = "heartbeat_timeout"
        async with asyncio.timeout(HEARTBEAT_S) as heartbeat:  # every ping re-arms it, as in the engine
            while True:
                msg = await ws.receive()
                if msg.type is not TEXT:
                    raise Refused("closed_during_connect")
                d = msg.data
                if d.startswith(CONNECTED):
                    body = d[len(CONNECTED) + 1:]
                    return ws, (orjson.loads(body) if body else {})
                if d.startswith(CONNECT_ERROR):
                    raise Refused("connect_error:" + d[len(CONNECT_ERROR) + 1:].decode()[:80], final=True)
                if d.startswith(EVENT):
                    on_event(d[len(EVENT):])
                elif d == b"2":
                    heartbeat.reschedule(asyncio.get_running_loop().time() + HEARTBEAT_S)
                    await ws.send_str("3")
    except Refused:
        await _close(ws)
        raise
    except TimeoutError:
        await _close(ws)
        raise Refused(waiting) from None
    except aiohttp.WSServerHandshakeError as e:
        raise Refused(f"handshake_{e.status}") from None
    except (aiohttp.ClientError, OSError) as e:
        await _close(ws)
        raise Refused(type(e).__name__) from None


async def _close(ws):
    if ws is not None:
        with contextlib.suppress(Exception):
            await ws.close()


async def client(sw, st, i, session, url, token_obj, sem):
    """One storm client: its first connection (within the handshake concurrency, like the
    other scenarios), then receive, and on every drop reconnect with the backoff."""
    def on_event(raw):
        st.on_event(sw.phase, i, raw)

    # The first connection retries a refusal with the backoff too (a client behind a NAT whose
    # address ran out of handshakes comes back): refusals are counted in `first_refused`, and a
    # client is a connect error only once it gives up (a CONNECT_ERROR, or the connect deadline).
    backoff = Backoff()
    end = time.time() + sw.a.connect_deadline
    while True:
        async with sem:
            t = time.perf_counter()
            try:
                ws, reply = await open_socket(session, url, st.auth(i, token_obj), on_event, sw.a.connect_timeout)
                break
            except Refused as e:
                refused = e
        st.first_refused[refused.reason] = st.first_refused.get(refused.reason, 0) + 1
        if refused.final or time.time() > end:
            return sw.err(refused.reason)
        await asyncio.sleep(backoff.duration() / 1000.0)
    st.connected(i, reply)
    sw.connect_times.append(time.perf_counter() - t)
    sw.connected += 1
    sw.last_connect = time.perf_counter()
    sw._one_done()
    while True:
        await sw.receive(i, ws, st.on_event)
        st.t_drop[i] = time.time()
        st.dropped += 1
        if st.reconnect_url is None:
            return None
        ws = await reconnect(st, i, session, token_obj, on_event)
        if ws is None:
            return None


async def reconnect(st, i, session, token_obj, on_event):
    """socket.io-client's Manager.reconnect loop, to the storm's other replica."""
    backoff = Backoff()
    end = time.time() + st.deadline_s
    while time.time() < end:
        await asyncio.sleep(backoff.duration() / 1000.0)
        st.attempts[i] += 1
        try:
            ws, reply = await open_socket(session, st.reconnect_url, st.auth(i, token_obj), on_event)
        except Refused as e:
            st.refuse(e.reason)
            if e.final:
                st.gave_up += 1
                return None
            continue
        st.recovered[i] = st.connected(i, reply)
        st.t_back[i] = time.time()
        st.back += 1
        return ws
    st.refuse("deadline")
    st.gave_up += 1
    return None
