// What the end-to-end tests share: where the deployment is (from the environment, set by
// tests/e2e/producers/test_node_publisher.py), tokens, and real socket.io-client sockets that
// record what they receive.
import { createHmac, randomBytes } from "node:crypto";
import { io } from "socket.io-client";

/** The deployment, or null when the tests run without one (they then skip, and the pytest
 * driver, which always gives one, refuses a skip). */
export const deployment = process.env.NGW_REDIS_URL ? {
  redisUrl: process.env.NGW_REDIS_URL,
  gateways: (process.env.NGW_GATEWAYS ?? "").split(",").filter(Boolean),
  secret: process.env.NGW_JWT_SECRET ?? "",
  nowhere: process.env.NGW_NOWHERE ?? "http://127.0.0.1:9",
  cluster: process.env.NGW_REDIS_URL.includes("+cluster://"),
} : null;

export const WAIT_MS = 10_000;

export function uid(prefix = "u") {
  return `${prefix}-${randomBytes(5).toString("hex")}`;
}

function b64url(value) {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

/** An HS256 JWT as the platform issues them (tests/support/gateway_proc.make_token). */
export function token(sub, classrooms = []) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url({ sub, role: "student", classrooms, iat: now, exp: now + 3600 });
  const signature = createHmac("sha256", deployment.secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

/** A socket.io-client socket on /notifications that records every event it gets. */
export class Client {
  constructor(socket) {
    this.socket = socket;
    this.events = [];
    this.waiters = new Set();
    socket.onAny((event, ...args) => {
      this.events.push({ event, data: args[0], args });
      for (const waiter of this.waiters) waiter();
    });
  }

  /** The events named `event` received so far, their payloads. */
  received(event) {
    return this.events.filter((e) => e.event === event).map((e) => e.data);
  }

  /** Resolves once `test()` holds (checked on every event), rejects after WAIT_MS saying `what`. */
  until(test, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = test();
        if (value) {
          clearTimeout(timer);
          this.waiters.delete(check);
          resolve(value);
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.events).slice(0, 2000)}`));
      }, WAIT_MS);
      this.waiters.add(check);
      check();
    });
  }

  /** Resolves with the payloads of `event` once there are `count` of them. */
  waitFor(event, count = 1) {
    return this.until(() => {
      const got = this.received(event);
      return got.length >= count ? got : null;
    }, `${count} ${event}`);
  }

  /** Resolves once a `socketEvent` (connect, disconnect...) comes; its arguments. */
  once(socketEvent) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${socketEvent} within ${WAIT_MS} ms`)), WAIT_MS);
      this.socket.once(socketEvent, (...args) => {
        clearTimeout(timer);
        resolve(args);
      });
    });
  }

  close() {
    this.socket.disconnect();
  }
}

const opened = new Set();

/** A connected client of user `sub` on replica `base` (its http:// URL). */
export async function connect(base, sub, classrooms = []) {
  const socket = io(`${base}/notifications`, {
    auth: { token: token(sub, classrooms) },
    transports: ["websocket"],
    reconnectionDelay: 50,
    reconnectionDelayMax: 200,
    forceNew: true,
  });
  const client = new Client(socket);
  opened.add(client);
  const [err] = await Promise.race([
    client.once("connect").then(() => [null]),
    client.once("connect_error"),
  ]);
  if (err) throw new Error(`could not connect to ${base}: ${err.message} ${JSON.stringify(err.data ?? null)}`);
  return client;
}

export function closeAll() {
  for (const client of opened) client.close();
  opened.clear();
}

/** Resolves once `probe()` (async) gives a truthy value; rejects after WAIT_MS saying `what`. */
export async function eventually(probe, what) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A quiet period in which `client` must not get `event`: after the bus has delivered a later
 * marker to the same socket, and a little more. */
export async function assertNotReceived(client, event, publisher, sub) {
  const marker = uid("marker");
  await publisher.sendToUser(sub, "test:marker", { marker });
  await client.until(() => client.received("test:marker").some((d) => d.marker === marker), `marker ${marker}`);
  await new Promise((r) => setTimeout(r, 300));
  return client.received(event);
}
