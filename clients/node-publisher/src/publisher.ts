/**
 * `NotificationPublisher`: the specification's WebSocketService names over the gateway's bus.
 *
 * It speaks the bus natively, as publisher/client.py does, with the same Lua scripts (rendered
 * from publisher/lua/ into ./generated/scripts.ts), the same checks and the same names: an
 * event this package sends is recorded in its room's history and recovered like any other.
 * Every method checks its arguments first (an `InvalidArgument` naming the problem, nothing
 * sent), then runs the scripts through ioredis; the scripts are registered with
 * `defineCommand`, so each is sent by EVALSHA, as EVAL the first time on a connection (every
 * cluster node's included) and again after NOSCRIPT. With `enableAutoPipelining` (set on the
 * clients this package makes) the calls of one event-loop tick share one write per node.
 */
import { Cluster, Redis } from "ioredis";
import type { RedisOptions } from "ioredis";
import { EVERYONE, MAX_PAYLOAD_BYTES, REPLICA_TTL_MS } from "./generated/bus";
import type { ServerToClientEvents } from "./generated/notifications";
import { ONLINE, POSITION, PUBLISH, REPLICAS, REVOKE, ROOMS } from "./generated/scripts";
import type { BusScript } from "./generated/scripts";
import { BusNames, checkPosition, encodeControl, encodeEvent } from "./envelope";
import { ClusterModeError, InvalidArgument, PublishError, PublishTimeout } from "./errors";
import { checkEventName, sanitize } from "./payload";
import { checkRoom, normalizeUserId, parseRoom, userRoom } from "./rooms";
import { clusterUrlFor, makeClient, parseRedisUrl } from "./url";
import { PublishBatcher } from "./batch";

/** The payload of each of the contract's five events, from the generated declarations. */
export type ContractPayloads = { [E in keyof ServerToClientEvents]: Parameters<ServerToClientEvents[E]>[0] };
export type ContractEvent = keyof ContractPayloads;
/** What `data` must be for `event`: the contract's type for its five events, any JSON value
 * (checked at run time) for every other name. */
export type PayloadOf<E extends string> = E extends ContractEvent ? ContractPayloads[E] : unknown;
/** A user id: a non-empty string, or an integer (42 and "42" are the same user). */
export type UserId = string | number;

export interface PublisherOptions {
  /** The gateway's CHANNEL_PREFIX (default "socket.io"). */
  channelPrefix?: string;
  /** The gateway's KEY_PREFIX (default "ngw"). */
  keyPrefix?: string;
  /** The gateway's HISTORY_MAX_LEN: entries kept per room (default 1000). */
  historyMaxLen?: number;
  /** The gateway's RECOVERY_WINDOW in seconds (default 120; 0 keeps no history). */
  recoveryWindowS?: number;
  /** Limit of an encoded payload, bytes (default 65536, the protocol's). */
  maxPayloadBytes?: number;
  /** ioredis options for the client made from a URL (for a cluster, every node's). */
  redisOptions?: RedisOptions;
}

// Each with its number of keys, so that the first argument ioredis sees is a key: its
// auto-pipelining groups a cluster's calls by the slot of the first argument of a command it
// does not know, and a key count there would put calls for different nodes in one pipeline.
// The publish script takes any number of events: `ngwPublish` carries one (a cluster's calls,
// see ./batch.ts), `ngwPublishMany` any number, its key count first (a single Redis).
const COMMANDS = {
  publish: ["ngwPublish", PUBLISH, 1],
  publishMany: ["ngwPublishMany", PUBLISH, null],
  position: ["ngwPosition", POSITION, 1],
  rooms: ["ngwRooms", ROOMS, 1],
  revoke: ["ngwRevoke", REVOKE, 2],
  online: ["ngwOnline", ONLINE, 1],
  replicas: ["ngwReplicas", REPLICAS, 2],
} as const satisfies Record<string, readonly [string, BusScript, number | null]>;
type CommandName = (typeof COMMANDS)[keyof typeof COMMANDS][0];
type Arg = string | number;
type ScriptClient = Record<CommandName, (...args: Arg[]) => Promise<unknown>>;

function integer(name: string, value: unknown, min: number, max: number, hint: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgument(`${name} must be ${hint}, got ${JSON.stringify(value) ?? String(value)}`);
  }
  return value;
}

