"""Issue 15, the Node package end to end: clients/node-publisher's own tests (node:test, the real
socket.io-client, the package's built dist/) run from a Node test process against two real
gateway replicas, on one redis-server and on a Redis Cluster; and what the package writes on the
bus is what the Python publisher writes.

CI reaches the Node tests only through pytest (.ci/run -> scripts/test), so this module starts
the deployments, hands them to `node --test` in NGW_* variables and asserts that every Node test
ran and passed: a skip (no deployment seen) fails here.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from publisher import Publisher
from publisher.commands import Commands
from publisher.envelope import BusNames, Position, encode_control, encode_event
from publisher.events import sanitize
from tests.e2e.producers.node_package import build, run_node, run_node_tests, typecheck
from tests.support.gateway_proc import GatewayCluster
from tests.support.ports import free_port
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

# `npm ci` (a first run downloads ioredis, typescript and socket.io-client), the build, a Redis
# Cluster of six nodes and two replicas, then the Node tests: more than the default 120 s on a
# loaded CI machine.
pytestmark = pytest.mark.timeout(300)

SECRET = secrets.token_hex(32)
ENV = {
    "JWT_SECRET": SECRET,
    "PUBLISH_API_KEY": secrets.token_hex(16),
    "DRAIN_SECONDS": "0",
    "HANDSHAKE_RATE_PER_IP": "10000",  # every client here comes from 127.0.0.1
    "LOG_FORMAT": "text",
}
E2E_TESTS = 15  # test/e2e.test.mjs
UNIT_TESTS = 10  # test/unit.test.mjs


def _node_env(redis_url: str, replicas: GatewayCluster) -> dict[str, str]:
    return {
        "NGW_REDIS_URL": redis_url,
        "NGW_GATEWAYS": ",".join(replicas.urls),
        "NGW_JWT_SECRET": SECRET,
        "NGW_NOWHERE": f"http://127.0.0.1:{free_port()}",  # nothing listens: a client kept away
    }


@pytest.fixture(autouse=True)
def _logs() -> None:
    """This module starts deployments of its own and prints their logs itself: the directory's
    log fixture would start the bridge tests' replicas for nothing (it needs their deployment)."""


@pytest.fixture(scope="module")
def package() -> Path:
    return build()


def _print_logs(replicas: GatewayCluster) -> None:
    for replica in replicas:
        print(f"-- {replica!r} log:\n{replica.log_tail(150)}")


def test_build_gives_dist_with_types(package: Path) -> None:
    index, types = package / "dist" / "index.js", package / "dist" / "index.d.ts"
    assert index.is_file()
    assert types.is_file()
    declared = types.read_text(encoding="utf-8")
    assert "NotificationPublisher" in declared
    publisher_types = (package / "dist" / "publisher.d.ts").read_text(encoding="utf-8")
    for method in ("sendToUser", "sendToRoom", "broadcastToAll", "joinRoom", "leaveRoom", "disconnectUser",
                   "isOnline", "close"):
        assert re.search(rf"\b{method}(<E extends string>)?\(", publisher_types), method
    lock = json.loads((package / "package-lock.json").read_text(encoding="utf-8"))
    assert lock["packages"]["node_modules/ioredis"]["version"].startswith("5.11.")  # the checked range


def test_contract_payloads_are_type_checked(package: Path) -> None:
    """The five contract events take their generated payload types (a wrong field type or a
    missing field does not compile), any other event any JSON; the docs' NestJS service too."""
    done = typecheck()
    assert done.returncode == 0, done.stdout + done.stderr
    types = (package / "test" / "types.ts").read_text(encoding="utf-8")
    assert types.count("@ts-expect-error") >= 5


def test_node_tests_on_one_redis(package: Path, shared_redis: RedisServer) -> None:
    """`npm test`'s files: the unit tests, and every end-to-end test on two replicas of one Redis."""
    with GatewayCluster(2, shared_redis.url, ENV) as replicas:
        summary = run_node_tests(["test/unit.test.mjs", "test/e2e.test.mjs"], _node_env(shared_redis.url, replicas))
        if summary.failed:
            _print_logs(replicas)
    summary.assert_all_passed(E2E_TESTS + UNIT_TESTS)


def test_node_tests_on_redis_cluster(package: Path) -> None:
    """The end-to-end tests again, the package and both replicas on a redis+cluster:// URL."""
    with RedisCluster() as cluster:
        url = cluster.url()
        with GatewayCluster(2, url, ENV) as replicas:
            summary = run_node_tests(["test/e2e.test.mjs"], _node_env(url, replicas))
            if summary.failed:
                _print_logs(replicas)
                print(cluster.logs())
    summary.assert_all_passed(E2E_TESTS)


