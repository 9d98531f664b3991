// The two ways to reach litebridge: a child `litebridge stdio` (spawned,
// newline-delimited JSON-RPC on its pipes) and HTTP (`POST /rpc`). Both
// take a request object and give back the parsed reply, and both feed
// events (`onEvent`) once asked to.

import { spawn } from 'node:child_process';
import { constants } from 'node:buffer';
import { once } from 'node:events';

import { ConnectionError, OutcomeUnknownError, TimeoutError, TooLargeError, fromWire } from './errors.js';
import { parse, stringify } from './json.js';
import { NOT_CONNECTED, nodeFetch } from './nodefetch.js';

const STDERR_LINES = 20;
/** The longest piece of a stderr line kept (a longer line is kept in pieces). */
const STDERR_PIECE = 4096;
/** The longest string V8 makes. */
const { MAX_STRING_LENGTH } = constants;
/** The longest line `litebridge stdio` reads (its MAX_LINE). */
const MAX_LINE = 64 * 1024 * 1024;

/** The header on litebridge's own 503s for requests it did not run. */
const NOT_RUN = 'litebridge-not-run';

/**
 * The methods that change nothing. An answer to one of them that is not
 * litebridge's reply is a plain error (nothing can have happened); any
 * other request may have run, and is then an `OutcomeUnknownError`.
 */
export const READS = new Set([
  'sql.query',
  'sql.schema',
  'bridge.stats',
  'bridge.health',
  'state.load',
  'state.list',
  'memory.get',
  'memory.list',
  'cache.get',
  'cache.stats',
  'pool.health',
  'pool.stats',
  'persistence.stats',
  'rpc.discover',
]);

/**
 * Whether an HTTP answer without a JSON-RPC reply says the request was not
 * run: a 429 (a rate limit refuses before passing a request on), or a 503
 * of litebridge's own (`litebridge-not-run`). A proxy's 503 may come after
 * the request reached litebridge (Envoy's "reset before headers", a
 * platform's request timeout), so it is not.
 */
function notRun(res) {
  return res.status === 429 || (res.status === 503 && res.headers?.get?.(NOT_RUN) != null);
}

/** `Retry-After` in ms (0 to 300 s), if the answer has a number of seconds there. */
function retryAfterOf(res) {
  const header = res.headers?.get?.('retry-after');
  if (header == null || header.trim() === '') return undefined;
  const after = Number(header);
  return Number.isFinite(after) && after >= 0 ? Math.min(after, 300) * 1000 : undefined;
}

/**
 * The error for an HTTP answer without litebridge's JSON-RPC reply (a
 * proxy's, or litebridge's standby's `{"error": said}`): recoverable when it
 * was not run (`notRun`); otherwise the request may or may not have run
 * (`mayHaveRun`: a request that runs something).
 */
function statusError(what, res, mayHaveRun = true, said = undefined) {
  const answered = `${what} answered ${res.status}${said ? `: ${said.slice(0, 200)}` : " without litebridge's JSON"}`;
  if (notRun(res)) {
    return new ConnectionError(`${answered} (the request was not run)`, {
      kind: 'unavailable',
      recoverable: true,
      retryAfter: retryAfterOf(res),
    });
  }
  if (!mayHaveRun) return new ConnectionError(answered, { kind: 'unavailable' });
  return new OutcomeUnknownError(`${answered}: the request may or may not have run`, { kind: 'outcome_unknown' });
}

/**
 * A redirect, never followed: it would send the key (and a request's SQL
 * and values) wherever the answer says, and turn a POST into a GET. The
 * server that answered it did not run the request.
 */
function redirected(what, res) {
  return new ConnectionError(
    `${what} answered ${res.status}, a redirect, which the client does not follow (it would send the key ` +
      'and the request elsewhere): the request was not run; connect to the URL it names if that is the server',
    { kind: 'unavailable' },
  );
}

/** `{"error": "..."}`: the standby's answer of its own (not a JSON-RPC error object). */
function saidOf(reply) {
  return typeof reply?.error === 'string' ? reply.error : undefined;
}

/**
 * Whether `reply` is a JSON-RPC reply to request `id`: `jsonrpc` "2.0",
 * exactly one of `result` and `error`, an error an object with an integer
 * `code`, and the request's `id` (or null on an error: a request
 * litebridge could not read, or refused whole).
 */
export function isReply(reply, id) {
  if (reply === null || typeof reply !== 'object' || reply.jsonrpc !== '2.0') return false;
  const hasResult = 'result' in reply;
  if (hasResult === 'error' in reply) return false;
  if (hasResult) return reply.id === id;
  const e = reply.error;
  return (
    e !== null && typeof e === 'object' && !Array.isArray(e) && Number.isSafeInteger(e.code) && (reply.id === id || reply.id === null)
  );
}

/** The request errors of JSON-RPC, which litebridge sends without `data`. */
const REQUEST_ERRORS = new Set([-32700, -32600, -32601, -32602]);

/**
 * Whether `reply`, with an HTTP error status, is litebridge's own error: a
 * JSON-RPC error reply (`isReply`) whose `data` has litebridge's `kind` and
 * `recoverable`, or a request error (no `data`). A gateway's JSON (`{"error":
 * {"code": 504, ...}}`) is not, and the status says what happened.
 */
function isOwnError(reply, id) {
  if (!isReply(reply, id) || !('error' in reply)) return false;
  const { code, data } = reply.error;
  if (data === undefined) return REQUEST_ERRORS.has(code);
  return data !== null && typeof data === 'object' && typeof data.kind === 'string' && typeof data.recoverable === 'boolean';
}

/**
 * The error a GET (`/events`, `/metrics`) answered with an error status
 * carries: litebridge's own, else a ConnectionError (a GET runs nothing, so
 * it is never an `OutcomeUnknownError`).
 */
