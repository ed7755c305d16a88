"""A Redis Cluster of the test's own: primaries and their replicas (`redis-server
--cluster-enabled yes`) on free loopback ports, created with `redis-cli --cluster create`,
killed, restarted and stopped by PID. Nothing here touches the machine's Redis on 6379.

    with RedisCluster() as cluster:           # 3 primaries + 3 replicas, every replica in sync
        cluster.url()                         # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...
        port = cluster.primary_for("ngw:{room:1}:h")
        cluster.migrate_slot(cluster.slot("{room:1}"), other_primary_port)
        cluster.kill(port)                    # SIGKILL
        cluster.wait_failover(port)           # its replica is the primary, cluster_state:ok

Each node gets two free ports: its own and its cluster bus port (`--cluster-port`), because the
default bus port (port + 10000) may be another process's. Nodes fail over after
`node_timeout_ms` (2 s by default, the production default is 15 s) so that a killed primary is
replaced within a few seconds.

Every wait is bounded; a timeout says what was awaited, what was last seen wrong, and the tail
of every node's log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.ports import free_port

HOST = "127.0.0.1"
SLOTS = 16384
POLL = 0.05
FORBIDDEN_PORT = 6379  # the machine's own Redis: never started on, never asked
# A node flagged so by a peer is not (yet) a working member of the cluster for that peer.
_NOT_WORKING = frozenset({"fail", "fail?", "handshake", "noaddr"})

Probe = Callable[[], str | None]  # None when what is awaited holds, else what is still wrong


@dataclass(frozen=True)
class ClusterNode:
    """One line of CLUSTER NODES, as the node asked sees it."""

    host: str
    port: int
    role: str  # "primary" or "replica"
    node_id: str
    slots: tuple[tuple[int, int], ...]  # inclusive ranges it serves; a replica's: ()
    primary_id: str | None  # a replica's primary
    failed: bool  # flagged fail, fail?, handshake or noaddr by the node asked

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


class RedisCluster:
    """`primaries` shards of one primary and `replicas` replicas each.

    `redis-cli --cluster create` needs 3 primaries at least; with fewer (a one-shard cluster, as
    a single Redis seen through the cluster code path) the slots are assigned and the nodes met
    with CLUSTER ADDSLOTSRANGE / MEET / REPLICATE instead.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, *, node_timeout_ms: int = 2000,
                 extra: Sequence[str] = ()) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server or redis-cli is not on PATH (Debian: apt-get install redis-server)")
        if primaries < 1 or replicas < 0:
            raise ValueError(f"{primaries} primaries, {replicas} replicas each: no cluster")
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra = tuple(extra)
        self.dir = Path(tempfile.mkdtemp(prefix="ngw-cluster-"))
        self.ports: list[int] = []  # every node started, in start order (killed ones too)
        self.bus_ports: dict[int, int] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # running nodes only
        self._ids: dict[int, str] = {}
        self._clients: dict[int, redis.Redis] = {}
        self._killed: dict[int, ClusterNode | None] = {}  # what the cluster said of it just before
        self._killed_replicas: dict[int, set[str]] = {}

    def __repr__(self) -> str:
        return f"RedisCluster(running={self.running()}, dir={self.dir})"

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        try:
            total = self.primaries * (1 + self.replicas)
            ports = [self._spawn() for _ in range(total)]
            for port in ports:
                self._wait_ping(port, timeout)
            if self.primaries >= 3:
                self._create_with_cli(ports, timeout)
            else:
                self._create_by_hand(ports, timeout)
            self._wait(self._created, timeout,
                       f"{self.primaries} primaries with {self.replicas} replicas each, for every node")
            self.wait_stable(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Every node by PID, then the files; idempotent."""
        for port in list(self.procs):
            self._kill_pid(port)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self, port: int) -> None:
        """SIGKILL one node: its data (never persisted) is gone, as after a crash. Its nodes.conf
        stays, so `restart(port)` brings the same node id back."""
        self._check_ours(port)
        if port not in self.procs:
            return
        before: ClusterNode | None = None
        replicas: set[str] = set()
        with contextlib.suppress(redis.RedisError, OSError, LookupError):
            view = self.nodes(via=next(p for p in self.running() if p != port))
            before = next((n for n in view if n.port == port), None)
            if before is not None:
                replicas = {n.node_id for n in view if n.primary_id == before.node_id}
        self._killed[port] = before
        self._killed_replicas[port] = replicas
        self._kill_pid(port)

    def restart(self, port: int, timeout: float = 30.0) -> None:
        """Kill (if running) and start the node again on the same ports with the same nodes.conf:
        it rejoins as the same node id, without data. Returns once the cluster is stable again
        (`wait_stable`): a primary that was failed over meanwhile comes back as a replica of the
        promoted one, in sync."""
        self._check_ours(port)
        if port in self.procs:
            self.kill(port)
        self._spawn(port)
        self._wait_ping(port, timeout)
        self.wait_stable(timeout)

    def running(self) -> list[int]:
        """Ports of the nodes whose process runs, in start order."""
        return [port for port in self.ports if port in self.procs and self.procs[port].poll() is None]

    def pids(self) -> dict[int, int]:
        return {port: proc.pid for port, proc in self.procs.items()}

    # -- addresses -------------------------------------------------------------------------

    def startup_nodes(self, ports: Sequence[int] | None = None) -> list[tuple[str, int]]:
        """(host, port) of the running nodes (or of `ports`), primaries and replicas alike."""
        return [(HOST, port) for port in (self.running() if ports is None else ports)]

    def url(self, ports: Sequence[int] | None = None, scheme: str = "redis+cluster") -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.startup_nodes(ports))
        return f"{scheme}://{hosts}"

    def client(self, port: int, **kwargs: Any) -> redis.Redis:
        """A plain client to one node (the caller closes it). No retries: a dead node fails at once."""
        self._check_ours(port)
        options: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 2,
                                   "retry": Retry(NoBackoff(), 0)}
        options.update(kwargs)
        return redis.Redis(host=HOST, port=port, **options)

    def cluster_client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """redis-py's cluster client over the running nodes (follows MOVED and ASK)."""
        startup = [redis.cluster.ClusterNode(host, port) for host, port in self.startup_nodes()]
        return redis.cluster.RedisCluster(startup_nodes=startup, **kwargs)

    # -- what the cluster says -------------------------------------------------------------

    def node_id(self, port: int) -> str:
        if port not in self._ids:
            self._ids[port] = str(self._admin(port).execute_command("CLUSTER", "MYID"))
        return self._ids[port]

    def nodes(self, via: int | None = None) -> list[ClusterNode]:
        """Every node the cluster knows (killed ones included, flagged `failed`), as CLUSTER NODES
        of `via` (by default the first running node) says."""
        text = self._admin(via or self._any()).execute_command("CLUSTER", "NODES")
        return [_parse_node(line) for line in str(text).splitlines() if line.strip()]

    def slot(self, key_or_channel: str | bytes) -> int:
        """CLUSTER KEYSLOT: a shard channel hashes as a key of the same name would."""
        return int(self._admin(self._any()).execute_command("CLUSTER", "KEYSLOT", key_or_channel))

    def primary_for(self, key_or_channel: str | bytes, via: int | None = None) -> int:
        """The port of the primary that owns the key's (or shard channel's) slot, per CLUSTER SHARDS
        of `via` (a primary still listed as the owner while it is being failed over included)."""
        slot = self.slot(key_or_channel)
        shards = self._admin(via or self._any()).execute_command("CLUSTER", "SHARDS")
        for shard in shards:
            fields = _pairs(shard)
            bounds = [int(b) for b in fields["slots"]]
            if not any(lo <= slot <= hi for lo, hi in zip(bounds[::2], bounds[1::2], strict=True)):
                continue
            for node in fields["nodes"]:
                info = _pairs(node)
                if info["role"] == "master":
                    return int(info["port"])
        raise LookupError(f"no shard serves slot {slot} ({key_or_channel!r})\n{self.logs()}")

    def owner(self, slot: int, via: int | None = None) -> int:
        """The port of the primary serving `slot`, per CLUSTER NODES of `via`."""
        for node in self.nodes(via):
            if node.role == "primary" and node.owns(slot):
                return node.port
        raise LookupError(f"no primary serves slot {slot}")

    def primary_ports(self) -> list[int]:
        """Ports of the working primaries, those without slots (just added) included."""
        return [n.port for n in self.nodes() if n.role == "primary" and not n.failed]

    def replicas_of(self, port: int) -> list[int]:
        primary = self.node_id(port)
        return [n.port for n in self.nodes() if n.primary_id == primary and not n.failed]

    def commandstats(self, port: int) -> dict[str, int]:
        """INFO commandstats as {command: calls}; subcommands as `cluster|info`."""
        info = self._admin(port).info("commandstats")
        return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}

    def reset_stats(self, ports: Sequence[int] | None = None) -> None:
        """CONFIG RESETSTAT on `ports` (every running node by default): commandstats from zero."""
        for port in self.running() if ports is None else ports:
            self._admin(port).config_resetstat()

    # -- waiting ---------------------------------------------------------------------------

    def wait_stable(self, timeout: float = 30.0) -> None:
        """Until every running node says cluster_state:ok, knows every other running node as
        working, agrees with the others on who serves each slot (a running primary), and every
        running replica's link is up with its offset caught up with its primary's."""
        self._wait(self._stable, timeout, "the cluster is stable and every replica in sync")

    def wait_failover(self, old_primary_port: int, timeout: float = 30.0) -> int:
        """Until one of the old primary's replicas is the primary of its slots for every running
        node, answers ROLE as a primary, and cluster_state:ok everywhere; its port."""
        old = self._killed.get(old_primary_port)
        if old is None:  # not killed through kill(): the cluster's view now
            old = next((n for n in self.nodes() if n.port == old_primary_port), None)
            replicas = {n.node_id for n in self.nodes() if old and n.primary_id == old.node_id}
        else:
            replicas = self._killed_replicas.get(old_primary_port, set())
        if old is None or old.role != "primary" or not old.slots:
            raise ValueError(f":{old_primary_port} served no slots: nothing to fail over")
        if not replicas:
            raise ValueError(f":{old_primary_port} had no replica: nothing can take over")
        promoted: list[int] = []
        slot = old.slots[0][0]

        def probe() -> str | None:
            states = self._cluster_states()
            if states:
                return states
            owners: set[int] = set()
            for port in self.running():
                view = self.nodes(via=port)
                owner = next((n for n in view if n.role == "primary" and n.owns(slot) and not n.failed), None)
                if owner is None or owner.node_id not in replicas:
                    return f":{port} says slot {slot} is served by {owner}"
                if owner.slots != old.slots:
                    return f":{port} says {owner.port} serves {owner.slots}, not {old.slots}"
                owners.add(owner.port)
            if len(owners) != 1:
                return f"the nodes disagree on the new primary: {sorted(owners)}"
            [port] = owners
            role = self._admin(port).execute_command("ROLE")[0]
            if role != "master":
                return f":{port} answers ROLE {role}"
            promoted.append(port)
            return None

        self._wait(probe, timeout, f"a replica of :{old_primary_port} is the primary of {old.slots}")
        return promoted[-1]

    # -- changing the topology -------------------------------------------------------------

    def migrate_slot(self, slot: int, to_port: int, *, batch: int = 100, timeout: float = 30.0,
                     on_step: Callable[[str], None] | None = None) -> None:
        """Move `slot` and its keys to the primary `to_port`, as `redis-cli --cluster reshard` does:
        CLUSTER SETSLOT IMPORTING on the target, MIGRATING on the source, MIGRATE of the keys
        (CLUSTER GETKEYSINSLOT, `batch` at a time) and SETSLOT NODE on the target, the source
        then every other primary. Keys stay served throughout (the source answers for those it
        still has, ASK sends clients to the target for the others).

        `on_step(name)` is called after each step, for a test to act mid-migration: `importing`,
        `migrating`, `keys <n>` after each batch (n keys moved so far), then `node <port>` after
        SETSLOT NODE on each primary. Returns once every running node says `to_port` serves it."""
        step = on_step or (lambda _name: None)
        source = self.owner(slot, via=to_port)
        if source == to_port:
            return
        if to_port not in self.primary_ports():
            raise ValueError(f":{to_port} is not a working primary")
        target_id = self.node_id(to_port)
        self._admin(to_port).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        step("importing")
        self._admin(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        step("migrating")
        moved = 0
        mover = self.client(source, socket_timeout=30)  # bytes: keys need not be UTF-8
        try:
            while keys := mover.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                mover.execute_command("MIGRATE", HOST, to_port, "", 0, 10_000, "REPLACE", "KEYS", *keys)
                moved += len(keys)
                step(f"keys {moved}")
        finally:
            mover.close()
        others = [p for p in self.primary_ports() if p not in {to_port, source}]
        for port in [to_port, source, *others]:
            self._admin(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            step(f"node {port}")

        def probe() -> str | None:
            for port in self.running():
                owner = self.owner(slot, via=port)
                if owner != to_port:
                    return f":{port} says slot {slot} is served by :{owner}"
            return self._cluster_states()

        self._wait(probe, timeout, f"slot {slot} served by :{to_port} for every node")

    def add_primary(self, timeout: float = 30.0) -> int:
        """A new empty primary (no slots), met by the cluster; its port, once every running node
        knows it as working and it says cluster_state:ok."""
        port = self._join(timeout)
        self._wait(self._stable, timeout, f"the new primary :{port} is known everywhere")
        return port

    def add_replica(self, primary_port: int, timeout: float = 30.0) -> int:
        """A new replica of `primary_port`; its port, once it is in sync and known everywhere."""
        primary_id = self.node_id(primary_port)
        port = self._join(timeout)
        self._admin(port).execute_command("CLUSTER", "REPLICATE", primary_id)
        self._wait(self._stable, timeout, f"the new replica :{port} of :{primary_port} is in sync")
        return port

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, port: int | None = None) -> int:
        if port is None:
            port = free_port()
            bus = free_port()
            self.ports.append(port)
            self.bus_ports[port] = bus
        if FORBIDDEN_PORT in {port, self.bus_ports[port]}:
            raise RuntimeError("port 6379 belongs to the machine's Redis")
        workdir = self.dir / str(port)
        workdir.mkdir(exist_ok=True)
        # stderr to a file: a bad option is reported there, before the log file is opened
        with self._log(port).with_suffix(".err").open("ab") as err:
            self.procs[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", HOST, "--protected-mode", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / f"nodes-{port}.conf"),
                 "--cluster-node-timeout", str(self.node_timeout_ms),
                 "--cluster-port", str(self.bus_ports[port]),
                 "--save", "", "--appendonly", "no",
                 # a replica's first sync starts at once, not after the default 5 s wait for others
                 "--repl-diskless-sync-delay", "0",
                 "--dir", str(workdir), "--logfile", str(self._log(port)), *self.extra],
                stdout=err, stderr=err,
            )
        return port

    def _wait_ping(self, port: int, timeout: float) -> None:
        def probe() -> str | None:
            proc = self.procs[port]
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server :{port} exited with {proc.returncode}\n{self.logs()}")
            try:
                self._admin(port).ping()
            except (redis.RedisError, OSError) as exc:
                return f":{port} {exc}"
            return None

        self._wait(probe, timeout, f":{port} answers PING")

    def _create_with_cli(self, ports: list[int], timeout: float) -> None:
        command = ["redis-cli", "--cluster", "create", *(f"{HOST}:{p}" for p in ports),
                   "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"{' '.join(command)} still runs after {timeout} s: {exc.stdout!r}\n"
                               f"{self.logs()}") from None
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                               f"{self.logs()}")

    def _create_by_hand(self, ports: list[int], timeout: float) -> None:
        primaries, replicas = ports[:self.primaries], ports[self.primaries:]
        share = SLOTS // len(primaries)
        for i, port in enumerate(primaries):
            last = SLOTS - 1 if i == len(primaries) - 1 else (i + 1) * share - 1
            self._admin(port).execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
        for port in ports[1:]:
            self._meet(port, ports[0])
        self._wait(lambda: self._known(ports), timeout, "every node knows every other")
        for i, port in enumerate(replicas):
            self._admin(port).execute_command("CLUSTER", "REPLICATE", self.node_id(primaries[i % len(primaries)]))

    def _join(self, timeout: float) -> int:
        port = self._spawn()
        try:
            self._wait_ping(port, timeout)
            self._meet(port, self._any(besides=port))
            self._wait(lambda: self._known(self.running()), timeout, f"the new node :{port} is known everywhere")
        except BaseException:
            self._kill_pid(port)
            raise
        return port

    def _meet(self, port: int, peer: int) -> None:
        self._admin(port).execute_command("CLUSTER", "MEET", HOST, peer, self.bus_ports[peer])

    def _known(self, ports: Sequence[int]) -> str | None:
        """None once each of `ports` knows all of them as working."""
        ids = {self.node_id(p): p for p in ports}
        for port in ports:
            seen = {n.node_id for n in self.nodes(via=port) if not n.failed}
            missing = sorted(ids[i] for i in ids.keys() - seen)
            if missing:
                return f":{port} does not know {missing} as working"
        return None

    def _created(self) -> str | None:
        for port in self.running():
            view = [n for n in self.nodes(via=port) if not n.failed]
            primaries = {n.node_id for n in view if n.role == "primary" and n.slots}
            replicas = [n.primary_id for n in view if n.role == "replica"]
            if len(primaries) != self.primaries or any(
                    replicas.count(p) != self.replicas for p in primaries):
                return f":{port} sees {len(primaries)} primaries serving slots and replicas of {replicas}"
        return None

    def _cluster_states(self) -> str | None:
        for port in self.running():
            info = str(self._admin(port).execute_command("CLUSTER", "INFO"))
            if "cluster_state:ok" not in info:
                return f":{port} " + next((line for line in info.splitlines()
                                           if line.startswith("cluster_state")), info)
        return None

    def _stable(self) -> str | None:
        running = self.running()
        problem = self._cluster_states() or self._known(running)
        if problem:
            return problem
        reference: list[tuple[tuple[tuple[int, int], ...], int]] | None = None
        for port in running:
            serving = sorted((n.slots, n.port) for n in self.nodes(via=port) if n.role == "primary" and n.slots)
            for slots, owner in serving:
                if owner not in running:
                    return f":{port} says :{owner} (not running) serves {slots}"
            if reference is None:
                reference = serving
            elif serving != reference:
                return f":{port} and :{running[0]} disagree on who serves which slots"
        roles = {n.port: n.role for n in self.nodes(via=running[0])}
        for port in running:
            says = "replica" if self._admin(port).info("replication")["role"] == "slave" else "primary"
            if roles.get(port) != says:
                return f":{port} is a {says}, :{running[0]} takes it for a {roles.get(port)}"
        return self._replicas_in_sync(running)

    def _replicas_in_sync(self, running: Sequence[int]) -> str | None:
        for port in running:
            replication = self._admin(port).info("replication")
            if replication.get("role") != "slave":
                continue
            primary = int(replication["master_port"])
            if primary not in running:
                return f"replica :{port} follows :{primary}, which does not run"
            if replication.get("master_link_status") != "up" or replication.get("master_sync_in_progress"):
                return f"replica :{port} link to :{primary} is {replication.get('master_link_status')}"
            wanted = int(self._admin(primary).info("replication")["master_repl_offset"])
            have = int(self._admin(port).info("replication")["slave_repl_offset"])
            if have < wanted:
                return f"replica :{port} at offset {have}, its primary :{primary} at {wanted}"
        return None

    def _wait(self, probe: Probe, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                problem = probe()
            except (redis.RedisError, OSError, LookupError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout} s: {what}\nlast seen: {problem}\n{self.logs()}")
            time.sleep(POLL)

    def _admin(self, port: int) -> redis.Redis:
        """A cached client to one node, decoded, no retries; dropped when the node is killed."""
        if port not in self._clients:
            self._clients[port] = self.client(port, decode_responses=True)
        return self._clients[port]

    def _any(self, besides: int | None = None) -> int:
        for port in self.running():
            if port != besides:
                return port
        raise LookupError("no node of the cluster runs")

    def _check_ours(self, port: int) -> None:
        if port not in self.ports:
            raise ValueError(f":{port} is not a node of this cluster ({self.ports})")

    def _kill_pid(self, port: int) -> None:
        proc = self.procs.pop(port, None)
        client = self._clients.pop(port, None)
        if client is not None:
            client.close()
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def _log(self, port: int) -> Path:
        return self.dir / f"redis-{port}.log"

    def logs(self, lines: int = 15) -> str:
        """The tail of every node's log, for error messages."""
        out = []
        for port in self.ports:
            state = "running" if port in self.procs else "not running"
            for path in (self._log(port).with_suffix(".err"), self._log(port)):
                try:
                    tail = path.read_text("utf-8", "replace").splitlines()[-lines:]
                except OSError:
                    continue
                if tail:
                    out.append(f"-- {path.name} ({state}):\n" + "\n".join(tail))
        return "\n".join(out)


def _parse_node(line: str) -> ClusterNode:
    """`<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...`;
    slots in migration (`[slot->-id]`, `[slot-<-id]`) are left out: the owner is still the owner."""
    fields = line.split()
    address, flags = fields[1], set(fields[2].split(","))
    host, _, rest = address.partition("@")[0].rpartition(":")
    slots: list[tuple[int, int]] = []
    for item in fields[8:]:
        if item.startswith("["):
            continue
        lo, _, hi = item.partition("-")
        slots.append((int(lo), int(hi or lo)))
    return ClusterNode(
        host=host, port=int(rest), role="primary" if "master" in flags else "replica",
        node_id=fields[0], slots=tuple(slots),
        primary_id=None if fields[3] == "-" else fields[3],
        failed=bool(flags & _NOT_WORKING),
    )


def _pairs(flat: Any) -> dict[str, Any]:
    """CLUSTER SHARDS answers a flat [name, value, ...] list per item (RESP2) or a map (RESP3)."""
    if isinstance(flat, dict):
        return {str(k): v for k, v in flat.items()}
    it = iter(flat)
    return {str(k): v for k, v in zip(it, it, strict=True)}
