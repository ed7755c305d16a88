// What needs no Redis: URL forms, the room grammar, names and envelopes, option checks.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Cluster, Redis } from "ioredis";
import {
  BusNames, encodeControl, encodeEvent, InvalidArgument, InvalidPayload, InvalidRoom, NotificationPublisher,
  parseRedisUrl, parseRoom, redact, sanitize, scripts,
} from "../dist/index.js";

test("every REDIS_URL form of the gateway parses to the client it names", () => {
  let t = parseRedisUrl("redis://user:p%40ss@cache.local:6380/2");
  assert.equal(t.kind, "standalone");
  assert.deepEqual([t.options.host, t.options.port, t.options.db, t.options.username, t.options.password],
    ["cache.local", 6380, 2, "user", "p@ss"]);
  assert.equal(t.where, "redis://user:***@cache.local:6380/2");
  t = parseRedisUrl("rediss://:secret@[::1]/0?ssl_cert_reqs=none&socket_timeout=1.5");
  assert.equal(t.options.host, "::1");
  assert.equal(t.options.tls.rejectUnauthorized, false);
  assert.equal(t.options.commandTimeout, 1500);
  t = parseRedisUrl("unix:///run/redis.sock?db=3");
  assert.deepEqual([t.kind, t.options.path, t.options.db], ["standalone", "/run/redis.sock", 3]);
  t = parseRedisUrl("redis+sentinel://:pw@s1:26380,s2/1/mymaster?sentinel_password=spw");
  assert.equal(t.kind, "sentinel");
  assert.deepEqual(t.options.sentinels, [{ host: "s1", port: 26380 }, { host: "s2", port: 26379 }]);
  assert.deepEqual([t.options.name, t.options.db, t.options.password, t.options.sentinelPassword], ["mymaster", 1, "pw", "spw"]);
  t = parseRedisUrl("redis+cluster://a:7000,b:7001,[::1]:7002");
  assert.equal(t.kind, "cluster");
  assert.deepEqual(t.seeds, [{ host: "a", port: 7000 }, { host: "b", port: 7001 }, { host: "::1", port: 7002 }]);
  assert.equal(t.options.enableAutoPipelining, true);
  t = parseRedisUrl("rediss+cluster://u:pw@a:7000,b/0?ssl_check_hostname=false");
  assert.deepEqual([t.options.redisOptions.username, t.options.redisOptions.password], ["u", "pw"]);
  assert.equal(typeof t.options.redisOptions.tls.checkServerIdentity, "function");
  assert.equal(t.where, "rediss+cluster://u:***@a:7000,b/0?ssl_check_hostname=false");
});