async function errorOf(res, what, redact) {
  let said;
  try {
    const reply = parse(await readBody(res, MAX_ERROR_BODY));
    if (isOwnError(reply, null)) return fromWire(blanked(reply, redact).error);
    said = saidOf(reply);
    // A proxy's page may quote the request's headers, the key among them.
    if (said !== undefined) said = redact(said);
  } catch {
    // not JSON, too long, or cut short
  }
  return statusError(what, res, false, said);
}

/**
 * `reply` with the key blanked in its error's strings: litebridge never
 * quotes it, but a server of its shape (a proxy's, a debugging one's) may
 * quote the request's headers, and error messages go to logs.
 */
function blanked(reply, redact) {
  const e = reply?.error;
  if (e === null || typeof e !== 'object') return reply;
  // Every string of the error, `data` too (review 248: inspect() and
  // JSON.stringify of the error showed a key quoted there).
  const stack = [e];
  while (stack.length > 0) {
    const o = stack.pop();
    for (const k of Object.keys(o)) {
      const v = o[k];
      if (typeof v === 'string') {
        Object.defineProperty(o, k, { value: redact(v), enumerable: true, writable: true, configurable: true });
      } else if (v !== null && typeof v === 'object') stack.push(v);
    }
  }
  return reply;
}

/** The longest body of an HTTP error answer read (litebridge's are short). */
const MAX_ERROR_BODY = 1024 * 1024;

/** What `readBody` throws past its limit. */
class TooLong {
  constructor(limit) {
    this.limit = limit;
  }
}

/** Drops an answer's body unread. */
function discard(res) {
  res.body?.cancel().catch(() => {});
}

/** The body as text, `limit` bytes at most (`TooLong` past it). */
async function readBody(res, limit) {
  if (Number(res.headers.get('content-length')) > limit) {
    discard(res);
    throw new TooLong(limit);
  }
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      reader.cancel().catch(() => {});
      throw new TooLong(limit);
    }
    chunks.push(value);
  }
  if (chunks.length === 1) {
    const [c] = chunks;
    return Buffer.from(c.buffer, c.byteOffset, c.byteLength).toString('utf8');
  }
  return Buffer.concat(chunks, size).toString('utf8');
}

