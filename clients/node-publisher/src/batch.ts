/**
 * The events sent in one tick of the event loop, published by as few script calls as possible.
 *
 * publish.lua takes any number of events per call (KEYS[i] the history of event i; ARGV[1]
 * max length, ARGV[2] lifetime, then the channel and envelope of each event) and publishes them
 * in argument order, so a burst costs Redis one script run instead of one per event, and ioredis
 * one command. Used for a single Redis (and Sentinel), where one call may carry any rooms. On a
 * Redis Cluster the keys of a call must share a slot, and ioredis's auto-pipelining groups a
 * script command by its first argument (a key count there, not a key), so the publisher sends
 * one event per call instead and leaves the batching of round trips to ioredis.
 *
 * Order: events are queued in call order and a call publishes them in that order; calls go out
 * on one connection in order. A call that fails rejects every send it carried.
 */

/** Sends one batched publish: KEYS, then ARGV; resolves to the flat reply. */
export type PublishMany = (keys: string[], argv: string[]) => Promise<unknown>;

interface Pending {
  history: string;
  channel: string;
  envelope: string;
  resolve: (position: unknown) => void;
  reject: (err: unknown) => void;
}

/** At most this many events, and about this many bytes of envelopes, per call. */
export const MAX_EVENTS = 500;
export const MAX_BYTES = 1 << 20;

export class PublishBatcher {
  private queue: Pending[] = [];

  constructor(private readonly send: PublishMany, private readonly maxlen: string,
              private readonly lifetime: string) {}

  /** Queue one event; resolves to the first element of its reply pair (its position). */
  add(history: string, channel: string, envelope: string): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (this.queue.length === 0) process.nextTick(() => this.flush());
      this.queue.push({ history, channel, envelope, resolve, reject });
    });
  }

  private flush(): void {
    const queue = this.queue;
    this.queue = [];
    let start = 0;
    while (start < queue.length) {
      let end = start;
      let bytes = 0;
      while (end < queue.length && end - start < MAX_EVENTS && (end === start || bytes < MAX_BYTES)) {
        bytes += queue[end].envelope.length;
        end++;
      }
      this.call(queue.slice(start, end));
      start = end;
    }
  }

  private call(chunk: Pending[]): void {
    const argv = [this.maxlen, this.lifetime];
    for (const item of chunk) argv.push(item.channel, item.envelope);
    this.send(chunk.map((item) => item.history), argv).then((reply) => {
      const flat = reply as unknown[];
      chunk.forEach((item, i) => item.resolve(flat[2 * i]));
    }, (err: unknown) => {
      for (const item of chunk) item.reject(err);
    });
  }
}