test("a bad URL is refused naming what is wrong, credentials masked", () => {
  const cases = [
    ["http://x", /unsupported scheme 'http'/],
    ["redis://:hunter2@h:99999/0", /bad Redis URL 'redis:\/\/:\*\*\*@h:99999\/0': address 'h:99999' has a bad port/],
    ["redis://h/x", /the path must be a database number/],
    ["redis+cluster://a:1/3", /database 0 only/],
    ["redis+cluster://a:1,,b:2", /an empty address/],
    ["redis+cluster://a:1?ssl_ca_certs=x", /needs TLS: use rediss\+cluster:\/\//],
    ["redis://h?bogus=1", /unknown option 'bogus'/],
    ["redis+sentinel://s1/0", /the path must be \/db\/service_name/],
    ["unix://", /no socket path/],
    ["", /the Redis URL is empty/],
  ];
  for (const [url, message] of cases) {
    assert.throws(() => parseRedisUrl(url), (err) => err instanceof InvalidArgument && message.test(err.message), url);
    assert.ok(!String((() => { try { parseRedisUrl(url); } catch (e) { return e.message; } })()).includes("hunter2"));
  }
  assert.equal(redact("redis://u:pw@h/0?password=x&db=1"), "redis://u:***@h/0?password=***&db=1");
});

test("clients made from a URL pipeline automatically; a given client is used as is", async () => {
  const standalone = new NotificationPublisher("redis://127.0.0.1:1/0", { redisOptions: { lazyConnect: true } });
  assert.ok(standalone.client instanceof Redis);
  assert.equal(standalone.client.options.enableAutoPipelining, true);
  await standalone.close();
  const cluster = new NotificationPublisher("redis+cluster://127.0.0.1:1,127.0.0.1:2", { redisOptions: { lazyConnect: true } });
  assert.ok(cluster.client instanceof Cluster);
  assert.equal(cluster.client.options.enableAutoPipelining, true);
  cluster.client.disconnect();
  const mine = new Redis({ lazyConnect: true });
  const given = new NotificationPublisher(mine);
  assert.equal(given.client, mine);
  assert.equal(typeof mine.ngwPublish, "function", "the scripts are defined on it (defineCommand)");
  await given.close();
  assert.equal(mine.status, "wait", "close() left the caller's client alone");
  assert.throws(() => new NotificationPublisher(new Redis({ lazyConnect: true, keyPrefix: "app:" })), /keyPrefix 'app:'/);
  assert.throws(() => new NotificationPublisher(42), /give a Redis URL or an ioredis/);
});

test("options are checked as the Python publisher checks them", () => {
  const url = "redis://127.0.0.1:1/0";
  const opts = { redisOptions: { lazyConnect: true } };
  assert.throws(() => new NotificationPublisher(url, { ...opts, historyMaxLen: 0 }), /historyMaxLen must be a positive integer/);
  assert.throws(() => new NotificationPublisher(url, { ...opts, recoveryWindowS: -1 }), /recoveryWindowS must be seconds from 0 to 86400/);
  assert.throws(() => new NotificationPublisher(url, { ...opts, maxPayloadBytes: 1 }), /maxPayloadBytes must be an integer of at least 2/);
  assert.throws(() => new NotificationPublisher(url, { ...opts, keyPrefix: "a{b" }), /keyPrefix 'a\{b' must not contain a brace/);
  assert.throws(() => new NotificationPublisher(url, { ...opts, channelPrefix: "a#b" }), /must not contain '#'/);
});

test("names carry the room as its hash tag, as publisher.envelope.BusNames does", () => {
  const n = new BusNames();
  assert.equal(n.historyKey("classroom:7"), "ngw:{classroom:7}:h");
  assert.equal(n.roomChannel("*"), "socket.io#/notifications#{*}#");
  assert.equal(n.sessionPrefix("42"), "ngw:{user:42}:s:");
  assert.equal(n.userSessionsKey("42"), "ngw:{user:42}:sessions");
  assert.equal(n.presenceKey("42"), "ngw:{user:42}:on");
  assert.equal(n.replicasKey(), "ngw:{replicas}:live");
});

test("envelopes: fields in the wire's order, control rooms in the caller's order", () => {
  assert.equal(encodeEvent("coins:earned", '{"a":1}', "user:42", 1700000000000.5),
    '{"v":2,"k":"e","t":1700000000000.5,"ev":"coins:earned","d":{"a":1},"r":"user:42"}');
  assert.equal(encodeEvent("x", "null", null, 1), '{"v":2,"k":"e","t":1,"ev":"x","d":null,"r":null}');
  assert.equal(encodeControl("join", "42", [["zeta", "1-0"], ["123", "2-0"]], 5),
    '{"v":2,"k":"join","t":5,"u":"42","rooms":{"zeta":"1-0","123":"2-0"}}');
  assert.equal(encodeControl("kick", "42", null, 5), '{"v":2,"k":"kick","t":5,"u":"42"}');
});

test("the room grammar: reserved prefixes, lengths in code points, no braces or control characters", () => {
  assert.deepEqual(parseRoom("quiz:9"), ["", "quiz:9"]);
  assert.deepEqual(parseRoom("classroom:7"), ["classroom", "7"]);
  assert.deepEqual(parseRoom("admin:all"), ["admin", "all"]);
  assert.deepEqual(parseRoom("User:1"), ["", "User:1"]);
  assert.deepEqual(parseRoom("😀".repeat(300)), ["", "😀".repeat(300)]);
  assert.throws(() => parseRoom("x".repeat(301)), /a room name is 301 characters, the limit is 300/);
  assert.throws(() => parseRoom("admin:x"), /'admin:x' is not a room: the only admin room is 'admin:all'/);
  assert.throws(() => parseRoom("user:"), /user room needs an id after 'user:'/);
  assert.throws(() => parseRoom("a\u0001b"), (err) => err instanceof InvalidRoom && /'\\x01'; room names have no control/.test(err.message));
  assert.throws(() => parseRoom("a\ud800"), InvalidRoom);
});

test("payloads: JSON only, safe integers, finite numbers, bounded depth and size", () => {
  assert.equal(sanitize({ a: [1, "é", null, true, 0.5], b: undefined }, 100), '{"a":[1,"é",null,true,0.5]}');
  const deep = JSON.parse("[".repeat(32) + "]".repeat(32));
  assert.equal(sanitize(deep, 1000), "[".repeat(32) + "]".repeat(32));
  const cases = [
    [JSON.parse("[".repeat(33) + "]".repeat(33)), /nested deeper than 32 levels/],
    [{ a: { b: [0, NaN] } }, /^data\.a\.b\[1\]: NaN has no JSON form/],
    [{ "bad key": 1n }, /^data\['bad key'\]: a bigint is not a JSON type/],
    [{ s: "a\u0000" }, /^data\.s: control character U\+0000 is not allowed/],
    [{ "k\u007f": 1 }, /key: control character U\+007F/],
    [{ s: "\udc00" }, /lone surrogate U\+DC00 cannot be encoded as UTF-8/],
    [new Map(), /^data: a Map is not a JSON type/],
    [[undefined], /^data\[0\]: undefined is not a JSON value/],
    [undefined, /^data: undefined is not a JSON value/],
    [{ f() {} }, /a function is not a JSON type/],
  ];
  for (const [data, message] of cases) {
    assert.throws(() => sanitize(data, 1000), (err) => err instanceof InvalidPayload && message.test(err.message), String(message));
  }
  const cyclic = {};
  cyclic.self = cyclic;
  assert.throws(() => sanitize(cyclic, 1000), /nested deeper than 32 levels/);
});

test("the scripts are the Python publisher's, and ioredis names them by the same SHA1", () => {
  const mine = new Redis({ lazyConnect: true });
  new NotificationPublisher(mine);
  for (const script of Object.values(scripts).filter((s) => s && s.sha)) {
    assert.match(script.source, /^#!lua\n/);
    assert.ok(!script.source.includes("{{field."), `${script.name} is rendered`);
  }
  assert.equal(mine.scriptsSet.ngwPublish.sha, scripts.PUBLISH.sha);
  mine.disconnect();
});

test("Redis trouble is a PublishError naming where (credentials masked); a silent Redis a PublishTimeout", async () => {
  const { createServer } = await import("node:net");
  const { PublishError, PublishTimeout } = await import("../dist/index.js");
  const silent = createServer((socket) => socket.on("data", () => {}));
  await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
  const port = silent.address().port;
  try {
    const slow = new NotificationPublisher(`redis://:hunter2@127.0.0.1:${port}/0?socket_timeout=0.2`,
      { redisOptions: { maxRetriesPerRequest: 0 } });
    await assert.rejects(slow.sendToUser(1, "x", {}), (err) => {
      assert.ok(err instanceof PublishTimeout, err.stack);
      assert.match(err.message, new RegExp(`^could not reach Redis at redis://:\\*\\*\\*@127\\.0\\.0\\.1:${port}/0`));
      assert.ok(!err.message.includes("hunter2"));
      return true;
    });
    slow.client.disconnect();
  } finally {
    silent.close();
  }
  const closedPort = port;  // nothing listens there any more
  const gone = new NotificationPublisher(`redis://127.0.0.1:${closedPort}/0`,
    { redisOptions: { maxRetriesPerRequest: 0, retryStrategy: () => null } });
  await assert.rejects(gone.isOnline(1), (err) => err instanceof PublishError && /could not reach Redis/.test(err.message));
  await gone.close();
});