// Why a connection was never made, so the request certainly never reached
// the server (fetch's `cause`: undici's, or the socket's or DNS's error):
// refused, no such host or socket file, unreachable, or no connection
// within undici's connect timeout.
const NEVER_CONNECTED = new Set([
  NOT_CONNECTED,
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENOENT',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** The system calls whose failure means no connection was made (a socket's error names its call). */
const BEFORE_CONNECTING = new Set(['connect', 'getaddrinfo', 'getaddrinfo_all']);

/**
 * Whether `cause` (what fetch failed with) says the connection was never
 * made. A socket's error counts only if it came from connecting: the same
 * code from a read or a write (EHOSTUNREACH once the host went away) may
 * follow a request the server read and ran.
 */
function neverConnected(cause) {
  if (!cause || typeof cause !== 'object') return false;
  // Several addresses tried (happy eyeballs), each refused.
  if (Array.isArray(cause.errors) && cause.errors.length) return cause.errors.every(neverConnected);
  if (typeof cause.syscall === 'string' && !BEFORE_CONNECTING.has(cause.syscall)) return false;
  return NEVER_CONNECTED.has(cause.code);
}

/**
 * The id of the request a new child is sent first (`pool.health`): any
 * answer to it, even a refusal, says litebridge started and reads requests.
 */
const START_ID = 'litebridge-client-start';

/** A `litebridge stdio` child, started again on the next request after it died. */
export class StdioTransport {
  constructor({ bin, args, env, shutdownGrace = 10_000, maxResponseBytes }) {
    this.bin = bin;
    this.args = args;
    this.env = env;
    this.shutdownGrace = shutdownGrace;
    // The longest line read (characters): as over HTTP, and within what a
    // string can hold (a longer one was an uncaught RangeError: review 192).
    this.maxLine = Math.min(
      positive(maxResponseBytes, 'maxResponseBytes', MAX_RESPONSE_BYTES),
      MAX_STRING_LENGTH - 1,
    );
    this.child = null;
    this.pending = new Map();
    this.stderr = [];
    this.onEvent = null;
    this.subscribed = false;
    this.closing = false;
    // Lines waiting for the pipe to drain (backpressure), and who waits for them.
    this.backlog = [];
    this.drained = null;
    // The child not yet known to have started (see `start`).
    this.starting = null;
  }

  start() {
    const child = spawn(this.bin, this.args, {
      env: this.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      windowsHide: true,
    });
    this.child = child;
    this.stderr = [];
    child.on('error', (e) => this.died(child, `could not run ${this.bin}: ${e.message}`));
    child.on('exit', (code, signal) =>
      this.died(child, signal ? `litebridge was killed by ${signal}` : `litebridge exited with code ${code}`),
    );
    // Lines split by hand: readline's own work was a fifth of the client's per call.
    let partial = '';
    child.stdout.setEncoding('utf8');
    const onData = (chunk) => {
      let start = 0;
      let nl;
      while ((nl = chunk.indexOf('\n', start)) >= 0) {
        const line = partial + chunk.slice(start, nl);
        partial = '';
        start = nl + 1;
        this.line(line);
      }
      if (partial.length + chunk.length - start > this.maxLine) {
        // Of no more use: its answers cannot be read past this line.
        partial = '';
        child.stdout.off('data', onData);
        child.stdout.destroy();
        this.died(
          child,
          `litebridge wrote a line longer than ${this.maxLine} characters (the client's maxResponseBytes), ` +
            'which this client does not read, so it was stopped',
        );
        child.kill('SIGKILL');
        return;
      }
      partial += chunk.slice(start);
    };
    child.stdout.on('data', onData);
    // stderr's lines are kept in pieces: one without end is not held whole.
    let piece = '';
    const keep = (line) => {
      this.stderr.push(line);
      if (this.stderr.length > STDERR_LINES) this.stderr.shift();
    };
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      const lines = (piece + chunk).split('\n');
      piece = lines.pop();
      for (const line of lines) keep(line.slice(0, STDERR_PIECE));
      if (piece.length >= STDERR_PIECE) {
        keep(piece.slice(0, STDERR_PIECE));
        piece = '';
      }
    });
    child.stderr.on('end', () => piece && keep(piece));
    child.stdin.on('error', () => {}); // the exit says why
    // The callers' lines wait, unsent, until litebridge answers one of the
    // client's own: a child that exits before that never started (a bad
    // configuration, a database it cannot open), and their requests never
    // ran (they were answered "may or may not have run").
    this.starting = child;
    this.hold();
    child.stdin.write(`${stringify({ jsonrpc: '2.0', method: 'pool.health', id: START_ID })}\n`);
    if (this.subscribed) this.write({ jsonrpc: '2.0', method: 'events.subscribe', id: null });
  }

  /** From now on lines wait in the backlog (until `flush`). */
  hold() {
    let resolve;
    this.drained = Object.assign(new Promise((r) => (resolve = r)), { resolve: () => resolve() });
  }

  /** Writes the backlog to `child`, as the pipe takes it; then lines go straight in again. */
  flush(child) {
    if (this.child !== child) return;
    // The backlog goes in as few writes as the stream's buffer allows.
    child.stdin.cork();
    try {
      while (this.backlog.length) {
        if (!child.stdin.write(this.backlog.shift()[0])) {
          child.stdin.once('drain', () => this.flush(child));
          return;
        }
      }
    } finally {
      child.stdin.uncork();
    }
    this.drained?.resolve();
    this.drained = null;
  }

  died(child, why) {
    if (this.child !== child) return;
    this.child = null;
    // Lines still waiting for the pipe never reached the child: theirs are
    // the only requests known not to have run.
    const unsent = new Set(this.backlog.map(([, id]) => id).filter((id) => id !== undefined));
    this.backlog = [];
    this.drained?.resolve();
    this.drained = null;
    const tail = this.stderr.length ? `; its last lines on stderr:\n${this.stderr.join('\n')}` : '';
    // It never answered the client's first request: it did not start.
    const neverStarted = this.starting === child;
    this.starting = null;
    let lost;
    let notSent;
    for (const [id, waiter] of this.pending) {
      // A child that never started (`pid` unset: the binary could not be run) read nothing.
      if (child.pid === undefined || waiter.unsent || unsent.has(id)) {
        const message =
          child.pid === undefined
            ? why
            : neverStarted
              ? `litebridge did not start (${why}); the request was not sent`
              : `${why} before the request was written to it (it was not sent)`;
        // Nothing ran: sending it again is safe (what stopped the start may
        // pass, a lock another process held, or be mended).
        notSent ??= new ConnectionError(`${message}${tail}`, { kind: 'unavailable', recoverable: true });
        waiter.reject(notSent);
      } else {
        // Written, whole or in part: the child may have read and run it.
        lost ??= new OutcomeUnknownError(`${why} with the request in flight: it may or may not have run${tail}`, {
          kind: 'outcome_unknown',
        });
        waiter.reject(lost);
      }
    }
    this.pending.clear();
  }

  line(text) {
    let msg;
    try {
      msg = parse(text);
    } catch {
      return; // litebridge writes only JSON; nothing to answer
    }
    if (msg && msg.method === 'event' && msg.id === undefined) {
      try {
        this.onEvent?.(msg.params);
      } catch (e) {
        // A listener's own error: thrown on its own, not through the replies still to read.
        process.nextTick(() => {
          throw e;
        });
      }
      return;
    }
    if (msg?.id === START_ID) {
      if (this.starting === this.child) {
        this.starting = null;
        this.flush(this.child);
      }
      return;
    }
    const waiter = this.pending.get(String(msg?.id));
    if (waiter) {
      this.pending.delete(String(msg.id));
      // Litebridge's reply to this request, of JSON-RPC's shape: a broken
      // child's line of neither a result nor an error resolved as a
      // success, and `"id": "1"` answered request 1 (review 192).
      if (isReply(msg, waiter.id)) waiter.resolve(msg);
      else
        waiter.reject(
          new OutcomeUnknownError(
            'litebridge answered with JSON that is not a JSON-RPC reply to this request: it may or may not have run',
            { kind: 'outcome_unknown' },
          ),
        );
    }
  }

  /**
   * Writes a line (of request `id`, if it is one); false when it cannot be
   * written at all (no child, or its stdin is gone).
   */
  write(obj, text = `${stringify(obj)}\n`, id = undefined) {
    const child = this.child;
    if (!child || child.stdin.destroyed) return false;
    // Backpressure: once the pipe is full, lines wait here, in order, for it to drain.
    if (this.drained) {
      this.backlog.push([text, id]);
      return true;
    }
    // The lines of one tick go in one write (writev on the tick's end):
    // many calls made at once cost one system call, not one each. The
    // price: a child that closed its stdin is found out at the tick's end,
    // not at the first line, so the tick's lines count as written (their
    // calls may have run: a write among them is OutcomeUnknownError), where
    // the lines after the first would have waited in the backlog, unsent.
    if (!child.stdin.writableCorked) {
      child.stdin.cork();
      process.nextTick(() => child.stdin.uncork());
    }
    if (child.stdin.write(text)) return true;
    this.hold();
    child.stdin.once('drain', () => this.flush(child));
    return true;
  }

  request(obj) {
    if (this.closing) return Promise.reject(new ConnectionError('the client is shut down', { kind: 'unavailable' }));
    // Refused here what litebridge could only answer without an id (which
    // no caller would ever get): a line past its limit.
    let text;
    try {
      text = `${stringify(obj)}\n`;
    } catch (e) {
      return Promise.reject(e);
    }
    // In bytes, as litebridge counts (a string's length counts UTF-16 units).
    const bytes = text.length > MAX_LINE / 3 ? Buffer.byteLength(text) - 1 : text.length - 1;
    if (bytes > MAX_LINE) {
      return Promise.reject(
        new TooLargeError(`the request is ${bytes} bytes; litebridge stdio reads lines of ${MAX_LINE} at most`, {
          kind: 'too_large',
        }),
      );
    }
    if (!this.child) this.start();
    return new Promise((resolve, reject) => {
      const id = String(obj.id);
      const waiter = { resolve, reject, unsent: false, id: obj.id };
      this.pending.set(id, waiter);
      // Not written at all (its stdin already gone): the exit, which follows, fails it as not sent.
      if (!this.write(obj, text, id)) waiter.unsent = true;
    });
  }

  /** Withdraws request `id`: its answer is no longer awaited. */
  cancel(id) {
    this.pending.delete(String(id));
    if (this.child) this.write({ jsonrpc: '2.0', method: '$/cancelRequest', params: { id } });
  }

  subscribe(onEvent) {
    if (this.closing) return;
    this.onEvent = onEvent;
    this.subscribed = true;
    if (!this.child) this.start();
    else this.write({ jsonrpc: '2.0', method: 'events.subscribe', id: null });
  }

  /**
   * Closes stdin, so litebridge finishes what it was asked, commits,
   * checkpoints and exits; then SIGTERM, then SIGKILL, if it does not.
   */
  async close() {
    this.closing = true;
    const child = this.child;
    if (!child) return;
    const exited = once(child, 'exit');
    const within = (ms) => Promise.race([exited.then(() => true), new Promise((r) => setTimeout(r, ms, false).unref())]);
    // The grace period counts from now, writes still queued included: a
    // child that stopped reading must not keep this waiting for ever.
    const ends = Date.now() + this.shutdownGrace;
    await Promise.race([this.drained ?? Promise.resolve(), within(this.shutdownGrace)]);
    child.stdin.end();
    if (await within(Math.max(0, ends - Date.now()))) return;
    child.kill('SIGTERM');
    if (await within(5_000)) return;
    child.kill('SIGKILL');
    await exited;
  }
}

