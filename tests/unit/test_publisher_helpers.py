"""publisher.helpers: the typed helpers build the contract's camelCase payloads and targets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from publisher.events import validate
from publisher.helpers import TypedEmitters, iso_datetime


class Recorder(TypedEmitters[tuple[str, Any, dict[str, Any]]]):
    """An emitter that returns what it was asked to emit, checked as Publisher.emit checks:
    against the schema only when asked to be strict (the helpers always ask)."""

    def __init__(self) -> None:
        self.strict: list[bool | None] = []

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> tuple[str, Any, dict[str, Any]]:
        self.strict.append(strict)
        if strict:
            validate(event, data)
        target = {k: v for k, v in (("room", room), ("user", user)) if v is not None}
        return event, data, target


@pytest.fixture
def pub() -> Recorder:
    return Recorder()


def test_achievement_unlocked(pub: Recorder) -> None:
    assert pub.achievement_unlocked(42, achievement_id="a1", name="N", description="D",
                                    icon="i.png", xp_reward=10) == (
        "achievement:unlocked",
        {"achievementId": "a1", "name": "N", "description": "D", "icon": "i.png",
         "xpReward": 10},
        {"user": 42})


def test_rank_promoted(pub: Recorder) -> None:
    event, data, _ = pub.rank_promoted(
        "u1", old_rank={"name": "Bronze", "level": 1}, new_rank={"name": "Silver", "level": 2},
        xp_required=500)
    assert event == "rank:promoted"
    assert data == {"oldRank": {"name": "Bronze", "level": 1},
                    "newRank": {"name": "Silver", "level": 2}, "xpRequired": 500}


def test_coins_earned_with_a_room_and_extra(pub: Recorder) -> None:
    assert pub.coins_earned(42, amount=5, reason="r", new_balance=9, room="classroom:3",
                            extra={"traceId": "t"}) == (
        "coins:earned", {"amount": 5, "reason": "r", "newBalance": 9, "traceId": "t"},
        {"room": "classroom:3"})


def test_extra_cannot_override_a_contract_field(pub: Recorder) -> None:
    with pytest.raises(ValueError, match="extra repeats contract field"):
        pub.coins_earned(42, amount=5, reason="r", new_balance=9, extra={"amount": 6})


def test_helper_errors_name_the_camel_case_field(pub: Recorder) -> None:
    with pytest.raises(ValueError, match="coins:earned: newBalance must be an integer, got '9'"):
        pub.coins_earned(42, amount=5, reason="r", new_balance="9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rank:promoted: newRank\.level must be an integer"):
        pub.rank_promoted(1, old_rank={"name": "a", "level": 1},
                          new_rank={"name": "b", "level": "2"}, xp_required=1)  # type: ignore[typeddict-item]


def test_notification_new(pub: Recorder) -> None:
    created = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    event, data, target = pub.notification_new(
        42, id="n1", type="info", title="T", message="M", created_at=created,
        data={"link": "/x"})
    assert event == "notification:new"
    assert data == {"id": "n1", "userId": "42", "type": "info", "title": "T", "message": "M",
                    "read": False, "createdAt": "2024-05-01T12:00:00.123Z",
                    "data": {"link": "/x"}}
    assert target == {"user": 42}


def test_notification_new_defaults(pub: Recorder) -> None:
    before = datetime.now(UTC)
    _, data, _ = pub.notification_new("u", id="n", type="t", title="t", message="m")
    created = datetime.fromisoformat(data["createdAt"])
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    assert "data" not in data
    assert data["read"] is False


def test_notification_read(pub: Recorder) -> None:
    _, data, _ = pub.notification_read(42, notification_id="n1", read_at="2024-05-01T12:00:00Z")
    assert data == {"notificationId": "n1", "readAt": "2024-05-01T12:00:00Z"}
    with pytest.raises(ValueError, match="readAt must be an ISO 8601"):
        pub.notification_read(42, notification_id="n1", read_at="soon")


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="created_at is a naive datetime"):
        iso_datetime(datetime(2024, 1, 1), "created_at")
    with pytest.raises(ValueError, match="read_at must be a datetime"):
        iso_datetime(1714564800, "read_at")  # type: ignore[arg-type]


def test_every_helper_asks_emit_for_the_strict_check(pub: Recorder) -> None:
    """`emit` alone takes any sanitised payload; the helpers are what checks (the contract)."""
    pub.achievement_unlocked(1, achievement_id="a", name="n", description="d", icon="i", xp_reward=1)
    pub.rank_promoted(1, old_rank={"name": "a", "level": 1}, new_rank={"name": "b", "level": 2},
                      xp_required=1)
    pub.coins_earned(1, amount=1, reason="r", new_balance=1, room="classroom:7")
    pub.notification_new(1, id="n", type="t", title="t", message="m", room="quiz:9")
    pub.notification_read(1, notification_id="n")
    assert pub.strict == [True] * 5
