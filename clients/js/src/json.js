import { randomUUID } from 'node:crypto';

import { InvalidArgumentError } from './errors.js';

// JSON as litebridge speaks it: blobs are {"$blob": base64}, and integers
// are 64-bit. JavaScript numbers hold integers exactly only up to 2^53, so
// text with an integer past that is parsed by hand and the integer becomes
// a BigInt (what happens to it then is the caller's `bigint` option).

const LONG_DIGITS = /\d{16,}/;

/** Parses a reply; unsafe integers become BigInt. */
export function parse(text) {
  const fast = JSON.parse(text);
  // Only a reply with an integer past 2^53 is read again, by hand.
  if (!LONG_DIGITS.test(text) || !hasUnsafe(fast)) return fast;
  return new Parser(text).value();
}

function hasUnsafe(root) {
  // With a stack of its own, not recursion: a reply nested thousands of
  // levels deep, which JSON.parse reads, overflowed the call stack here.
  const stack = [root];
  while (stack.length > 0) {
    const v = stack.pop();
    // An integer of 309 digits or more is Infinity to JSON.parse.
    if (typeof v === 'number') {
      if (!Number.isSafeInteger(v) && (Number.isInteger(v) || !Number.isFinite(v))) return true;
    } else if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) stack.push(v[i]);
    } else if (v && typeof v === 'object') {
      for (const k in v) if (Object.hasOwn(v, k)) stack.push(v[k]);
    }
  }
  return false;
}

/** How deep the hand parser goes (it recurses); litebridge's own JSON stops at 128. */
export const MAX_DEPTH = 2048;

class Parser {
  constructor(text) {
    this.s = text;
    this.i = 0;
    this.depth = 0;
  }

  value() {
    this.ws();
    const c = this.s[this.i];
    let v;
    if (c === '{' || c === '[') {
      if (++this.depth > MAX_DEPTH) {
        throw new SyntaxError(`JSON nested deeper than ${MAX_DEPTH} levels, with an integer past 2^53 (read by hand, to keep it exact)`);
      }
      v = c === '{' ? this.object() : this.array();
      this.depth--;
    }
    else if (c === '"') v = this.string();
    else if (c === 't') v = this.word('true', true);
    else if (c === 'f') v = this.word('false', false);
    else if (c === 'n') v = this.word('null', null);
    else v = this.number();
    this.ws();
    return v;
  }

  ws() {
    while (this.i < this.s.length && ' \t\n\r'.includes(this.s[this.i])) this.i++;
  }

  word(w, v) {
    if (this.s.startsWith(w, this.i)) {
      this.i += w.length;
      return v;
    }
    throw new SyntaxError(`bad JSON at ${this.i}`);
  }

  object() {
    const out = {};
    this.i++;
    this.ws();
    if (this.s[this.i] === '}') {
      this.i++;
      return out;
    }
    for (;;) {
      this.ws();
      const k = this.string();
      this.ws();
      if (this.s[this.i++] !== ':') throw new SyntaxError(`bad JSON at ${this.i}`);
      put(out, k, this.value());
      const c = this.s[this.i++];
      if (c === '}') return out;
      if (c !== ',') throw new SyntaxError(`bad JSON at ${this.i}`);
    }
  }

  array() {
    const out = [];
    this.i++;
    this.ws();
    if (this.s[this.i] === ']') {
      this.i++;
      return out;
    }
    for (;;) {
      out.push(this.value());
      const c = this.s[this.i++];
      if (c === ']') return out;
      if (c !== ',') throw new SyntaxError(`bad JSON at ${this.i}`);
    }
  }

  string() {
    // The string's own text, unescaped by the native parser.
    const start = this.i;
    if (this.s[this.i] !== '"') throw new SyntaxError(`bad JSON at ${this.i}`);
    this.i++;
    while (this.i < this.s.length) {
      const c = this.s[this.i];
      if (c === '\\') this.i += 2;
      else if (c === '"') {
        this.i++;
        return JSON.parse(this.s.slice(start, this.i));
      } else this.i++;
    }
    throw new SyntaxError('unterminated JSON string');
  }

  number() {
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(this.s.slice(this.i, this.i + 400));
    if (!m) throw new SyntaxError(`bad JSON at ${this.i}`);
    this.i += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return Number(m[0]);
  }
}

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
// A lone surrogate as JSON.stringify escapes it (an even run of backslashes before it).
const LONE_SURROGATE = /(?<!\\)(?:\\\\)*\\ud[89a-f][0-9a-f]{2}/;

/**
 * Writes a request: BigInt as an exact integer, Uint8Array as a blob,
 * infinities as `{"$real": "Infinity"}`. A BigInt goes through a
 * placeholder string made unique to this call, so no string of the
 * caller's can pass for one. Refused here, as `InvalidArgumentError`, what
 * litebridge could not read or would store as something else (NaN, a lone
 * surrogate, a BigInt past 64 bits): litebridge would answer an unreadable
 * line without its id, and nobody would get the answer.
 */