/** How long an event stream may stay silent before it is opened again (ms). */
const EVENTS_SILENCE = 30_000;

/** Requests in one batch at most (the server takes 1,000). */
const MAX_BATCH = 1000;

/** The largest body litebridge reads (16 MiB, then 413): a batch is kept under it. */
const MAX_BODY = 16 * 1024 * 1024;

/** A call's deadline on the client when it has no `timeout` of its own (ms; the `deadline` option). */
export const DEFAULT_DEADLINE = 600_000;

/** How long past a call's own `timeout` the client waits for its answer (ms). */
export const DEADLINE_MARGIN = 5_000;

/**
 * The largest answer read (bytes; the `maxResponseBytes` option): twice the
 * server's default `db.max_result_bytes` (64 MiB), room for the JSON of
 * the largest rows (a blob is a third longer in base64).
 */
export const MAX_RESPONSE_BYTES = 128 * 1024 * 1024;

/** The longest line, and event, of `GET /events` kept (litebridge's are far shorter). */
const MAX_EVENT = 1024 * 1024;

/** An event id sent back as `Last-Event-ID`: printable ASCII, as a header can carry it. */
const EVENT_ID = /^[\x20-\x7e]{1,1024}$/;

/** setTimeout's longest delay (ms). */
const MAX_DELAY = 2 ** 31 - 1;

/**
 * An AbortController that aborts `ms` from now: `expired()` tells whether
 * it did, `clear()` stops its timer.
 */
function deadlineController(ms) {
  const controller = new AbortController();
  let expired = false;
  const timer = setTimeout(() => {
    expired = true;
    controller.abort();
  }, Math.min(ms, MAX_DELAY));
  return { controller, expired: () => expired, clear: () => clearTimeout(timer) };
}

const POST_HEADERS = { 'content-type': 'application/json', 'accept-encoding': 'identity' };
const GET_HEADERS = { 'accept-encoding': 'identity' };
const EVENT_HEADERS = { accept: 'text/event-stream', 'accept-encoding': 'identity' };

/** A failure whose error depends on whether the request may have run: `make(ran)`. */
class Failed {
  constructor(make) {
    this.make = make;
  }
}

/** `e` as the error of a request that may have run (`ran`) or not. */
function settle(e, ran) {
  return e instanceof Failed ? e.make(ran) : e;
}

/** An answer that is not litebridge's reply to the request. */
function notReply(what, res, ran, how) {
  const answered = `${what} answered ${res.status} ${how}`;
  if (ran) return new OutcomeUnknownError(`${answered}; the request may or may not have run`, { kind: 'outcome_unknown' });
  return new ConnectionError(answered, { kind: 'unavailable' });
}

/** A call in flight cut off by `close()`: a read was not answered, anything else may have run. */
function cutOff(what, ran) {
  const cut = `${what}: the client was closed with the call in flight`;
  if (ran) return new OutcomeUnknownError(`${cut}: the request may or may not have run`, { kind: 'outcome_unknown' });
  return new ConnectionError(`${cut} (not answered)`, { kind: 'unavailable', recoverable: false });
}

/** No (whole) answer within the client's deadline: a read timed out, anything else may have run. */
function late(what, ms, ran, answering = false) {
  const waited =
    `${what} gave no ${answering ? 'whole answer' : 'answer'} within ${ms} ms (the client's deadline: ` +
    `the call's timeout and ${DEADLINE_MARGIN} ms, else the deadline option)`;
  if (ran) return new OutcomeUnknownError(`${waited}: the request may or may not have run`, { kind: 'outcome_unknown' });
  return new TimeoutError(waited, { kind: 'timeout', recoverable: true });
}

