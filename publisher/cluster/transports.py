"""Script calls on a Redis Cluster: one pipelined round trip per primary, redirections followed.

    target = parse_cluster_url("redis+cluster://10.0.0.1:6379,10.0.0.2:6379")
    transport = SyncClusterTransport(target, retries=3)      # AsyncClusterTransport: awaitable
    replies = transport.run(calls)                           # in call order, like SyncTransport

Why not redis-py's `RedisCluster`: its command path is redis-py's, whose per-command CPU is what
`publisher.script_runner` exists to avoid, and the bus needs per-node clients anyway, for its
own sharded pub/sub connections. So this module keeps one redis-py client per node and sends to
each through a `script_runner` transport: the same kept connections, fork handling and reply
reading as with a single Redis. A single call whose node is known costs a few µs more than
with `SyncTransport`; no planning is done for it.

Routing: a call goes to the primary of the slot of its first key (`Call.args` is `numkeys,
keys..., args...`); the bus keeps every key of one call in one slot with hash tags, and Redis
refuses one that does not (CROSSSLOT, raised as a refusal). A call without keys goes to any
primary, all such calls of a batch to the same one. The calls of a batch are grouped by
primary, in order, and each group goes in one round trip (the async transport sends to the
primaries concurrently). The slot map comes from CLUSTER SLOTS, asked of the node that last
answered, the other known nodes, then the URL's seeds; a node that just failed is asked last.

Redirections and failures, per `run`:
- `MOVED slot host:port`: the map is refreshed (the redirection's owner wins over a node that
  has not heard of the move yet) and the call resent there, at most `MAX_REDIRECTS` times;
- `ASK slot host:port`: the call is resent once to that node after ASKING (before an EVAL
  fallback too), without changing the map: the slot is being migrated;
- `TRYAGAIN`, `CLUSTERDOWN`, `READONLY`, no node serving a slot, or a connection error or
  timeout on a node (a failover: a replica is being promoted): the map is refreshed (not for
  TRYAGAIN) and the call resent after `script_runner.backoff`, `retries` times per `run` in
  all, then `PublishError` (`PublishTimeout` when the last failure was a timeout).

Delivery is at least once, as with `script_runner`: a call is sent again only when it did not
run (a redirection, TRYAGAIN, CLUSTERDOWN or NOSCRIPT reply) or when the connection it went on
failed before its reply came, and in that last case Redis may have run it already. When `run`
raises, the calls that other nodes answered have run (as the calls before a refusal do with
`script_runner`). A refusal (a script error, CROSSSLOT...) is raised once every other call of
the batch is settled, naming the call and the node. Order: the
calls of one slot go to one node per round trip, in order, and a call held back (redirected,
told to try again, or on a failed connection) is resent before the later calls of its slot
that are held back with it; the calls of one slot that needed no retry keep their order too.
What Redis itself can interleave is left as it is: while a slot is migrated, a call whose keys
already moved (ASK) runs after a later call whose keys had not, so calls to *different* keys of
one slot may swap then; calls to the same keys never do (their keys move together).

A script is sent whole (EVAL) the first time it goes to a node this process has not seen run
it (or whose connection failed since), then by its SHA1: a replica promoted by a failover has
none of its primary's scripts, and this spares the NOSCRIPT round trip there, and the
reordering that the fallback brings (as in `script_runner`: a later call whose script was
cached runs before an earlier one answered NOSCRIPT). That remains possible after a node flushed
its scripts without its connections failing (SCRIPT FLUSH).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import parse_qsl, unquote

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff
from redis.crc import key_slot as _crc16_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from publisher.commands import Call, pack
from publisher.errors import PublisherError, PublishError
from publisher.redis_url import DEFAULT_OPTIONS, redact
from publisher.script_runner import (
    _RETRYABLE,
    AsyncTransport,
    SyncTransport,
    _failure,
    _missing_scripts,
    _refused,
    backoff,
)

__all__ = [
    "DEFAULT_PORT",
    "MAX_REDIRECTS",
    "SCHEMES",
    "SLOTS",
    "AsyncClusterTopology",
    "AsyncClusterTransport",
    "ClusterModeError",
    "ClusterTarget",
    "ClusterTopology",
    "ClusterUnreachable",
    "NodeAddress",
    "SlotMap",
    "SyncClusterTransport",
    "async_expect_standalone",
    "async_is_cluster_node",
    "cluster_url_for",
    "expect_standalone",
    "is_cluster_node",
    "is_cluster_url",
    "key_slot",
    "parse_cluster_url",
]

SCHEMES: Final = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT: Final = 6379
SLOTS: Final = 16384
MAX_REDIRECTS: Final = 5  # MOVED/ASK per call and run: more means the slots keep moving
_CLUSTER_SLOTS: Final = pack(("CLUSTER", "SLOTS"))
_ASKING: Final = pack(("ASKING",))
_DISABLED: Final = "cluster support disabled"

T = TypeVar("T")


# -- errors --------------------------------------------------------------------------------

class ClusterModeError(PublishError):
    """The URL's scheme and the Redis it points at disagree: a `redis+cluster://` URL at a Redis
    without cluster support, or a plain `redis://` URL at a cluster node (where every call
    touching keys of another node's slots would fail). Not retried: the URL must change."""


class ClusterUnreachable(redis.ConnectionError):
    """No node of the cluster answered CLUSTER SLOTS. A connection error, so that a `run`
    retries it within its budget (the cluster may be restarting)."""


# -- addresses and URLs --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where one node listens, with what a connection to it needs (TLS, credentials).

    Equal and hashed by host and port only: every node of a cluster shares the rest.
    """

    host: str
    port: int
    tls: bool = field(default=False, compare=False)
    username: str | None = field(default=None, compare=False)
    password: str | None = field(default=None, compare=False, repr=False)
    # ssl_* options of redis-py (ssl_ca_certs, ssl_cert_reqs...), as (name, value) pairs
    tls_options: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.Redis(...)` or `redis.asyncio.Redis(...)` to this node."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
            kwargs.update(self.tls_options)
        return kwargs


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """A parsed `redis+cluster://` or `rediss+cluster://` URL."""

    seeds: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # redis-py client options from the URL's query (socket_timeout, ssl_ca_certs...)
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    url: str = ""  # redacted, for messages; empty: made from the seeds

    @property
    def where(self) -> str:
        if self.url:
            return self.url
        scheme = SCHEMES[1] if self.tls else SCHEMES[0]
        return f"{scheme}://" + ",".join(str(NodeAddress(h, p)) for h, p in self.seeds)

    def node(self, host: str, port: int) -> NodeAddress:
        """The address of a node of this cluster: its TLS settings and credentials are ours."""
        tls_options = tuple(sorted((k, v) for k, v in self.options.items() if k.startswith("ssl_")))
        return NodeAddress(host, port, self.tls, self.username, self.password, tls_options)

    def seed_nodes(self) -> tuple[NodeAddress, ...]:
        return tuple(self.node(host, port) for host, port in self.seeds)


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://`, `rediss+cluster://`)."""
    return isinstance(url, str) and url.strip().partition("://")[0].lower() in SCHEMES


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"bad Redis Cluster URL {redact(url)!r}: {why}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("must be a whole number")
    return int(text)


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _cert_reqs(text: str) -> str:
    if text.lower() not in {"none", "optional", "required"}:
        raise ValueError("must be none, optional or required")
    return text.lower()


# Options a node's client takes from the query, as for redis-py's redis:// and rediss:// URLs.
_OPTIONS: Final[Mapping[str, Callable[[str], Any]]] = MappingProxyType({
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "socket_keepalive": _flag,
    "health_check_interval": _count,
    "max_connections": _count,
    "client_name": str,
})
_TLS_OPTIONS: Final[Mapping[str, Callable[[str], Any]]] = MappingProxyType({
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _flag,
    "ssl_ciphers": str,
})


def _hostport(url: str, item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, closed, rest = item[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise _bad(url, f"address {item!r}: an IPv6 address is written [::1]:6379")
        port_text = rest[1:]
    else:
        if item.count(":") > 1:
            raise _bad(url, f"address {item!r}: write an IPv6 address in brackets, [::1]:6379")
        host, _, port_text = item.partition(":")
    if not host:
        raise _bad(url, f"address {item!r} has no host")
    if any(c.isspace() or c in "@/?#" for c in host):
        raise _bad(url, f"address {item!r} has a bad host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(url, f"address {item!r} has a bad port")
    return host, int(port_text)


def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse `redis+cluster://[user:password@]host:port[,host:port...][/][?options]`.

    `rediss+cluster://` is the same over TLS. The addresses are seeds: any reachable one tells
    where the others are. A port defaults to 6379; the path may be empty, `/` or `/0` (a
    cluster has database 0 only). The query takes the client options of redis-py's URLs
    (`socket_timeout`, `socket_connect_timeout`, `socket_keepalive`, `health_check_interval`,
    `max_connections`, `client_name`) and, with TLS, `ssl_ca_certs`, `ssl_ca_path`,
    `ssl_certfile`, `ssl_keyfile`, `ssl_password`, `ssl_cert_reqs` (none, optional,
    required), `ssl_check_hostname`, `ssl_ciphers`. A `ValueError` names what is wrong, with
    the URL's credentials masked.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the Redis Cluster URL is empty; write e.g. redis+cluster://host:6379,host:6380")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise _bad(url, f"unsupported scheme {scheme!r}; use redis+cluster:// or rediss+cluster:// (TLS)")
    if "#" in rest:
        raise _bad(url, "it holds a '#'; percent-encode it (%23) in a password")
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    end = min(ends) if ends else len(rest)
    netloc, (path, _, query) = rest[:end], rest[end:].lstrip("/").partition("?")
    if "@" in path or "@" in query:
        raise _bad(url, "percent-encode '/', '?' and '@' in the user name and password")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    items = [item.strip() for item in hosts.split(",")]
    if not any(items):
        raise _bad(url, "no node address; write e.g. redis+cluster://host:6379,host:6380")
    if not all(items):
        raise _bad(url, "an empty address in the list of nodes")
    seeds = tuple(dict.fromkeys(_hostport(url, item) for item in items))
    if path.strip("/") not in {"", "0"}:
        raise _bad(url, f"the path {'/' + path!r} is not allowed: a Redis Cluster has database 0 only "
                        "(write no path, or /0)")
    tls = scheme == "rediss+cluster"
    options: dict[str, Any] = {}
    known = {**_OPTIONS, **_TLS_OPTIONS}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in options:
            raise _bad(url, f"option {name} given twice")
        parser = known.get(name)
        if parser is None:
            raise _bad(url, f"unknown option {name!r}; known: {', '.join(sorted(known))}")
        if name in _TLS_OPTIONS and not tls:
            raise _bad(url, f"option {name} needs TLS: use rediss+cluster://")
        try:
            options[name] = parser(value)
        except ValueError as exc:
            shown = "***" if name == "ssl_password" else repr(value)
            raise _bad(url, f"option {name}={shown}: {exc}") from None
    return ClusterTarget(seeds, tls, username, password, MappingProxyType(options), redact(url))


def cluster_url_for(url: str) -> str:
    """The `redis+cluster://` URL to write instead of a plain `redis[s]://host:port/db` URL that
    points at a cluster node, credentials masked: for the message that refuses the plain one."""
    shown = redact(url.strip())
    scheme, sep, rest = shown.partition("://")
    if not sep:
        return "redis+cluster://host:port[,host:port...]"
    netloc = rest.partition("/")[0].partition("?")[0]
    return f"{'rediss' if scheme.lower() == 'rediss' else 'redis'}+cluster://{netloc}"


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key (or shard channel): CRC16 of its hash tag `{...}` if it has a
    non-empty one, else of the whole key, modulo 16384, as CLUSTER KEYSLOT says."""
    return _crc16_slot(key.encode() if isinstance(key, str) else key)


def _slot_of(call: Call) -> int | None:
    """The slot of a call's first key; None for a call without keys."""
    args = call.args
    if not args or int(args[0]) == 0:
        return None
    key = args[1]
    return _crc16_slot(key.encode() if isinstance(key, str) else b"%d" % key if isinstance(key, int) else key)


# -- cluster or not ------------------------------------------------------------------------

def _cluster_enabled(info: Mapping[str, Any]) -> bool:
    return str(info.get("cluster_enabled", "0")) == "1"


def is_cluster_node(client: redis.Redis) -> bool:
    """Whether the Redis behind `client` runs with cluster support (INFO cluster says
    cluster_enabled:1). Where INFO is refused (some managed Redis rename it), CLUSTER INFO
    answers instead: only a node without cluster support refuses that."""
    try:
        return _cluster_enabled(client.info("cluster"))
    except ResponseError:
        try:
            client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if _DISABLED in str(exc):
                return False
            raise
        return True


async def async_is_cluster_node(client: redis.asyncio.Redis) -> bool:
    """See `is_cluster_node`."""
    try:
        return _cluster_enabled(await client.info("cluster"))
    except ResponseError:
        try:
            await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if _DISABLED in str(exc):
                return False
            raise
        return True


def _is_a_cluster(url: str) -> ClusterModeError:
    return ClusterModeError(
        f"{redact(url.strip())} points at a Redis Cluster node (cluster_enabled:1): a plain URL would "
        f"reach that node's slots only; write {cluster_url_for(url)} (add more nodes after a comma)"
    )


def expect_standalone(client: redis.Redis, url: str) -> None:
    """Raise `ClusterModeError` naming `redis+cluster://` if `url` (the client's, plain
    `redis://`, `rediss://` or Sentinel) leads to a cluster node."""
    if is_cluster_node(client):
        raise _is_a_cluster(url)


async def async_expect_standalone(client: redis.asyncio.Redis, url: str) -> None:
    """See `expect_standalone`."""
    if await async_is_cluster_node(client):
        raise _is_a_cluster(url)


# -- the slot map --------------------------------------------------------------------------

def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class SlotMap:
    """Which primary serves each slot, and the replicas of each primary, as a node said.

    Readers (any thread or task) see a whole map: a refresh replaces it in one assignment.
    """

    def __init__(self, target: ClusterTarget) -> None:
        self.target = target
        self.version = 0  # how many maps were taken; 0: none yet
        self._slots: list[NodeAddress | None] = [None] * SLOTS
        self._primaries: tuple[NodeAddress, ...] = ()
        self._replicas: Mapping[NodeAddress, tuple[NodeAddress, ...]] = {}
        self._answered: NodeAddress | None = None  # the node that gave the map
        self._suspects: dict[NodeAddress, None] = {}  # failed lately: asked last
        # SHA1s of the scripts each node ran for us: sent by EVALSHA there, others by EVAL
        self.loaded_scripts: dict[NodeAddress, set[str]] = {}

    @property
    def loaded(self) -> bool:
        return self.version > 0

    def node_for_slot(self, slot: int) -> NodeAddress | None:
        """The primary serving `slot`, or None when no node does (or no map yet)."""
        return self._slots[slot]

    def table(self) -> Sequence[NodeAddress | None]:
        """The primary of every slot, as the map is now: never changed, replaced by a refresh."""
        return self._slots

    def primaries(self) -> tuple[NodeAddress, ...]:
        """The primaries serving slots, in the order of their first slot."""
        return self._primaries

    def replicas_of(self, node: NodeAddress) -> tuple[NodeAddress, ...]:
        return self._replicas.get(node, ())

    def slots_of(self, node: NodeAddress) -> list[tuple[int, int]]:
        """The slot ranges (inclusive) that `node` serves."""
        ranges: list[tuple[int, int]] = []
        slots = self._slots
        start = None
        for slot in range(SLOTS + 1):
            mine = slot < SLOTS and slots[slot] == node
            if mine and start is None:
                start = slot
            elif not mine and start is not None:
                ranges.append((start, slot - 1))
                start = None
        return ranges

    def apply_slots(self, reply: Any, asked: NodeAddress) -> bool:
        """Take the map from `asked`'s CLUSTER SLOTS reply; False if it serves no slot yet."""
        slots: list[NodeAddress | None] = [None] * SLOTS
        replicas: dict[NodeAddress, dict[NodeAddress, None]] = {}
        made: dict[NodeAddress, NodeAddress] = {}  # one object per node: `_Run.route` groups by it

        def address(entry: Sequence[Any]) -> NodeAddress:
            host = _text(entry[0]) if entry[0] is not None else ""
            # "" or "?": the node does not know how it is reached; as we reached the one asked
            node = self.target.node(asked.host if host in {"", "?"} else host, int(entry[1]))
            return made.setdefault(node, node)

        for item in reply or ():
            start, end, primary = int(item[0]), int(item[1]), address(item[2])
            if not 0 <= start <= end < SLOTS:
                raise ValueError(f"{asked} answered CLUSTER SLOTS with the range {start}-{end}")
            slots[start:end + 1] = [primary] * (end - start + 1)
            known = replicas.setdefault(primary, {})
            for entry in item[3:]:
                known[address(entry)] = None
        if not replicas:
            return False
        primaries: dict[NodeAddress, None] = {}
        for node in slots:
            if node is not None:
                primaries[node] = None
        self._slots, self._primaries = slots, tuple(primaries)
        self._replicas = {node: tuple(found) for node, found in replicas.items()}
        self._answered = asked
        self._suspects.pop(asked, None)
        self.version += 1
        return True

    def assign(self, slot: int, node: NodeAddress) -> None:
        """`node` serves `slot`, as a MOVED said, whatever the last map says."""
        node = next((known for known in self._primaries if known == node), node)  # one object per node
        slots = list(self._slots)
        slots[slot] = node
        primaries = dict.fromkeys(n for n in slots if n is not None)
        self._slots, self._primaries = slots, tuple(primaries)

    def suspect(self, node: NodeAddress) -> None:
        """`node` just failed: ask the others first for the next map."""
        self._suspects[node] = None

    def forget(self, node: NodeAddress) -> None:
        """The connection to `node` failed: ask the others first for the next map, and send it
        scripts whole again (a restarted node has none)."""
        self.suspect(node)
        self.loaded_scripts.setdefault(node, set()).clear()

    def _candidates(self) -> list[NodeAddress]:
        """Who to ask for the map: the node that gave the last one, the primaries, their
        replicas, the seeds; those that failed lately last."""
        order: dict[NodeAddress, None] = {}
        if self._answered is not None:
            order[self._answered] = None
        order.update(dict.fromkeys(self._primaries))
        for found in self._replicas.values():
            order.update(dict.fromkeys(found))
        order.update(dict.fromkeys(self.target.seed_nodes()))
        suspects = [node for node in order if node in self._suspects]
        return [node for node in order if node not in self._suspects] + suspects

    def _take(self, node: NodeAddress, reply: Any, errors: list[str]) -> bool:
        """Whether `reply` (to CLUSTER SLOTS, from `node`) gave a map."""
        if isinstance(reply, ResponseError):
            if _DISABLED in str(reply):
                raise ClusterModeError(
                    f"{self.target.where} points at a Redis without cluster support ({node} answers: "
                    f"{reply}); for a single Redis write redis://{node}/0 (rediss:// with TLS)"
                )
            raise PublishError(f"Redis at {node} refused CLUSTER SLOTS: {reply}")
        if self.apply_slots(reply, node):
            return True
        errors.append(f"{node} serves no slot yet")
        return False

    def _failed(self, node: NodeAddress, exc: BaseException, errors: list[str]) -> None:
        self.suspect(node)
        errors.append(f"{node}: {exc}")

    def _nobody(self, errors: list[str]) -> ClusterUnreachable:
        return ClusterUnreachable(
            f"no node of {self.target.where} gave the slot map (CLUSTER SLOTS): {'; '.join(errors)}")


def _options(target: ClusterTarget, redis_options: Mapping[str, Any], retry: Any
             ) -> tuple[ClusterTarget, dict[str, Any]]:
    """The target (keyword credentials win over the URL's) and each node client's options:
    the defaults of `publisher.redis_url`, then the URL's query, then the keywords."""
    options = {**DEFAULT_OPTIONS, **target.options, **redis_options}
    for name in ("host", "port", "db", "path", "ssl", "connection_pool", "url"):
        if name in options:
            raise TypeError(f"{name}= does not apply to a cluster: every node's comes from the URL and the map")
    if "username" in options or "password" in options:
        target = replace(target, username=options.pop("username", target.username),
                         password=options.pop("password", target.password))
    tls_options = {name: options.pop(name) for name in list(options) if name.startswith("ssl_")}
    if tls_options:  # in each NodeAddress, for whoever connects to a node
        target = replace(target, options=MappingProxyType({**target.options, **tls_options}))
    # Retries are ours alone (bounded, documented): redis-py's would multiply them.
    options.setdefault("retry", retry)
    return target, options


class ClusterTopology(SlotMap):
    """The slot map of a cluster, and one redis-py client per node it has talked to (sync).

    A node's client and its `SyncTransport` are made on first use and kept until `close()`.
    Safe to share between threads.
    """

    def __init__(self, target: ClusterTarget, **redis_options: Any) -> None:
        target, self._client_options = _options(
            target, redis_options, redis.retry.Retry(NoBackoff(), 0))
        super().__init__(target)
        self._nodes: dict[NodeAddress, SyncTransport] = {}
        self._making = threading.Lock()
        self._refreshing = threading.Lock()

    def transport(self, node: NodeAddress) -> SyncTransport:
        """The transport to `node` (its kept connections), made on first use."""
        found = self._nodes.get(node)
        if found is not None:
            return found
        with self._making:
            found = self._nodes.get(node)
            if found is None:
                client = redis.Redis(**{**self._client_options, **node.client_kwargs()})
                found = SyncTransport(client, retries=0, where=f"{node} ({self.target.where})")
                self.loaded_scripts[node] = set()
                self._nodes[node] = found
            return found

    def client(self, node: NodeAddress) -> redis.Redis:
        """The pooled client to `node` (made on first use, closed by `close()`)."""
        return self.transport(node).client

    def refresh(self) -> None:
        """Ask the known nodes, then the seeds, for the slot map; the first answer wins.

        `ClusterModeError` if a node has no cluster support, `ClusterUnreachable` (a
        `redis.ConnectionError`) if none answers.
        """
        errors: list[str] = []
        for node in self._candidates():
            try:
                reply = self.transport(node).roundtrip(_CLUSTER_SLOTS, 1)[0]
            except _RETRYABLE as exc:
                self._failed(node, exc, errors)
                continue
            if self._take(node, reply, errors):
                return
        raise self._nobody(errors)

    def refresh_from(self, version: int) -> None:
        """`refresh()`, unless another caller did since the map `version` was read."""
        with self._refreshing:
            if self.version == version:
                self.refresh()

    def close(self) -> None:
        """Close every node's client."""
        with self._making:
            nodes, self._nodes = list(self._nodes.values()), {}
        for transport in nodes:
            transport.close()
            transport.client.close()


class AsyncClusterTopology(SlotMap):
    """`ClusterTopology` for asyncio: the same map, redis.asyncio clients, awaitable refresh."""

    def __init__(self, target: ClusterTarget, **redis_options: Any) -> None:
        target, self._client_options = _options(
            target, redis_options, redis.asyncio.retry.Retry(NoBackoff(), 0))
        super().__init__(target)
        self._nodes: dict[NodeAddress, AsyncTransport] = {}
        self._refreshing: asyncio.Lock | None = None

    def transport(self, node: NodeAddress) -> AsyncTransport:
        """See `ClusterTopology.transport` (no lock: made without awaiting)."""
        found = self._nodes.get(node)
        if found is None:
            client = redis.asyncio.Redis(**{**self._client_options, **node.client_kwargs()})
            found = AsyncTransport(client, retries=0, where=f"{node} ({self.target.where})")
            self.loaded_scripts[node] = set()
            self._nodes[node] = found
        return found

    def client(self, node: NodeAddress) -> redis.asyncio.Redis:
        return self.transport(node).client

    async def refresh(self) -> None:
        """See `ClusterTopology.refresh`."""
        errors: list[str] = []
        for node in self._candidates():
            try:
                reply = (await self.transport(node).roundtrip(_CLUSTER_SLOTS, 1))[0]
            except _RETRYABLE as exc:
                self._failed(node, exc, errors)
                continue
            if self._take(node, reply, errors):
                return
        raise self._nobody(errors)

    async def refresh_from(self, version: int) -> None:
        """See `ClusterTopology.refresh_from`."""
        if self._refreshing is None:  # made here: bound to the loop that runs us
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if self.version == version:
                await self.refresh()

    async def close(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for transport in nodes:
            await transport.close()
            await transport.client.aclose()


# -- one run -------------------------------------------------------------------------------

_PENDING: Final = object()


class _Lost(NamedTuple):
    """In place of a reply: the connection failed before it came."""

    exc: BaseException


def _packed(calls: Sequence[Call], asking: bool, whole: Callable[[Call], bool]) -> bytes:
    parts: list[bytes] = []
    for call in calls:
        if asking:
            parts.append(_ASKING)
        parts.append(call.eval_packed() if whole(call) else call.packed)
    return b"".join(parts)


def _address(target: ClusterTarget, redirect: AskError, answered: NodeAddress) -> NodeAddress:
    return target.node(redirect.host or answered.host, redirect.port)


def _code(reply: ResponseError) -> str:
    for kind, code in ((MovedError, "MOVED"), (AskError, "ASK"), (TryAgainError, "TRYAGAIN"),
                       (ClusterDownError, "CLUSTERDOWN"), (ReadOnlyError, "READONLY")):
        if isinstance(reply, kind):
            return f"{code} {reply}"
    return str(reply)


class _Run:
    """What one `run` has left to send, and where: the policy, without I/O."""

    __slots__ = ("any_shift", "asks", "calls", "decided", "error", "error_at", "fatal", "moved",
                 "nodes", "pending", "redirects", "refresh", "replies", "seen", "slots", "target",
                 "wait", "where")

    def __init__(self, calls: Sequence[Call], target: ClusterTarget, where: str, *,
                 sent: int | None = None) -> None:
        """`sent`: the calls went once already, routed by that version of the map, and what
        came back is to be `settle`d."""
        self.calls = calls
        self.target = target
        self.where = where
        self.slots = [_slot_of(call) for call in calls]
        self.replies: list[Any] = [_PENDING] * len(calls)
        self.nodes: list[NodeAddress | None] = [None] * len(calls)  # who answered each
        self.pending = [] if sent is not None else list(range(len(calls)))
        self.redirects = [0] * len(calls)
        self.asks: dict[int, NodeAddress] = {}  # slot: where its calls go next, after ASKING
        self.moved: dict[int, NodeAddress] = {}  # slot: its owner, as a MOVED said
        self.decided: set[int | None] = set()  # slots whose first held-back call was seen
        self.refresh = False
        self.wait = False
        self.error: BaseException | None = None  # the last reason to retry
        self.error_at = ""
        self.fatal: PublishError | None = None
        self.any_shift = 0  # which primary takes the calls without keys
        self.seen = sent or 0  # the version of the map this round was routed by

    def route(self, topology: SlotMap) -> list[tuple[NodeAddress, bool, list[int]]]:
        """This round's groups: (node, after ASKING?, call indexes in order). Every held-back
        call of a slot goes the same way as the first, so a slot's calls stay in order."""
        # Grouped by the identity of the map's node objects (one per node in a map, so the same
        # groups as by address, and an int hashes faster than an address) and ASK targets.
        groups: dict[int, tuple[NodeAddress, bool, list[int]]] = {}
        self.seen = topology.version
        table = topology.table()
        primaries = topology.primaries()
        anywhere = primaries[self.any_shift % len(primaries)] if primaries else None
        asks, self.asks = self.asks, {}
        pending, self.pending = self.pending, []
        self.decided = set()
        slots = self.slots
        for i in pending:
            slot = slots[i]
            asking = False
            if slot is None:
                node = anywhere
            elif asks and slot in asks:
                node, asking = asks[slot], True
            else:
                node = table[slot]
            if node is None:
                self.error = ClusterDownError(
                    "no primary is known" if slot is None else f"no node serves slot {slot}")
                self.error_at = self.where
                self.pending.append(i)
                self.refresh = self.wait = True
                continue
            key = -id(node) if asking else id(node)
            group = groups.get(key)
            if group is None:
                groups[key] = group = (node, asking, [])
            group[2].append(i)
        return list(groups.values())

    def _hold(self, i: int) -> bool:
        """Keep call `i` for the next round; whether it is the first held back of its slot."""
        self.pending.append(i)
        slot = self.slots[i]
        first = slot not in self.decided
        self.decided.add(slot)
        return first

    def _redirected(self, i: int, node: NodeAddress, reply: AskError) -> None:
        self.redirects[i] += 1
        if self.redirects[i] > MAX_REDIRECTS and self.fatal is None:
            self.fatal = PublishError(
                f"Redis Cluster at {self.where}: call {i + 1} of {len(self.calls)} was redirected "
                f"more than {MAX_REDIRECTS} times, the last by {node} ({_code(reply)}); its slot "
                "keeps moving"
            )

    def lost(self, node: NodeAddress, indexes: Sequence[int], exc: BaseException) -> None:
        """The connection to `node` failed before these replies came."""
        for i in indexes:
            self._hold(i)
            if self.slots[i] is None:
                self.any_shift += 1
        self.error, self.error_at = exc, f"{node} ({self.where})"
        self.refresh = self.wait = True

    def settle(self, node: NodeAddress, indexes: Sequence[int], replies: Sequence[Any]) -> None:
        for i, reply in zip(indexes, replies, strict=True):
            if not isinstance(reply, ResponseError | _Lost):  # a result: the common case
                self.replies[i] = reply
                self.nodes[i] = node
            elif isinstance(reply, _Lost):
                self.lost(node, (i,), reply.exc)
            elif isinstance(reply, MovedError):
                self._hold(i)
                self._redirected(i, node, reply)
                self.moved[reply.slot_id] = _address(self.target, reply, node)
                self.refresh = True
            elif isinstance(reply, AskError):
                slot = self.slots[i]
                if self._hold(i) and slot is not None:
                    self.asks[slot] = _address(self.target, reply, node)
                self._redirected(i, node, reply)
            elif isinstance(reply, TryAgainError | ClusterDownError | ReadOnlyError):
                self._hold(i)
                self.error, self.error_at = reply, f"{node} ({self.where})"
                self.wait = True
                self.refresh = self.refresh or not isinstance(reply, TryAgainError)
            else:  # a refusal, raised by `result`
                self.replies[i] = reply
                self.nodes[i] = node

    def next_round(self, topology: SlotMap) -> None:
        """After the refresh, if any: the MOVED replies say who serves their slots now."""
        for slot, node in self.moved.items():
            if topology.node_for_slot(slot) != node:
                topology.assign(slot, node)
        self.moved = {}
        self.pending.sort()
        self.refresh = self.wait = False

    def result(self) -> list[Any]:
        if self.fatal is not None:
            raise self.fatal
        for i, reply in enumerate(self.replies):
            if isinstance(reply, ResponseError):
                raise _refused(f"{self.nodes[i]} ({self.where})", i, len(self.replies), reply)
        return self.replies

    def give_up(self, attempts: int) -> PublishError:
        exc = self.error
        if isinstance(exc, ResponseError):
            return PublishError(
                f"Redis Cluster at {self.where} still answered {_code(exc)} "
                f"after {attempts} attempt(s), the last from {self.error_at}"
            )
        return _failure(self.error_at or self.where, attempts, exc or RuntimeError("no reply"))


def _check_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ValueError(f"retries must be an integer from 0 to 10, got {retries!r}")
    return retries


# -- transports ----------------------------------------------------------------------------

class SyncClusterTransport:
    """Runs calls on a Redis Cluster for a sync publisher: `SyncTransport`'s interface.

    Made from a `ClusterTarget` and redis-py options for every node's client; or from a
    `topology=` of your own (then its clients' options are that topology's). Safe to share
    between threads; each node costs one connection per concurrent caller.
    """

    def __init__(self, target: ClusterTarget, *, retries: int = 3, where: str | None = None,
                 topology: ClusterTopology | None = None, **redis_options: Any) -> None:
        self.topology = topology if topology is not None else ClusterTopology(target, **redis_options)
        self.target = self.topology.target
        self.where = where or target.where
        self._retries = _check_retries(retries)

    def node_client(self, node: NodeAddress) -> redis.Redis:
        """The pooled redis-py client to `node`, shared with `run` (closed by `close()`)."""
        return self.topology.client(node)

    def primaries(self) -> tuple[NodeAddress, ...]:
        """The primaries serving slots, fetching the map first if there is none yet."""
        if not self.topology.loaded:
            self.topology.refresh_from(0)
        return self.topology.primaries()

    def for_each_primary(self, fn: Callable[[NodeAddress], T]) -> dict[NodeAddress, T]:
        """`fn(node)` for every primary, one after another; their results by node."""
        return {node: fn(node) for node in self.primaries()}

    def _send(self, node: NodeAddress, asking: bool, calls: Sequence[Call]) -> list[Any]:
        transport = self.topology.transport(node)
        known = self.topology.loaded_scripts.setdefault(node, set())
        learn = asking or any(call.script.sha not in known for call in calls)
        if learn:
            packed = _packed(calls, asking, lambda call: call.script.sha not in known)
        else:
            packed = b"".join([call.packed for call in calls])
        replies = transport.roundtrip(packed, len(calls) * (2 if asking else 1))
        if asking:
            replies = replies[1::2]
        missing = _missing_scripts(replies)
        if missing:  # the node restarted or flushed its scripts: EVAL caches them again
            try:
                again = transport.roundtrip(
                    _packed([calls[i] for i in missing], asking, lambda _call: True),
                    len(missing) * (2 if asking else 1))
            except _RETRYABLE as exc:
                self.topology.forget(node)
                again = [_Lost(exc)] * len(missing)
            else:
                again = again[1::2] if asking else again
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
            learn = True
        if learn:
            for call, reply in zip(calls, replies, strict=True):
                if not isinstance(reply, ResponseError | _Lost):
                    known.add(call.script.sha)
        return replies

    def _round(self, state: _Run) -> None:
        topology = self.topology
        if state.refresh or not topology.loaded:
            topology.refresh_from(state.seen)
        state.next_round(topology)
        for node, asking, indexes in state.route(topology):
            try:
                replies = self._send(node, asking, [state.calls[i] for i in indexes])
            except _RETRYABLE as exc:
                topology.forget(node)
                state.lost(node, indexes, exc)
            else:
                state.settle(node, indexes, replies)

    def run(self, calls: Sequence[Call]) -> list[Any]:
        """The replies of `calls`, in order (see the module doc for routing and retries)."""
        topology = self.topology
        if len(calls) == 1 and topology.loaded:  # a web request's emit: no planning
            slot = _slot_of(calls[0])
            node = topology.node_for_slot(slot) if slot is not None else None
            if node is not None:
                seen = topology.version
                try:
                    replies = self._send(node, False, calls)
                except _RETRYABLE as exc:
                    topology.forget(node)
                    state = _Run(calls, self.target, self.where, sent=seen)
                    state.lost(node, (0,), exc)
                else:
                    if not isinstance(replies[0], ResponseError | _Lost):
                        return replies
                    state = _Run(calls, self.target, self.where, sent=seen)
                    state.settle(node, (0,), replies)
                return self._finish(state)
        return self._finish(_Run(calls, self.target, self.where))

    def _finish(self, state: _Run) -> list[Any]:
        attempt = 0
        while True:
            if state.fatal is not None or not state.pending:
                return state.result()
            if state.wait:
                if attempt >= self._retries:
                    raise state.give_up(attempt + 1) from state.error
                time.sleep(backoff(attempt))
                attempt += 1
            try:
                self._round(state)
            except PublisherError:  # a refusal, already explained
                raise
            except _RETRYABLE as exc:  # no node gave a map
                state.error, state.error_at, state.wait = exc, self.where, True
            except redis.RedisError as exc:
                raise PublishError(f"Redis Cluster at {self.where} failed: {exc}") from exc

    def close(self) -> None:
        """Close every node's client (the transport owns them)."""
        self.topology.close()


class AsyncClusterTransport:
    """`SyncClusterTransport` for asyncio: `AsyncTransport`'s interface; the round trips of one
    `run` to different primaries go concurrently."""

    def __init__(self, target: ClusterTarget, *, retries: int = 3, where: str | None = None,
                 topology: AsyncClusterTopology | None = None, **redis_options: Any) -> None:
        self.topology = topology if topology is not None else AsyncClusterTopology(target, **redis_options)
        self.target = self.topology.target
        self.where = where or target.where
        self._retries = _check_retries(retries)

    def node_client(self, node: NodeAddress) -> redis.asyncio.Redis:
        """See `SyncClusterTransport.node_client`."""
        return self.topology.client(node)

    async def primaries(self) -> tuple[NodeAddress, ...]:
        """See `SyncClusterTransport.primaries`."""
        if not self.topology.loaded:
            await self.topology.refresh_from(0)
        return self.topology.primaries()

    async def for_each_primary(self, fn: Callable[[NodeAddress], Awaitable[T]]) -> dict[NodeAddress, T]:
        """`fn(node)` for every primary, concurrently; their results by node. For the gateway's
        own connections per shard: `node.client_kwargs()` has what one needs."""
        nodes = await self.primaries()
        results = await asyncio.gather(*(fn(node) for node in nodes))
        return dict(zip(nodes, results, strict=True))

    async def _send(self, node: NodeAddress, asking: bool, calls: Sequence[Call]) -> list[Any]:
        transport = self.topology.transport(node)
        known = self.topology.loaded_scripts.setdefault(node, set())
        learn = asking or any(call.script.sha not in known for call in calls)
        if learn:
            packed = _packed(calls, asking, lambda call: call.script.sha not in known)
        else:
            packed = b"".join([call.packed for call in calls])
        replies = await transport.roundtrip(packed, len(calls) * (2 if asking else 1))
        if asking:
            replies = replies[1::2]
        missing = _missing_scripts(replies)
        if missing:
            try:
                again = await transport.roundtrip(
                    _packed([calls[i] for i in missing], asking, lambda _call: True),
                    len(missing) * (2 if asking else 1))
            except _RETRYABLE as exc:
                self.topology.forget(node)
                again = [_Lost(exc)] * len(missing)
            else:
                again = again[1::2] if asking else again
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
            learn = True
        if learn:
            for call, reply in zip(calls, replies, strict=True):
                if not isinstance(reply, ResponseError | _Lost):
                    known.add(call.script.sha)
        return replies

    async def _round(self, state: _Run) -> None:
        topology = self.topology
        if state.refresh or not topology.loaded:
            await topology.refresh_from(state.seen)
        state.next_round(topology)
        groups = state.route(topology)
        if len(groups) == 1:  # the common case: no task to make
            node, asking, indexes = groups[0]
            outcomes: list[Any] = []
            try:
                outcomes.append(await self._send(node, asking, [state.calls[i] for i in indexes]))
            except _RETRYABLE as exc:
                outcomes.append(exc)
        else:
            outcomes = await asyncio.gather(
                *(self._send(node, asking, [state.calls[i] for i in indexes])
                  for node, asking, indexes in groups),
                return_exceptions=True)
        for (node, _asking, indexes), outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, _RETRYABLE):
                topology.forget(node)
                state.lost(node, indexes, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                state.settle(node, indexes, outcome)

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        """See `SyncClusterTransport.run`."""
        topology = self.topology
        if len(calls) == 1 and topology.loaded:
            slot = _slot_of(calls[0])
            node = topology.node_for_slot(slot) if slot is not None else None
            if node is not None:
                seen = topology.version
                try:
                    replies = await self._send(node, False, calls)
                except _RETRYABLE as exc:
                    topology.forget(node)
                    state = _Run(calls, self.target, self.where, sent=seen)
                    state.lost(node, (0,), exc)
                else:
                    if not isinstance(replies[0], ResponseError | _Lost):
                        return replies
                    state = _Run(calls, self.target, self.where, sent=seen)
                    state.settle(node, (0,), replies)
                return await self._finish(state)
        return await self._finish(_Run(calls, self.target, self.where))

    async def _finish(self, state: _Run) -> list[Any]:
        attempt = 0
        while True:
            if state.fatal is not None or not state.pending:
                return state.result()
            if state.wait:
                if attempt >= self._retries:
                    raise state.give_up(attempt + 1) from state.error
                await asyncio.sleep(backoff(attempt))
                attempt += 1
            try:
                await self._round(state)
            except PublisherError:
                raise
            except _RETRYABLE as exc:
                state.error, state.error_at, state.wait = exc, self.where, True
            except redis.RedisError as exc:
                raise PublishError(f"Redis Cluster at {self.where} failed: {exc}") from exc

    async def close(self) -> None:
        """See `SyncClusterTransport.close`."""
        await self.topology.close()
