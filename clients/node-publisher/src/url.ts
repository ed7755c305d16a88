/**
 * ioredis clients from a REDIS_URL, for every form the gateway and the Python publisher accept
 * (publisher/redis_url.py, publisher/cluster/urls.py):
 *
 *   redis://[user:password@]host[:port][/db][?options]      rediss:// the same over TLS
 *   unix:///path/to/redis.sock[?db=0&password=...]
 *   redis+sentinel://[user:password@]host[:port][,host[:port]...]/[db/]service_name
 *                    [?sentinel_username=...&sentinel_password=...]
 *   redis+cluster://[user:password@]host[:port][,host[:port]...][/][?options]
 *   rediss+cluster://... the same over TLS
 *
 * A port defaults to 6379 (26379 for a sentinel). The query takes redis-py's option names:
 * socket_timeout and socket_connect_timeout (seconds), client_name and, over TLS,
 * ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs (none, optional, required) and
 * ssl_check_hostname; socket_keepalive, health_check_interval, max_connections and
 * retry_on_timeout are accepted and left to ioredis, which manages its connection itself.
 * Anything else is refused, naming the option. Credentials never appear in a message: `redact`.
 *
 * The clients made here use `enableAutoPipelining`: the calls made in one tick of the event
 * loop go to Redis (to each cluster node) in one write.
 */
import { readFileSync } from "node:fs";
import type { ConnectionOptions } from "node:tls";
import { Cluster, Redis } from "ioredis";
import type { ClusterOptions, RedisOptions } from "ioredis";
import { InvalidArgument } from "./errors";

export const SCHEMES = ["redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster"] as const;

/** What the clients made from a URL get unless the caller's options say otherwise: fail fast
 * rather than hang a request, as the Python publisher's defaults do (2 s to connect, 5 s per
 * reply, a few retries). */
export const DEFAULT_OPTIONS: RedisOptions = Object.freeze({
  connectTimeout: 2000,
  commandTimeout: 5000,
  maxRetriesPerRequest: 3,
  enableAutoPipelining: true,
});

const CREDENTIAL_PARAM = /pass|secret|token|auth|key/i;
const IGNORED = new Set(["socket_keepalive", "health_check_interval", "max_connections", "retry_on_timeout"]);

