"""Back within the window: every event missed, of every room, once, in publish order, before
anything newer; on every transport, on the same replica or another, with a producer that
does not pause, and with a backlog larger than the send buffer.
"""

from __future__ import annotations

import pytest

from tests.e2e.recovery.support import (
    BACK_TIMEOUT,
    BUSES,
    EVENT,
    TARGETS,
    TRANSPORTS,
    Deployments,
    Producer,
    come_back,
    connect,
    go_away,
    numbers,
    payload,
    quiet,
    recovery_outcomes,
    rooms_of,
    settle,
    token,
    uid,
)
from tests.support.sio_client import NodeClients


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize(("bus", "target"), TARGETS)
def test_missed_events_of_several_rooms_are_replayed_once_in_order_before_newer_ones(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str, target: int,
    transport: str,
) -> None:
    dep = deployments.get(bus)
    user, c1, c2 = uid(), uid("c"), uid("c")
    rooms = [f"user:{user}", f"classroom:{c1}", f"classroom:{c2}"]
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user, (c1, c2)), transport)
    assert first["recovered"] is False
    pid = node_clients.state("a")["pid"]
    assert pid, "recovery is on: the CONNECT reply carries a pid"
    assert rooms_of(node_clients, "a") == sorted(rooms)

    dep.emit(rooms[0], payload(0, rooms[0]))
    [seen] = node_clients.wait_events("a", EVENT, 1)
    assert seen.offset is not None, "every event carries its offset as its last argument"

    go_away(node_clients, "a", nowhere)
    missed = list(range(1, 10))
    for n in missed:  # the three rooms interleaved
        dep.emit(rooms[n % 3], payload(n, rooms[n % 3]))
    node_clients.assert_no_event("a", EVENT, within=0.2, allowed=1)

    back_to = dep.replica(target)
    node_clients.set_uri("a", back_to.url)
    newer = list(range(10, 13))
    for n in newer:  # emitted while the client is reconnecting: after the missed ones
        dep.emit(rooms[n % 3], payload(n, rooms[n % 3]))
    back = node_clients.wait_connected("a", timeout=BACK_TIMEOUT)
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"not recovered; outcomes: {recovery_outcomes(back_to)}"
    assert back["sid"] == first["sid"]
    assert node_clients.state("a")["pid"] == pid

    events = settle(node_clients, "a", 13)
    assert numbers(events) == [0, *missed, *newer]
    assert all(e.recovered for e in events[1:])
    assert rooms_of(node_clients, "a") == sorted(rooms)

    dep.emit(rooms[2], payload(13, rooms[2]))  # still in its rooms for live events
    events = settle(node_clients, "a", 14)
    assert numbers(events) == list(range(14))
    assert node_clients.state("a")["lastOffset"] == events[-1].offset


@pytest.mark.parametrize(("bus", "target"), TARGETS)
def test_client_that_never_received_an_event_recovers_what_was_emitted_while_away(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str, target: int,
) -> None:
    dep = deployments.get(bus)
    user, c = uid(), uid("c")
    rooms = [f"user:{user}", f"classroom:{c}"]
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user, (c,)))
    assert node_clients.state("a")["lastOffset"] is None

    # A first blip with nothing emitted: recovered, nothing replayed.
    go_away(node_clients, "a", nowhere)
    back = come_back(node_clients, "a", dep.replica(target))
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(target))}"
    assert back["sid"] == first["sid"]
    node_clients.assert_no_event("a", EVENT, within=0.2)

    # A second one, still with no event received: what was emitted meanwhile comes.
    go_away(node_clients, "a", nowhere)
    for n in range(4):
        dep.emit(rooms[n % 2], payload(n, rooms[n % 2]))
    back = come_back(node_clients, "a", dep.replica(target + 1))
    assert back["type"] == "connect", back
    assert back["recovered"] is True, f"outcomes: {recovery_outcomes(dep.replica(target + 1))}"
    assert back["sid"] == first["sid"]
    assert numbers(settle(node_clients, "a", 4)) == [0, 1, 2, 3]
    assert rooms_of(node_clients, "a") == sorted(rooms)


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize(("bus", "target"), [TARGETS[1], TARGETS[2]])
def test_a_backlog_larger_than_the_send_buffer_is_replayed_or_refused_never_looped(
    node_clients: NodeClients, deployments: Deployments, nowhere: str, bus: str, target: int,
    transport: str,
) -> None:
    """500 events of 4 KiB missed (2 MiB, twice the default send buffer): the client ends up
    with all of them in order (possibly over several reconnections, each making progress), or
    is told it was not recovered; it does not loop on a replay that never gets through."""
    dep = deployments.get(bus)
    user = uid()
    room = f"user:{user}"
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user), transport)
    dep.emit(room, payload(0, room))
    node_clients.wait_events("a", EVENT, 1)
    go_away(node_clients, "a", nowhere)
    count, pad = 500, "x" * 4096
    dep.emit_many([(room, {**payload(n, room), "pad": pad}) for n in range(1, count + 1)])
    back = come_back(node_clients, "a", dep.replica(target))
    assert back["type"] == "connect", back
    if back["recovered"]:
        assert back["sid"] == first["sid"]
        events = node_clients.wait_events("a", EVENT, count + 1, timeout=30)
        connects = [r for r in node_clients.log("a") if r["type"] == "connect"]
        assert all(r["recovered"] for r in connects[1:]), connects
        assert numbers(events) == list(range(count + 1))
    else:
        assert back["sid"] != first["sid"]
        assert numbers(quiet(node_clients, "a")) == [0]
    have = len(node_clients.events("a", EVENT))
    dep.emit(room, payload(count + 1, room))
    assert numbers(settle(node_clients, "a", have + 1))[-1] == count + 1


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("bus", BUSES)
def test_events_published_during_the_restore_arrive_once_in_order(
    node_clients: NodeClients, deployments: Deployments, bus: str, transport: str,
) -> None:
    """A producer emits without pause while the client drops and comes back, again and again,
    each time to the next replica and at once: every event exactly once, in order."""
    dep = deployments.get(bus)
    user, c = uid(), uid("c")
    first = connect(node_clients, "a", dep.replica(0).ns_url, token(user, (c,)), transport)
    with Producer(dep, [f"user:{user}", f"classroom:{c}"]) as producer:
        node_clients.wait_events("a", EVENT, 20, timeout=BACK_TIMEOUT)
        for cycle in range(1, 5):
            before = len(node_clients.events("a", EVENT))
            node_clients.set_uri("a", dep.replica(cycle).url)
            node_clients.close_transport("a")
            back = node_clients.wait_connected("a", timeout=BACK_TIMEOUT)
            assert back["type"] == "connect", back
            assert back["recovered"] is True, (
                f"cycle {cycle}: outcomes {recovery_outcomes(dep.replica(cycle))}")
            assert back["sid"] == first["sid"]
            node_clients.wait_events("a", EVENT, before + 20, timeout=BACK_TIMEOUT)
        published = producer.stop()
    events = settle(node_clients, "a", len(published))
    got = numbers(events)
    assert len(got) == len(set(got)), f"duplicates: {sorted({n for n in got if got.count(n) > 1})[:20]}"
    missing = sorted(set(published) - set(got))
    assert not missing, f"{len(missing)} events lost, first {missing[:20]}"
    assert got == published
