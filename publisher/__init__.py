"""The producer library of the notification gateway: put events on its Redis bus.

    from publisher import Publisher            # AsyncPublisher: the same, awaitable
    pub = Publisher("redis://localhost:6379/0")          # or redis+cluster://host:6379,...
    pub.emit("coins:earned", {"amount": 50, "reason": "quiz", "newBalance": 1250}, room="user:42")

Needs only redis and orjson. The wire format is docs/wire-protocol.md; `publisher.envelope`
is its one implementation, which the gateway imports too.
"""

from publisher.async_client import AsyncPublishBatch, AsyncPublisher
from publisher.client import PublishBatch, Publisher
from publisher.cluster import ClusterModeError
from publisher.commands import Message
from publisher.envelope import BusNames, Position, parse_position
from publisher.errors import (
    EnvelopeError,
    InvalidEvent,
    InvalidPayload,
    InvalidRoom,
    PublisherError,
    PublishError,
    PublishTimeout,
)
from publisher.events import (
    EVENT_SCHEMAS,
    AchievementUnlocked,
    CoinsEarned,
    NotificationNew,
    NotificationRead,
    Rank,
    RankPromoted,
    typescript_declarations,
)
from publisher.rooms import ADMIN_ROOM, classroom_room, teacher_room, user_room

__version__ = "0.1.0"

__all__ = [
    "ADMIN_ROOM",
    "EVENT_SCHEMAS",
    "AchievementUnlocked",
    "AsyncPublishBatch",
    "AsyncPublisher",
    "BusNames",
    "ClusterModeError",
    "CoinsEarned",
    "EnvelopeError",
    "InvalidEvent",
    "InvalidPayload",
    "InvalidRoom",
    "Message",
    "NotificationNew",
    "NotificationRead",
    "Position",
    "PublishBatch",
    "PublishError",
    "PublishTimeout",
    "Publisher",
    "PublisherError",
    "Rank",
    "RankPromoted",
    "classroom_room",
    "parse_position",
    "teacher_room",
    "typescript_declarations",
    "user_room",
]
