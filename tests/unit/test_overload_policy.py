"""Shedding new connections while the replica is overloaded (gateway/policy/overload.py): the
signals, and how admission applies them. The whole storm against real replicas is
tests/hostile/test_reconnect_storm.py."""

from __future__ import annotations

import asyncio
import time

from gateway.config import Settings, _networks
from gateway.policy.admission import IP_RATE_LIMITED, OVERLOADED, Admission
from gateway.policy.overload import LoopLag, Overload
from tests.unit.test_admission_policy import Metrics, Request


class FixedLag(LoopLag):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.value = seconds

    def seconds(self) -> float:
        return self.value


def admission(**settings: object) -> tuple[Admission, Metrics]:
    values: dict[str, object] = {"handshake_rate_per_ip": 1.0, "handshake_rate_exempt": _networks("192.0.2.0/32")}
    values.update(settings)
    metrics = Metrics()
    return Admission(Settings(**values), metrics), metrics  # type: ignore[arg-type]


def test_connects_in_flight_past_the_limit_shed_new_sessions_until_one_finishes() -> None:
    adm, metrics = admission(max_connects_in_flight=3)
    for user in ("a", "b", "c"):
        assert adm.user_may_connect(user, 0)
    assert adm.refusal(Request("198.51.100.1")) is OVERLOADED
    assert metrics.outcomes == ["overloaded_connects"]
    assert adm.refusal(Request("198.51.100.1", query={"EIO": "4", "sid": "x"})) is None, \
        "requests of sessions already open are never shed"
    adm.connect_done("b")
    assert adm.refusal(Request("198.51.100.1")) is None


def test_a_shed_handshake_spends_none_of_its_address_tokens() -> None:
    adm, _ = admission()  # burst 5
    adm.overload.lag = FixedLag(5.0)
    assert [adm.refusal(Request("198.51.100.1")) for _ in range(20)] == [OVERLOADED] * 20
    adm.overload.lag = FixedLag(0.0)
    answers = [adm.refusal(Request("198.51.100.1")) for _ in range(6)]
    assert answers == [None] * 5 + [IP_RATE_LIMITED]


def test_loop_lag_past_the_setting_sheds_exempt_addresses_too() -> None:
    adm, metrics = admission(handshake_shed_lag=1.0, handshake_rate_exempt=_networks("127.0.0.0/8"))
    adm.overload.lag = FixedLag(0.5)
    assert adm.refusal(Request("127.0.0.1")) is None
    adm.overload.lag = FixedLag(1.5)
    assert adm.refusal(Request("127.0.0.1")) is OVERLOADED
    assert metrics.outcomes == ["overloaded_lag"]
    assert (OVERLOADED.status, OVERLOADED.body(), OVERLOADED.headers()) == \
        (503, {"error": "overloaded"}, {"Retry-After": "1"})


def test_zero_turns_either_signal_off() -> None:
    off = Overload(max_lag=0, max_connects=0, lag=FixedLag(100.0))
    for _ in range(10):
        off.connect_started()
    assert off.reason() is None


def test_loop_lag_measures_a_blocked_loop_and_settles_after() -> None:
    lag = LoopLag(every=0.05)
    seen: list[float] = []

    async def probe() -> None:
        seen.append(lag.seconds())  # arms the probe: no loop before this
        time.sleep(0.4)  # noqa: ASYNC251 - on purpose: the loop blocked, the probe due in 0.05 s is late
        seen.append(lag.seconds())  # overdue by 0.35 s
        await asyncio.sleep(0)  # the late probe runs and measures
        seen.append(lag.seconds())  # its measure, and a new probe armed
        await asyncio.sleep(0.3)  # the loop is idle again: the new probe ran on time
        seen.append(lag.seconds())

    asyncio.run(probe())
    assert seen[0] == 0.0
    assert seen[1] >= 0.3, seen
    assert seen[2] >= 0.3, seen
    assert seen[3] < 0.1, seen


def test_an_idle_replica_runs_no_probe() -> None:
    """No question, no timer: the probe is armed by a handshake and not re-armed by itself."""
    lag = LoopLag(every=0.01)

    async def idle() -> int:
        lag.seconds()
        await asyncio.sleep(0.1)  # the one probe came due and ran
        loop = asyncio.get_running_loop()
        return len(loop._scheduled)  # type: ignore[attr-defined]  # timers still pending

    assert asyncio.run(idle()) == 0


def test_no_loop_no_lag() -> None:
    assert LoopLag().seconds() == 0.0
