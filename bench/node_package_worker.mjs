// The worker of producer_cost.py's node-package modes: the Node package clients/node-publisher
// (its built dist/) publishing the benchmark's events, its own CPU measured in-process.
//
//   node node_package_worker.mjs MODE EVENTS REDIS_URL
//
// MODE: node-package-emit  one sendToUser at a time, awaited (a request publishing one event);
//       node-package-N     N sendToUser in flight (Promise.all windows; ioredis auto-pipelining
//                          puts each window's calls in one write).
// Protocol (as producer_cost.py's Python workers): warm up, print {"ready":true}, wait for a
// line on stdin, publish EVENTS events, print {"cpu_s", "wall_s"} (process.cpuUsage: user +
// system, every thread of the process).
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const { NotificationPublisher } = require(path.join(here, "..", "clients", "node-publisher", "dist", "index.js"));

const [mode, eventsText, url] = process.argv.slice(2);
const events = Number(eventsText);
const WARMUP = 500;
const USERS = 1000;
const size = mode === "node-package-emit" ? 1 : Number(mode.replace("node-package-", ""));
if (!(size >= 1)) throw new Error(`unknown mode ${mode}`);

const payload = (i) => ({ amount: 50, reason: "exercise_completed", newBalance: i, seq: i, sentAt: Date.now() });

async function burst(publisher, lo, hi) {
  for (let s = lo; s < hi; s += size) {
    const window = [];
    for (let i = s; i < Math.min(hi, s + size); i++) window.push(publisher.sendToUser(i % USERS, "coins:earned", payload(i)));
    await Promise.all(window);
  }
}

const publisher = new NotificationPublisher(url);
await burst(publisher, 0, WARMUP);
console.log(JSON.stringify({ ready: true }));
const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once("line", resolve));
lines.close();
const c0 = process.cpuUsage();
const t0 = process.hrtime.bigint();
await burst(publisher, WARMUP, WARMUP + events);
const cpu = process.cpuUsage(c0);
const wall = Number(process.hrtime.bigint() - t0) / 1e9;
await publisher.close();
console.log(JSON.stringify({ cpu_s: (cpu.user + cpu.system) / 1e6, wall_s: wall }));
