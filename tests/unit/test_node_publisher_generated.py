"""The Node package's generated sources (clients/node-publisher/src/generated/) are what
clients/node-publisher/scripts/generate.py writes now: the same Lua scripts as the Python
publisher, byte for byte, and the same bus constants and payload types. A change to
publisher/lua/, publisher/session.py's fields, the envelope or the event schemas that is not
regenerated fails here (the npm build itself needs no Python, so nothing else would notice)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from publisher import scripts

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "node-publisher"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("node_publisher_generate", PACKAGE / "scripts" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["scripts.ts", "bus.ts", "notifications.ts"])
def test_committed_file_is_what_the_generator_writes(name: str) -> None:
    rendered = {path.name: text for path, text in load_generator().render().items()}
    committed = (PACKAGE / "src" / "generated" / name).read_text(encoding="utf-8")
    assert committed == rendered[name], (
        f"clients/node-publisher/src/generated/{name} is stale: run "
        "`.venv/bin/python clients/node-publisher/scripts/generate.py` and commit the result"
    )


def test_every_script_of_the_publisher_is_in_the_package_with_its_sha() -> None:
    """Read back from the committed TypeScript (not from the generator): each script's source
    and SHA1 are the ones the Python publisher sends."""
    committed = (PACKAGE / "src" / "generated" / "scripts.ts").read_text(encoding="utf-8")
    found = {
        m["name"]: (m["sha"], json.loads(m["source"]))
        for m in re.finditer(
            r'name: (?P<name>"[^"]+"),\n  sha: "(?P<sha>[0-9a-f]{40})",\n  source: (?P<source>".*"),\n', committed)
    }
    expected = [s for s in vars(scripts).values() if isinstance(s, scripts.Script)]
    assert {s.name for s in expected} >= {"publish.lua", "position.lua", "rooms.lua", "revoke.lua", "online.lua",
                                          "replicas.lua"}
    assert len(found) == len(expected)
    for script in expected:
        sha, source = found[json.dumps(script.name)]
        assert source.encode() == script.source
        assert sha == script.sha
        assert "{{field." not in source  # rendered, as publisher.scripts renders them


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = load_generator()
    monkeypatch.setattr(generator, "GENERATED", tmp_path)
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
