"""publisher.cluster without a Redis: the URL, key slots, the slot map, and how a run routes,
follows redirections and retries, against a fake cluster that answers as Redis would."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from redis.exceptions import AskError, MovedError, ResponseError, TryAgainError

from publisher.cluster import (
    MAX_REDIRECTS,
    AsyncClusterTopology,
    AsyncClusterTransport,
    ClusterModeError,
    ClusterTarget,
    ClusterTopology,
    ClusterUnreachable,
    NodeAddress,
    SyncClusterTransport,
    cluster_url_for,
    is_cluster_url,
    key_slot,
    parse_cluster_url,
)
from publisher.commands import Call
from publisher.errors import PublishError
from publisher.scripts import Script

# -- the URL ---------------------------------------------------------------------------------


def test_one_node_with_the_default_port() -> None:
    target = parse_cluster_url("redis+cluster://redis-0")
    assert target.seeds == (("redis-0", 6379),)
    assert target.tls is False
    assert target.username is None
    assert target.password is None
    assert dict(target.options) == {}
    assert target.where == "redis+cluster://redis-0"


def test_several_nodes_credentials_and_an_ipv6_address() -> None:
    target = parse_cluster_url("redis+cluster://app:s%2Fcr%40t@10.0.0.1:7000, 10.0.0.2 ,[::1]:7002/")
    assert target.seeds == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (target.username, target.password) == ("app", "s/cr@t")
    assert "s/cr@t" not in repr(target)
    assert "s%2Fcr%40t" not in target.where


def test_a_password_alone_and_a_repeated_seed() -> None:
    target = parse_cluster_url("redis+cluster://:pw@h:1,h:1,h:2/0")
    assert target.seeds == (("h", 1), ("h", 2))
    assert (target.username, target.password) == (None, "pw")


def test_tls_and_its_options() -> None:
    target = parse_cluster_url(
        "rediss+cluster://h:6380?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=Required"
        "&ssl_check_hostname=false&socket_timeout=1.5&ssl_password=x"
    )
    assert target.tls is True
    assert dict(target.options) == {
        "ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required", "ssl_check_hostname": False,
        "socket_timeout": 1.5, "ssl_password": "x",
    }
    assert target.where.endswith("ssl_password=***")
    node = target.node("10.1.1.1", 7000)
    assert node.client_kwargs() == {
        "host": "10.1.1.1", "port": 7000, "ssl": True, "ssl_ca_certs": "/etc/ca.pem",
        "ssl_cert_reqs": "required", "ssl_check_hostname": False, "ssl_password": "x",
    }


def test_a_node_address_is_its_host_and_port() -> None:
    a = NodeAddress("h", 1, tls=True, username="u", password="secret")
    assert a == NodeAddress("h", 1)
    assert hash(a) == hash(NodeAddress("h", 1))
    assert "secret" not in repr(a)
    assert str(a) == "h:1"
    assert str(NodeAddress("::1", 2)) == "[::1]:2"
    assert a.client_kwargs() == {"host": "h", "port": 1, "username": "u", "password": "secret", "ssl": True}


@pytest.mark.parametrize(("url", "says"), [
    ("", "empty"),
    ("redis://h:1/0", "unsupported scheme 'redis'"),
    ("redis+sentinel://h:1/0/m", "unsupported scheme"),
    ("redis+cluster://", "no node address"),
    ("redis+cluster://h:1,,h:2", "empty address"),
    ("redis+cluster://:7000", "has no host"),
    ("redis+cluster://h:0", "bad port"),
    ("redis+cluster://h:65536", "bad port"),
    ("redis+cluster://h:port", "bad port"),
    ("redis+cluster://::1:7000", "IPv6 address in brackets"),
    ("redis+cluster://[::1:7000", "IPv6 address is written"),
    ("redis+cluster://h:1/1", "database 0 only"),
    ("redis+cluster://h:1/db", "database 0 only"),
    ("redis+cluster://h:1?foo=1", "unknown option 'foo'"),
    ("redis+cluster://h:1?ssl_ca_certs=/ca.pem", "needs TLS: use rediss+cluster://"),
    ("redis+cluster://h:1?socket_timeout=0", "socket_timeout='0'"),
    ("redis+cluster://h:1?socket_timeout=soon", "positive number"),
    ("redis+cluster://h:1?socket_keepalive=maybe", "true or false"),
    ("redis+cluster://h:1?max_connections=-1", "whole number"),
    ("redis+cluster://h:1?socket_timeout=1&socket_timeout=2", "given twice"),
    ("rediss+cluster://h:1?ssl_cert_reqs=always", "none, optional or required"),
])
def test_what_is_wrong_is_named(url: str, says: str) -> None:
    with pytest.raises(ValueError, match="Redis Cluster URL") as info:
        parse_cluster_url(url)
    assert says in str(info.value)


@pytest.mark.parametrize("url", [
    "redis+cluster://user:hunter2@h:1/5",
    "redis+cluster://user:hunter2@h:port",
    "redis+cluster://user:hunter2@h:1?nope=1",
    "redis+cluster://user:hun/ter2@h:1",
    "redis+cluster://user:hunter2@h:1#x",
    "rediss+cluster://h:1?ssl_password=hunter2&ssl_cert_reqs=bad",
    "rediss+cluster://h:1?ssl_cert_reqs=bad&ssl_password=hunter2",
])
def test_credentials_stay_out_of_the_errors(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cluster_url(url)
    assert "hunter2" not in str(info.value)
    assert "hun" not in str(info.value).replace("hunter", "")


def test_which_urls_name_a_cluster() -> None:
    assert is_cluster_url("redis+cluster://h:1")
    assert is_cluster_url(" REDISS+CLUSTER://h:1")
    assert not is_cluster_url("redis://h:1/0")
    assert not is_cluster_url("redis+sentinel://h:1/0/m")


def test_the_cluster_url_to_write_instead() -> None:
    assert cluster_url_for("redis://10.0.0.1:7000/0") == "redis+cluster://10.0.0.1:7000"
    assert cluster_url_for("rediss://u:pw@h:1/0?ssl_cert_reqs=none") == "rediss+cluster://u:***@h:1"


def test_host_and_port_belong_to_the_url_not_to_the_options() -> None:
    with pytest.raises(TypeError, match="host="):
        SyncClusterTransport(parse_cluster_url("redis+cluster://h:1"), host="x")


def test_keyword_credentials_and_tls_options_win() -> None:
    target = parse_cluster_url("rediss+cluster://u:a@h:1?ssl_ca_certs=/a.pem")
    topology = ClusterTopology(target, password="b", ssl_ca_certs="/b.pem")
    node = topology.target.node("n", 2)
    assert node.password == "b"
    assert node.client_kwargs()["ssl_ca_certs"] == "/b.pem"
    kwargs = topology.client(node).connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["password"], kwargs["ssl_ca_certs"]) == ("n", 2, "b", "/b.pem")
    topology.close()


# -- key slots --------------------------------------------------------------------------------


def test_key_slots_are_those_of_cluster_keyslot() -> None:
    # values of CLUSTER KEYSLOT
    assert key_slot("foo") == 12182
    assert key_slot(b"bar") == 5061
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == key_slot("foo{}{bar}")  # an empty tag: the whole key
    assert key_slot("foo{}{bar}") != key_slot("bar")
    assert key_slot("é") == key_slot("é".encode())


# -- the slot map ------------------------------------------------------------------------------

SEED = NodeAddress("10.0.0.1", 7000)


def _entry(host: str, port: int) -> list[Any]:
    return [host.encode(), port, b"id-" + host.encode() + b"%d" % port, []]


def test_the_map_from_cluster_slots() -> None:
    topology = ClusterTopology(parse_cluster_url("redis+cluster://10.0.0.1:7000"))
    assert not topology.loaded
    assert topology.node_for_slot(0) is None
    reply = [
        [10923, 16383, _entry("10.0.0.3", 7002), _entry("10.0.0.6", 7005)],
        [0, 5460, _entry("", 7000), _entry("10.0.0.4", 7003)],  # "": as we reached it
        [5461, 10922, _entry("10.0.0.2", 7001)],
    ]
    assert topology.apply_slots(reply, SEED)
    assert topology.loaded
    a, b, c = NodeAddress("10.0.0.1", 7000), NodeAddress("10.0.0.2", 7001), NodeAddress("10.0.0.3", 7002)
    assert topology.primaries() == (a, b, c)
    assert topology.node_for_slot(0) == a
    assert topology.node_for_slot(5461) == b
    assert topology.node_for_slot(16383) == c
    assert topology.slots_of(a) == [(0, 5460)]
    assert topology.replicas_of(c) == (NodeAddress("10.0.0.6", 7005),)
    assert topology.replicas_of(b) == ()
    one = topology.apply_slots([[0, 99, _entry("h", 1)], [100, 199, _entry("h", 2)], [200, 16383, _entry("h", 1)]],
                               SEED)
    assert one
    assert topology.table()[0] is topology.table()[16383]  # one object per node: routing groups by it
    assert topology.slots_of(NodeAddress("h", 1)) == [(0, 99), (200, 16383)]
    assert topology.apply_slots(reply, SEED)
    topology.assign(100, c)
    assert topology.table()[100] is topology.table()[16383]
    assert topology.slots_of(a) == [(0, 99), (101, 5460)]
    assert topology.slots_of(c) == [(100, 100), (10923, 16383)]
    assert topology.apply_slots([], SEED) is False  # a node that serves nothing yet: kept the map
    assert topology.node_for_slot(0) == a
    topology.close()


class FakeNode:
    """What ClusterTopology.refresh asks a node: a reply to CLUSTER SLOTS, or a failure."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked = 0

    def roundtrip(self, packed: bytes, count: int) -> list[Any]:
        self.asked += 1
        if isinstance(self.answer, Exception) and not isinstance(self.answer, ResponseError):
            raise self.answer  # a refusal is a reply, a connection error is raised
        return [self.answer]


