/**
 * What the publisher throws, so that a caller can tell "my mistake" from "Redis trouble",
 * as the Python publisher does (publisher/errors.py).
 *
 * Caller mistakes (a bad event name, payload, room, user id or option) are `InvalidArgument`s,
 * thrown (as a rejected Promise) before anything is sent: retrying them is pointless. Trouble
 * on the way to Redis, or a command Redis refused, is a `PublishError` whose `cause` is
 * ioredis's error.
 */

/** A bad argument: nothing was sent. The message names what is wrong. */
export class InvalidArgument extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A room name outside the grammar (publisher/rooms.py). */
export class InvalidRoom extends InvalidArgument {}

/** An event name outside the grammar, or one Socket.IO reserves. */
export class InvalidEvent extends InvalidArgument {}

/** A payload that is not sanitised; the message starts with the path of the offending value. */
export class InvalidPayload extends InvalidArgument {}

/** Redis could not be reached, or refused the command. The event may have been published if
 * the connection broke after Redis ran the script: at least once, never silently dropped. */
export class PublishError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The last attempt timed out waiting for Redis (ioredis's `commandTimeout`, 5 s by default). */
export class PublishTimeout extends PublishError {}

/** A plain redis:// URL that leads to a Redis Cluster node: write redis+cluster:// instead. */
export class ClusterModeError extends PublishError {}
