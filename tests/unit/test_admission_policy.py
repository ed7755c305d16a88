"""Admission as pure policy: client addresses, the per-address bucket table, the refusal
value. The same rules against a real replica are in tests/hostile/test_admission.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import Settings, _networks
from gateway.policy.admission import DRAINING, IP_RATE_LIMITED, Admission, Refusal
from gateway.policy.ratelimit import KeyedBuckets, ip_key, parse_ip
from gateway.ws.head import Headers


@dataclass
class Request:
    remote: str | None
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=lambda: {"EIO": "4", "transport": "polling"})


class Metrics:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def handshake(self, outcome: str) -> None:
        self.outcomes.append(outcome)


def admission(**settings: object) -> Admission:
    values: dict[str, object] = {"handshake_rate_per_ip": 1.0}  # burst: 5
    values.update(settings)
    for name in ("trusted_proxies", "handshake_rate_exempt"):
        if isinstance(values.get(name), str):
            values[name] = _networks(str(values[name]))
    return Admission(Settings(**values), Metrics())  # type: ignore[arg-type]


def refused(adm: Admission, request: Request, n: int) -> list[Refusal | None]:
    return [adm.refusal(request) for _ in range(n)]


# -- IPv6: one bucket per /64 ----------------------------------------------------------------


@pytest.mark.parametrize(("address", "key"), [
    ("198.51.100.7", "198.51.100.7"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2:0:0:0:9", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),
    ("", ""),
    ("not-an-ip", "not-an-ip"),
])
def test_ip_key(address: str, key: str) -> None:
    assert ip_key(address, parse_ip(address)) == key


def test_an_ipv6_client_cannot_rotate_addresses_inside_its_64() -> None:
    adm = admission(handshake_rate_exempt="192.0.2.0/32")
    answers = [adm.refusal(Request(f"2001:db8:1:2::{i:x}")) for i in range(1, 13)]
    assert answers[:5] == [None] * 5
    assert answers[5:] == [IP_RATE_LIMITED] * 7
    assert adm.refusal(Request("2001:db8:1:3::1")) is None, "another /64 is another client"


# -- the table: bounded, least recently used forgotten ---------------------------------------


def test_a_full_table_forgets_the_least_recently_used_key_not_every_key() -> None:
    buckets = KeyedBuckets(rate=0.001, burst=1, max_keys=10)
    assert buckets.take("abuser", now=1.0)
    assert not buckets.take("abuser", now=1.0)  # empty for the next ~1000 s
    for i in range(8):
        assert buckets.take(f"other{i}", now=1.0)
    assert not buckets.take("abuser", now=1.0)  # used last: the newest key
    for i in range(8, 30):  # a flood of new addresses fills the table again and again
        assert buckets.take(f"other{i}", now=1.0)
        assert not buckets.take("abuser", now=1.0), f"the abuser's empty bucket was reset at key {i}"
        assert len(buckets) <= 10
    assert "other0" not in buckets, "the oldest keys are forgotten"


def test_a_forgotten_key_starts_again_with_a_full_bucket() -> None:
    buckets = KeyedBuckets(rate=0.001, burst=1, max_keys=2)
    assert buckets.take("a", now=1.0)
    assert buckets.take("b", now=1.0)
    assert buckets.take("c", now=1.0)
    assert "a" not in buckets
    assert len(buckets) == 2


# -- X-Forwarded-For and the exemption ---------------------------------------------------------


def test_the_exemption_applies_to_the_socket_peer() -> None:
    adm = admission()  # exempt: 127.0.0.0/8, ::1
    assert refused(adm, Request("127.0.0.1"), 20) == [None] * 20
    assert refused(adm, Request("::ffff:127.0.0.1"), 20) == [None] * 20


@pytest.mark.parametrize("claimed", ["127.0.0.1", "127.0.0.5", "::1", "10.0.0.1, 127.0.0.1"])
def test_an_address_from_x_forwarded_for_is_never_exempt(claimed: str) -> None:
    """A pod that can reach the replica from a trusted range claims to be a local probe."""
    adm = admission(trusted_proxies="10.0.0.0/8")
    answers = refused(adm, Request("10.1.2.3", {"X-Forwarded-For": claimed}), 12)
    assert answers[5:] == [IP_RATE_LIMITED] * 7, answers


def test_only_the_hop_the_trusted_proxy_appended_counts() -> None:
    adm = admission(trusted_proxies="10.0.0.0/8")
    assert adm.client_address(Request("10.1.2.3", {"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})) \
        == ("198.51.100.1", True)
    assert adm.client_address(Request("10.1.2.3", {"X-Forwarded-For": "203.0.113.9, 10.0.0.7"})) \
        == ("203.0.113.9", True)
    assert adm.client_address(Request("10.1.2.3", {"X-Forwarded-For": "10.0.0.9, 10.0.0.7"})) \
        == ("10.0.0.9", True), "every hop a proxy: the first one is the client"
    assert adm.client_address(Request("10.1.2.3")) == ("10.1.2.3", False)
    assert adm.client_address(Request("198.51.100.1", {"X-Forwarded-For": "203.0.113.9"})) \
        == ("198.51.100.1", False), "an untrusted peer's header is ignored"


def test_every_x_forwarded_for_line_counts_as_on_the_native_path() -> None:
    """A proxy that adds its own X-Forwarded-For line (HAProxy's `option forwardfor`) behind the
    client's: aiohttp's `headers.get` gives the first line only, the one the client wrote, and
    the client would choose its own rate-limit bucket. The native path (gateway/ws/head.py) joins
    the lines; the aiohttp path (polling) must read the same hops."""
    adm = admission(trusted_proxies="10.0.0.0/8")
    lines = CIMultiDict([("X-Forwarded-For", "192.0.2.66"), ("x-forwarded-for", "203.0.113.9")])
    assert adm.client_address(Request("10.1.2.3", CIMultiDictProxy(lines))) == ("203.0.113.9", True)
    assert adm.client_address(Request("10.1.2.3", Headers({"x-forwarded-for": "192.0.2.66, 203.0.113.9"}))) \
        == ("203.0.113.9", True)


def test_requests_of_an_existing_session_and_draining() -> None:
    adm = admission(handshake_rate_exempt="192.0.2.0/32")
    request = Request("198.51.100.1", query={"EIO": "4", "sid": "x"})
    assert refused(adm, request, 20) == [None] * 20
    adm.draining = True
    assert adm.refusal(Request("198.51.100.1")) is DRAINING
    assert (DRAINING.status, DRAINING.body(), DRAINING.headers()) == (503, {"error": "draining"}, {"Retry-After": "1"})
    assert (IP_RATE_LIMITED.status, IP_RATE_LIMITED.body()) == (429, {"error": "too_many_connections_from_address"})


# -- pure policy -------------------------------------------------------------------------------


def test_the_policy_package_does_no_io() -> None:
    """gateway/policy decides; the HTTP layer (gateway/sio/engine.py) builds responses."""
    code = ("import sys, gateway.policy.admission, gateway.policy.ratelimit; "
            "print(sorted(m for m in ('aiohttp', 'engineio', 'socketio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_module_of_the_policy_package_imports_io() -> None:
    """gateway/policy is decisions only: no web server or Socket.IO library. (The publisher package
    it takes the room grammar from brings redis-py's module along, but no connection.)"""
    modules = [f"gateway.policy.{path.stem}" for path in sorted(
        (Path(__file__).resolve().parents[2] / "gateway" / "policy").glob("*.py")) if path.stem != "__init__"]
    code = (f"import sys; import {', '.join(modules)}; "
            "print(sorted(m for m in ('aiohttp', 'engineio', 'socketio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"gateway/policy imports I/O libraries: {out.stdout.strip()}"