/**
 * No answer's headers within the 300 s of Node's fetch (undici's
 * `headersTimeout`), when it is the fetch given, which gives up then
 * whatever the call's deadline: a read timed out, anything else may have run.
 */
function headersLate(what, ms, ran) {
  const waited =
    `${what} gave no answer within 300 s, the longest Node's fetch waits for an answer's headers ` +
    `(undici's headersTimeout, whatever the client's deadline of ${ms} ms): the fetch given cannot wait ` +
    "longer; leave the fetch option out (the client's own waits until the deadline) or use stdio";
  if (ran) return new OutcomeUnknownError(`${waited}; the request may or may not have run`, { kind: 'outcome_unknown' });
  return new TimeoutError(waited, { kind: 'timeout', recoverable: true });
}

/** An answer over the client's `maxResponseBytes`, not read. */
function tooLong(what, res, limit, ran) {
  if (ran) {
    return new OutcomeUnknownError(
      `${what} answered ${res.status} with more than ${limit} bytes (the client's maxResponseBytes), ` +
        'which were not read: the request may or may not have run',
      { kind: 'outcome_unknown' },
    );
  }
  return new TooLargeError(
    `${what} answered with more than ${limit} bytes, the client's limit (maxResponseBytes): ` +
      'ask for less (maxRows, LIMIT) or raise it',
    { kind: 'too_large' },
  );
}

/** An answer in an encoding other than identity (not asked for: never inflated). */
function encoded(res) {
  const encoding = res.headers.get('content-encoding');
  return encoding != null && encoding.trim().toLowerCase() !== 'identity' ? encoding : undefined;
}

/** The key to send: `key` trimmed (a key file's newline); refused, never shown, if a header cannot carry it. */
function checkedKey(key) {
  if (key === undefined || key === null) return undefined;
  if (typeof key !== 'string') throw new TypeError('connect(): the key must be a string');
  const trimmed = key.trim();
  if (!/^[\x20-\x7e]*$/.test(trimmed)) {
    throw new TypeError(
      'connect(): the key holds a control character (a line break inside it?) or a character that is not ' +
        'ASCII, which an HTTP header cannot carry; litebridge keys are printable ASCII (the key is not shown here)',
    );
  }
  return trimmed || undefined;
}

/**
 * `url` trimmed, without its trailing slashes; refused, never shown, if it
 * holds an `@` (a user name or password), a query or fragment, a space or
 * control character, or does not parse.
 */
function checkedUrl(url) {
  // Trimmed as the key is (a file's newline); a space or control character left is refused.
  const base = String(url).trim().replace(/\/+$/, '');
  const credentials = () =>
    new TypeError(
      'connect(url): the URL holds a user name or password (user:password@host), which fetch refuses and ' +
        'messages would show; give the key with the `key` option (the URL is not shown here)',
    );
  // An `@` anywhere, looked for in the raw text: a password holding `/`,
  // `?` or `#` ends the authority early (`http://user:12?pw@host` reads as
  // host `user`, port 12), and its URL would send the key there.
  if (base.includes('@')) throw credentials();
  // A base URL has paths added to it: a query or fragment would take them.
  if (/[?#]/.test(base)) {
    throw new TypeError(
      'connect(url): the URL holds a query or fragment (`?`, `#`); write it as http://host:port or ' +
        'http://host:port/prefix (the URL is not shown here)',
    );
  }
  if (/[\x00-\x20\x7f]/.test(base)) {
    throw new TypeError('connect(url): the URL holds a space or control character (the URL is not shown here)');
  }
  // A backslash is read as a slash (`http://a:1\\b.example` goes to a), and
  // a host not in ASCII is read through IDNA (`127。0。0。1` is loopback):
  // the host would not be the one the text shows.
  if (/[\\]|[^\x00-\x7f]/.test(base)) {
    throw new TypeError(
      'connect(url): the URL holds a backslash or a character that is not ASCII; write the host in its ' +
        'ASCII form (the URL is not shown here)',
    );
  }
  if (!/^https?:\/\/[^/]/i.test(base)) {
    throw new TypeError('connect(url): the URL must be http://host:port or https://host:port (the URL is not shown here)');
  }
  let parsed;
  try {
    parsed = new URL(base);
  } catch {
    throw new TypeError(
      'connect(url): the URL cannot be read (a bracket left open, a port out of range?): write it as ' +
        'http://host:port (the URL is not shown here)',
    );
  }
  if (parsed.username || parsed.password) throw credentials();
  return base;
}

/** A positive finite number of the options, or `fallback`. */
function positive(value, name, fallback) {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new TypeError(`connect(): ${name} must be a positive number, not ${String(value)}`);
  }
  return value;
}

/**
 * Splits `GET /events` into events, `onEvent(id, data)` for each, as the
 * event-stream format reads them: a line ends at CRLF, LF or a lone CR; an
 * event's `data:` lines are joined by LF, each without the one space after
 * the colon. Each chunk is searched once (a line split across chunks is not
 * searched again from its start), and a line or an event longer than
 * MAX_EVENT is dropped.
 */