GOLDEN_CASES: list[dict[str, Any]] = [
    {"event": "coins:earned", "data": {"amount": 50, "reason": "exercise_completed", "newBalance": 1250},
     "room": "user:42"},
    {"event": "notification:new", "room": "classroom:7", "data": {
        "id": "n-1", "userId": None, "type": "info", "title": "Añadido ✓ «quote\" \\ slash»",
        "message": "line\nnext\ttab\r, emoji 😀, U+2028 \u2028 end", "read": False,
        "createdAt": "2024-05-01T12:00:00.000Z", "data": {"nested": [[1, [2, [3]]], {"k": -0.25}], "big": 2**53 - 1}}},
    {"event": "system:notice", "data": "plain string", "room": None},
    {"event": "x.y-z_1", "data": [None, True, False, 0, -1, 1.5, "", {}], "room": "quiz:9"},
    {"event": "odd", "data": {"": 1, "a b": {"1": 2}}, "room": "Room Ñ 12"},
]


def test_envelopes_are_the_python_publishers(package: Path, shared_redis: RedisServer) -> None:
    """The package writes the Python publisher's envelope (what a replica reads from history and
    from the channel), byte for byte but the timestamp: checked in the history streams both
    wrote to, and for the encoders with the same timestamp, control messages included."""
    client = shared_redis.client()
    prefix = "golden" + secrets.token_hex(3)
    script = """
import { NotificationPublisher, encodeEvent, encodeControl, sanitize } from "./dist/index.js";
const [url, prefix, casesJson] = process.argv.slice(1);
const cases = JSON.parse(casesJson);
const publisher = new NotificationPublisher(url, { keyPrefix: prefix });
const out = { encoded: [], control: [] };
for (const c of cases) {
  if (c.room === null) await publisher.broadcastToAll(c.event, c.data);
  else if (c.room.startsWith("user:")) await publisher.sendToUser(c.room.slice(5), c.event, c.data);
  else await publisher.sendToRoom(c.room, c.event, c.data);
  out.encoded.push(encodeEvent(c.event, sanitize(c.data, 65536), c.room, 1714564800123.25));
}
out.control.push(encodeControl("join", "42", [["quiz:9", "1714564800000-3"], ["123", "5-0"]], 1714564800123.25));
out.control.push(encodeControl("leave", "42", [["quiz:9", "1714564800001-18446744073709551615"]], 17));
out.control.push(encodeControl("kick", "42", null, 1714564800123));
await publisher.close();
console.log(JSON.stringify(out));
"""
    out = json.loads(run_node(script, shared_redis.url, prefix, json.dumps(GOLDEN_CASES)))
    names = BusNames(key_prefix=prefix)
    with Publisher(shared_redis.url, key_prefix=prefix) as python:
        for case in GOLDEN_CASES:
            if case["room"] is None:
                python.emit(case["event"], case["data"], broadcast=True)
            else:
                python.emit(case["event"], case["data"], room=case["room"])
    for case, node_encoded in zip(GOLDEN_CASES, out["encoded"], strict=True):
        expected = encode_event(case["event"], sanitize(case["data"]), case["room"], 1714564800123.25)
        assert node_encoded.encode() == expected
        entries = client.xrange(names.history_key(case["room"] or "*"))
        assert len(entries) == 2, entries
        node_m, python_m = (fields[b"m"] for _, fields in entries)
        assert _without_t(node_m) == _without_t(python_m)
        assert json.loads(node_m)["t"] > 0
    at = {"quiz:9": Position(1714564800000, 3), "123": Position(5, 0)}
    assert out["control"][0].encode() == encode_control("join", "42", at, 1714564800123.25)
    left = {"quiz:9": Position(1714564800001, 18446744073709551615)}
    assert out["control"][1].encode() == encode_control("leave", "42", left, 17)
    assert out["control"][2].encode() == encode_control("kick", "42", None, 1714564800123)


def _without_t(envelope: bytes) -> bytes:
    head, _, rest = envelope.partition(b',"t":')
    return head + b',"t":0,' + rest.partition(b",")[2]


