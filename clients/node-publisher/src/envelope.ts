/**
 * The bus's names and envelopes, version 2, as publisher/envelope.py defines them: the same
 * channel and key names from the same two prefixes, and envelopes whose JSON has the same
 * fields in the same order (tests/e2e/producers/test_node_publisher.py compares them with
 * the Python publisher's, byte for byte but the timestamp).
 *
 * An event's envelope leaves the position `o` out: only the publish script may assign it.
 */
import { DEFAULT_CHANNEL_PREFIX, DEFAULT_KEY_PREFIX, NAMESPACE, VERSION } from "./generated/bus";
import { InvalidArgument } from "./errors";

export class BusNames {
  constructor(readonly channelPrefix: string = DEFAULT_CHANNEL_PREFIX,
              readonly keyPrefix: string = DEFAULT_KEY_PREFIX) {
    // `#` separates the parts of a channel name; braces would change the hash tag.
    for (const [what, value, example] of [["channelPrefix", channelPrefix, "socket.io"],
                                          ["keyPrefix", keyPrefix, "ngw"]] as const) {
      if (typeof value !== "string" || !value) {
        throw new InvalidArgument(`${what} must be a non-empty string, e.g. '${example}'`);
      }
      if (value.includes("{") || value.includes("}")) {
        throw new InvalidArgument(`${what} '${value}' must not contain a brace: braces are Redis Cluster hash tags`);
      }
    }
    if (channelPrefix.includes("#")) throw new InvalidArgument(`channelPrefix '${channelPrefix}' must not contain '#'`);
    Object.freeze(this);
  }

  /** The sharded channel of `room` ("*": events for everyone). */
  roomChannel(room: string): string {
    return `${this.channelPrefix}#${NAMESPACE}#{${room}}#`;
  }

  historyKey(room: string): string {
    return `${this.keyPrefix}:{${room}}:h`;
  }

  /** The sessions of `user` are this prefix and a pid. */
  sessionPrefix(user: string): string {
    return `${this.keyPrefix}:{user:${user}}:s:`;
  }

  userSessionsKey(user: string): string {
    return `${this.keyPrefix}:{user:${user}}:sessions`;
  }

  revokedKey(user: string): string {
    return `${this.keyPrefix}:{user:${user}}:revoked`;
  }

  presenceKey(user: string): string {
    return `${this.keyPrefix}:{user:${user}}:on`;
  }

  replicasKey(): string {
    return `${this.keyPrefix}:{replicas}:live`;
  }

  replicaUsersKey(): string {
    return `${this.keyPrefix}:{replicas}:users`;
  }
}

/** The envelope of an event, without `o`: `body` is the payload's JSON, already sanitised. */
export function encodeEvent(event: string, body: string, room: string | null, tMs: number): string {
  return `{"v":${VERSION},"k":"e","t":${JSON.stringify(tMs)},"ev":${JSON.stringify(event)},"d":${body},"r":${JSON.stringify(room)}}`;
}

export type ControlKind = "join" | "leave" | "kick";

/** The envelope of a control message about `user`; `rooms` maps each room to its position at
 * the join or leave, in order (written by hand: a JS object would put "123" before "abc"). */
export function encodeControl(kind: ControlKind, user: string, rooms: [string, string][] | null, tMs: number): string {
  const head = `{"v":${VERSION},"k":"${kind}","t":${JSON.stringify(tMs)},"u":${JSON.stringify(user)}`;
  if (kind === "kick") return head + "}";
  if (!rooms || rooms.length === 0) throw new InvalidArgument(`${kind} needs at least one room`);
  const pairs = rooms.map(([room, at]) => `${JSON.stringify(room)}:${JSON.stringify(at)}`);
  return `${head},"rooms":{${pairs.join(",")}}}`;
}

const POSITION = /^([0-9]{1,15})-([0-9]{1,20})$/;

/** A position read from Redis, checked to be `<ms>-<seq>`, in its canonical form. */
export function checkPosition(value: unknown): string {
  const text = Buffer.isBuffer(value) ? value.toString("ascii") : value;
  const match = typeof text === "string" ? POSITION.exec(text) : null;
  if (match === null) throw new InvalidArgument(`bad position ${JSON.stringify(String(text)).slice(0, 60)}: expected <ms>-<seq>`);
  return `${BigInt(match[1])}-${BigInt(match[2])}`;
}