function sseParser(onEvent) {
  // A line's pieces and an event's data lines are kept apart until they
  // end: strings added to a piece at a time are ropes, which held 170 MB
  // for a million one-byte pieces (review 218).
  let pieces = [];
  let held = 0; // the length of `pieces` together
  let skipping = false; // the rest of a line too long to keep
  let afterCr = false; // the last chunk ended with CR: a LF first in the next ends no line
  let data = []; // the event's data lines
  let size = 0; // their length together, with the LFs that will join them
  let id;
  let dropped = false; // the event being read had a line or data too long
  const line = (text) => {
    if (text === '') {
      const joined = data.join('\n');
      if (joined && !dropped) onEvent(id, joined);
      data = [];
      size = 0;
      id = undefined;
      dropped = false;
    } else if (text.startsWith('data:')) {
      const value = text.startsWith('data: ') ? text.slice(6) : text.slice(5);
      size += value.length + (data.length ? 1 : 0);
      if (size > MAX_EVENT) {
        dropped = true;
        data = [];
        size = 0;
      } else if (!dropped) {
        data.push(value);
      }
    } else if (text.startsWith('id:')) {
      id = text.slice(3).trim();
    }
  };
  const end = /[\r\n]/g;
  return (chunk) => {
    let start = afterCr && chunk.startsWith('\n') ? 1 : 0;
    afterCr = false;
    end.lastIndex = start;
    let found;
    while ((found = end.exec(chunk)) !== null) {
      let text = chunk.slice(start, found.index);
      start = found.index + 1;
      if (found[0] === '\r') {
        if (start === chunk.length) afterCr = true;
        else if (chunk[start] === '\n') start += 1;
        end.lastIndex = start;
      }
      if (skipping) {
        skipping = false;
        continue;
      }
      if (pieces.length) {
        pieces.push(text);
        text = pieces.join('');
        pieces = [];
        held = 0;
      }
      line(text);
    }
    if (!skipping && start < chunk.length) {
      pieces.push(chunk.slice(start));
      held += chunk.length - start;
      if (held > MAX_EVENT) {
        pieces = [];
        held = 0;
        skipping = true;
        dropped = true;
      }
    }
  };
}

/**
 * `POST /rpc` with a bearer key; optionally the calls of one tick in one
 * batch. Redirects are never followed, answers are read up to
 * `maxResponseBytes` and never inflated, and every call has a deadline.
 */
export class HttpTransport {
  #key;

  constructor({ url, key, fetch: fetchImpl, batch = false, deadline, maxResponseBytes }) {
    this.url = checkedUrl(url);
    this.#key = checkedKey(key);
    // Node's own fetch gives up on an answer after 300 s: see nodefetch.js.
    this.ownFetch = fetchImpl ? undefined : nodeFetch();
    this.fetch = fetchImpl ?? this.ownFetch;
    this.batch = batch;
    this.deadline = positive(deadline, 'deadline', DEFAULT_DEADLINE);
    this.maxResponseBytes = positive(maxResponseBytes, 'maxResponseBytes', MAX_RESPONSE_BYTES);
    this.queue = null;
    this.queued = 0;
    this.streams = null;
    // Aborted by `close()`: it ends the calls in flight whatever the fetch
    // (one given may have no `close()` of its own).
    this.closer = new AbortController();
  }

  /** What `JSON.stringify` shows of it: never the key. */
  toJSON() {
    return { url: this.url, batch: this.batch };
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.#key) h.authorization = `Bearer ${this.#key}`;
    return h;
  }

  /** `text` with the key blanked, should fetch's message quote a header. */
  redact(text) {
    const s = String(text);
    return this.#key ? s.split(this.#key).join('<the key>') : s;
  }

  /**
   * What a non-litebridge answer's `{"error": ...}` said, the key blanked: a
   * proxy's or a debugging server's page may quote the request's headers
   * (review 244: the key reached error messages, which go to logs).
   */
  said(reply) {
    const said = saidOf(reply);
    return said === undefined ? undefined : this.redact(said);
  }

  /** Throws, the request not sent, once `close()` was called. */
  open(what) {
    if (this.closer.signal.aborted) {
      throw new ConnectionError(`cannot send to ${what}: the client is closed (the request was not sent)`, {
        kind: 'unavailable',
        recoverable: false,
      });
    }
  }

  /** How long request `obj` may take (ms): its own `timeout_ms` and a margin, else the client's deadline. */
  deadlineOf(obj) {
    const t = obj.params?.timeout_ms;
    return typeof t === 'number' && t > 0 ? t + DEADLINE_MARGIN : this.deadline;
  }

  /**
   * The error for a fetch that failed before an answer came when the
   * request certainly never left (refused, unknown host, a URL or header
   * fetch cannot send); undefined when it may have.
   */
  unsent(e) {
    const cause = e?.cause;
    const why = this.redact(cause?.message ?? e?.message ?? e);
    if (neverConnected(cause)) {
      return new ConnectionError(`cannot reach ${this.url}: ${why}`, { kind: 'unavailable', recoverable: true });
    }
    if (cause?.code === 'ERR_INVALID_URL' || cause?.message === 'unknown scheme') {
      // Refused before sending (a URL fetch cannot use): trying again cannot help.
      return new ConnectionError(`cannot send to ${this.url}: ${why}`, { kind: 'unavailable' });
    }
    // fetch refused to make the request at all (a header or URL it cannot
    // carry): its own TypeError, with no network error as its cause.
    if (e instanceof TypeError && cause === undefined && e.message !== 'fetch failed') {
      return new ConnectionError(`cannot send to ${this.url}: ${why} (the request was not sent)`, { kind: 'unavailable' });
    }
    return undefined;
  }

