/**
 * Room names and user ids: the grammar of publisher/rooms.py (docs/wire-protocol.md, "Names"),
 * with the same messages, so that a producer in Node is refused exactly where a Python one is.
 *
 * A room is 1 to 300 characters with no control character (U+0000-U+001F, U+007F-U+009F), no
 * lone surrogate and no brace (every bus name of a room carries it as a Redis Cluster hash tag),
 * and not `*`. `user:<id>`, `classroom:<id>`, `teacher:<id>` and `admin:all` are reserved as
 * written; lengths count code points, as Python's len() does.
 */
import { ADMIN_ROOM, EVERYONE, MAX_ID_LENGTH, MAX_ROOM_LENGTH, ROOM_KINDS } from "./generated/bus";
import { InvalidArgument, InvalidRoom } from "./errors";

/** The kind `parseRoom` gives a room outside the reserved prefixes. */
export const OTHER = "";

// Without the `u` flag, so that a lone surrogate is one code unit the class can match.
const BAD_CHAR = /[\x00-\x1f\x7f-\x9f{}]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Python's len(): code points, a surrogate pair counting once. */
export function codePoints(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

/** Python's repr() of a string, cut at 60 characters: never echo an unbounded value. */
export function show(text: string): string {
  const shown = pyRepr(text);
  return shown.length <= 60 ? shown : shown.slice(0, 57) + "...";
}

/** Python's repr() of a string (the messages are the Python publisher's, word for word). */
export function pyRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let body = "";
  for (const ch of text) {
    const c = ch.codePointAt(0) ?? 0;
    if (ch === "\\") body += "\\\\";
    else if (ch === quote) body += "\\" + ch;
    else if (ch === "\n") body += "\\n";
    else if (ch === "\r") body += "\\r";
    else if (ch === "\t") body += "\\t";
    else if (c < 0x20 || (c >= 0x7f && c <= 0xa0)) body += "\\x" + c.toString(16).padStart(2, "0");
    else if (c >= 0xd800 && c <= 0xdfff) body += "\\u" + c.toString(16).padStart(4, "0");
    else body += ch;
  }
  return quote + body + quote;
}

function badChar(what: string, text: string): InvalidRoom | null {
  const bad = BAD_CHAR.exec(text);
  if (bad === null) return null;
  const ch = bad[0];
  const why = ch === "{" || ch === "}" ? "braces are Redis Cluster hash tags on the bus"
    : "room names have no control characters";
  return new InvalidRoom(`${what} ${show(text)} has the character ${show(ch)}; ${why}`);
}

function checkId(kind: string, id: string): void {
  if (!id) throw new InvalidRoom(`${kind} room needs an id after '${kind}:'`);
  const length = codePoints(id);
  if (length > MAX_ID_LENGTH) {
    throw new InvalidRoom(`${kind} room id is ${length} characters, the limit is ${MAX_ID_LENGTH}`);
  }
  const problem = badChar(`${kind} room id`, id);
  if (problem !== null) throw problem;
}

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/** [kind, id] of a room name, or InvalidRoom saying what is wrong; kind is OTHER ("") for a
 * room outside the reserved prefixes, whose id is then the whole name. */
export function parseRoom(name: unknown): [string, string] {
  if (typeof name !== "string") throw new InvalidRoom(`a room name is a string, got ${typeName(name)}`);
  if (!name) throw new InvalidRoom(`a room name has 1 to ${MAX_ROOM_LENGTH} characters, got ''`);
  const length = codePoints(name);
  if (length > MAX_ROOM_LENGTH) {
    throw new InvalidRoom(`a room name is ${length} characters, the limit is ${MAX_ROOM_LENGTH}`);
  }
  const colon = name.indexOf(":");
  const kind = colon < 0 ? "" : name.slice(0, colon);
  const id = colon < 0 ? "" : name.slice(colon + 1);
  if (colon < 0 || !(ROOM_KINDS as readonly string[]).includes(kind)) {
    if (name === EVERYONE) {
      throw new InvalidRoom("'*' is not a room: the bus's name for everyone (use broadcastToAll)");
    }
    const problem = badChar("room name", name);
    if (problem !== null) throw problem;
    return [OTHER, name];
  }
  if (kind === "admin") {
    if (id !== "all") throw new InvalidRoom(`${show(name)} is not a room: the only admin room is '${ADMIN_ROOM}'`);
    return [kind, id];
  }
  checkId(kind, id);
  return [kind, id];
}

/** `name` if it is a room, else InvalidRoom. */
export function checkRoom(name: unknown): string {
  parseRoom(name);
  return name as string;
}

/** The user id as the string every name is built from: an integer is taken as its decimal
 * string, as the gateway does with a token's `sub` (42 and "42" reach the same sockets). */
export function normalizeUserId(value: unknown): string {
  if (typeof value === "number" && Number.isSafeInteger(value)) return String(value);
  if (typeof value === "bigint") return value.toString();
  if (typeof value !== "string") {
    const got = typeof value === "number" ? `a non-integer number ${value}` : typeName(value);
    throw new InvalidArgument(`a user id is a non-empty string or an integer, got ${got}`);
  }
  if (!value) throw new InvalidArgument("a user id is a non-empty string or an integer, got ''");
  return value;
}

/** `user:<id>`; InvalidArgument for a non-id, InvalidRoom for an id outside the grammar. */
export function userRoom(userId: unknown): string {
  const id = normalizeUserId(userId);
  checkId("user", id);
  return `user:${id}`;
}
