"""The fence around python-socketio, python-engineio and aiohttp internals (gateway/sio).

gateway/sio/__init__.py lists every private or undocumented name of the three libraries that the
gateway relies on. Here each one is checked against the installed versions, with a message that
names what is gone and why it matters; so are the facts about them the gateway depends on (who
calls an overridden method, with which arguments). A library release that renames or reshapes
one of them fails here, in a second, rather than as dropped clients in production.

Also checked: every name used in gateway/sio that is private to a library is listed; no module
outside gateway/sio imports python-socketio or python-engineio; the lock files agree with the
ranges of pyproject.toml.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import engineio
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from engineio.async_drivers import aiohttp as eio_aiohttp
from engineio.async_socket import AsyncSocket
from packaging.requirements import Requirement
from packaging.version import Version

import gateway.sio
from gateway.sio.engine import GatewayEngineIO
from gateway.sio.managers import NotificationManager
from gateway.sio.native import NativeSocket, run_now
from gateway.sio.packets import FastPacket
from gateway.sio.server import GatewayServer
from gateway.sio.socket import FastSocket, WebSocketAdapter

ROOT = Path(__file__).resolve().parents[2]
SIO_DIR = ROOT / "gateway" / "sio"
LIBRARIES = ("python-socketio", "python-engineio", "aiohttp")
ENTRY = re.compile(r"^- `([\w.]+)`", re.MULTILINE)


def installed() -> str:
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in LIBRARIES)


def fence() -> dict[str, str]:
    """The listed names, `module.Class.attribute` -> the line that says why."""
    doc = gateway.sio.__doc__ or ""
    out: dict[str, str] = {}
    for match in ENTRY.finditer(doc):
        ends = [i for i in (doc.find("\n- ", match.end()), doc.find("\n\n", match.end())) if i >= 0]
        out[match.group(1)] = " ".join(doc[match.end():min(ends, default=len(doc))].split()).rstrip(".")
    return out


def gone(qualified: str, what: str) -> str:
    why = fence().get(qualified, "")
    return (f"{qualified}: {what} (installed: {installed()}). gateway/sio relies on it{why}. "
            "Adapt gateway/sio and its list in gateway/sio/__init__.py, or keep the library's "
            "version below this one in pyproject.toml.")


# -- instances of the library classes, for attributes set in __init__ --------------------------------

def _engineio_server() -> Any:
    return engineio.AsyncServer(async_mode="aiohttp")


def _socketio_server() -> Any:
    return socketio.AsyncServer(async_mode="aiohttp")


def _socket() -> Any:
    return AsyncSocket(_engineio_server(), "sid")


def _manager() -> Any:
    manager = socketio.AsyncManager()
    manager.set_server(_socketio_server())
    return manager


INSTANCES: dict[str, Callable[[], Any]] = {
    "engineio.AsyncServer": _engineio_server,
    "socketio.AsyncServer": _socketio_server,
    "engineio.async_socket.AsyncSocket": _socket,
    "engineio.async_drivers.aiohttp.WebSocket": lambda: eio_aiohttp.WebSocket(None, _engineio_server()),
    "socketio.AsyncManager": _manager,
    "aiohttp.web.WebSocketResponse": web.WebSocketResponse,
}


def resolve_owner(qualified: str) -> tuple[str, Any, str]:
    """`a.b.C.attr` -> ("a.b.C", the class or module, "attr")."""
    owner_path, _, attribute = qualified.rpartition(".")
    module_path, _, class_name = owner_path.rpartition(".")
    for candidate_module, candidate_name in ((owner_path, None), (module_path, class_name)):
        try:
            module = importlib.import_module(candidate_module)
        except ImportError:
            continue
        if candidate_name is None:
            return owner_path, module, attribute
        owner = getattr(module, candidate_name, None)
        if owner is not None:
            return owner_path, owner, attribute
    raise AssertionError(f"{qualified}: the owner {owner_path} cannot be imported ({installed()})")


@pytest.mark.parametrize("qualified", sorted(fence()))
def test_every_listed_name_exists(qualified: str) -> None:
    owner_path, owner, attribute = resolve_owner(qualified)
    if hasattr(owner, attribute):
        return
    factory = INSTANCES.get(owner_path)
    instance = factory() if factory is not None else None
    assert hasattr(instance, attribute), gone(qualified, "is gone")


def test_the_list_is_not_empty() -> None:
    assert len(fence()) >= 30, "gateway/sio/__init__.py's list was not parsed: '- `name`: why' lines"


# -- overrides: the library still has each, with the arguments the gateway's version takes ----------

OVERRIDERS: list[tuple[type[Any], str]] = [
    (FastSocket, "engineio.async_socket.AsyncSocket"),
    (NativeSocket, "engineio.async_socket.AsyncSocket"),
    (GatewayEngineIO, "engineio.AsyncServer"),
    (GatewayServer, "socketio.AsyncServer"),
    (NotificationManager, "socketio.AsyncManager"),
    (WebSocketAdapter, "engineio.async_drivers.aiohttp.WebSocket"),
    (FastPacket, "socketio.packet.Packet"),
]
PUBLIC_API = {
    # python-socketio documents these for custom client managers (BaseManager's interface)
    "socketio.AsyncManager": {"emit", "enter_room", "leave_room", "get_rooms", "get_participants",
                              "can_disconnect", "disconnect"},
    "engineio.AsyncServer": {"attach", "handle_request"},  # documented entry points
    "engineio.async_drivers.aiohttp.WebSocket": {"__call__"},  # the driver's interface
    "socketio.packet.Packet": set(),
}


def overrides() -> Iterator[tuple[str, Any, Any]]:
    """(qualified name, the library's function, ours) for every method gateway/sio overrides."""
    for ours, library_path in OVERRIDERS:
        _, library, _ = resolve_owner(library_path + ".x")
        for name, value in vars(ours).items():
            if not callable(value) or (name.startswith("__") and name != "__call__"):
                continue
            base = getattr(library, name, None)
            if base is not None and callable(base):
                yield f"{library_path}.{name}", base, value


def parameters(function: Any) -> list[str]:
    return [p.name for p in inspect.signature(function).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@pytest.mark.parametrize(("qualified", "base", "ours"), [pytest.param(*o, id=o[0]) for o in overrides()])
def test_each_override_takes_the_arguments_the_library_passes(qualified: str, base: Any, ours: Any) -> None:
    theirs, mine = parameters(base), parameters(ours)
    if len(parameters(ours)) == 1 and inspect.signature(ours).parameters.keys() >= {"args", "kwargs"}:
        return  # (self, *args, **kwargs): takes anything
    assert theirs == mine, gone(qualified, f"takes {theirs}, gateway/sio's override takes {mine}")


def test_every_override_is_listed_unless_public_api() -> None:
    listed = set(fence())
    missing = [qualified for qualified, _, _ in overrides()
               if qualified not in listed
               and qualified.rpartition(".")[2] not in PUBLIC_API.get(qualified.rpartition(".")[0], set())]
    assert not missing, f"gateway/sio overrides these without listing them in gateway/sio/__init__.py: {missing}"


# -- the facts behind the names ------------------------------------------------------------------------

def test_a_polling_socket_can_become_a_fast_socket() -> None:
    sock = _socket()
    try:
        sock.__class__ = FastSocket
    except TypeError as exc:
        raise AssertionError(gone("engineio.async_socket.AsyncSocket.__class__",
                                  f"FastSocket can no longer replace its class: {exc}")) from None
    assert isinstance(sock, AsyncSocket)


def test_the_class_swap_happens_before_the_socket_is_used_as_a_fast_socket() -> None:
    """engine.py swaps the class when python-engineio triggers 'connect'; by then the socket is
    registered, and its schedule_ping (FastSocket's) is called only after."""
    source = inspect.getsource(engineio.AsyncServer._handle_connect)
    order = [source.find(s) for s in ("self.sockets[sid] = s", "_trigger_event('connect'", "s.schedule_ping()")]
    assert -1 not in order, gone("engineio.AsyncServer._trigger_event", f"_handle_connect changed: {order}")
    assert order == sorted(order), gone(
        "engineio.AsyncServer._trigger_event",
        "python-engineio's _handle_connect no longer registers the socket, triggers 'connect', then "
        f"schedules the ping, in that order (positions {order})")


def test_a_new_socket_counts_as_having_answered_a_ping() -> None:
    last_ping = _socket().last_ping
    assert last_ping, gone("engineio.async_socket.AsyncSocket.last_ping",
                           f"starts as {last_ping!r}: FastSocket.schedule_ping would never schedule "
                           "a ping and every WebSocket client would be dropped after the ping timeout")


def test_the_driver_table_has_what_engine_py_uses() -> None:
    table = _engineio_server()._async
    missing = {"websocket", "translate_request", "make_response", "create_route"} - set(table)
    assert not missing, gone("engineio.AsyncServer._async", f"has no {sorted(missing)}")


def test_upgrades_from_polling_reach_the_websocket_handler() -> None:
    source = inspect.getsource(AsyncSocket._upgrade_websocket)
    for needed in ("self._websocket_handler", "_async['websocket']"):
        assert needed in source, gone(
            "engineio.async_socket.AsyncSocket._websocket_handler",
            "_upgrade_websocket no longer hands the driver's WebSocket to self._websocket_handler")


def test_the_aiohttp_driver_keeps_its_websocket_as_sock() -> None:
    driver = eio_aiohttp.WebSocket
    for method in ("send", "close", "wait"):
        assert "self._sock" in inspect.getsource(getattr(driver, method)), gone(
            "engineio.async_drivers.aiohttp.WebSocket._sock", f"WebSocket.{method} does not use it")


def test_socketio_builds_its_engineio_server_through_the_hook() -> None:
    class Probe(socketio.AsyncServer):  # type: ignore[misc]
        def _engineio_server_class(self) -> type[Any]:
            return Marker

    class Marker(engineio.AsyncServer):  # type: ignore[misc]
        pass

    assert type(Probe(async_mode="aiohttp").eio) is Marker, gone(
        "socketio.AsyncServer._engineio_server_class", "is no longer what builds the Engine.IO server")


def test_engineio_events_reach_the_overridden_handlers() -> None:
    server = _socketio_server()
    for event, name in (("connect", "_handle_eio_connect"), ("message", "_handle_eio_message"),
                        ("disconnect", "_handle_eio_disconnect")):
        handler = server.eio.handlers.get(event)
        assert getattr(handler, "__func__", None) is getattr(socketio.AsyncServer, name), gone(
            f"socketio.AsyncServer.{name}", f"is not the Engine.IO '{event}' handler any more")
    source = inspect.getsource(socketio.AsyncServer._handle_eio_message)
    for name in ("_handle_connect", "_handle_event", "_handle_ack", "_handle_disconnect"):
        assert f"self.{name}(" in source, gone(
            f"socketio.AsyncServer.{name}", "_handle_eio_message no longer dispatches to it")


def test_the_methods_gateway_sio_calls_take_these_arguments() -> None:
    calls = {
        "socketio.AsyncServer._send_packet": ["self", "eio_sid", "pkt"],
        "engineio.AsyncServer._make_response": ["self", "response_dict", "environ"],
        "engineio.AsyncServer._trigger_event": ["self", "event"],
        "socketio.AsyncManager.basic_enter_room": ["self", "sid", "namespace", "room", "eio_sid"],
        "socketio.AsyncManager.sid_from_eio_sid": ["self", "eio_sid", "namespace"],
    }
    for qualified, expected in calls.items():
        _, owner, attribute = resolve_owner(qualified)
        got = parameters(getattr(owner, attribute))
        assert got == expected, gone(qualified, f"takes {got}, gateway/sio calls it as {expected}")
    assert "run_async" in inspect.getsource(engineio.AsyncServer._trigger_event), gone(
        "engineio.AsyncServer._trigger_event", "no longer takes run_async=")


def test_the_manager_state_basic_disconnect_cleans() -> None:
    manager = _manager()
    for name, kind in (("rooms", dict), ("callbacks", dict), ("pending_connect", dict),
                       ("pending_disconnect", dict)):
        value = getattr(manager, name, None)
        assert isinstance(value, kind), gone(f"socketio.AsyncManager.{name}", f"is {value!r}, not a {kind.__name__}")


def test_packets_encode_with_the_class_codec() -> None:
    for method in ("encode", "decode"):
        source = inspect.getsource(getattr(socketio.packet.Packet, method))
        assert "self.json." in source, gone("socketio.packet.Packet.json", f"Packet.{method} does not use it")
    packet = FastPacket(socketio.packet.EVENT, data=["x", {"a": 1}], namespace="/n")
    assert packet.encode() == '2/n,["x",{"a":1}]'


def test_a_polling_body_is_aiohttps_stream() -> None:
    request = make_mocked_request("POST", "/socket.io/?EIO=4&transport=polling")
    environ = eio_aiohttp.translate_request(request)
    stream = environ.get("wsgi.input")
    assert hasattr(stream, "readexactly"), gone(
        "engineio.async_drivers.aiohttp.translate_request", f"environ['wsgi.input'] is {stream!r}")


async def test_a_websocket_response_writes_through_its_transport() -> None:
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        writer = getattr(ws, "_writer", None)
        seen.append(getattr(writer, "transport", None))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/ws")
        await ws.receive()
        await ws.close()
    assert len(seen) == 1, "the WebSocket handler did not run"
    assert isinstance(seen[0], asyncio.Transport), gone(
        "aiohttp.web.WebSocketResponse._writer", f"a prepared WebSocket's _writer.transport is {seen[0]!r}")


async def test_the_connect_event_runs_to_its_end_without_suspending() -> None:
    """native.py runs python-engineio's 'connect' event (python-socketio's _handle_eio_connect,
    through the gateway's override) inline in the accepting protocol, without a task: it must
    never suspend."""
    from gateway.app import build
    from gateway.config import load_settings

    eio = build(load_settings({"JWT_SECRET": "k" * 32})).sio.eio
    sock = NativeSocket(eio, "sid1")
    eio.sockets["sid1"] = sock
    try:
        accepted = run_now(eio._trigger_event("connect", "sid1", {}, run_async=False))
    except RuntimeError as exc:
        raise AssertionError(gone("socketio.AsyncServer._handle_eio_connect", f"now suspends: {exc}")) from None
    assert accepted is None or accepted is True
    assert type(sock) is NativeSocket, "the 'connect' hook must leave a native socket's class alone"


async def test_aiohttps_server_is_a_protocol_factory_for_a_handed_over_connection() -> None:
    """gateway/ws hands a connection to aiohttp by calling `AppRunner.server` (aiohttp's
    low-level `web.Server`, documented as a protocol factory for `loop.create_server`) and
    feeding the protocol it returns (tests/unit/test_ws_dispatch.py shows it end to end)."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        assert isinstance(runner.server, web.Server)
        handler = runner.server()
        assert isinstance(handler, asyncio.Protocol)
        assert callable(handler.connection_made)
        assert callable(handler.data_received)
    finally:
        await runner.cleanup()


def test_aiohttps_mask_helper_unmasks_in_place_as_rfc_6455_says() -> None:
    from aiohttp._websocket.helpers import websocket_mask

    from gateway.ws import frames

    key, data = b"\x01\x80\xfe\x7f", bytes(range(256)) * 3
    buf = bytearray(data)
    websocket_mask(key, buf)
    assert bytes(buf) == bytes(b ^ key[i % 4] for i, b in enumerate(data)), gone(
        "aiohttp._websocket.helpers.websocket_mask", "no longer XORs the bytearray in place with the key")
    assert frames.unmask(data, key) == frames._unmask_int(data, key) == bytes(buf)


def test_gateway_ws_imports_only_listed_private_modules() -> None:
    """gateway/ws may use a library's private module only for what the fence lists."""
    listed = set(fence())
    for path in sorted((ROOT / "gateway" / "ws").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__" and any(
                    part.startswith("_") for part in node.module.split(".")):
                for alias in node.names:
                    assert f"{node.module}.{alias.name}" in listed, (
                        f"{path.name} imports {node.module}.{alias.name}: list it in gateway/sio/__init__.py")


# -- what the list must cover ----------------------------------------------------------------------

def _library_surfaces() -> list[Any]:
    return [factory() for factory in INSTANCES.values()] + [socketio.packet.Packet]


def private_names_used() -> dict[str, set[str]]:
    """Every `_name` (not dunder) gateway/sio reads, writes, defines or spells out, by file."""
    used: dict[str, set[str]] = {}
    for path in sorted(SIO_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = node.name
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                name = node.value
            if name and name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                used.setdefault(name, set()).add(path.name)
    return used


def test_every_private_name_of_a_library_used_in_gateway_sio_is_listed() -> None:
    surfaces = _library_surfaces()
    listed = {qualified.rpartition(".")[2] for qualified in fence()}
    unlisted = {name: sorted(files) for name, files in private_names_used().items()
                if name not in listed and any(hasattr(s, name) for s in surfaces)}
    assert not unlisted, (
        f"gateway/sio uses private names of python-socketio/python-engineio/aiohttp that "
        f"gateway/sio/__init__.py does not list (name: files): {unlisted}")


def test_only_gateway_sio_imports_socketio_or_engineio() -> None:
    offenders = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if SIO_DIR in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in {"socketio", "engineio"} for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"python-socketio/python-engineio imported outside gateway/sio: {offenders}"


# -- pins and locks ------------------------------------------------------------------------------------

def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {Requirement(r).name: Requirement(r) for r in project["dependencies"]}


def _locked(path: Path) -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {name.lower(): Version(version) for name, version in pins}


def test_the_fenced_libraries_have_a_floor_and_a_ceiling() -> None:
    requirements = _requirements()
    for name in LIBRARIES:
        operators = {spec.operator for spec in requirements[name].specifier}
        assert {">=", "<"} <= operators, f"pyproject.toml: {name} needs a floor and a ceiling: {requirements[name]}"


def test_the_installed_libraries_are_within_the_pins() -> None:
    requirements = _requirements()
    for name in LIBRARIES:
        version = importlib.metadata.version(name)
        assert requirements[name].specifier.contains(version), f"{name} {version} is outside {requirements[name]}"


def test_the_locks_agree_with_the_pins_and_with_each_other() -> None:
    runtime, dev = _locked(ROOT / "requirements.lock"), _locked(ROOT / "requirements-dev.lock")
    for name, requirement in _requirements().items():
        assert name in runtime, f"requirements.lock has no {name}: run scripts/lock"
        assert requirement.specifier.contains(runtime[name]), (
            f"requirements.lock pins {name}=={runtime[name]}, outside pyproject.toml's {requirement}: run scripts/lock")
    differ = {name: (str(v), str(dev.get(name))) for name, v in runtime.items() if dev.get(name) != v}
    assert not differ, f"requirements.lock and requirements-dev.lock disagree (runtime, dev): {differ}; scripts/lock"
