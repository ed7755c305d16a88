// Drives the real socket.io-client for pytest (tests/support/sio_client.py).
//
// Protocol: one JSON object per line on stdin (a command), one JSON object per line on stdout
// (a record). Every command may carry an `id`; its outcome is reported as
//   {"type":"reply","id":…,"since":…,"ok":true,"result":…}  or  {…,"ok":false,"error":"…"}
// where `since` is the last seq sent before the command began (what it caused comes after).
// Everything that happens to a named socket is reported as it happens, with `name`, a monotonic
// timestamp `t` (ms, performance.now()) and a process-wide sequence number `seq`:
//   event           {event, args (all of them, the trailing offset included), offset, recovered}
//   connect         {sid, recovered, transport}
//   connect_error   {message, data, description, errorType, retrying}
//   disconnect      {reason, description, retrying}
//   reconnect_attempt {attempt} / reconnect {attempt} / reconnect_error {message} / reconnect_failed
//   upgrade         {transport}
// Nothing that goes wrong here stops the process: errors become {"type":"error"} records.

import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { io } from "socket.io-client";

const require = createRequire(import.meta.url);
const sockets = new Map(); // name -> Socket
let seq = 0;

function toJsonSafe(value, seen = new WeakSet()) {
  if (value === null || value === undefined) return value ?? null;
  switch (typeof value) {
    case "string":
    case "boolean":
      return value;
    case "number":
      return Number.isFinite(value) ? value : String(value);
    case "bigint":
      return value.toString();
    case "function":
      return { $function: value.name || "anonymous" };
    case "symbol":
      return value.toString();
    default:
      break;
  }
  if (Buffer.isBuffer(value)) return { $binary: value.toString("base64") };
  if (value instanceof ArrayBuffer) return { $binary: Buffer.from(value).toString("base64") };
  if (ArrayBuffer.isView(value)) {
    return { $binary: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("base64") };
  }
  if (value instanceof Error) {
    return { $error: value.message, name: value.name, data: toJsonSafe(value.data, seen) };
  }
  if (seen.has(value)) return "[circular]";
  seen.add(value);
  try {
    if (Array.isArray(value)) return value.map((v) => toJsonSafe(v, seen));
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = toJsonSafe(v, seen);
    return out;
  } finally {
    seen.delete(value);
  }
}

function send(record) {
  let line;
  try {
    line = JSON.stringify({ ...record, seq: ++seq, t: performance.now() });
  } catch (err) {
    line = JSON.stringify({ type: "error", message: `cannot serialise record: ${err}`, seq, t: performance.now() });
  }
  process.stdout.write(line + "\n");
}

function describe(description) {
  // engine.io passes an Error, a CloseEvent-like object, or a {description, context} object.
  if (description === undefined || description === null) return null;
  if (description instanceof Error) return description.message;
  if (typeof description === "object") {
    const out = {};
    for (const k of ["description", "message", "code", "reason", "type"]) {
      if (description[k] !== undefined && typeof description[k] !== "object") out[k] = description[k];
    }
    if (description.description instanceof Error) out.description = description.description.message;
    return out;
  }
  return String(description);
}

function retrying(socket) {
  // Will the client try again by itself? False after a server refusal (CONNECT_ERROR packet,
  // which destroys the socket), a server DISCONNECT, a client disconnect(), or with reconnection off.
  return Boolean(socket.active && socket.io.reconnection() && !socket.io.skipReconnect);
}

function offsetOf(socket, args) {
  // What socket.io-client itself keeps as `_lastOffset` after this event (socket.js emitEvent).
  const last = args[args.length - 1];
  return socket._pid && args.length && typeof last === "string" ? last : null;
}

function transportName(socket) {
  return socket.io.engine?.transport?.name ?? null;
}

function watch(name, socket) {
  socket.onAny((event, ...args) => {
    send({
      type: "event",
      name,
      event,
      args: toJsonSafe(args),
      offset: offsetOf(socket, args),
      recovered: Boolean(socket.recovered),
    });
  });
  socket.on("connect", () => {
    send({
      type: "connect",
      name,
      sid: socket.id,
      recovered: Boolean(socket.recovered),
      transport: transportName(socket),
    });
    socket.io.engine?.once("upgrade", (transport) => {
      send({ type: "upgrade", name, transport: transport?.name ?? null });
    });
  });
  socket.on("connect_error", (err) => {
    send({
      type: "connect_error",
      name,
      message: err?.message ?? String(err),
      data: toJsonSafe(err?.data ?? null),
      description: describe(err?.description),
      errorType: err?.type ?? null,
      retrying: retrying(socket),
    });
  });
  socket.on("disconnect", (reason, description) => {
    send({ type: "disconnect", name, reason, description: describe(description), retrying: retrying(socket) });
  });
  const manager = socket.io;
  manager.on("reconnect_attempt", (attempt) => send({ type: "reconnect_attempt", name, attempt }));
  manager.on("reconnect", (attempt) => send({ type: "reconnect", name, attempt }));
  manager.on("reconnect_error", (err) => send({ type: "reconnect_error", name, message: err?.message ?? String(err) }));
  manager.on("reconnect_failed", () => send({ type: "reconnect_failed", name }));
}

