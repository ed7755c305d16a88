"""Event names and payloads: what may travel to a browser, and the five events of the contract.

One module per job, so each is found by its name (issue 11); this package is their one public
entry, and `from publisher.events import X` works for every name of `__all__`:

- `names`: which event names may be emitted (`check_event_name`, `InvalidEvent`);
- `sanitize`: what any payload must be to reach a browser (`sanitize`, `InvalidPayload`, the
  limits), whatever its event;
- `schemas`: the five events of the contract, as typed payloads and as data
  (`EVENT_SCHEMAS`), and the runtime check against them (`validate`);
- `typescript`: the frontend's TypeScript declarations, from the same schemas
  (`typescript_declarations`).
"""

from publisher.events.names import EVENT_NAME_RE, RESERVED_EVENTS, InvalidEvent, check_event_name
from publisher.events.sanitize import (
    MAX_DEPTH,
    MAX_PAYLOAD_BYTES,
    MAX_SAFE_INTEGER,
    InvalidPayload,
    sanitize,
)
from publisher.events.schemas import (
    EVENT_SCHEMAS,
    AchievementUnlocked,
    CoinsEarned,
    EventSchema,
    FieldSpec,
    FieldType,
    NotificationNew,
    NotificationRead,
    ObjectSchema,
    Rank,
    RankPromoted,
    validate,
)
from publisher.events.typescript import typescript_declarations

__all__ = [
    "EVENT_NAME_RE",
    "EVENT_SCHEMAS",
    "MAX_DEPTH",
    "MAX_PAYLOAD_BYTES",
    "MAX_SAFE_INTEGER",
    "RESERVED_EVENTS",
    "AchievementUnlocked",
    "CoinsEarned",
    "EventSchema",
    "FieldSpec",
    "FieldType",
    "InvalidEvent",
    "InvalidPayload",
    "NotificationNew",
    "NotificationRead",
    "ObjectSchema",
    "Rank",
    "RankPromoted",
    "check_event_name",
    "sanitize",
    "typescript_declarations",
    "validate",
]