function text(value: unknown): string {
  return Buffer.isBuffer(value) ? value.toString("utf8") : String(value);
}

function isCluster(client: unknown): client is Cluster {
  return client instanceof Cluster || (client as { isCluster?: boolean } | null)?.isCluster === true;
}

function isClient(value: unknown): value is Redis | Cluster {
  return value instanceof Redis || isCluster(value)
    || (typeof value === "object" && value !== null && typeof (value as Redis).defineCommand === "function");
}

export class NotificationPublisher {
  /** The bus names of this publisher, from its prefixes. */
  readonly names: BusNames;
  /** Where it points, credentials masked: for messages. */
  readonly where: string;
  readonly client: Redis | Cluster;
  private readonly owns: boolean;
  private readonly maxPayload: number;
  private readonly maxlen: string;
  private readonly lifetime: string;
  private readonly revokePx: string;
  /** The URL a cluster-node refusal names; null: nothing to check (Sentinel, Cluster). */
  private standaloneUrl: string | null;
  private refusal: ClusterModeError | null = null;
  private checking: Promise<void> | null = null;
  /** Batches a tick's sends into one script call; null on a cluster (one call per event). */
  private readonly batcher: PublishBatcher | null;
  private closed = false;

  /**
   * From a Redis URL (every REDIS_URL form of the gateway: see ./url.ts) or an existing ioredis
   * `Redis` or `Cluster`. A client made from a URL is this publisher's, closed by `close()`; a
   * client given is left open, gets this package's script commands (`ngwPublish`...), and
   * keeps its own settings (set `enableAutoPipelining: true` on it for automatic pipelining).
   * Options must match the gateway's settings (see `PublisherOptions`).
   */
  constructor(source: string | Redis | Cluster, options: PublisherOptions = {}) {
    this.names = new BusNames(options.channelPrefix, options.keyPrefix);
    const historyMaxLen = integer("historyMaxLen", options.historyMaxLen ?? 1000, 1, Number.MAX_SAFE_INTEGER,
      "a positive integer");
    const window = options.recoveryWindowS ?? 120;
    if (typeof window !== "number" || !(window >= 0 && window <= 86_400)) {
      throw new InvalidArgument(`recoveryWindowS must be seconds from 0 to 86400, got ${String(window)}`);
    }
    this.maxPayload = integer("maxPayloadBytes", options.maxPayloadBytes ?? MAX_PAYLOAD_BYTES, 2,
      Number.MAX_SAFE_INTEGER, "an integer of at least 2");
    const windowMs = Math.round(window * 1000);
    // As publisher/commands.py: with no recovery window there is nothing to recover, "0" keeps
    // no history; a revocation outlives every session created before it.
    this.maxlen = windowMs ? String(historyMaxLen) : "0";
    this.lifetime = String(2 * windowMs);
    this.revokePx = String(Math.max(2 * windowMs, 1000));
    if (typeof source === "string") {
      const target = parseRedisUrl(source);
      this.client = makeClient(target, options.redisOptions);
      this.where = target.where;
      this.owns = true;
      this.standaloneUrl = target.kind === "standalone" ? target.url : null;
    } else if (isClient(source)) {
      if (options.redisOptions) throw new InvalidArgument("redisOptions are for a client made from a URL; yours keeps its own");
      const prefix = isCluster(source) ? source.options.redisOptions?.keyPrefix ?? source.options.keyPrefix
        : source.options.keyPrefix;
      if (prefix) {
        throw new InvalidArgument(`the client has keyPrefix '${prefix}': the bus's names are exact, give `
          + "a client without keyPrefix (the bus's own prefix is the keyPrefix option of this publisher)");
      }
      this.client = source;
      this.owns = false;
      this.where = describe(source);
      this.standaloneUrl = isCluster(source) || source.options.sentinels ? null : urlOf(source);
    } else {
      throw new InvalidArgument("give a Redis URL or an ioredis Redis or Cluster client");
    }
    this.batcher = isCluster(this.client) ? null : new PublishBatcher(
      (keys, argv) => this.run("ngwPublishMany", keys.length, ...keys, ...argv), this.maxlen, this.lifetime);
    for (const [name, script, numberOfKeys] of Object.values(COMMANDS)) {
      this.client.defineCommand(name, numberOfKeys === null ? { lua: script.source } : { lua: script.source, numberOfKeys });
    }
  }

