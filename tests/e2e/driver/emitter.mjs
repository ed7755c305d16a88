// Drives the real @socket.io/redis-emitter for pytest (tests/support/node_emitter.py), as a
// NestJS / Node service would use it: `new Emitter(redisClient, {key}).of("/notifications")`.
//
// argv: <redis url> <key prefix>. One JSON command per line on stdin, one JSON reply per line on
// stdout, {"id", "ok": true} or {"id", "ok": false, "error"}. A reply comes after a PING that
// follows the command on the same connection: what the emitter published is in Redis by then.
//   {"id", "op": "emit", "nsp", "to": [rooms], "except": [rooms], "event", "args": [...]}
//   {"id", "op": "socketsJoin" | "socketsLeave", "nsp", "to", "except", "rooms": [...]}
//   {"id", "op": "disconnectSockets", "nsp", "to", "except", "close": bool}
//   {"id", "op": "serverSideEmit", "nsp", "args": [...]}

import { createInterface } from "node:readline";
import { createClient } from "redis";
import { Emitter } from "@socket.io/redis-emitter";

const [url, key] = process.argv.slice(2);
const client = createClient({ url });
client.on("error", (err) => process.stderr.write(`redis: ${err}\n`));
await client.connect();
const root = new Emitter(client, { key });

function operator(cmd) {
  let op = root.of(cmd.nsp ?? "/notifications");
  if (cmd.to && cmd.to.length) op = op.to(cmd.to);
  if (cmd.except && cmd.except.length) op = op.except(cmd.except);
  return op;
}

async function run(cmd) {
  switch (cmd.op) {
    case "emit":
      operator(cmd).emit(cmd.event, ...(cmd.args ?? []));
      break;
    case "socketsJoin":
      operator(cmd).socketsJoin(cmd.rooms);
      break;
    case "socketsLeave":
      operator(cmd).socketsLeave(cmd.rooms);
      break;
    case "disconnectSockets":
      operator(cmd).disconnectSockets(Boolean(cmd.close));
      break;
    case "serverSideEmit":
      root.of(cmd.nsp ?? "/notifications").serverSideEmit(...(cmd.args ?? []));
      break;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
  await client.ping();
}

const reply = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
reply({ type: "ready" });
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
    await run(cmd);
    reply({ id: cmd.id, ok: true });
  } catch (err) {
    reply({ id: cmd?.id ?? null, ok: false, error: String(err) });
  }
}
await client.quit();