function need(cmd, key) {
  if (cmd[key] === undefined) throw new Error(`command ${cmd.cmd} needs "${key}"`);
  return cmd[key];
}

function socketOf(cmd) {
  const name = need(cmd, "name");
  const socket = sockets.get(name);
  if (!socket) throw new Error(`no socket named ${JSON.stringify(name)}`);
  return socket;
}

function stateOf(socket) {
  return {
    sid: socket.id ?? null,
    connected: socket.connected,
    active: socket.active,
    recovered: Boolean(socket.recovered),
    pid: socket._pid ?? null,
    lastOffset: socket._lastOffset ?? null,
    transport: transportName(socket),
    engineId: socket.io.engine?.id ?? null,
    managerState: socket.io._readyState,
  };
}

const handlers = {
  versions() {
    return {
      node: process.version,
      "socket.io-client": require("socket.io-client/package.json").version,
    };
  },

  connect(cmd) {
    const name = need(cmd, "name");
    if (sockets.has(name)) throw new Error(`a socket named ${JSON.stringify(name)} exists already`);
    // One Manager (one Engine.IO connection) per named socket, so closing one transport
    // never touches another socket; a caller may still ask for multiplexing explicitly.
    const opts = { forceNew: true, ...(cmd.opts ?? {}) };
    const socket = io(need(cmd, "url"), opts);
    sockets.set(name, socket);
    watch(name, socket);
    return { name };
  },

  emit(cmd) {
    const socket = socketOf(cmd);
    const event = need(cmd, "event");
    const args = cmd.args ?? [];
    if (!cmd.ack) {
      socket.emit(event, ...args);
      return null;
    }
    const timeoutMs = cmd.timeoutMs ?? 2000;
    return new Promise((resolve) => {
      socket.timeout(timeoutMs).emit(event, ...args, (err, ...response) => {
        if (err) resolve({ acked: false, error: err.message });
        else resolve({ acked: true, args: toJsonSafe(response) });
      });
    });
  },

  disconnect(cmd) {
    socketOf(cmd).disconnect();
    return null;
  },

  close_transport(cmd) {
    // A network drop, as socket.io-client sees one: the Engine.IO connection goes, the Manager
    // is not told to stop (skipReconnect stays false), so it reconnects by itself and the
    // Socket sends its pid/offset for connection state recovery.
    //   mode "close" (default): engine.close(), the client's own "forced close"; over WebSocket
    //     a close frame, over polling a close packet; the server sees "transport close".
    //   mode "terminate": destroys the WebSocket's TCP connection with no close frame (ws's
    //     terminate()), as when a cable is pulled; WebSocket transport only.
    const socket = socketOf(cmd);
    const engine = socket.io.engine;
    if (!engine || !socket.connected) throw new Error(`socket ${cmd.name} is not connected`);
    const mode = cmd.mode ?? "close";
    if (mode === "close") {
      engine.close();
    } else if (mode === "terminate") {
      const ws = engine.transport?.ws;
      if (engine.transport?.name !== "websocket" || typeof ws?.terminate !== "function") {
        throw new Error(`terminate needs the websocket transport, this one is ${engine.transport?.name}`);
      }
      ws.terminate();
    } else {
      throw new Error(`unknown close_transport mode ${JSON.stringify(mode)}`);
    }
    return { mode };
  },

  set_uri(cmd) {
    // Where the socket's Manager opens its next Engine.IO connection: socket.io-client builds
    // every Engine from `manager.uri`, so the next reconnection goes to this URL (another
    // replica, or a closed port to keep the client away for a while).
    const socket = socketOf(cmd);
    socket.io.uri = need(cmd, "url");
    return { uri: socket.io.uri };
  },

  state(cmd) {
    return stateOf(socketOf(cmd));
  },

  forget(cmd) {
    // Disconnect and drop the name, so that it can be connected again from scratch.
    const socket = socketOf(cmd);
    socket.disconnect();
    sockets.delete(cmd.name);
    return null;
  },

  shutdown() {
    closeAll();
    setImmediate(() => process.exit(0));
    return null;
  },
};

function closeAll() {
  for (const socket of sockets.values()) {
    try {
      socket.disconnect();
    } catch {
      // going away anyway
    }
  }
}

async function handle(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    send({ type: "error", message: `bad command line: ${err.message}`, line });
    return;
  }
  const id = cmd?.id ?? null;
  // Records with a seq above `since` happened after this command began.
  const since = seq;
  try {
    const handler = handlers[cmd?.cmd];
    if (!handler) throw new Error(`unknown command ${JSON.stringify(cmd?.cmd)}`);
    const result = await handler(cmd);
    send({ type: "reply", id, since, ok: true, result: result ?? null });
  } catch (err) {
    send({ type: "reply", id, since, ok: false, error: err?.message ?? String(err) });
  }
}

process.on("uncaughtException", (err) => {
  send({ type: "error", message: `uncaught: ${err?.stack ?? err}` });
});
process.on("unhandledRejection", (err) => {
  send({ type: "error", message: `unhandled rejection: ${err?.stack ?? err}` });
});

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (line.trim()) handle(line);
});
rl.on("close", () => {
  // stdin closed: the test is done with us.
  closeAll();
  setImmediate(() => process.exit(0));
});

send({ type: "ready", ...handlers.versions() });