class Seeds(ClusterTopology):
    def __init__(self, target: ClusterTarget, answers: dict[int, Any]) -> None:
        super().__init__(target)
        self.fakes = {port: FakeNode(answer) for port, answer in answers.items()}

    def transport(self, node: NodeAddress) -> Any:
        return self.fakes[node.port]


def test_a_seed_that_is_down_is_passed_over() -> None:
    target = parse_cluster_url("redis+cluster://h:1,h:2")
    topology = Seeds(target, {1: redis.ConnectionError("refused"), 2: [[0, 16383, _entry("h", 2)]]})
    topology.refresh()
    assert topology.primaries() == (NodeAddress("h", 2),)
    topology.fakes[2].answer = [[0, 16383, _entry("h", 3)]]
    topology.fakes[3] = FakeNode([[0, 16383, _entry("h", 3)]])
    topology.refresh()  # the node that answered last is asked first
    assert topology.fakes[2].asked == 2
    assert topology.fakes[1].asked == 1


def test_no_node_answering_is_a_connection_error_naming_each() -> None:
    topology = Seeds(parse_cluster_url("redis+cluster://h:1,h:2"),
                     {1: redis.ConnectionError("refused 1"), 2: redis.TimeoutError("slow 2")})
    with pytest.raises(ClusterUnreachable, match=r"h:1: refused 1; h:2: slow 2") as info:
        topology.refresh()
    assert isinstance(info.value, redis.ConnectionError)