export function stringify(value) {
  // Most requests hold none of those: the native writer alone, without a
  // replacer called for every value (a third of the client's own time per call).
  const text = plain(value) ? JSON.stringify(value) : replaced(value);
  if (text.includes('\\ud') && LONE_SURROGATE.test(text)) {
    throw new InvalidArgumentError('a string holds a lone surrogate (half of a UTF-16 pair), which is not Unicode text and JSON cannot carry', { kind: 'invalid_argument' });
  }
  return text;
}

function replaced(value) {
  let tag = null;
  const text = stringifyOrRefuse(value, function (key, v) {
    // `this[key]` is the value before its toJSON (a Buffer's gives {type, data}).
    const original = this[key];
    if (typeof v === 'bigint') {
      if (v < I64_MIN || v > I64_MAX) {
        throw new InvalidArgumentError("a BigInt is past SQLite's 64 bits (-2^63 to 2^63-1)", { kind: 'invalid_argument' });
      }
      tag ??= `\u0000bigint:${randomUUID()}:`;
      return `${tag}${v.toString()}`;
    }
    if (typeof v === 'function' || typeof v === 'symbol') {
      // JSON.stringify writes it as null in an array and drops it in an object: never silently.
      throw new InvalidArgumentError(`a ${typeof v} is not a value litebridge takes (JSON values, BigInt, Uint8Array)`, {
        kind: 'invalid_argument',
      });
    }
    if (original instanceof Uint8Array) {
      return { $blob: Buffer.from(original.buffer, original.byteOffset, original.byteLength).toString('base64') };
    }
    if (typeof v === 'number' && !Number.isFinite(v)) {
      if (Number.isNaN(v)) {
        throw new InvalidArgumentError('a value is NaN, which JSON cannot carry (SQLite stores it as NULL: pass null)', { kind: 'invalid_argument' });
      }
      return { $real: v > 0 ? 'Infinity' : '-Infinity' };
    }
    return v;
  });
  if (tag === null) return text;
  const quoted = JSON.stringify(tag).slice(1, -1).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  // Only where the placeholder is a whole value (not a member's name).
  return text.replace(new RegExp(`"${quoted}(-?\\d+)"(?!\\s*:)`, 'g'), '$1');
}

/** `JSON.stringify` with `replacer`; a value that contains itself refused as the caller's error. */
function stringifyOrRefuse(value, replacer) {
  try {
    return JSON.stringify(value, replacer);
  } catch (e) {
    if (e instanceof TypeError && /circular/i.test(e.message)) {
      throw new InvalidArgumentError('a value contains itself (a cycle), which JSON cannot carry', { kind: 'invalid_argument' });
    }
    throw e;
  }
}

/** Whether `JSON.stringify` writes `v` as litebridge reads it (no BigInt, no bytes). */
function plain(v, depth = 0) {
  if (typeof v === 'number') return Number.isFinite(v);
  if (typeof v === 'bigint' || typeof v === 'function' || typeof v === 'symbol') return false;
  if (v === null || typeof v !== 'object') return true;
  // Deep or cyclic: the general path, whose native writer names a cycle.
  if (depth > 64 || ArrayBuffer.isView(v) || typeof v.toJSON === 'function') return false;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) if (!plain(v[i], depth + 1)) return false;
    return true;
  }
  for (const k in v) if (Object.hasOwn(v, k) && !plain(v[k], depth + 1)) return false;
  return true;
}

/** Sets `out[k] = v` as an own property, `__proto__` included. */
function put(out, k, v) {
  if (k === '__proto__') {
    Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
  } else {
    out[k] = v;
  }
}

/**
 * Values of a result as the caller asked: blobs become Uint8Array, and a
 * BigInt is kept (`bigint: true`) or refused with an error naming the option
 * (as better-sqlite3 does), never rounded.
 */
export function revive(value, { bigint = false } = {}) {
  // In place (the tree is the reply's own, fresh from `parse`), with a stack
  // of its own, not recursion: any depth JSON.parse reads is revived.
  const holder = [value];
  const stack = [holder];
  while (stack.length > 0) {
    const v = stack.pop();
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const x = v[i];
        const r = reviveLeaf(x, bigint);
        if (r !== x) v[i] = r;
        else if (x !== null && typeof x === 'object') stack.push(x);
      }
    } else {
      for (const k of Object.keys(v)) {
        const x = v[k];
        const r = reviveLeaf(x, bigint);
        if (r !== x) put(v, k, r);
        else if (x !== null && typeof x === 'object') stack.push(x);
      }
    }
  }
  return holder[0];
}

/** A value revived on its own: a BigInt, a blob or a real; anything else as it is. */
function reviveLeaf(value, bigint) {
  if (typeof value === 'bigint') {
    if (bigint) return value;
    throw new RangeError(
      "an integer of the result is past JavaScript's safe range (2^53): pass { bigint: true } to get it as a BigInt",
    );
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return value;
  let only;
  for (const k in value) {
    if (!Object.hasOwn(value, k)) continue;
    if (only !== undefined) return value; // two members or more
    only = k;
  }
  if (only === '$blob' && typeof value.$blob === 'string') return new Uint8Array(Buffer.from(value.$blob, 'base64'));
  if (only === '$real' && typeof value.$real === 'string') return Number(value.$real); // Infinity, -Infinity
  return value;
}