  /** Emit `event` to every socket of the user (the room `user:<id>`); resolves to the event's
   * position in that room (`"<ms>-<seq>"`). */
  async sendToUser<E extends string>(userId: UserId, event: E, data: PayloadOf<E>): Promise<string> {
    return this.emit(event, data, userRoom(userId));
  }

  /** Emit `event` to a room: `classroom:7`, `teacher:3`, `admin:all` or any room of the
   * grammar (`quiz:9`); resolves to its position in the room. */
  async sendToRoom<E extends string>(room: string, event: E, data: PayloadOf<E>): Promise<string> {
    return this.emit(event, data, checkRoom(room));
  }

  /** Emit `event` to every client; resolves to its position in the room `*`. */
  async broadcastToAll<E extends string>(event: E, data: PayloadOf<E>): Promise<string> {
    return this.emit(event, data, null);
  }

  /** Put every socket of the user, on every replica, into `rooms`, and their saved sessions,
   * so a client away now comes back in them. Resolves to {room: its position at the join};
   * every event of the room after it reaches the joined sockets. */
  async joinRoom(userId: UserId, rooms: string | readonly string[]): Promise<Record<string, string>> {
    return this.membership("join", userId, rooms);
  }

  /** Take every socket of the user out of `rooms` (never out of `user:<id>`), and their saved
   * sessions. Resolves to {room: its position at the leave}. */
  async leaveRoom(userId: UserId, rooms: string | readonly string[]): Promise<Record<string, string>> {
    return this.membership("leave", userId, rooms);
  }

  /** Disconnect every socket of the user for good: delete their recoverable sessions, mark them
   * revoked (twice the recovery window), kick them on every replica. Resolves to the number of
   * recoverable sessions deleted. */
  async disconnectUser(userId: UserId): Promise<number> {
    const uid = normalizeUserId(userId);
    const own = userRoom(uid);
    const envelope = encodeControl("kick", uid, null, Date.now());
    const n = this.names;
    const reply = await this.run("ngwRevoke", n.userSessionsKey(uid), n.revokedKey(uid), n.sessionPrefix(uid),
      this.revokePx, n.roomChannel(own), envelope);
    return Number(reply);
  }

  /** Whether a live replica holds a socket of the user (replicas report every 5 s and count
   * as alive for 15 s). */
  async isOnline(userId: UserId): Promise<boolean> {
    const uid = normalizeUserId(userId);
    userRoom(uid);
    const n = this.names;
    const [where, live] = await Promise.all([
      this.run("ngwOnline", n.presenceKey(uid)),
      this.run("ngwReplicas", n.replicasKey(), n.replicaUsersKey(), REPLICA_TTL_MS),
    ]);
    const alive = new Set<string>();
    (live as unknown[]).forEach((item, i) => { if (i % 2 === 0) alive.add(text(item)); });
    return (where as unknown[]).some((replica) => alive.has(text(replica)));
  }

