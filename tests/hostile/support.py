"""What the hostile tests share: settings, tokens, memory and metrics of a replica, waits."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from publisher import Publisher
from tests.support.checks import wait_until  # noqa: F401 - the hostile tests import it from here
from tests.support.gateway_proc import GatewayProcess, make_token
from tests.support.sio_client import NodeClients

COINS = {"amount": 1, "reason": "hostile", "newBalance": 1}
EVENT = "coins:earned"
MIB = 1024 * 1024


def uid(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def base_env(secret: str, **extra: str) -> dict[str, str]:
    env = {"JWT_SECRET": secret, "LOG_LEVEL": "warning", "DRAIN_SECONDS": "0"}
    env.update(extra)
    return env


def token(secret: str, user: str, **kwargs: Any) -> str:
    return make_token(secret, user, **kwargs)


def rss_kib(gw: GatewayProcess) -> int:
    """VmRSS of the replica's process, KiB."""
    with open(f"/proc/{gw.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {gw.pid}")


def rss_peak_kib(gw: GatewayProcess) -> int:
    """VmHWM of the replica's process: the highest RSS it ever had, KiB (no sampling to miss)."""
    with open(f"/proc/{gw.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {gw.pid}")


def metrics(gw: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = gw.http_get("/metrics", timeout=10)
    assert status == 200, body
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    return metrics(gw).get((name, tuple(sorted(labels.items()))), 0.0)



def connect_good(clients: NodeClients, name: str, gw: GatewayProcess, tok: str,
                 transport: str = "websocket", **opts: Any) -> dict[str, Any]:
    """A well-behaved user, with the real socket.io-client."""
    clients.connect(name, gw.ns_url, token=tok, transports=[transport], **opts)
    record = clients.wait_connected(name, timeout=10)
    assert record["type"] == "connect", record
    return record


def assert_all_received(clients: NodeClients, name: str, sent: list[int], timeout: float = 20) -> int:
    """Every event numbered in `sent` arrived at `name`, once each, in order; returns how many."""
    got = clients.wait_events(name, EVENT, len(sent), timeout=timeout)
    numbers = [e.payload.get("n") for e in got if isinstance(e.payload, dict) and "n" in e.payload]
    assert numbers == sent, f"{name} got {len(numbers)} of {len(sent)}: first gaps " \
        f"{sorted(set(sent) - set(numbers))[:10]}, duplicates {len(numbers) - len(set(numbers))}"
    return len(numbers)


def log_problems(gw: GatewayProcess) -> list[str]:
    """Errors and tracebacks in a replica's log. Warnings about attackers are expected, and so
    is python-engineio's one-off ERROR line about a client's mistake ("... further occurrences
    of this error will be logged with level INFO")."""
    out = []
    for line in gw.log_text().splitlines():
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            if "Traceback" in line or "Error" in line:
                out.append(line[:400])
            continue
        if not isinstance(record, dict):
            continue
        msg = str(record.get("msg", ""))
        if record.get("level") in {"error", "critical"} or "exc" in record:
            if record.get("logger") in {"engineio.server", "gateway.engineio"} \
                    and msg.endswith("logged with level INFO)"):
                continue
            out.append(line[:600])
    return out


class Feeder:
    """Publishes numbered events to a user from a thread until stopped (and at least `least`)."""

    def __init__(self, pub: Publisher, user: str, least: int = 200) -> None:
        self.pub = pub
        self.user = user
        self.least = least
        self.sent: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() or n < self.least:
            self.pub.emit(EVENT, {**COINS, "n": n}, user=self.user).result()
            self.sent.append(n)
            n += 1
            self._stop.wait(0.002)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