def _nested(levels: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(levels - 1):
        value = [value]
    return value


REFUSALS: dict[str, list[Any]] = {
    "room": ["", "x" * 301, "😀" * 301, "a{b", "b}", "tab\there", "nul\x00", "c1\x85", "admin:x", "admin:", "user:",
             "teacher:", "classroom:" + "9" * 257, "user:a{b", "quiz:9", "User:1", "admin:all", "ok room ñ",
             "x" * 300, "user:" + "u" * 256, 'it\'s "quoted"'],
    "event": ["", "connect", "disconnect", "newListener", "a b", "x" * 65, "x" * 64, "coins:earned", "ñ", "a/b"],
    "payload": [
        {"s": "a\x00b"}, {"k\x7f": 1}, {"n": 2**53}, {"n": -(2**53)}, {"n": 2**53 - 1}, {"a b": {"c": [0, "\x1b"]}},
        {"x": "a" * 65530}, {"x": "a" * 65526}, {"x": "é" * 40000}, _nested(32), _nested(33),
        {"ok": ["\t\n\r", None, 1.5]},
    ],
    "join": [["42", "user:43"], ["42", "teacher:43"], ["42", "teacher:42"], ["42", "user:42"], ["42", "admin:all"],
             ["42", "classroom:1"]],
    "leave": [["42", "user:42"], ["42", "user:43"], ["42", "classroom:1"]],
}


def _python_refusal(kind: str, case: Any) -> str | None:
    from publisher.envelope import KIND_JOIN, KIND_LEAVE
    from publisher.events import check_event_name
    from publisher.rooms import parse_room

    commands = Commands(BusNames())
    try:
        if kind == "room":
            parse_room(case)
        elif kind == "event":
            check_event_name(case)
        elif kind == "payload":
            sanitize(case)
        else:
            commands.rooms(KIND_JOIN if kind == "join" else KIND_LEAVE, case[0], case[1])
    except ValueError as exc:
        return str(exc)
    return None


def test_refusals_are_the_python_publishers(package: Path, tmp_path: Path) -> None:
    """The same inputs are refused, with the same messages, by the package and by the Python
    publisher: the room grammar, event names, payload rules, and who may join or leave what."""
    script = """
import { readFileSync } from "node:fs";
import { Redis } from "ioredis";
import { NotificationPublisher, checkEventName, parseRoom, sanitize } from "./dist/index.js";
const cases = JSON.parse(readFileSync(process.argv[1], "utf8"));
// Nothing to reach: a call that passes its checks fails at Redis (PublishError), at once.
const nowhere = new Redis({ host: "127.0.0.1", port: 1, lazyConnect: true, retryStrategy: () => null,
  maxRetriesPerRequest: 0 });
const publisher = new NotificationPublisher(nowhere);
const refusal = async (fn) => {
  try { await fn(); return null; } catch (err) { return err.name === "PublishError" ? null : err.message; }
};
const out = {};
for (const [kind, list] of Object.entries(cases)) {
  out[kind] = [];
  for (const c of list) {
    if (kind === "room") out[kind].push(await refusal(() => parseRoom(c)));
    else if (kind === "event") out[kind].push(await refusal(() => checkEventName(c)));
    else if (kind === "payload") out[kind].push(await refusal(() => sanitize(c, 65536)));
    else if (kind === "join") out[kind].push(await refusal(() => publisher.joinRoom(c[0], c[1])));
    else out[kind].push(await refusal(() => publisher.leaveRoom(c[0], c[1])));
  }
}
nowhere.disconnect();
console.log(JSON.stringify(out));
"""
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(REFUSALS), encoding="utf-8")
    node = json.loads(run_node(script, str(cases)))
    for kind, cases in REFUSALS.items():
        for case, got in zip(cases, node[kind], strict=True):
            assert got == _python_refusal(kind, case), (kind, case)


SEND_AND_ASK = """
import { NotificationPublisher } from "./dist/index.js";
const publisher = new NotificationPublisher(process.argv[1]);
const position = await publisher.sendToRoom("classroom:7", "coins:earned",
  { amount: 1, reason: "url form", newBalance: 1 });
const online = await publisher.isOnline(42);
await publisher.close();
console.log(JSON.stringify({ position, online }));
"""


def _sent(url: str, client: Any) -> None:
    """The package, given `url`, puts its event in classroom:7's history on the Redis `client`
    reads, at the position it resolved to."""
    out = json.loads(run_node(SEND_AND_ASK, url))
    assert out["online"] is False
    entries = client.xrange(BusNames().history_key("classroom:7"))
    assert [entry_id.decode() for entry_id, _ in entries][-1] == out["position"]
    assert json.loads(entries[-1][1][b"m"])["d"]["reason"] == "url form"


def test_sentinel_url(package: Path) -> None:
    """redis+sentinel://: the sentinels are asked where the primary is."""
    from tests.support.sentinel import SentinelSetup

    with SentinelSetup() as setup:
        _sent(setup.url, setup.server(setup.primary_port()).client())


def test_unix_socket_url(package: Path, tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(None, "--unixsocket", str(socket_path), "--unixsocketperm", "700").start()
    try:
        _sent(f"unix://{socket_path}?db=0", server.client())
    finally:
        server.stop()
