/**
 * Event names and payloads: what may travel to a browser, checked as publisher/events does
 * (names.py, sanitize.py), with the same messages.
 *
 * A payload is sanitised when it is built only of JSON values: plain objects (string keys),
 * arrays, strings, finite numbers, booleans and null; every integer is a safe integer; nesting
 * is at most 32 deep (the payload is level 1, which also catches cycles); no string or key
 * holds a control character (U+0000-U+001F but tab, LF and CR, and U+007F) or a lone
 * surrogate; and its compact JSON is at most the limit (64 KiB by default). Dates, Maps, Sets,
 * class instances, BigInts, functions and `undefined` are refused by name rather than left to
 * JSON.stringify's choices (which would drop or rewrite them), except that a property whose
 * value is `undefined` is left out, as JSON.stringify does: that is how optional fields are
 * written in TypeScript.
 */
import { EVENT_NAME_PATTERN, MAX_DEPTH, MAX_SAFE_INTEGER, RESERVED_EVENTS } from "./generated/bus";
import { InvalidEvent, InvalidPayload } from "./errors";
import { pyRepr, show } from "./rooms";

const EVENT_NAME = new RegExp(`^(?:${EVENT_NAME_PATTERN})$`);
const RESERVED: ReadonlySet<string> = new Set(RESERVED_EVENTS);
const CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/;
const SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/** `name` if it may be emitted to clients, else InvalidEvent saying why. */
export function checkEventName(name: unknown): string {
  if (typeof name !== "string") throw new InvalidEvent(`an event name is a string, got ${typeof name}`);
  if (RESERVED.has(name)) throw new InvalidEvent(`'${name}' is reserved by Socket.IO and cannot be emitted`);
  if (!EVENT_NAME.test(name)) {
    throw new InvalidEvent(`${pyRepr(Array.from(name).slice(0, 80).join(""))} is not an event name: 1 to 64 characters among A-Z a-z 0-9 _ : . -`);
  }
  return name;
}

class Bad extends Error {
  readonly path: (string | number)[] = [];
}

function hex(code: number): string {
  return code.toString(16).toUpperCase().padStart(4, "0");
}

function checkText(text: string, what = ""): void {
  const control = CONTROL.exec(text);
  if (control) throw new Bad(`${what}control character U+${hex(control[0].charCodeAt(0))} is not allowed`);
  const surrogate = SURROGATE.exec(text);
  if (surrogate) throw new Bad(`${what}lone surrogate U+${hex(surrogate[0].charCodeAt(0))} cannot be encoded as UTF-8`);
}

function kindOf(value: object): string {
  const proto: unknown = Object.getPrototypeOf(value);
  const ctor = (proto as { constructor?: { name?: string } } | null)?.constructor;
  return ctor?.name ? ctor.name : "object";
}

function walk(value: unknown, depth: number): void {
  switch (typeof value) {
    case "string":
      checkText(value);
      return;
    case "number":
      if (!Number.isFinite(value)) throw new Bad(`${value} has no JSON form; only finite numbers do`);
      if (Number.isInteger(value) && !(Math.abs(value) <= MAX_SAFE_INTEGER)) {
        throw new Bad(`integer ${value} is beyond ±(2**53 - 1): JavaScript cannot hold it exactly`);
      }
      return;
    case "boolean":
      return;
    case "object":
      break;
    default:
      throw new Bad(`a ${typeof value} is not a JSON type (use object, array, string, number, boolean or null)`);
  }
  if (value === null) return;
  if (Array.isArray(value)) {
    if (depth >= MAX_DEPTH) throw new Bad(`nested deeper than ${MAX_DEPTH} levels`);
    for (let i = 0; i < value.length; i++) {
      try {
        if (value[i] === undefined) throw new Bad("undefined is not a JSON value (use null)");
        walk(value[i], depth + 1);
      } catch (err) {
        if (err instanceof Bad) err.path.push(i);
        throw err;
      }
    }
    return;
  }
  const proto: unknown = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) {
    throw new Bad(`a ${kindOf(value)} is not a JSON type (use a plain object, array, string, number, boolean or null)`);
  }
  if (depth >= MAX_DEPTH) throw new Bad(`nested deeper than ${MAX_DEPTH} levels`);
  for (const [key, item] of Object.entries(value)) {
    try {
      checkText(key, "key: ");
      if (item !== undefined) walk(item, depth + 1);
    } catch (err) {
      if (err instanceof Bad) err.path.push(key);
      throw err;
    }
  }
}

function formatPath(path: (string | number)[]): string {
  let out = "data";
  for (const step of [...path].reverse()) {
    if (typeof step === "number") out += `[${step}]`;
    else if (IDENTIFIER.test(step)) out += `.${step}`;
    else out += `[${show(step)}]`;
  }
  return out;
}

/** The payload's compact JSON if it is sanitised (see the module doc), else InvalidPayload. */
export function sanitize(data: unknown, maxBytes: number): string {
  if (data === undefined) throw new InvalidPayload("data: undefined is not a JSON value (use null)");
  try {
    walk(data, 0);
  } catch (err) {
    if (err instanceof Bad) throw new InvalidPayload(`${formatPath(err.path)}: ${err.message}`);
    throw err;
  }
  const body = JSON.stringify(data);
  const size = Buffer.byteLength(body, "utf8");
  if (size > maxBytes) {
    throw new InvalidPayload(`data: the encoded payload is ${size} bytes, over the limit of ${maxBytes}`);
  }
  return body;
}
