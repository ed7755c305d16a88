// The package end to end: real gateway replicas (two, on one Redis or one Redis Cluster), the
// real socket.io-client, and this package's dist/ as a producer would load it. Run by
// tests/e2e/producers/test_node_publisher.py, which starts the deployment and passes it in
// NGW_* variables; without them every test here skips (and that driver refuses a skip).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Cluster, Redis } from "ioredis";
import {
  InvalidEvent, InvalidPayload, InvalidRoom, NotificationPublisher, parseRedisUrl, PublishError, scripts,
} from "../dist/index.js";
import { assertNotReceived, closeAll, connect, deployment, eventually, uid } from "./support.mjs";

const skip = deployment ? false : "no deployment: run through tests/e2e/producers/test_node_publisher.py";

describe("NotificationPublisher against real replicas", { skip }, () => {
  let publisher;
  let a;
  let b;

  before(() => {
    publisher = new NotificationPublisher(deployment.redisUrl);
    [a, b] = deployment.gateways;
    assert.ok(a && b, "two replicas");
  });

  after(async () => {
    closeAll();
    await publisher?.close();
  });

  test("sendToUser reaches every socket of the user, on both replicas, with the typed payload", async () => {
    const user = uid();
    const [onA, onB] = [await connect(a, user), await connect(b, user)];
    const otherUser = uid();
    const other = await connect(b, otherUser);
    const coins = { amount: 50, reason: "exercise_completed", newBalance: 1250 };
    const position = await publisher.sendToUser(user, "coins:earned", coins);
    assert.match(position, /^[0-9]+-[0-9]+$/);
    assert.deepEqual(await onA.waitFor("coins:earned"), [coins]);
    assert.deepEqual(await onB.waitFor("coins:earned"), [coins]);
    const last = onA.events.at(-1).args;
    assert.equal(typeof last.at(-1), "string", "the event carries its offset, for recovery");
    assert.deepEqual(await assertNotReceived(other, "coins:earned", publisher, otherUser), []);
  });

  test("an integer user id reaches the same sockets as its decimal string", async () => {
    const user = String(Date.now() % 1_000_000_000 + 1_000_000);
    const client = await connect(a, user);
    await publisher.sendToUser(Number(user), "progress:update", { step: 1 });
    assert.deepEqual(await client.waitFor("progress:update"), [{ step: 1 }]);
  });

  test("sendToRoom reaches the room's members on both replicas and no one else", async () => {
    const classroom = uid("c");
    const [x, y, outsider] = [uid(), uid(), uid()];
    const onA = await connect(a, x, [classroom]);
    const onB = await connect(b, y, [classroom]);
    const away = await connect(a, outsider);
    const data = { text: "quiz at noon", items: [1, 2.5, "é", null, true], nested: { deep: { ok: false } } };
    await publisher.sendToRoom(`classroom:${classroom}`, "classroom:notice", data);
    assert.deepEqual(await onA.waitFor("classroom:notice"), [data]);
    assert.deepEqual(await onB.waitFor("classroom:notice"), [data]);
    assert.deepEqual(await assertNotReceived(away, "classroom:notice", publisher, outsider), []);
  });

  test("broadcastToAll reaches everyone on both replicas", async () => {
    const tag = uid("b");
    const clients = [await connect(a, uid()), await connect(b, uid()), await connect(b, uid())];
    await publisher.broadcastToAll("system:notice", { tag });
    for (const client of clients) {
      await client.until(() => client.received("system:notice").some((d) => d.tag === tag), `broadcast ${tag}`);
    }
  });

  test("a tick's sends: one script call per 500 on a single Redis, one per event on a cluster", async () => {
    const nodes = deployment.cluster ? publisher.client.nodes("master") : [publisher.client];
    const tag = uid("burst");
    let calls = 0;
    // MONITOR on every primary: the script calls that carry this test's rooms.
    const bases = nodes.map((node) => new Redis({ host: node.options.host, port: node.options.port,
      path: node.options.path, db: node.options.db }));
    const monitors = await Promise.all(bases.map((base) => base.monitor()));
    for (const monitor of monitors) {
      monitor.on("monitor", (_time, args) => {
        if (/^eval(sha)?$/i.test(args[0]) && args.some((arg) => arg.includes(tag))) calls++;
      });
    }
    try {
      const user = uid();
      const client = await connect(a, user);
      const sends = [];
      const rooms = [...Array(1001).keys()].map((i) => `${tag}:${i % 7}`);
      rooms.forEach((room, i) => sends.push(publisher.sendToRoom(room, "burst", { i })));
      sends.push(publisher.sendToUser(user, "burst", { tag }));
      const positions = await Promise.all(sends);
      const seen = new Set(rooms.map((room, i) => `${room} ${positions[i]}`));
      assert.equal(seen.size, rooms.length, "positions are distinct within each room");
      assert.deepEqual(await client.waitFor("burst"), [{ tag }]);
      // 1002 events that carry the tag (the user's in its payload): 500 + 500 + 2 on one Redis.
      const expected = deployment.cluster ? 1002 : 3;
      await eventually(() => calls >= expected, `${expected} calls seen by MONITOR`);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(calls, expected);
    } finally {
      for (const client of [...monitors, ...bases]) client.disconnect();
    }
  });

  test("many sends in one tick arrive, each room in order (auto-pipelined)", async () => {
    const user = uid();
    const client = await connect(b, user);
    const sends = [];
    for (let i = 0; i < 50; i++) sends.push(publisher.sendToUser(user, "count", { i }));
    const positions = await Promise.all(sends);
    const got = await client.waitFor("count", 50);
    assert.deepEqual(got.map((d) => d.i), [...Array(50).keys()]);
    const order = positions.map((p) => p.split("-").map(BigInt));
    for (let i = 1; i < order.length; i++) {
      const [ms0, seq0] = order[i - 1];
      const [ms1, seq1] = order[i];
      assert.ok(ms1 > ms0 || (ms1 === ms0 && seq1 > seq0), `positions grow: ${positions[i - 1]} < ${positions[i]}`);
    }
  });

  test("joinRoom then an event to the room reaches the user; after leaveRoom it does not", async () => {
    const user = uid();
    const room = `quiz:${uid("q")}`;
    const onA = await connect(a, user);
    const onB = await connect(b, user);
    const joined = await publisher.joinRoom(user, room);
    assert.deepEqual(Object.keys(joined), [room]);
    await publisher.sendToRoom(room, "quiz:started", { room });
    assert.deepEqual(await onA.waitFor("quiz:started"), [{ room }]);
    assert.deepEqual(await onB.waitFor("quiz:started"), [{ room }]);
    const left = await publisher.leaveRoom(user, [room]);
    assert.deepEqual(Object.keys(left), [room]);
    await publisher.sendToRoom(room, "quiz:started", { room, after: "leave" });
    assert.equal((await assertNotReceived(onA, "quiz:started", publisher, user)).length, 1);
    assert.equal(onB.received("quiz:started").length, 1);
  });

  test("disconnectUser disconnects every socket of the user for good", async () => {
    const user = uid();
    const onA = await connect(a, user);
    const onB = await connect(b, user);
    const bystander = await connect(a, uid());
    const gone = [onA.once("disconnect"), onB.once("disconnect")];
    const deleted = await publisher.disconnectUser(user);
    assert.equal(typeof deleted, "number");
    for (const [reason] of await Promise.all(gone)) assert.equal(reason, "io server disconnect");
    assert.equal(onA.socket.connected, false);
    assert.equal(bystander.socket.connected, true);
  });

  test("isOnline: true for a connected user, false for one never seen and after they leave", async () => {
    const user = uid();
    assert.equal(await publisher.isOnline(user), false);
    const client = await connect(b, user);
    await eventually(() => publisher.isOnline(user), `${user} online`);
    client.close();
    await eventually(async () => !(await publisher.isOnline(user)), `${user} offline`);
  });

  test("a client away during sends recovers them on another replica, in order", async () => {
    const user = uid();
    const client = await connect(a, user);
    await publisher.sendToUser(user, "coins:earned", { amount: 1, reason: "before", newBalance: 1 });
    await client.waitFor("coins:earned");
    // A network drop: the manager retries, at a closed port, until it is told where to go.
    client.socket.io.uri = deployment.nowhere;
    const dropped = client.once("disconnect");
    client.socket.io.engine.close();
    await dropped;
    const missed = [2, 3, 4].map((n) => ({ amount: n, reason: "while away", newBalance: n }));
    for (const data of missed) await publisher.sendToUser(user, "coins:earned", data);
    const back = client.once("connect");
    client.socket.io.uri = b;
    await back;
    assert.equal(client.socket.recovered, true, "the session was recovered");
    const got = await client.waitFor("coins:earned", 4);
    assert.deepEqual(got.slice(1), missed);
  });

  test("a bad room, event name or payload is refused with a clear error, and nothing is sent", async () => {
    const room = `classroom:${uid("c")}`;
    const history = publisher.names.historyKey(room);
    await assert.rejects(publisher.sendToRoom("bad{room}", "x", {}), (err) => {
      assert.ok(err instanceof InvalidRoom);
      assert.match(err.message, /has the character '\{'; braces are Redis Cluster hash tags/);
      return true;
    });
    await assert.rejects(publisher.sendToRoom("*", "x", {}), InvalidRoom);
    await assert.rejects(publisher.joinRoom(uid(), "user:someone-else"), /belongs to another user/);
    await assert.rejects(publisher.sendToRoom(room, "connect", {}), InvalidEvent);
    await assert.rejects(publisher.sendToRoom(room, "x", { blob: "a".repeat(70_000) }), (err) => {
      assert.ok(err instanceof InvalidPayload);
      assert.match(err.message, /^data: the encoded payload is 70011 bytes, over the limit of 65536$/);
      return true;
    });
    await assert.rejects(publisher.sendToRoom(room, "x", { when: new Date() }), /^InvalidPayload: data\.when: a Date is not a JSON type/);
    await assert.rejects(publisher.sendToRoom(room, "x", { n: 2 ** 53 }), /data\.n: integer 9007199254740992 is beyond/);
    assert.equal(await publisher.client.exists(history), 0, "a refused send wrote nothing");
  });

  test("a lost script cache is refilled (NOSCRIPT: EVAL again), on every node", async () => {
    const user = uid();
    const client = await connect(a, user);
    const nodes = deployment.cluster ? publisher.client.nodes("master") : [publisher.client];
    await Promise.all(nodes.map((node) => node.script("FLUSH")));
    await publisher.sendToUser(user, "after:flush", { ok: true });
    assert.deepEqual(await client.waitFor("after:flush"), [{ ok: true }]);
    // 64 rooms: on every shard of a 3-shard cluster but with odds of 3 * (2/3)^64.
    await Promise.all([...Array(64).keys()].map((i) => publisher.sendToRoom(`flush:${i}`, "x", { i })));
    for (const node of nodes) {
      assert.deepEqual(await node.script("EXISTS", scripts.PUBLISH.sha), [1], "loaded again where it was used");
    }
  });

  test("calls for rooms and users on every shard, made in one tick, all go through", async () => {
    const users = [...Array(12).keys()].map(() => uid());
    const clients = await Promise.all(users.map((user, i) => connect(i % 2 ? a : b, user)));
    const rooms = [...Array(24).keys()].map((i) => `tick:${uid("r")}:${i}`);
    const calls = [
      ...users.map((user, i) => publisher.sendToUser(user, "tick", { i })),
      ...rooms.map((room, i) => publisher.sendToRoom(room, "tick", { i })),
      ...users.map((user) => publisher.joinRoom(user, rooms[0])),
      ...users.map((user) => publisher.isOnline(user)),
      publisher.broadcastToAll("tick", { all: true }),
    ];
    const results = await Promise.all(calls);
    assert.equal(results.length, calls.length);
    for (const [i, client] of clients.entries()) {
      await client.until(() => client.received("tick").some((d) => d.i === i), `tick ${i}`);
    }
  });

  test("an existing ioredis client is used as given and left open by close()", async () => {
    const target = parseRedisUrl(deployment.redisUrl);
    const mine = target.kind === "cluster"
      ? new Cluster(target.seeds, { enableAutoPipelining: true })
      : new Redis({ ...target.options, enableAutoPipelining: true });
    try {
      const own = new NotificationPublisher(mine);
      const user = uid();
      const client = await connect(b, user);
      await own.sendToUser(user, "from:own-client", { n: 1 });
      assert.deepEqual(await client.waitFor("from:own-client"), [{ n: 1 }]);
      assert.equal(await own.isOnline(user), true);
      await own.close();
      await assert.rejects(own.sendToUser(user, "x", {}), PublishError);
      assert.equal(await mine.ping(), "PONG", "the caller's client is still open");
    } finally {
      mine.disconnect();
    }
  });

  test(deployment?.cluster ? "a plain URL at a cluster node is refused, naming redis+cluster://"
    : "a plain URL at a single Redis is taken", async () => {
    if (!deployment.cluster) {
      assert.ok((await publisher.isOnline(uid())) === false);
      return;
    }
    const first = deployment.redisUrl.split("://")[1].split(",")[0];
    const plain = new NotificationPublisher(`redis://${first}/0`);
    try {
      await assert.rejects(plain.sendToUser(uid(), "x", {}), (err) => {
        assert.equal(err.name, "ClusterModeError");
        assert.match(err.message, new RegExp(`write redis\\+cluster://${first.replace(".", "\\.")}`));
        return true;
      });
    } finally {
      await plain.close();
    }
  });
});