  /**
   * POSTs `body` within `deadline` ms (and `signal`): `{res, ok, reply}`,
   * `reply` parsed (on an error status, if it is JSON at all). What depends
   * on whether the request may have run is thrown as a `Failed`.
   */
  async exchange(body, deadline, signal) {
    const what = `${this.url}/rpc`;
    this.open(what);
    const { controller, expired, clear } = deadlineController(deadline);
    const onAbort = () => controller.abort(signal.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const onClose = () => controller.abort();
    this.closer.signal.addEventListener('abort', onClose, { once: true });
    const closed = () => this.closer.signal.aborted;
    try {
      let res;
      try {
        res = await this.fetch(what, {
          method: 'POST',
          headers: this.headers(POST_HEADERS),
          body,
          signal: controller.signal,
          redirect: 'manual',
        });
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        if (closed()) throw new Failed((ran) => cutOff(what, ran && !neverConnected(e?.cause)));
        // The deadline passed while connecting: the request was not sent.
        if (expired()) throw new Failed((ran) => late(what, deadline, ran && !neverConnected(e?.cause)));
        if (e?.cause?.code === 'UND_ERR_HEADERS_TIMEOUT') throw new Failed((ran) => headersLate(what, deadline, ran));
        const unsent = this.unsent(e);
        if (unsent) throw unsent;
        // Reset, closed or timed out once connected: the request may have
        // been read, and run, by the time the connection failed.
        throw new OutcomeUnknownError(
          `the connection to ${this.url} failed with the request sent or on its way ` +
            `(${this.redact(e?.cause?.message ?? e?.message ?? e)}): it may or may not have run`,
          { kind: 'outcome_unknown' },
        );
      }
      if (res.status >= 300 && res.status < 400) {
        discard(res);
        throw redirected(what, res);
      }
      const ok = res.status >= 200 && res.status < 300;
      const encoding = encoded(res);
      if (ok && encoding) {
        discard(res);
        throw new Failed((ran) => notReply(what, res, ran, `in the encoding ${this.redact(encoding).slice(0, 40)}, not asked for`));
      }
      let text;
      try {
        if (ok) text = await readBody(res, this.maxResponseBytes);
        else if (encoding) discard(res);
        else text = await readBody(res, MAX_ERROR_BODY);
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        if (closed()) throw new Failed((ran) => cutOff(what, ran));
        if (expired()) throw new Failed((ran) => late(what, deadline, ran, true));
        if (e instanceof TooLong) {
          if (!ok) return { res, ok, reply: undefined }; // the status says it
          throw new Failed((ran) => tooLong(what, res, e.limit, ran));
        }
        throw new OutcomeUnknownError(
          `${what} answered ${res.status}, then the connection failed (${e?.cause?.message ?? e?.message}): ` +
            'the request may or may not have run',
          { kind: 'outcome_unknown' },
        );
      }
      let reply;
      try {
        if (text !== undefined) reply = parse(text);
      } catch (e) {
        const why = e?.message?.startsWith('JSON nested deeper') ? e.message : `no JSON: ${this.redact(text).slice(0, 200)}`;
        if (ok) throw new Failed((ran) => notReply(what, res, ran, `with ${why}`));
      }
      return { res, ok, reply };
    } finally {
      clear();
      signal?.removeEventListener('abort', onAbort);
      this.closer.signal.removeEventListener('abort', onClose);
    }
  }

  /** One request, alone: its reply. */
  async single(obj, body, signal) {
    const ran = !READS.has(obj.method);
    try {
      const { res, ok, reply } = await this.exchange(body, this.deadlineOf(obj), signal);
      if (ok ? isReply(reply, obj.id) : isOwnError(reply, obj.id)) return blanked(reply, (s) => this.redact(s));
      const what = `${this.url}/rpc`;
      if (ok) throw notReply(what, res, ran, 'with JSON that is not a JSON-RPC reply to this request');
      // Not litebridge's reply: a proxy's answer, or the standby's.
      throw statusError(what, res, ran, this.said(reply));
    } catch (e) {
      throw settle(e, ran);
    }
  }

  async request(obj, signal) {
    // Written now: a value JSON cannot carry fails this call, not its batch.
    const body = stringify(obj);
    // Past what litebridge reads: refused here, unsent (review 244: sent,
    // it was refused by its length, and the reset that followed could
    // report a write that certainly did not run as one that may have).
    const bytes = body.length > MAX_BODY / 3 ? Buffer.byteLength(body) : body.length;
    if (bytes > MAX_BODY) {
      throw new TooLargeError(
        `the request is ${bytes} bytes; litebridge reads bodies of ${MAX_BODY} at most (it was not sent)`,
        { kind: 'too_large' },
      );
    }
    if (!this.batch || signal) return this.single(obj, body, signal);
    // Gathered until the end of this tick, sent as one batch under the
    // server's body limit.
    const size = Buffer.byteLength(body) + 1;
    if (!this.queue || this.queue.length >= MAX_BATCH || this.queued + size > MAX_BODY) {
      const queue = (this.queue = []);
      this.queued = 2;
      queueMicrotask(() => this.flush(queue));
    }
    this.queued += size;
    return new Promise((resolve, reject) => this.queue.push({ obj, body, resolve, reject }));
  }

  async flush(queue) {
    if (this.queue === queue) this.queue = null;
    if (queue.length === 1) {
      const [q] = queue;
      return this.single(q.obj, q.body).then(q.resolve, q.reject);
    }
    const what = `${this.url}/rpc`;
    // The server answers a batch once its slowest call is done: each call
    // still fails at its own deadline (a later answer is dropped).
    let deadline = 0;
    const timers = queue.map((q) => {
      const ms = this.deadlineOf(q.obj);
      deadline = Math.max(deadline, ms);
      return setTimeout(() => q.reject(late(what, ms, !READS.has(q.obj.method))), Math.min(ms, MAX_DELAY));
    });
    try {
      const { res, ok, reply } = await this.exchange(`[${queue.map((q) => q.body).join(',')}]`, deadline);
      if (ok && Array.isArray(reply)) {
        const byId = new Map();
        for (const r of reply) if (r !== null && typeof r === 'object' && r.id != null) byId.set(r.id, r);
        for (const q of queue) {
          const r = byId.get(q.obj.id);
          if (isReply(r, q.obj.id)) q.resolve(blanked(r, (s) => this.redact(s)));
          else {
            const how = r === undefined ? 'a batch reply with no answer for this request' : 'an answer for this request that is not a JSON-RPC reply';
            q.reject(notReply(what, res, !READS.has(q.obj.method), `with ${how}`));
          }
        }
        return;
      }
      // One answer for the whole batch (a bad key, overloaded, too large): everyone's.
      if (ok ? isReply(reply, null) && 'error' in reply : isOwnError(reply, null)) {
        const error = blanked(reply, (s) => this.redact(s)).error;
        for (const q of queue) q.reject(fromWire(error));
        return;
      }
      for (const q of queue) {
        const ran = !READS.has(q.obj.method);
        q.reject(ok ? notReply(what, res, ran, 'with JSON that is not a JSON-RPC batch reply') : statusError(what, res, ran, this.said(reply)));
      }
    } catch (e) {
      for (const q of queue) q.reject(settle(e, !READS.has(q.obj.method)));
    } finally {
      for (const t of timers) clearTimeout(t);
    }
  }

  cancel() {
    // The aborted fetch is the cancellation.
  }

  /** `GET /metrics`: Prometheus' text; litebridge's error, or a ConnectionError, otherwise. */
  async metrics() {
    const what = `${this.url}/metrics`;
    this.open(what);
    const { controller, expired, clear } = deadlineController(this.deadline);
    const onClose = () => controller.abort();
    this.closer.signal.addEventListener('abort', onClose, { once: true });
    try {
      let res;
      try {
        res = await this.fetch(what, { headers: this.headers(GET_HEADERS), signal: controller.signal, redirect: 'manual' });
      } catch (e) {
        if (this.closer.signal.aborted) throw cutOff(what, false);
        if (expired()) throw late(what, this.deadline, false);
        throw (
          this.unsent(e) ??
          new ConnectionError(`the connection to ${this.url} failed (${this.redact(e?.cause?.message ?? e?.message ?? e)})`, {
            kind: 'unavailable',
          })
        );
      }
      if (res.status >= 300 && res.status < 400) {
        discard(res);
        throw redirected(what, res);
      }
      if (!res.ok) throw await errorOf(res, what, (said) => this.redact(said));
      if (encoded(res)) {
        discard(res);
        throw notReply(what, res, false, 'in an encoding not asked for');
      }
      try {
        return await readBody(res, this.maxResponseBytes);
      } catch (e) {
        if (this.closer.signal.aborted) throw cutOff(what, false);
        if (expired()) throw late(what, this.deadline, false, true);
        if (e instanceof TooLong) throw tooLong(what, res, e.limit, false);
        throw new ConnectionError(`${what} answered ${res.status}, then the connection failed (${e?.cause?.message ?? e?.message})`, {
          kind: 'unavailable',
        });
      }
    } finally {
      clear();
      this.closer.signal.removeEventListener('abort', onClose);
    }
  }

  /**
   * Reads `GET /events`, reconnecting with `Last-Event-ID` until closed:
   * after 1 s, doubling to 30 s while it keeps failing, or after the
   * server's `Retry-After`. A refusal for good (401, 403: a bad or revoked
   * key; a redirect, never followed) ends it and is given to `onEnd`.
   */
  subscribe(onEvent, onEnd = () => {}) {
    if (this.streams || this.closer.signal.aborted) return;
    const controller = (this.streams = new AbortController());
    const end = (error) => {
      if (this.streams === controller) this.streams = null;
      onEnd(error);
    };
    let last;
    let pause = 1000;
    const dispatch = (id, data) => {
      // An id a header cannot carry (a CR, a NUL) would make every reconnection fail: not kept.
      if (id && EVENT_ID.test(id)) last = id;
      let event;
      try {
        event = parse(data);
      } catch {
        return; // not JSON: skipped
      }
      try {
        onEvent(event);
      } catch (e) {
        // A listener's own error: thrown on its own, the stream goes on.
        process.nextTick(() => {
          throw e;
        });
      }
    };
    const run = async () => {
      while (!controller.signal.aborted) {
        let wait = pause;
        // The server writes a comment every 15 s: 30 s of silence is a lost connection.
        const connection = new AbortController();
        const stop = () => connection.abort();
        controller.signal.addEventListener('abort', stop, { once: true });
        let silence = setTimeout(stop, EVENTS_SILENCE).unref();
        try {
          const res = await this.fetch(`${this.url}/events`, {
            headers: this.headers(last ? { ...EVENT_HEADERS, 'last-event-id': last } : EVENT_HEADERS),
            signal: connection.signal,
            redirect: 'manual',
          });
          if (res.status >= 300 && res.status < 400) {
            discard(res);
            end(redirected('GET /events', res));
            return;
          }
          if (!res.ok) {
            const error = await errorOf(res, 'GET /events', (said) => this.redact(said));
            if (res.status === 401 || res.status === 403) {
              end(error);
              return;
            }
            // The server's Retry-After, else the pause; never sooner than 1 s.
            wait = Math.max(retryAfterOf(res) ?? pause, 1000);
            throw error;
          }
          if (encoded(res)) {
            // Never inflated (fetch would): a failure, tried again after the pause.
            discard(res);
            throw new Error('GET /events answered in an encoding not asked for');
          }
          pause = 1000;
          const push = sseParser(dispatch);
          for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
            clearTimeout(silence);
            silence = setTimeout(stop, EVENTS_SILENCE).unref();
            push(chunk);
          }
        } catch {
          if (controller.signal.aborted) return;
        } finally {
          clearTimeout(silence);
          controller.signal.removeEventListener('abort', stop);
        }
        await new Promise((r) => setTimeout(r, wait).unref());
        pause = Math.min(pause * 2, 30_000);
      }
    };
    run().catch((e) => {
      // Not expected: the stream ends with it rather than failing unseen.
      if (!controller.signal.aborted) end(e instanceof Error ? e : new ConnectionError(String(e), { kind: 'internal' }));
    });
  }

  async close() {
    this.closer.abort();
    this.streams?.abort();
    this.ownFetch?.close();
  }
}