def test_a_redis_without_cluster_support_is_named() -> None:
    topology = Seeds(parse_cluster_url("redis+cluster://u:hunter2@h:1"),
                     {1: ResponseError("This instance has cluster support disabled")})
    with pytest.raises(ClusterModeError, match=r"without cluster support.*write redis://h:1/0") as info:
        topology.refresh()
    assert "hunter2" not in str(info.value)


def test_a_node_refusing_cluster_slots_is_not_asked_around() -> None:
    topology = Seeds(parse_cluster_url("redis+cluster://h:1,h:2"),
                     {1: ResponseError("NOPERM no permissions"), 2: [[0, 16383, _entry("h", 2)]]})
    with pytest.raises(PublishError, match="h:1 refused CLUSTER SLOTS: NOPERM"):
        topology.refresh()


# -- runs against a fake cluster ---------------------------------------------------------------

_SOURCE = b"return redis.call('INCR', KEYS[1])"
INCR = Script("incr.lua", _SOURCE, hashlib.sha1(_SOURCE, usedforsecurity=False).hexdigest())


def incr(key: str) -> Call:
    return Call.of(INCR, 1, key)


def keyless() -> Call:
    return Call.of(INCR, 0)


class FakeCluster:
    """Nodes on ports 1..n sharing the slots; answers MOVED, ASK, TRYAGAIN as Redis would."""

    def __init__(self, ports: Sequence[int] = (1, 2, 3)) -> None:
        share = 16384 // len(ports)
        self.owner = [ports[min(slot // share, len(ports) - 1)] for slot in range(16384)]
        self.data: dict[int, dict[str, int]] = {port: {} for port in ports}
        self.migrating: dict[int, int] = {}  # slot: target port
        self.down: set[int] = set()
        self.tryagain = 0  # how many calls answer TRYAGAIN before any runs
        self.refusing: set[str] = set()
        self.sends: list[tuple[int, bool, list[str]]] = []
        self.stale_map: list[int] | None = None  # what CLUSTER SLOTS says, if not the truth

    def slots_reply(self) -> list[Any]:
        owner = self.stale_map or self.owner
        reply, start = [], 0
        for slot in range(1, 16385):
            if slot == 16384 or owner[slot] != owner[start]:
                reply.append([start, slot - 1, _entry("h", owner[start])])
                start = slot
        return reply

    def send(self, port: int, asking: bool, calls: Sequence[Call]) -> list[Any]:
        keys = [str(call.args[1]) if call.args[0] else "" for call in calls]
        self.sends.append((port, asking, keys))
        if port in self.down:
            raise redis.ConnectionError(f"Error 111 connecting to h:{port}. Connection refused.")
        replies: list[Any] = []
        for key in keys:
            slot = key_slot(key) if key else None
            if self.tryagain:
                self.tryagain -= 1
                replies.append(TryAgainError("Multiple keys request during rehashing of slot"))
            elif slot is not None and self.owner[slot] != port and not (
                    asking and self.migrating.get(slot) == port):
                replies.append(MovedError(f"{slot} h:{self.owner[slot]}"))
            elif slot is not None and slot in self.migrating and self.owner[slot] == port \
                    and key not in self.data[port]:
                replies.append(AskError(f"{slot} h:{self.migrating[slot]}"))
            elif key in self.refusing:
                replies.append(ResponseError("boom"))
            else:
                store = self.data[port]
                store[key] = store.get(key, 0) + 1
                replies.append(store[key])
        return replies

    def move(self, slot: int, to: int) -> None:
        """A finished migration: the slot and its keys now on `to`."""
        source = self.owner[slot]
        for key in [k for k in self.data[source] if k and key_slot(k) == slot]:
            self.data[to][key] = self.data[source].pop(key)
        self.owner[slot] = to


class FakeTopology(ClusterTopology):
    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(parse_cluster_url("redis+cluster://h:1"))
        self.cluster = cluster
        self.refreshes = 0

    def refresh(self) -> None:
        self.refreshes += 1
        if len(self.cluster.down) == 3:
            raise ClusterUnreachable("no node of the cluster answered")
        self.apply_slots(self.cluster.slots_reply(), NodeAddress("h", 1))


class FakeTransport(SyncClusterTransport):
    def __init__(self, cluster: FakeCluster, retries: int = 3) -> None:
        self.fake = FakeTopology(cluster)
        super().__init__(self.fake.target, retries=retries, topology=self.fake)
        self.cluster = cluster

    def _send(self, node: NodeAddress, asking: bool, calls: Sequence[Call]) -> list[Any]:
        return self.cluster.send(node.port, asking, calls)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("publisher.cluster.transports.time.sleep", slept.append)
    return slept


def _keys_on(cluster: FakeCluster, port: int, count: int) -> list[str]:
    """`count` keys served by `port`, each in a slot of its own."""
    slots = {key_slot(f"k{i}"): f"k{i}" for i in reversed(range(2000))}
    return [key for slot, key in sorted(slots.items()) if cluster.owner[slot] == port][:count]


def test_calls_go_to_their_slots_owner_one_round_trip_each_replies_in_order() -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster)
    keys = [f"k{i}" for i in range(30)]
    assert transport.run([incr(k) for k in keys]) == [1] * 30
    assert transport.run([incr(k) for k in keys] + [incr("k0")]) == [2] * 30 + [3]
    assert transport.fake.refreshes == 1
    assert len(cluster.sends) == 6  # one per primary per run
    for port, asking, sent in cluster.sends[:3]:
        assert not asking
        assert all(cluster.owner[key_slot(k)] == port for k in sent)
        assert sent == sorted(sent, key=keys.index)  # in call order
    assert {port for port, _, _ in cluster.sends} == {1, 2, 3}


def test_calls_without_keys_go_together_to_one_primary() -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster)
    assert transport.run([keyless(), incr("k1"), keyless(), keyless()]) == [1, 1, 2, 3]
    keyless_sends = [sent for _, _, sent in cluster.sends if "" in sent]
    assert len(keyless_sends) == 1


def test_moved_refreshes_the_map_and_resends_only_the_moved_calls() -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster)
    one, two = _keys_on(cluster, 1, 2)
    other = _keys_on(cluster, 2, 1)[0]
    transport.run([incr(one), incr(two), incr(other)])
    cluster.move(key_slot(one), 3)
    cluster.sends.clear()
    assert transport.run([incr(one), incr(two), incr(other), incr(one)]) == [2, 2, 2, 3]
    assert transport.fake.refreshes == 2
    assert transport.topology.node_for_slot(key_slot(one)) == NodeAddress("h", 3)
    sent_to_3 = [sent for port, _, sent in cluster.sends if port == 3]
    assert sent_to_3 == [[one, one]]  # in order, once each
    assert cluster.data[3][one] == 3
    # node 3 now serves two ranges: still one round trip per node
    cluster.sends.clear()
    transport.run([incr(f"k{i}") for i in range(200)])
    assert sorted(port for port, _, _ in cluster.sends) == [1, 2, 3]


