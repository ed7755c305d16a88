// A tiny socket.io 4.8 server that behaves the way our gateway must, used only by
// tests/e2e/test_harness_selftest.py to prove that the harness drives the real client right.
//
//   node reference_server.mjs PORT
//   namespace /notifications, connection state recovery on (60 s, middlewares skipped on recovery)
//   handshake: auth.token required, else CONNECT_ERROR {message: "unauthorized", data: {code: "token_missing"}}
//   on connect: joins user:<token>; subscribe:notifications is acked with {ok: true, rooms};
//   whoami is acked with {user, origin, authorization, transport} as the server saw them
//   POST /emit?room=R&event=E  body: JSON payload -> emits E (default coins:earned) to room R;
//        answers {ok, recipients}: how many connected sockets were in R at that moment
//   POST /wait_empty?room=R&timeoutMs=T -> answers {ok, size} once R has no connected socket
//        (the server has seen the disconnection), or after T ms with ok false
//   POST /drop?room=R     -> closes the transport of every socket in R (as a draining replica does)
//   POST /block, /unblock -> refuse / accept new Engine.IO handshakes (a server out of reach),
//        so a test can emit while a client is away, then let it come back
//   GET /readyz -> 200
// Prints {"type":"listening","port":…} on stdout once it accepts connections.

import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);

let io;
let blocked = false;
const disconnectWaiters = new Set();

async function roomSize(room) {
  return (await io.of("/notifications").in(room).fetchSockets()).length;
}

function waitEmpty(room, timeoutMs) {
  // Resolves with the room's size once it is 0 (re-checked on every disconnect) or at timeout.
  return new Promise((resolve) => {
    let timer;
    const check = async (final = false) => {
      const size = await roomSize(room);
      if (size === 0 || final) {
        disconnectWaiters.delete(check);
        clearTimeout(timer);
        resolve(size);
      }
    };
    disconnectWaiters.add(check);
    timer = setTimeout(() => check(true), timeoutMs);
    check();
  });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

const httpServer = createServer(async (req, res) => {
  const url = new URL(req.url, "http://localhost");
  if (url.pathname.startsWith("/socket.io/")) return; // socket.io's own listener answers
  try {
    if (req.method === "GET" && url.pathname === "/readyz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      return;
    }
    if (req.method === "POST" && url.pathname === "/emit") {
      const room = url.searchParams.get("room");
      const event = url.searchParams.get("event") ?? "coins:earned";
      const raw = await readBody(req);
      const payload = raw ? JSON.parse(raw) : {};
      const nsp = io.of("/notifications");
      const target = room ? nsp.to(room) : nsp;
      const recipients = room ? (await nsp.in(room).fetchSockets()).length : nsp.sockets.size;
      target.emit(event, payload);
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ ok: true, recipients }));
      return;
    }
    if (req.method === "POST" && url.pathname === "/wait_empty") {
      const size = await waitEmpty(url.searchParams.get("room"), Number(url.searchParams.get("timeoutMs") ?? 5000));
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ ok: size === 0, size }));
      return;
    }
    if (req.method === "POST" && url.pathname === "/drop") {
      const sockets = await io.of("/notifications").in(url.searchParams.get("room")).fetchSockets();
      for (const socket of sockets) socket.conn.close();
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ ok: true, dropped: sockets.length }));
      return;
    }
    if (req.method === "POST" && (url.pathname === "/block" || url.pathname === "/unblock")) {
      blocked = url.pathname === "/block";
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ ok: true, blocked }));
      return;
    }
    res.writeHead(404).end();
  } catch (err) {
    res.writeHead(500, { "content-type": "text/plain" }).end(String(err?.stack ?? err));
  }
});

io = new Server(httpServer, {
  connectionStateRecovery: { maxDisconnectionDuration: 60_000, skipMiddlewares: true },
  pingInterval: 25_000,
  pingTimeout: 20_000,
  // Called for new Engine.IO sessions only, over polling and WebSocket alike.
  allowRequest: (req, callback) => callback(blocked ? "blocked by the test" : null, !blocked),
});

const nsp = io.of("/notifications");

nsp.use((socket, next) => {
  const token = socket.handshake.auth?.token;
  if (!token) {
    next(Object.assign(new Error("unauthorized"), { data: { code: "token_missing" } }));
    return;
  }
  socket.data.user = String(token).replace(/^Bearer\s+/i, "");
  next();
});

nsp.on("connection", (socket) => {
  console.error(`connection ${socket.id} user=${socket.data.user} recovered=${socket.recovered}`);
  socket.on("disconnect", (reason) => {
    console.error(`disconnect ${socket.id} reason=${reason}`);
    for (const check of disconnectWaiters) check();
  });
  if (!socket.recovered) socket.join(`user:${socket.data.user}`);
  socket.on("subscribe:notifications", (...args) => {
    const ack = args[args.length - 1];
    if (typeof ack !== "function") return;
    ack({ ok: true, rooms: [...socket.rooms].filter((r) => r !== socket.id) });
  });
  // For the self-test only: what the server saw of the handshake.
  socket.on("whoami", (ack) => {
    const headers = socket.handshake.headers;
    ack({
      user: socket.data.user,
      origin: headers.origin ?? null,
      authorization: headers.authorization ?? null,
      transport: socket.conn.transport.name,
    });
  });
});

process.on("SIGTERM", () => {
  io.close();
  process.exit(0);
});

httpServer.listen(port, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ type: "listening", port: httpServer.address().port }) + "\n");
});
