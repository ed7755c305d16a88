"""clients/typescript/notifications.d.ts is what clients/typescript/generate.py writes from
`publisher.events.EVENT_SCHEMAS`, and TypeScript accepts it, strictly, with socket.io-client's
typed `Socket` (clients/typescript/example.ts); docs/frontend.md lists the same payloads.
The type check needs Node.js and installs
typescript and socket.io-client into clients/typescript/node_modules from its lock file; it
skips, saying so, without Node.js."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from publisher.events import EVENT_SCHEMAS, ObjectSchema
from tests.support import node_env

TS_DIR = Path(__file__).resolve().parents[2] / "clients" / "typescript"
DECLARATIONS = TS_DIR / "notifications.d.ts"
TSC_TIMEOUT = 120


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ts_generate", TS_DIR / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_declarations_are_what_the_generator_writes() -> None:
    expected = load_generator().render()
    committed = DECLARATIONS.read_text(encoding="utf-8")
    assert committed == expected, (
        f"{DECLARATIONS} is stale: run `.venv/bin/python clients/typescript/generate.py` "
        "and commit the result"
    )


def test_generator_check_mode_reports_a_stale_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    generator = load_generator()
    stale = tmp_path / "notifications.d.ts"
    stale.write_text("// old\n", encoding="utf-8")
    monkeypatch.setattr(generator, "OUTPUT", stale)
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0
    assert stale.read_text(encoding="utf-8") == generator.render()
    assert generator.main(["--check"]) == 0


def test_every_contract_event_is_declared_with_its_offset_argument() -> None:
    text = DECLARATIONS.read_text(encoding="utf-8")
    for event, schema in EVENT_SCHEMAS.items():
        line = f'"{event}": (data: {schema.payload.interface}, offset?: string) => void;'
        assert line in text
        assert f"export interface {schema.payload.interface} {{" in text
    for code in ("token_missing", "token_invalid", "token_expired", "unknown_event",
                 "rate_limited", "invalid_payload"):
        assert re.search(rf'"{code}"', text), code


def _field_names(schema: ObjectSchema) -> list[str]:
    names = []
    for spec in schema.fields:
        names.append(spec.name + ("?" if spec.optional else ""))
        if spec.nested is not None:
            names.extend(_field_names(spec.nested))
    return names


def test_the_frontend_guide_lists_every_event_with_every_field() -> None:
    guide = (TS_DIR.parents[1] / "docs" / "frontend.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| `(\{.*?\})` \|", guide, re.M)}
    assert set(rows) == set(EVENT_SCHEMAS), "docs/frontend.md's event table and EVENT_SCHEMAS differ"
    for event, schema in EVENT_SCHEMAS.items():
        for name in _field_names(schema.payload):
            assert re.search(rf"[{{ ]{re.escape(name)}:", rows[event]), f"{event}: {name} not in the guide"


def tsc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node_env.node_binary(), str(TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"), *args],
        cwd=TS_DIR, capture_output=True, text=True, timeout=TSC_TIMEOUT, check=False,
    )


@pytest.fixture(scope="module")
def typescript() -> Path:
    try:
        return node_env.ensure_node_modules(TS_DIR)
    except node_env.NodeMissingError as exc:
        pytest.skip(f"no type check of the .d.ts: {exc}")


@pytest.mark.usefixtures("typescript")
def test_declarations_type_check_strictly_and_type_socket_io_client() -> None:
    # One tsc run (it takes seconds): tsconfig.json checks notifications.d.ts itself under
    # --strict (as `tsc --noEmit --strict notifications.d.ts` does, plus stricter flags) and
    # example.ts, whose @ts-expect-error lines make a wrong payload type, an unknown event name
    # and a server event emitted by the client each a required type error.
    done = tsc("-p", "tsconfig.json")
    assert done.returncode == 0, done.stdout + done.stderr
