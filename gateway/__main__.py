"""`gateway` / `python -m gateway`: run one replica.

Every setting is an environment variable and a flag (`gateway --help` lists them from
`config.SETTINGS`). Start-up problems a person can fix (no secret, a port in use, Redis not
answering) end in one line that says what to do, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence

import jwt
from aiohttp import web

from gateway.app import GATEWAY, create_app, native_acceptor
from gateway.config import SETTINGS, ConfigError, Settings, load_settings
from gateway.fdlimit import LOW_OPEN_FILES, raise_open_files_limit
from gateway.logs import configure
from gateway.ws import listen
from publisher.cluster import ClusterModeError
from publisher.redis_url import redact

log = logging.getLogger("gateway")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway",
        description="Real-time notification gateway: Socket.IO on /notifications, rooms shared "
                    "through Redis. Every flag has an environment variable; flags win.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dev", action="store_true",
                   help="try it out: in-memory bus (unless REDIS_URL), an ephemeral secret (unless "
                        "JWT_SECRET), a printed token and publish key, a console at / for loopback "
                        "clients, HOST 127.0.0.1 unless set [env GATEWAY_DEV=true, default off]")
    for s in SETTINGS:
        if s.attr == "dev":
            continue
        default = f"'{s.default}'" if s.default else "unset"
        p.add_argument(s.flag, dest=s.attr, metavar=s.env, default=None,
                       help=f"{s.doc} [env {s.env}, default {default}]")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "dev" and v is not None}
    env = dict(os.environ)
    dev = bool(args.dev)
    if dev and not env.get("PUBLISH_API_KEY") and "publish_api_key" not in overrides:
        overrides["publish_api_key"] = secrets.token_urlsafe(24)
    try:
        settings = load_settings(env, overrides, dev=dev)
    except ConfigError as exc:
        sys.stderr.write(f"gateway: {exc}\n")
        raise SystemExit(2) from None
    configure(settings.log_level, "text" if dev and "LOG_FORMAT" not in env else settings.log_format)
    for advice in settings.advisories():
        log.warning(advice)
    files, files_hard = raise_open_files_limit()  # one per socket: the ceiling of connections
    log.info("open files limit", extra={"soft": files, "hard": files_hard})
    if files < LOW_OPEN_FILES and not dev:
        log.warning(f"the open files limit is {files} (hard limit {files_hard}): this replica cannot hold more "
                    f"sockets than that; raise the hard limit (docs/operations.md, 'Connections at scale')")
    if settings.dev and settings.beyond_loopback:
        log.warning(_beyond_loopback(settings))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(settings))


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    # keepalive_timeout: a connection idle between requests (or that never sends one) is closed
    # after HANDSHAKE_TIMEOUT; aiohttp's default holds it for an hour.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0,
                           keepalive_timeout=settings.handshake_timeout)
    try:
        await runner.setup()
    except ClusterModeError as exc:
        sys.stderr.write(f"gateway: REDIS_URL: {exc}\n")
        raise SystemExit(2) from None
    gateway = app[GATEWAY]
    http = runner.server
    assert http is not None  # set by setup()
    listener: asyncio.Server | None = None
    try:
        if settings.ws_accept == "native":
            # One listening socket: WebSocket sessions are accepted natively (gateway/ws), every
            # other request is handed to aiohttp's server.
            listener = await listen(native_acceptor(gateway), http, settings.host, settings.port,
                                    head_timeout=settings.handshake_timeout)
        else:
            await web.TCPSite(runner, settings.host, settings.port, reuse_address=True, backlog=4096).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            sys.stderr.write(f"gateway: port {settings.port} on {settings.host} is already in use; "
                             f"stop what holds it or choose another with PORT=... or --port\n")
        else:
            sys.stderr.write(f"gateway: cannot listen on {settings.host}:{settings.port}: {exc.strerror}\n")
        raise SystemExit(1) from None
    _tune_gc()
    log.info("listening", extra={"host": settings.host, "port": settings.port,
                                 "bus": gateway.backend.name, "settings": settings.public_view()})
    if settings.dev:
        _print_dev_banner(settings)
    if settings.redis_url:
        asyncio.get_running_loop().create_task(_warn_if_redis_silent(gateway, settings))

    stop = asyncio.Event()
    how: list[str] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        how.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop.wait()
    if how and how[0] == "SIGTERM":
        log.info("SIGTERM: draining", extra={"seconds": settings.drain_seconds})
        await gateway.drain(settings.drain_seconds)
    else:
        await gateway.drain(0)
    if listener is not None:
        listener.close()
        gateway.close_websockets()  # what the drain left (sessions that never connected a namespace)
    await runner.cleanup()
    log.info("stopped")


def _tune_gc() -> None:
    """Fewer, cheaper collections: everything built at start is frozen out of the collector's
    scans, and the young generation collects every 50,000 allocations instead of 700. The hot
    path allocates dicts and tuples by the thousand per second but makes no cycles, so the
    default cadence only costs time (and, at the default, pauses in the latency tail)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _warn_if_redis_silent(gateway: object, settings: Settings) -> None:
    await asyncio.sleep(3.0)
    backend = getattr(gateway, "backend", None)
    if backend is not None and not backend.connected:
        from publisher.redis_url import redact

        where = redact(settings.redis_url)
        log.error(f"cannot reach Redis at {where}: readiness stays 503 and events from producers do not "
                  "arrive until it answers. Start Redis (e.g. `redis-server`) or fix REDIS_URL; "
                  "the gateway keeps retrying.")


