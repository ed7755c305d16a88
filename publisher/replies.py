"""What the sync and async publishers share: reading replies, and their common arguments.

No I/O: kept apart so that `publisher.client` and `publisher.async_client` read Redis's answers
the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from publisher.commands import Plan, positions_of
from publisher.envelope import Position, parse_position

ONE_SOURCE: Final = "give either a Redis URL or client=, not both and not neither"
NO_CLIENT: Final = (
    "a redis+cluster:// publisher has no single Redis client (it keeps one per node: "
    "publisher.cluster); `client` exists for redis://, rediss://, unix:// and redis+sentinel:// only"
)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def positions(rooms: Sequence[str], replies: Sequence[Any]) -> dict[str, Position]:
    """Each room's position, from the replies of `Commands.positions`."""
    return {room: parse_position(text(reply)) for room, reply in zip(rooms, replies, strict=True)}


def online(replies: Sequence[Any]) -> bool:
    """From the replies of `Commands.is_online`: the user's replicas meet the live ones."""
    where, live = replies
    return not {text(r) for r in where}.isdisjoint(text(r) for r in live[::2])


def count(reply: Sequence[Any]) -> int:
    """From the reply of `Commands.online_count`: the live replicas' user counts, added."""
    return sum(int(n) for n in reply[1::2])


def outcomes(plan: Plan, replies: Sequence[Any] | BaseException, count: int) -> list[str | BaseException]:
    """What each of `count` emits came to, from a plan's replies or the exception of its run:
    a position, or the failure of its own call. Shared by the senders: when a run fails part
    way (`PublishError.replies`: one shard down, one call refused) the emits whose calls ran
    get their positions, so that nobody retries, and publishes twice, what was published."""
    if isinstance(replies, BaseException):
        partial: Sequence[Any] | None = getattr(replies, "replies", None)
        if partial is None:
            return [replies] * count
        replies = partial
    out: list[str | BaseException] = [""] * count
    for (_call, indexes), reply in zip(plan, replies, strict=True):
        if isinstance(reply, BaseException):
            for i in indexes:
                out[i] = reply
        else:
            for i, position in zip(indexes, positions_of(reply), strict=True):
                out[i] = position
    return out


def check_source(url: str | None, client: Any) -> None:
    if (url is None) == (client is None):
        raise TypeError(ONE_SOURCE)
