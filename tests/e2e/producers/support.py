"""What the producer tests share: a deployment of replicas and bridges on one Redis, with the
real producers (the Node emitter, python-socketio's managers) pointed at it, and reading a
bridge's metrics.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.e2e.recovery.support import COMMON_ENV
from tests.support.gateway_proc import GatewayProcess
from tests.support.node_emitter import NodeEmitter
from tests.support.redis_server import RedisServer

WAIT = 15.0
# Short lease settings: a takeover is waited for, never timed, and short ones keep tests short.
LEASE_ENV = {"BRIDGE_LEASE_TTL_MS": "3000", "BRIDGE_LEASE_RENEW_MS": "500"}


def bridge_command() -> list[str]:
    return [sys.executable, "-m", "publisher", "bridge"]


@dataclass
class Producers:
    """Replicas, bridges and the producers' names, unique on the shared Redis."""

    redis: RedisServer
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    replicas: list[GatewayProcess] = field(default_factory=list)
    bridges: list[GatewayProcess] = field(default_factory=list)

    @property
    def bus_env(self) -> dict[str, str]:
        return {"KEY_PREFIX": f"pk{self.tag}", "CHANNEL_PREFIX": f"pc{self.tag}", "REDIS_URL": self.redis.url}

    @property
    def emitter_prefix(self) -> str:
        return f"em{self.tag}"

    @property
    def socketio_channel(self) -> str:
        return f"sio{self.tag}"

    def start_replicas(self, count: int) -> None:
        for i in range(count):
            replica = GatewayProcess({**COMMON_ENV, **self.bus_env}, name=f"replica{i}")
            self.replicas.append(replica)
            replica.start()
        for replica in self.replicas:
            replica.wait_ready(20)

    def start_bridge(self, **env: str) -> GatewayProcess:
        bridge = GatewayProcess({}, command=bridge_command(), name=f"bridge{len(self.bridges)}")
        bridge.env.update({
            **self.bus_env, **LEASE_ENV, "BRIDGE_PORT": str(bridge.port), "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_EMITTER_PREFIX": self.emitter_prefix, "BRIDGE_SOCKETIO_CHANNEL": self.socketio_channel,
            "BRIDGE_ID": f"bridge{len(self.bridges)}", **env,
        })
        self.bridges.append(bridge)
        bridge.start()
        bridge.wait_ready(20)
        return bridge

    def emitter(self) -> NodeEmitter:
        return NodeEmitter(self.redis.url, self.emitter_prefix)

    def stop(self) -> None:
        for proc in (*self.bridges, *self.replicas):
            if proc.alive():
                proc.sigterm()
        for proc in (*self.bridges, *self.replicas):
            proc.stop()


def metric(proc: GatewayProcess, name: str, **labels: str) -> float:
    """The value of one sample of the process's /metrics (0 when absent)."""
    _, text = proc.http_get("/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)", line)
        if match and ",".join(sorted((match[1] or "").split(","))) == want:
            return float(match[2])
    return 0.0


def wait_for(probe: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)  # nothing to await: a process is only observable by asking


def active(bridge: GatewayProcess) -> bool:
    try:
        return metric(bridge, "bridge_role", role="active") == 1
    except OSError:
        return False


def refused(bridge: GatewayProcess, source: str, reason: str) -> float:
    return metric(bridge, "bridge_messages_refused_total", source=source, reason=reason)