def _beyond_loopback(settings: Settings) -> str:
    return (f"development mode is listening on {settings.host}:{settings.port}, beyond this machine: "
            "anyone who can reach it may connect, and --dev accepts example and short secrets. The console "
            "answers loopback clients only. Unset HOST (--dev then listens on 127.0.0.1) unless you mean it.")


def _print_dev_banner(settings: Settings) -> None:
    """What a developer needs at once, and what this dev replica shares with the world: a
    configured JWT_SECRET and REDIS_URL are kept, so its tokens and events are real ones."""
    host = settings.host
    shown = "localhost" if host in {"0.0.0.0", "::", "127.0.0.1"} else f"[{host}]" if ":" in host else host  # noqa: S104
    base = f"http://{shown}:{settings.port}"
    lines = ["", f"  notification gateway, development mode, on {base}"]
    if settings.beyond_loopback:
        lines += [f"  WARNING:       listening on {host}, beyond this machine (HOST is set). Anyone who can reach",
                  "                 it may connect; the console answers loopback clients only."]
    if settings.jwt_secret_generated:
        lines.append("  secret:        an ephemeral JWT_SECRET made for this run (tokens from elsewhere do not verify)")
    else:
        lines.append("  secret:        the CONFIGURED keys (JWT_SECRET...) are kept: the token below is valid "
                     "wherever those keys are")
    if settings.redis_url:
        lines.append(f"  bus:           the CONFIGURED REDIS_URL is kept ({redact(settings.redis_url)}): events and "
                     "sessions are shared with everything on that Redis")
    else:
        lines.append("  bus:           in memory, this process only")
    lines.append(f"  console:       {base}/")
    signing = settings.signing_secret
    if signing is not None:
        now = int(time.time())
        kid, secret = signing
        token = jwt.encode({"sub": "1", "role": "student", "classrooms": ["1"], "iat": now, "exp": now + 86400},
                           secret, algorithm="HS256", headers={"kid": kid} if kid else None)
        lines += [f"  token (user 1, student, classroom 1, 24 h):\n    {token}",
                  "  connect:       io(\"" + base + "/notifications\", { auth: { token: \"Bearer " + token + "\" } })"]
    else:
        lines.append("  token:         none: this replica verifies with public keys only; use one your issuer signed")
    if settings.publish_api_key:
        lines += [
            f"  publish key:   {settings.publish_api_key}",
            f"  send an event: curl -X POST {base}/api/emit -H 'Authorization: Bearer {settings.publish_api_key}'"
            " -H 'Content-Type: application/json'"
            " -d '{\"event\":\"coins:earned\",\"user\":\"1\","
            "\"data\":{\"amount\":50,\"reason\":\"demo\",\"newBalance\":50}}'",
        ]
    lines.append("")
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
