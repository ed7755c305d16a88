"""Socket.IO packets encoded with orjson instead of the standard library's json.

python-socketio takes the packet class as its `serializer`, so this is per server, not a
patch of the library's global default.
"""

from __future__ import annotations

from typing import Any

import orjson
from socketio import packet


class OrjsonCodec:
    """The two functions python-socketio calls, with the standard library's signatures."""

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        # orjson refuses integers beyond 64 bits, as python-engineio's own loader bounds them.
        return orjson.loads(text)


class FastPacket(packet.Packet):  # type: ignore[misc]
    json = OrjsonCodec
