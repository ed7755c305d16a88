"""Operator CLI: put one event or control message on the bus, or ask about presence.

    python -m publisher emit coins:earned '{"amount": 50, "reason": "x", "newBalance": 1}' --user 42
    python -m publisher emit maintenance '{"at": "22:00"}' --all
    python -m publisher join 42 classroom:7      leave 42 classroom:7      kick 42
    python -m publisher online 42                count
    python -m publisher bridge                   (runs until stopped: publisher.bridge)
    python -m publisher --redis-url redis+cluster://10.0.0.1:6379,10.0.0.2:6379 emit news '{}' --all

Prints the message's position in its room (emit), the position of each room at the join or
leave as a JSON object (join, leave), the number of recoverable sessions deleted (kick),
`true`/`false` (online) or the users the live replicas hold, added up (count). Exit status: 0
done; 2 bad arguments, URL, JSON, event, payload or room (nothing was sent); 1 Redis unreachable
or refusing (a plain URL at a Redis Cluster node too). Every error is one line on stderr that
says what to fix.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import orjson

from publisher.client import Publisher
from publisher.envelope import DEFAULT_CHANNEL_PREFIX, DEFAULT_KEY_PREFIX
from publisher.errors import PublisherError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
EXIT_REDIS = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    """argparse's complaint, to print as one line instead of usage text."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see: python -m publisher {self._hint()}--help)")

    def _hint(self) -> str:
        words = self.prog.split()[3:]  # after "python -m publisher"
        return "".join(word + " " for word in words)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m publisher",
        description="Emit to the notification gateway's Redis bus, or ask about presence.",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        help="the bus: redis://, rediss://, unix://, redis+sentinel://, redis+cluster://, "
             "rediss+cluster:// (default: $REDIS_URL, else %(default)s)",
    )
    parser.add_argument(
        "--channel-prefix", default=os.environ.get("CHANNEL_PREFIX") or DEFAULT_CHANNEL_PREFIX,
        help="as the gateway's CHANNEL_PREFIX (default: $CHANNEL_PREFIX, else %(default)s)",
    )
    parser.add_argument(
        "--key-prefix", default=os.environ.get("KEY_PREFIX") or DEFAULT_KEY_PREFIX,
        help="as the gateway's KEY_PREFIX (default: $KEY_PREFIX, else %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    emit = commands.add_parser("emit", help="emit an event to a user, a room or everyone")
    emit.add_argument("event", help="event name, e.g. coins:earned")
    emit.add_argument("payload", nargs="?", default="{}",
                      help="the payload as JSON (default {}); - reads it from stdin")
    target = emit.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", help="the user's id: the room user:<id>")
    target.add_argument("--room", help="a room, e.g. classroom:7")
    target.add_argument("--all", action="store_true", help="every connected client")
    emit.add_argument("--strict", action="store_true",
                      help="check the five contract events against their schema, as the typed helpers do")

    for name, verb in (("join", "put into"), ("leave", "take out of")):
        sub = commands.add_parser(name, help=f"{verb} rooms every socket of a user")
        sub.add_argument("user", help="the user's id")
        sub.add_argument("rooms", nargs="+", metavar="ROOM", help="e.g. classroom:7")

    kick = commands.add_parser("kick", help="disconnect a user everywhere, for good")
    kick.add_argument("user", help="the user's id")
    online = commands.add_parser("online", help="is the user connected? prints true or false")
    online.add_argument("user", help="the user's id")
    commands.add_parser("count", help="how many users the live replicas hold (one on two replicas counts twice)")

    bridge = commands.add_parser(
        "bridge", help="carry @socket.io/redis-emitter and python-socketio RedisManager messages onto the bus")
    for flag, env, what in BRIDGE_FLAGS:
        bridge.add_argument(flag, dest=env, default=None, help=f"{what} (default: ${env})")
    return parser


# The bridge's own flags: each one's value, when given, wins over its environment variable.
BRIDGE_FLAGS = (
    ("--emitter-prefix", "BRIDGE_EMITTER_PREFIX", "the emitters' `key` option, socket.io by default"),
    ("--socketio-channel", "BRIDGE_SOCKETIO_CHANNEL", "python-socketio's channel, socketio by default"),
    ("--sources", "BRIDGE_SOURCES", "emitter,python-socketio (both by default)"),
    ("--port", "BRIDGE_PORT", "port of /healthz, /readyz, /metrics, 9100 by default"),
    ("--host", "BRIDGE_HOST", "address of /healthz, /readyz, /metrics, 0.0.0.0 by default"),
    ("--lease-ttl-ms", "BRIDGE_LEASE_TTL_MS", "lease lifetime, 5000 by default"),
    ("--lease-renew-ms", "BRIDGE_LEASE_RENEW_MS", "lease renewal interval, 1000 by default"),
    ("--bridge-id", "BRIDGE_ID", "this bridge's name in logs and in the lease, hostname-random by default"),
)


def _payload(text: str) -> object:
    if text == "-":
        text = sys.stdin.read()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the payload is not valid JSON ({exc}); quote it for the shell, "
                         """e.g. '{"amount": 50}'""") from None


def _run(args: argparse.Namespace, pub: Publisher) -> str:
    if args.command == "emit":
        data = _payload(args.payload)
        strict = bool(args.strict)
        if args.all:
            return pub.emit(args.event, data, broadcast=True, strict=strict).result()
        if args.room is not None:
            return pub.emit(args.event, data, room=args.room, strict=strict).result()
        return pub.emit(args.event, data, user=args.user, strict=strict).result()
    if args.command == "join":
        return orjson.dumps(pub.join(args.user, args.rooms)).decode()
    if args.command == "leave":
        return orjson.dumps(pub.leave(args.user, args.rooms)).decode()
    if args.command == "kick":
        return str(pub.disconnect_user(args.user))
    if args.command == "online":
        return "true" if pub.is_online(args.user) else "false"
    return str(pub.online_count())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    if args.command == "bridge":
        return _bridge(args)
    try:
        with Publisher(args.redis_url, channel_prefix=args.channel_prefix,
                       key_prefix=args.key_prefix) as pub:
            print(_run(args, pub))
    except PublisherError as exc:
        _complain(f"{exc} Check --redis-url or REDIS_URL.")
        return EXIT_REDIS
    except ValueError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    return 0


def _bridge(args: argparse.Namespace) -> int:
    """Run the bridge until SIGTERM / SIGINT; 2 on a bad setting (named in the message)."""
    import asyncio

    from publisher.bridge import config, process

    values = {env: getattr(args, env) for _, env, _ in BRIDGE_FLAGS}
    values.update(REDIS_URL=args.redis_url, CHANNEL_PREFIX=args.channel_prefix, KEY_PREFIX=args.key_prefix)
    try:
        settings = config.load(values)
    except config.ConfigError as exc:
        _complain(str(exc))
        return EXIT_USAGE
    asyncio.run(process.serve(settings))
    return 0


def _complain(message: str) -> None:
    print("publisher: " + " ".join(message.split()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