  /** Release the connections if this publisher made the client (a client given stays open). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.owns) {
      try {
        await this.client.quit();
      } catch {
        this.client.disconnect();
      }
    }
  }

  private async emit(event: string, data: unknown, room: string | null): Promise<string> {
    checkEventName(event);
    const body = sanitize(data, this.maxPayload);
    const envelope = encodeEvent(event, body, room, Date.now());
    const tag = room ?? EVERYONE;
    const history = this.names.historyKey(tag);
    const channel = this.names.roomChannel(tag);
    if (this.batcher !== null) return checkPosition(await this.batcher.add(history, channel, envelope));
    // A cluster: one event per call (./batch.ts says why); ioredis pipelines the round trips.
    const reply = await this.run("ngwPublish", history, this.maxlen, this.lifetime, channel, envelope);
    return checkPosition((reply as unknown[])[0]);
  }

  private rooms(kind: "join" | "leave", userId: UserId, given: string | readonly string[]): [string, string[]] {
    const uid = normalizeUserId(userId);
    userRoom(uid);
    const list: readonly unknown[] = typeof given === "string" ? [given] : Array.isArray(given) ? given : [given];
    if (!list.length) throw new InvalidArgument(`${kind} needs at least one room`);
    const out = new Set<string>();
    for (const room of list) {
      const [roomKind, roomId] = parseRoom(room);
      if (kind === "join" && (roomKind === "user" || roomKind === "teacher") && roomId !== uid) {
        throw new InvalidArgument(`join: ${room as string} belongs to another user; the gateway lets a user into their own `
          + "rooms, classroom rooms and rooms outside the reserved prefixes (user:, teacher:, admin:) only");
      }
      if (kind === "leave" && roomKind === "user" && roomId === uid) {
        throw new InvalidArgument(`leave: ${room as string} is the user's own room and cannot be left`);
      }
      out.add(room as string);
    }
    return [uid, [...out]];
  }

  private async membership(kind: "join" | "leave", userId: UserId, given: string | readonly string[]):
      Promise<Record<string, string>> {
    const [uid, rooms] = this.rooms(kind, userId, given);
    // Phase 1, on each room's shard: its position now. Phase 2, on the user's shard: edit the
    // sessions and tell the replicas; every event after a room's position reaches the sockets.
    const replies = await Promise.all(rooms.map((room) => this.run("ngwPosition", this.names.historyKey(room))));
    const at = rooms.map((room, i): [string, string] => [room, checkPosition(replies[i])]);
    const own = userRoom(uid);
    const n = this.names;
    await this.run("ngwRooms", n.userSessionsKey(uid), n.sessionPrefix(uid), kind, own, n.roomChannel(own),
      encodeControl(kind, uid, at, Date.now()), ...at.flat());
    return Object.fromEntries(at);
  }

  private async run(command: CommandName, ...args: Arg[]): Promise<unknown> {
    if (this.closed) throw new PublishError(`the publisher to ${this.where} is closed`);
    if (this.standaloneUrl !== null) {
      // Asked once, however many calls wait for the answer; asked again if it failed.
      this.checking ??= this.checkStandalone(this.standaloneUrl).finally(() => { this.checking = null; });
      await this.checking;
    }
    try {
      return await (this.client as unknown as ScriptClient)[command](...args);
    } catch (err) {
      throw this.failure(err);
    }
  }

  /** A plain URL at a cluster node would reach that node's slots only; refused once known,
   * naming the redis+cluster:// URL to write (as the Python publisher does). */
  private async checkStandalone(url: string): Promise<void> {
    if (this.refusal !== null) throw this.refusal;
    let info: string;
    try {
      info = await (this.client as Redis).info("cluster");
    } catch (err) {
      if ((err as Error | null)?.name === "ReplyError") {  // INFO refused (an ACL): a single Redis
        this.standaloneUrl = null;
        return;
      }
      throw this.failure(err);
    }
    if (/^cluster_enabled:1\s*$/m.test(info)) {
      this.refusal = new ClusterModeError(`Redis at ${this.where} is a Redis Cluster node: a plain URL would reach `
        + `its own slots only; write ${clusterUrlFor(url)} (every node may be listed, comma-separated)`);
      throw this.refusal;
    }
    this.standaloneUrl = null;
  }

  private failure(err: unknown): PublishError {
    const message = err instanceof Error ? err.message : String(err);
    if ((err as Error | null)?.name === "ReplyError") {
      return new PublishError(`Redis at ${this.where} refused the call: ${message}`, { cause: err });
    }
    const kind = /timed out/i.test(message) ? PublishTimeout : PublishError;
    return new kind(`could not reach Redis at ${this.where}: ${message}`, { cause: err });
  }
}

function urlOf(client: Redis): string {
  const o = client.options;
  if (o.path) return `unix://${o.path}`;
  const host = (o.host ?? "localhost").includes(":") ? `[${o.host}]` : o.host ?? "localhost";
  return `${o.tls ? "rediss" : "redis"}://${host}:${o.port ?? 6379}/${o.db ?? 0}`;
}

function describe(client: Redis | Cluster): string {
  if (isCluster(client)) {
    const nodes = client.nodes("master").map((n) => `${n.options.host ?? "localhost"}:${n.options.port ?? 6379}`);
    return nodes.length ? `redis+cluster://${nodes.join(",")}` : "a Redis Cluster (an ioredis Cluster client)";
  }
  if (client.options.sentinels) return `the master of Sentinel service '${client.options.name}'`;
  return urlOf(client);
}
