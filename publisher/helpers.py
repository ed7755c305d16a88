"""Typed helpers for the five contract events, written once for every kind of emitter.

Each helper takes the payload's fields as snake_case keyword arguments, builds the camelCase
payload of the contract and hands it to `self.emit` with `strict=True`, which validates it
against `events.EVENT_SCHEMAS` (an error names the camelCase field, as the frontend sees it)
whatever the publisher's own `strict` setting: the helpers are what checks, `emit` alone
takes any sanitised payload. The
target is the user's own room unless `room=` says otherwise. `extra=` adds keys that pass
through to the client; it cannot override a contract field.

`TypedEmitters[R]` is generic in what `emit` returns: the message's position in its room for
`Publisher`, an awaitable of it for `AsyncPublisher`, nothing for a batch, which queues.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from publisher.commands import Commands, Emit
from publisher.events import Rank
from publisher.rooms import normalize_user_id

R = TypeVar("R")


def iso_datetime(value: datetime | str | None, field: str) -> str:
    """An ISO 8601 string as JavaScript writes it (UTC, ms, `Z`); None means now."""
    if value is None:
        value = datetime.now(UTC)
    if isinstance(value, str):
        return value  # checked by the schema
    if not isinstance(value, datetime):
        raise ValueError(f"{field} must be a datetime or an ISO 8601 string, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{field} is a naive datetime, which a browser would read as its local time; "
            "pass an aware one, e.g. datetime.now(UTC)"
        )
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _with_extra(payload: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    if not extra:
        return payload
    clash = sorted(set(payload) & set(extra))
    if clash:
        raise ValueError(f"extra repeats contract field(s) {', '.join(clash)}")
    return {**payload, **extra}


class TypedEmitters(Generic[R]):
    """Mixin: the contract's events as methods on top of `emit`."""

    __slots__ = ()

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> R:
        raise NotImplementedError

    def _emit_for(self, event: str, user: str | int, room: str | None,
                  payload: dict[str, Any], extra: Mapping[str, Any] | None) -> R:
        data = _with_extra(payload, extra)
        if room is None:
            return self.emit(event, data, user=user, strict=True)
        return self.emit(event, data, room=room, strict=True)

    def achievement_unlocked(self, user: str | int, *, achievement_id: str, name: str,
                             description: str, icon: str, xp_reward: int,
                             room: str | None = None,
                             extra: Mapping[str, Any] | None = None) -> R:
        """`achievement:unlocked` {achievementId, name, description, icon, xpReward}."""
        return self._emit_for("achievement:unlocked", user, room, {
            "achievementId": achievement_id, "name": name, "description": description,
            "icon": icon, "xpReward": xp_reward,
        }, extra)

    def rank_promoted(self, user: str | int, *, old_rank: Rank, new_rank: Rank,
                      xp_required: int, room: str | None = None,
                      extra: Mapping[str, Any] | None = None) -> R:
        """`rank:promoted` {oldRank: {name, level}, newRank: {name, level}, xpRequired}."""
        return self._emit_for("rank:promoted", user, room, {
            "oldRank": old_rank, "newRank": new_rank, "xpRequired": xp_required,
        }, extra)

    def coins_earned(self, user: str | int, *, amount: int, reason: str, new_balance: int,
                     room: str | None = None, extra: Mapping[str, Any] | None = None) -> R:
        """`coins:earned` {amount, reason, newBalance}."""
        return self._emit_for("coins:earned", user, room, {
            "amount": amount, "reason": reason, "newBalance": new_balance,
        }, extra)

    def notification_new(self, user: str | int, *, id: str, type: str, title: str,
                         message: str, read: bool = False,
                         created_at: datetime | str | None = None,
                         data: Mapping[str, Any] | None = None, room: str | None = None,
                         extra: Mapping[str, Any] | None = None) -> R:
        """`notification:new` {id, userId, type, title, message, data?, read, createdAt}.

        `userId` is the target user; `created_at` defaults to now.
        """
        payload: dict[str, Any] = {
            "id": id, "userId": normalize_user_id(user), "type": type, "title": title,
            "message": message, "read": read,
            "createdAt": iso_datetime(created_at, "created_at"),
        }
        if data is not None:
            payload["data"] = dict(data) if isinstance(data, Mapping) else data
        return self._emit_for("notification:new", user, room, payload, extra)

    def notification_read(self, user: str | int, *, notification_id: str,
                          read_at: datetime | str | None = None, room: str | None = None,
                          extra: Mapping[str, Any] | None = None) -> R:
        """`notification:read` {notificationId, readAt}; `read_at` defaults to now."""
        return self._emit_for("notification:read", user, room, {
            "notificationId": notification_id, "readAt": iso_datetime(read_at, "read_at"),
        }, extra)


class QueuedEmits(TypedEmitters[None]):
    """What the sync and the async batch share: emits checked when queued, sent by `execute`."""

    def __init__(self, commands: Commands) -> None:
        self._commands = commands
        self._emits: list[Emit] = []
        self.positions: list[str] = []

    def emit(self, event: str, data: Any, *, room: str | None = None,
             user: str | int | None = None, broadcast: bool = False,
             strict: bool | None = None) -> None:
        self._emits.append(self._commands.event(event, data, room, user, broadcast, strict))

    def __len__(self) -> int:
        return len(self._emits)

    def _take(self) -> list[Emit]:
        emits, self._emits = self._emits, []
        return emits
