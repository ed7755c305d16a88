"""A Redis Sentinel deployment of the test's own: a primary, a replica and three sentinels
(`redis-server --sentinel`), all on free loopback ports, started and stopped by PID.

    with SentinelSetup() as setup:
        setup.url            # redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/0/mymaster
        setup.primary_port() # what the sentinels name now
        setup.failover()     # SENTINEL FAILOVER, returns once the replica is the primary
        setup.kill_primary() # SIGKILL; then wait_promoted(old) for the sentinels to react

The sentinels are told to give up on a primary after `down_after_ms` (1 s by default, the
production default is 30 s) so that a killed primary is replaced in a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from tests.support.ports import free_port, wait_port
from tests.support.redis_server import RedisServer

SERVICE = "mymaster"
POLL = 0.1


class SentinelSetup:
    def __init__(self, *, service: str = SERVICE, sentinels: int = 3, quorum: int = 2,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 10_000) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install redis-server)")
        self.service = service
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.dir = Path(tempfile.mkdtemp(prefix="ngw-sentinel-"))
        self.servers: list[RedisServer] = []  # [first primary, first replica]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/0/{self.service}"

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        try:
            primary = RedisServer()
            self.servers.append(primary)  # stopped by stop() even if its start fails
            primary.start()
            replica = RedisServer(None, "--replicaof", "127.0.0.1", str(primary.port))
            self.servers.append(replica)
            replica.start()
            self._wait(lambda: self._link_up(replica.port), timeout, "the replica syncs with the primary")
            for port in self.sentinel_ports:
                self._start_sentinel(port, primary.port)
            self._wait(self._sentinels_agree, timeout,
                       "the sentinels know the primary, the replica and each other")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, port: int, primary_port: int) -> None:
        conf = self.dir / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            "daemonize no\n"
            f"dir {self.dir}\n"
            f"logfile {self.dir / f'sentinel-{port}.log'}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {primary_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.service} 1\n",
            encoding="utf-8",
        )
        proc = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.sentinels.append(proc)
        wait_port(port, 10)

    def stop(self) -> None:
        """Every process by PID, then the files; idempotent."""
        for proc in self.sentinels:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.sentinels.clear()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what the sentinels say ------------------------------------------------------------

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def _ask(self, port: int, *command: Any) -> Any:
        client = self._sentinel(port)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def primary_port(self, sentinel_port: int | None = None) -> int:
        """The primary's port as one sentinel (the first, by default) names it now."""
        _, port = self._ask(sentinel_port or self.sentinel_ports[0],
                            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def _sentinels_agree(self) -> bool:
        primary = self.servers[0].port
        for port in self.sentinel_ports:
            try:
                if self.primary_port(port) != primary:
                    return False
                replicas = self._ask(port, "SENTINEL", "REPLICAS", self.service)
                others = self._ask(port, "SENTINEL", "SENTINELS", self.service)
            except (redis.RedisError, OSError):
                return False
            good = [r for r in map(_pairs, replicas)
                    if r.get("flags") == "slave" and r.get("master-link-status") == "ok"]
            if not good or len(others) < len(self.sentinel_ports) - 1:
                return False
        return True

    def _role(self, port: int) -> str | None:
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            role = client.execute_command("ROLE")
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()
        kind = role[0]
        return kind.decode() if isinstance(kind, bytes) else str(kind)

    def _link_up(self, replica_port: int) -> bool:
        client = redis.Redis(port=replica_port, socket_timeout=1, decode_responses=True)
        try:
            info = client.info("replication")
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
        return info.get("master_link_status") == "up"

    # -- failing over ----------------------------------------------------------------------

    def failover(self, timeout: float = 30.0) -> int:
        """SENTINEL FAILOVER; returns the new primary's port once it is the primary for every
        sentinel and answers ROLE as one, and the old primary has been turned into its replica
        (until then the old one still takes writes: the failover is not over for its clients)."""
        old = self.primary_port()
        self._wait(self._sentinels_agree, timeout, "the sentinels are ready to fail over")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._ask(self.sentinel_ports[0], "SENTINEL", "FAILOVER", self.service)
                break
            except redis.ResponseError as exc:  # e.g. INPROG or NOGOODSLAVE for a moment
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SENTINEL FAILOVER refused: {exc}\n{self.logs()}") from None
                time.sleep(POLL)
        new = self.wait_promoted(old, max(1.0, deadline - time.monotonic()))
        self._wait(lambda: self._role(old) == "slave", max(1.0, deadline - time.monotonic()),
                   f"the old primary :{old} demoted to a replica")
        return new

    def kill_primary(self) -> int:
        """SIGKILL the current primary; its port."""
        old = self.primary_port()
        self.server(old).kill()
        return old

    def wait_promoted(self, old: int, timeout: float = 30.0) -> int:
        """Wait until every sentinel names a primary other than `old`, and that server answers
        ROLE as a primary; its port."""
        found: list[int] = []

        def promoted() -> bool:
            try:
                ports = {self.primary_port(p) for p in self.sentinel_ports}
            except (redis.RedisError, OSError):
                return False
            if len(ports) != 1 or old in ports:
                return False
            [port] = ports
            if self._role(port) != "master":
                return False
            found.append(port)
            return True

        self._wait(promoted, timeout, f"a primary other than :{old}")
        return found[-1]

    def _wait(self, probe: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout} s: {what}\n{self.logs()}")
            time.sleep(POLL)

    def logs(self, lines: int = 30) -> str:
        out = []
        for path in sorted(self.dir.glob("sentinel-*.log")):
            tail = path.read_text("utf-8", "replace").splitlines()[-lines:]
            out.append(f"-- {path.name}:\n" + "\n".join(tail))
        return "\n".join(out)


def _pairs(flat: Any) -> dict[str, str]:
    """SENTINEL REPLICAS answers a flat list per replica (RESP2) or a map (RESP3)."""
    if isinstance(flat, dict):
        return {str(k): str(v) for k, v in flat.items()}
    it = iter(flat)
    return {str(k): str(v) for k, v in zip(it, it, strict=True)}
