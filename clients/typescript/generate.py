"""Write `notifications.d.ts`, the TypeScript side of the /notifications contract.

    .venv/bin/python clients/typescript/generate.py           # write it
    .venv/bin/python clients/typescript/generate.py --check   # exit 1 if it is stale

The payloads and `ServerToClientEvents` come from `publisher.events.typescript_declarations()`
(one description, `EVENT_SCHEMAS`, also checks payloads at runtime); the client-to-server
half, the acks and the handshake refusal codes follow, from the gateway's own constants.
tests/unit/test_typescript_decl.py fails when the committed file differs from this output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.policy.auth import TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_MISSING
from publisher.events import typescript_declarations

OUTPUT = Path(__file__).resolve().with_name("notifications.d.ts")

# What a client sends and what it is told: the contract's "Socket.IO surface".
ACK_ERRORS = ("unknown_event", "rate_limited", "invalid_payload")
HANDSHAKE_ERRORS = (TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED)
TOO_MANY = "too_many_connections"  # message and code, past MAX_CONNECTIONS_PER_USER


def _union(values: tuple[str, ...]) -> str:
    return " | ".join(f'"{v}"' for v in values)


def protocol_declarations() -> str:
    return f"""
// The client's half of the protocol (clients/typescript/generate.py).

/** Handshake auth: `io(url + "/notifications", {{ auth }})`; the "Bearer " prefix is optional. */
export interface HandshakeAuth {{
  token: string;
}}

/** Why a token was refused: `err.data.code` of `connect_error`, whose `err.message` is "unauthorized". */
export type HandshakeErrorCode = {_union(HANDSHAKE_ERRORS)};

/** `err.data` of the `connect_error` of a refused handshake. `err.message` is "unauthorized" for
 * a token problem, "{TOO_MANY}" (code too) when the user holds too many sockets already. */
export interface HandshakeErrorData {{
  code: HandshakeErrorCode | "{TOO_MANY}";
}}

/** Why the server refused an event a client emitted. */
export type ClientEventError = {_union(ACK_ERRORS)};

/** The ack of a refused client event. */
export interface Refusal {{
  ok: false;
  error: ClientEventError;
}}

/** The ack of `subscribe:notifications`: the rooms this socket is in, or a refusal. */
export type SubscribeAck = {{ ok: true; rooms: string[] }} | Refusal;

export type SubscribeCallback = (answer: SubscribeAck) => void;

/** Events a client may emit; any other is refused with {{ ok: false, error: "unknown_event" }}. */
export interface ClientToServerEvents {{
  /** The payload is optional; the ack says which rooms the socket is in. */
  "subscribe:notifications": (
    ...args: [ack: SubscribeCallback] | [payload: Record<string, unknown>, ack: SubscribeCallback]
  ) => void;
}}
"""


def render() -> str:
    return typescript_declarations() + protocol_declarations()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
    if args.check:
        if current != text:
            sys.stderr.write(f"{OUTPUT} is stale: run python {Path(__file__).name} without --check\n")
            return 1
        return 0
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote {OUTPUT}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