@pytest.mark.parametrize("stale", [True, False])
def test_a_single_call_moved_refreshes_the_map_once(stale: bool) -> None:
    """A MOVED wins over the refreshed map of a node that has not heard of the move yet."""
    cluster = FakeCluster()
    transport = FakeTransport(cluster)
    key = _keys_on(cluster, 1, 1)[0]
    transport.run([incr(key)])
    cluster.stale_map = list(cluster.owner) if stale else None
    cluster.move(key_slot(key), 2)
    assert transport.run([incr(key)]) == [2]
    assert transport.topology.node_for_slot(key_slot(key)) == NodeAddress("h", 2)
    assert transport.fake.refreshes == 2
    assert [port for port, _, _ in cluster.sends] == [1, 1, 2]


def test_ask_sends_asking_then_the_call_and_keeps_the_map() -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster)
    present, absent = _keys_on(cluster, 1, 2)
    transport.run([incr(present)])
    cluster.migrating[key_slot(absent)] = 3
    cluster.migrating[key_slot(present)] = 3
    cluster.sends.clear()
    assert transport.run([incr(absent), incr(absent), incr(present)]) == [1, 2, 2]
    assert (3, True, [absent, absent]) in cluster.sends
    assert transport.topology.node_for_slot(key_slot(absent)) == NodeAddress("h", 1)
    assert transport.fake.refreshes == 1
    assert cluster.data[3] == {absent: 2}


