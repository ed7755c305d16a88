"""The Lua scripts in `lua/`, read once at import, with the SHA1 that `EVALSHA` names them by.

They are immutable constants (`Script` is frozen), not a cache: every publisher shares them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Final

from publisher.session import render_fields


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str

    @classmethod
    def load(cls, filename: str, package: str = "publisher") -> Script:
        """The script `lua/<filename>` of `package` (the gateway keeps scripts of its own), with
        the session record's field names filled in (`publisher.session`)."""
        source = render_fields(files(package).joinpath("lua", filename).read_bytes(), filename)
        # Redis names a script by the SHA1 of its body; this is an identifier, not security.
        return cls(filename, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())


PUBLISH: Final = Script.load("publish.lua")
POSITION: Final = Script.load("position.lua")
ROOMS: Final = Script.load("rooms.lua")
REVOKE: Final = Script.load("revoke.lua")
ONLINE: Final = Script.load("online.lua")
REPLICAS: Final = Script.load("replicas.lua")
CONTROL: Final = Script.load("control.lua")