/** The URL with every credential replaced by `***`, for messages. */
export function redact(url: string): string {
  const sep = url.indexOf("://");
  if (sep < 0) return "***";
  const scheme = url.slice(0, sep);
  if (url.includes("#")) return `${scheme}://***`;
  const rest = url.slice(sep + 3);
  const q = rest.indexOf("?");
  const main = q < 0 ? rest : rest.slice(0, q);
  const query = q < 0 ? "" : rest.slice(q + 1);
  const slash = main.indexOf("/");
  const netloc = slash < 0 ? main : main.slice(0, slash);
  const path = slash < 0 ? "" : main.slice(slash);
  if (path.includes("@") || query.includes("@")) return `${scheme}://***`;
  let shownNetloc = netloc;
  const at = netloc.lastIndexOf("@");
  if (at >= 0) {
    const userinfo = netloc.slice(0, at);
    const colon = userinfo.indexOf(":");
    shownNetloc = colon >= 0 ? `${userinfo.slice(0, colon)}:***@${netloc.slice(at + 1)}` : netloc;
  }
  const shownQuery = query.split("&").filter(Boolean).map((item) => {
    const eq = item.indexOf("=");
    const key = eq < 0 ? item : item.slice(0, eq);
    return eq >= 0 && CREDENTIAL_PARAM.test(safeDecode(key)) ? `${key}=***` : item;
  }).join("&");
  return `${scheme}://${shownNetloc}${path}` + (shownQuery ? `?${shownQuery}` : "");
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function bad(url: string, why: string): InvalidArgument {
  return new InvalidArgument(`bad Redis URL '${redact(url)}': ${why}`);
}

interface Parts {
  scheme: string;
  username?: string;
  password?: string;
  hosts: string;
  path: string;
  query: [string, string][];
}

function split(url: string, scheme: string): Parts {
  const rest = url.slice(scheme.length + 3);
  if (rest.includes("#")) throw bad(url, "it holds a '#'; percent-encode it (%23) in a password");
  const ends = [rest.indexOf("/"), rest.indexOf("?")].filter((i) => i >= 0);
  const end = ends.length ? Math.min(...ends) : rest.length;
  const netloc = rest.slice(0, end);
  const tail = rest.slice(end);
  const q = tail.indexOf("?");
  const path = q < 0 ? tail : tail.slice(0, q);
  const queryText = q < 0 ? "" : tail.slice(q + 1);
  if (path.includes("@") || queryText.includes("@")) throw bad(url, "percent-encode '/', '?' and '@' in the user name and password");
  const at = netloc.lastIndexOf("@");
  const parts: Parts = { scheme, hosts: at < 0 ? netloc : netloc.slice(at + 1), path, query: [] };
  if (at >= 0) {
    const userinfo = netloc.slice(0, at);
    const colon = userinfo.indexOf(":");
    const user = safeDecode(colon < 0 ? userinfo : userinfo.slice(0, colon));
    if (user) parts.username = user;
    if (colon >= 0) parts.password = safeDecode(userinfo.slice(colon + 1));
  }
  for (const item of queryText.split("&").filter(Boolean)) {
    const eq = item.indexOf("=");
    parts.query.push([safeDecode(eq < 0 ? item : item.slice(0, eq)), safeDecode(eq < 0 ? "" : item.slice(eq + 1))]);
  }
  return parts;
}

function hostPort(url: string, item: string, defaultPort: number): { host: string; port: number } {
  let host: string;
  let portText: string;
  if (item.startsWith("[")) {
    const close = item.indexOf("]");
    const rest = close < 0 ? "" : item.slice(close + 1);
    if (close < 0 || (rest && !rest.startsWith(":"))) throw bad(url, `address '${item}': an IPv6 address is written [::1]:6379`);
    host = item.slice(1, close);
    portText = rest.slice(1);
  } else {
    if ((item.match(/:/g) ?? []).length > 1) throw bad(url, `address '${item}': write an IPv6 address in brackets, [::1]:6379`);
    const colon = item.indexOf(":");
    host = colon < 0 ? item : item.slice(0, colon);
    portText = colon < 0 ? "" : item.slice(colon + 1);
  }
  if (!host) throw bad(url, `address '${item}' has no host`);
  if (/[\s@/?#]/.test(host)) throw bad(url, `address '${item}' has a bad host`);
  if (!portText) return { host, port: defaultPort };
  const port = /^[0-9]+$/.test(portText) ? Number(portText) : NaN;
  if (!(port > 0 && port < 65536)) throw bad(url, `address '${item}' has a bad port`);
  return { host, port };
}

function seconds(url: string, name: string, text: string): number {
  const value = Number(text);
  if (!(value > 0 && Number.isFinite(value))) throw bad(url, `option ${name}='${text}': must be a positive number of seconds`);
  return Math.round(value * 1000);
}

function flag(url: string, name: string, text: string): boolean {
  const lowered = text.toLowerCase();
  if (["1", "true", "yes", "on"].includes(lowered)) return true;
  if (["0", "false", "no", "off"].includes(lowered)) return false;
  throw bad(url, `option ${name}='${text}': must be true or false`);
}

/** Client options from the query; `db` and credentials are the caller's business. */
function queryOptions(url: string, parts: Parts, tls: boolean, allowed: ReadonlySet<string>): RedisOptions {
  const options: RedisOptions = {};
  const tlsOptions: ConnectionOptions = {};
  const seen = new Set<string>();
  for (const [name, value] of parts.query) {
    if (seen.has(name)) throw bad(url, `option ${name} given twice`);
    seen.add(name);
    if (allowed.has(name) || IGNORED.has(name)) continue;
    if (name.startsWith("ssl_") && !tls) throw bad(url, `option ${name} needs TLS: use ${parts.scheme.replace("redis", "rediss")}://`);
    switch (name) {
      case "socket_timeout": options.commandTimeout = seconds(url, name, value); break;
      case "socket_connect_timeout": options.connectTimeout = seconds(url, name, value); break;
      case "client_name": options.connectionName = value; break;
      case "ssl_ca_certs": tlsOptions.ca = readFileSync(value); break;
      case "ssl_certfile": tlsOptions.cert = readFileSync(value); break;
      case "ssl_keyfile": tlsOptions.key = readFileSync(value); break;
      case "ssl_password": tlsOptions.passphrase = value; break;
      case "ssl_cert_reqs": {
        const reqs = value.toLowerCase();
        if (!["none", "optional", "required"].includes(reqs)) throw bad(url, `option ${name}='${value}': must be none, optional or required`);
        tlsOptions.rejectUnauthorized = reqs === "required";
        break;
      }
      case "ssl_check_hostname":
        if (!flag(url, name, value)) tlsOptions.checkServerIdentity = () => undefined;
        break;
      default:
        throw bad(url, `unknown option '${name}'; known: client_name, socket_connect_timeout, socket_timeout, `
          + "ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_password, ssl_cert_reqs, ssl_check_hostname");
    }
  }
  if (tls) options.tls = tlsOptions;
  return options;
}

function credentials(parts: Parts): RedisOptions {
  const out: RedisOptions = {};
  if (parts.username !== undefined) out.username = parts.username;
  if (parts.password !== undefined) out.password = parts.password;
  return out;
}

/** What a URL asks for: the client to make, and where it points (credentials masked). */
export type Target =
  | { kind: "standalone"; options: RedisOptions; where: string; url: string }
  | { kind: "sentinel"; options: RedisOptions; where: string }
  | { kind: "cluster"; seeds: { host: string; port: number }[]; options: ClusterOptions; where: string };

/** Parse `url` (see the module doc) without any I/O: a bad URL is refused before anything is
 * asked of Redis. */
export function parseRedisUrl(url: string): Target {
  if (typeof url !== "string" || !url.trim()) throw new InvalidArgument("the Redis URL is empty; write e.g. redis://localhost:6379/0");
  url = url.trim();
  const sep = url.indexOf("://");
  const scheme = sep < 0 ? "" : url.slice(0, sep).toLowerCase();
  if (!(SCHEMES as readonly string[]).includes(scheme)) {
    throw bad(url, `unsupported scheme '${scheme}'; use one of ${SCHEMES.map((s) => s + "://").join(", ")}`);
  }
  const parts = split(url, scheme);
  const where = redact(url);
  if (scheme === "redis+cluster" || scheme === "rediss+cluster") {
    const items = parts.hosts.split(",").map((s) => s.trim());
    if (!items.some(Boolean)) throw bad(url, "no node address; write e.g. redis+cluster://host:6379,host:6380");
    if (!items.every(Boolean)) throw bad(url, "an empty address in the list of nodes");
    const seeds = items.map((item) => hostPort(url, item, 6379));
    const db = parts.path.replace(/^\/+|\/+$/g, "");
    if (db !== "" && db !== "0") throw bad(url, `the path '${parts.path}' is not allowed: a Redis Cluster has database 0 only (write no path, or /0)`);
    const redisOptions = { ...credentials(parts), ...queryOptions(url, parts, scheme === "rediss+cluster", new Set()) };
    return { kind: "cluster", seeds, options: { redisOptions, enableAutoPipelining: true }, where };
  }
  if (scheme === "redis+sentinel") {
    const items = parts.hosts.split(",").map((s) => s.trim()).filter(Boolean);
    if (!items.length) throw bad(url, "no sentinel address; write redis+sentinel://host:26379/0/mymaster");
    const sentinels = items.map((item) => hostPort(url, item, 26379));
    const segments = parts.path.split("/").filter(Boolean);
    let db = 0;
    let name: string;
    if (segments.length === 2 && /^[0-9]+$/.test(segments[0])) {
      db = Number(segments[0]);
      name = safeDecode(segments[1]);
    } else if (segments.length === 1 && !/^[0-9]+$/.test(segments[0])) {
      name = safeDecode(segments[0]);
    } else {
      throw bad(url, "the path must be /db/service_name, e.g. /0/mymaster");
    }
    const options: RedisOptions = { sentinels, name, db, ...credentials(parts) };
    for (const [key, value] of parts.query) {
      if (key === "sentinel_password") options.sentinelPassword = value;
      else if (key === "sentinel_username") options.sentinelUsername = value;
      else throw bad(url, `unknown option(s) ${key}; known: sentinel_username, sentinel_password`);
    }
    return { kind: "sentinel", options, where: `the master of Sentinel service '${name}'` };
  }
  if (scheme === "unix") {
    if (!parts.path) throw bad(url, "no socket path; write unix:///path/to/redis.sock?db=0");
    const options: RedisOptions = { path: safeDecode(parts.path), ...credentials(parts),
      ...queryOptions(url, parts, false, new Set(["db", "password", "username"])) };
    for (const [key, value] of parts.query) {
      if (key === "db") {
        if (!/^[0-9]+$/.test(value)) throw bad(url, `db must be a database number, got '${value}'`);
        options.db = Number(value);
      } else if (key === "password") options.password = value;
      else if (key === "username") options.username = value;
    }
    return { kind: "standalone", options, where, url };
  }
  if (parts.hosts.includes(",")) throw bad(url, `several hosts in a ${scheme}:// URL; for a Redis Cluster write ${scheme}+cluster://`);
  const { host, port } = hostPort(url, parts.hosts || "localhost", 6379);
  const dbText = parts.path.replace(/^\/+|\/+$/g, "");
  if (dbText && !/^[0-9]+$/.test(dbText)) throw bad(url, `the path must be a database number, got '${dbText}'`);
  const options: RedisOptions = { host, port, db: dbText ? Number(dbText) : 0, ...credentials(parts),
    ...queryOptions(url, parts, scheme === "rediss", new Set()) };
  return { kind: "standalone", options, where, url };
}

/** The client for a parsed URL; `extra` (ioredis options of the caller's) override ours. */
export function makeClient(target: Target, extra: RedisOptions = {}): Redis | Cluster {
  if (target.kind === "cluster") {
    const { redisOptions, ...rest } = target.options;
    const { enableAutoPipelining, ...perNode } = { ...DEFAULT_OPTIONS, ...redisOptions, ...extra };
    return new Cluster(target.seeds, {
      ...rest, enableAutoPipelining: enableAutoPipelining ?? true,
      redisOptions: perNode as ClusterOptions["redisOptions"],
    });
  }
  return new Redis({ ...DEFAULT_OPTIONS, ...target.options, ...extra });
}

/** The redis+cluster:// URL to write instead of a plain URL that points at a cluster node. */
export function clusterUrlFor(url: string): string {
  const shown = redact(url);
  const sep = shown.indexOf("://");
  if (sep < 0) return "redis+cluster://host:port[,host:port...]";
  const scheme = shown.slice(0, sep).toLowerCase();
  const netloc = shown.slice(sep + 3).split("/")[0].split("?")[0];
  return `${scheme === "rediss" ? "rediss" : "redis"}+cluster://${netloc}`;
}