def test_held_back_calls_of_a_slot_keep_their_order() -> None:
    """The first held-back call of a slot decides where all of its slot go next: a TRYAGAIN
    first and an ASK after it both go back to the owner, in order."""
    cluster = FakeCluster()
    transport = FakeTransport(cluster)
    key = _keys_on(cluster, 1, 1)[0]
    cluster.tryagain = 1
    cluster.migrating[key_slot(key)] = 3
    assert transport.run([incr(key), incr(key)]) == [1, 2]
    assert [(port, asking, sent) for port, asking, sent in cluster.sends] == [
        (1, False, [key, key]), (1, False, [key, key]), (3, True, [key, key])]


def test_tryagain_is_retried_with_backoff_within_the_budget(no_sleep: list[float]) -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster, retries=2)
    cluster.tryagain = 2
    assert transport.run([incr("k1")]) == [1]
    assert no_sleep == [0.05, 0.1]
    cluster.tryagain = 3
    with pytest.raises(PublishError, match=r"still answered TRYAGAIN .* after 3 attempt\(s\), the last from h:"):
        transport.run([incr("k1")])


def test_a_node_down_costs_the_budget_then_a_clear_error() -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster, retries=2)
    down, up = _keys_on(cluster, 1, 1)[0], _keys_on(cluster, 2, 1)[0]
    cluster.down.add(1)
    with pytest.raises(PublishError, match=r"could not reach Redis at h:1 \(redis\+cluster://h:1\) after 3 attempt"):
        transport.run([incr(down), incr(up)])
    assert cluster.data[2] == {up: 1}  # the call that got through is not sent again
    assert sum(1 for port, _, _ in cluster.sends if port == 1) == 3


@pytest.mark.parametrize("batch", [1, 3])
def test_a_failover_during_the_retries_is_followed(no_sleep: list[float], batch: int) -> None:
    """The connection fails; the refreshed map names the promoted replica: the call goes there
    after one backoff."""
    cluster = FakeCluster((1, 2, 3, 4))
    transport = FakeTransport(cluster)
    key = _keys_on(cluster, 1, 1)[0]
    transport.run([incr(key)])
    cluster.down.add(1)
    for slot in range(16384):
        if cluster.owner[slot] == 1:
            cluster.owner[slot] = 4
    assert transport.run([incr(key)] * batch) == list(range(1, batch + 1))  # replication lost the first
    assert cluster.sends[-1] == (4, False, [key] * batch)
    assert no_sleep == [0.05]
    assert transport.fake.refreshes == 2


def test_no_node_reachable_is_retried_then_raised() -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster, retries=1)
    transport.run([incr("k1")])
    cluster.down.update({1, 2, 3})
    with pytest.raises(PublishError, match=r"after 2 attempt.*no node of the cluster answered"):
        transport.run([incr("k1")])


def test_redirections_are_bounded() -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster)
    key = _keys_on(cluster, 1, 1)[0]
    transport.run([incr(key)])
    cluster.stale_map = list(cluster.owner)
    real = cluster.send

    def bouncing(port: int, asking: bool, calls: Sequence[Call]) -> list[Any]:
        cluster.sends.append((port, asking, ["?"]))
        return [MovedError(f"{key_slot(key)} h:{2 if port == 1 else 1}") for _ in calls]

    cluster.send = bouncing  # type: ignore[method-assign]
    with pytest.raises(PublishError, match=f"redirected more than {MAX_REDIRECTS} times"):
        transport.run([incr(key)])
    assert len(cluster.sends) == MAX_REDIRECTS + 2
    cluster.send = real  # type: ignore[method-assign]


def test_a_refusal_names_the_call_and_the_node_after_the_others_ran() -> None:
    cluster = FakeCluster()
    transport = FakeTransport(cluster)
    cluster.refusing.add("k2")
    with pytest.raises(PublishError, match=r"Redis at h:\d \(redis\+cluster://h:1\) refused call 2 of 3: boom"):
        transport.run([incr("k1"), incr("k2"), incr("k3")])
    assert sum(len(d) for d in cluster.data.values()) == 2


class FakeAsyncTopology(AsyncClusterTopology):
    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(parse_cluster_url("redis+cluster://h:1"))
        self.cluster = cluster

    async def refresh(self) -> None:
        self.apply_slots(self.cluster.slots_reply(), NodeAddress("h", 1))


class FakeAsyncTransport(AsyncClusterTransport):
    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(parse_cluster_url("redis+cluster://h:1"), topology=FakeAsyncTopology(cluster))
        self.cluster = cluster

    async def _send(self, node: NodeAddress, asking: bool, calls: Sequence[Call]) -> list[Any]:
        return self.cluster.send(node.port, asking, calls)


async def test_async_runs_route_and_follow_moved_the_same_way() -> None:
    cluster = FakeCluster()
    transport = FakeAsyncTransport(cluster)
    keys = [f"k{i}" for i in range(20)]
    assert await transport.run([incr(k) for k in keys]) == [1] * 20
    cluster.move(key_slot("k3"), 1 if cluster.owner[key_slot("k3")] != 1 else 2)
    assert await transport.run([incr(k) for k in keys]) == [2] * 20
    assert await transport.run([incr("k3")]) == [3]
    primaries = await transport.for_each_primary(_port)
    assert sorted(primaries.values()) == [1, 2, 3]
    await transport.close()


async def _port(node: NodeAddress) -> int:
    return node.port
