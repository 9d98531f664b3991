// The two ways to reach litebridge: a child `litebridge stdio` (spawned,
// newline-delimited JSON-RPC on its pipes) and HTTP (`POST /rpc`). Both
// take a request object and give back the parsed reply, and both feed
// events (`onEvent`) once asked to.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { once } from 'node:events';

import { ConnectionError, OutcomeUnknownError, TooLargeError, fromWire } from './errors.js';
import { parse, stringify } from './json.js';

const STDERR_LINES = 20;
/** The longest line `litebridge stdio` reads (its MAX_LINE). */
const MAX_LINE = 64 * 1024 * 1024;

/** The header on litebridge's own 503s for requests it did not run. */
const NOT_RUN = 'litebridge-not-run';

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

/**
 * The error for an HTTP answer without a JSON-RPC reply (a proxy's, or
 * litebridge's standby's `{"error": said}`): recoverable when it was not run
 * (`notRun`); otherwise the request may or may not have run (`mayHaveRun`:
 * a request that runs something).
 */
function statusError(what, res, mayHaveRun = true, said = undefined) {
  const answered = `${what} answered ${res.status}${said ? `: ${said.slice(0, 200)}` : " without litebridge's JSON"}`;
  if (notRun(res)) {
    const after = Number(res.headers?.get?.('retry-after') ?? NaN);
    return new ConnectionError(`${answered} (the request was not run)`, {
      kind: 'unavailable',
      recoverable: true,
      retryAfter: Number.isFinite(after) && after >= 0 ? Math.min(after, 300) * 1000 : undefined,
    });
  }
  if (!mayHaveRun) return new ConnectionError(answered, { kind: 'unavailable' });
  return new OutcomeUnknownError(`${answered}: the request may or may not have run`, { kind: 'outcome_unknown' });
}

/** `{"error": "..."}`: the standby's answer of its own (not a JSON-RPC error object). */
function saidOf(reply) {
  return typeof reply?.error === 'string' ? reply.error : undefined;
}

/**
 * The litebridge error an HTTP error response carries, else a ConnectionError
 * (`GET /events` runs nothing, so it is never an `OutcomeUnknownError`).
 */
async function errorOf(res, what) {
  const text = await res.text().catch(() => '');
  let said;
  try {
    const reply = parse(text);
    if (reply?.error && typeof reply.error === 'object') return fromWire(reply.error);
    said = saidOf(reply);
  } catch {
    // not JSON
  }
  return statusError(what, res, false, said);
}

// Why a connection was never made, so the request certainly never reached
// the server (fetch's `cause`: undici's, or the socket's or DNS's error):
// refused, no such host or socket file, unreachable, or no connection
// within undici's connect timeout.
const NEVER_CONNECTED = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ENOENT',
  'ENETUNREACH',
  'EHOSTUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/** Whether `cause` (what fetch failed with) says the connection was never made. */
function neverConnected(cause) {
  if (!cause || typeof cause !== 'object') return false;
  // Several addresses tried (happy eyeballs), each refused.
  if (Array.isArray(cause.errors) && cause.errors.length) return cause.errors.every(neverConnected);
  return NEVER_CONNECTED.has(cause.code);
}

/** A `litebridge stdio` child, started again on the next request after it died. */
export class StdioTransport {
  constructor({ bin, args, env, shutdownGrace = 10_000 }) {
    this.bin = bin;
    this.args = args;
    this.env = env;
    this.shutdownGrace = shutdownGrace;
    this.child = null;
    this.pending = new Map();
    this.stderr = [];
    this.onEvent = null;
    this.subscribed = false;
    this.closing = false;
    // Lines waiting for the pipe to drain (backpressure), and who waits for them.
    this.backlog = [];
    this.drained = null;
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
    child.stdout.on('data', (chunk) => {
      let start = 0;
      let nl;
      while ((nl = chunk.indexOf('\n', start)) >= 0) {
        const line = partial + chunk.slice(start, nl);
        partial = '';
        start = nl + 1;
        this.line(line);
      }
      partial += chunk.slice(start);
    });
    createInterface({ input: child.stderr, crlfDelay: Infinity }).on('line', (line) => {
      this.stderr.push(line);
      if (this.stderr.length > STDERR_LINES) this.stderr.shift();
    });
    child.stdin.on('error', () => {}); // the exit says why
    if (this.subscribed) this.write({ jsonrpc: '2.0', method: 'events.subscribe', id: null });
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
    let lost;
    let notSent;
    for (const [id, waiter] of this.pending) {
      // A child that never started (`pid` unset: the binary could not be run) read nothing.
      if (child.pid === undefined || waiter.unsent || unsent.has(id)) {
        const message =
          child.pid === undefined ? why : `${why} before the request was written to it (it was not sent)`;
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
    const waiter = this.pending.get(String(msg?.id));
    if (waiter) {
      this.pending.delete(String(msg.id));
      waiter.resolve(msg);
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
    if (child.stdin.write(text)) return true;
    let resolve;
    this.drained = Object.assign(new Promise((r) => (resolve = r)), { resolve: () => resolve() });
    const flush = () => {
      if (this.child !== child) return;
      while (this.backlog.length) {
        if (!child.stdin.write(this.backlog.shift()[0])) {
          child.stdin.once('drain', flush);
          return;
        }
      }
      this.drained.resolve();
      this.drained = null;
    };
    child.stdin.once('drain', flush);
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
      const waiter = { resolve, reject, unsent: false };
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

/** `POST /rpc` with a bearer key; optionally the calls of one tick in one batch. */
export class HttpTransport {
  constructor({ url, key, fetch: fetchImpl = globalThis.fetch, batch = false }) {
    this.url = url.replace(/\/+$/, '');
    this.key = key;
    this.fetch = fetchImpl;
    this.batch = batch;
    this.queue = null;
    this.streams = null;
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.key) h.authorization = `Bearer ${this.key}`;
    return h;
  }

  async post(body, signal) {
    let res;
    try {
      res = await this.fetch(`${this.url}/rpc`, {
        method: 'POST',
        headers: this.headers({ 'content-type': 'application/json' }),
        body,
        signal,
      });
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      const why = e.cause?.message ?? e.message;
      if (neverConnected(e.cause)) {
        throw new ConnectionError(`cannot reach ${this.url}: ${why}`, { kind: 'unavailable', recoverable: true });
      }
      if (e.cause?.code === 'ERR_INVALID_URL' || e.cause?.message === 'unknown scheme') {
        // Refused before sending (a URL fetch cannot use): trying again cannot help.
        throw new ConnectionError(`cannot send to ${this.url}: ${why}`, { kind: 'unavailable' });
      }
      // Reset, closed or timed out once connected: the request may have been
      // read, and run, by the time the connection failed.
      throw new OutcomeUnknownError(
        `the connection to ${this.url} failed with the request sent or on its way (${why}): ` +
          'it may or may not have run',
        { kind: 'outcome_unknown' },
      );
    }
    let text;
    try {
      text = await res.text();
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw new OutcomeUnknownError(
        `${this.url}/rpc answered ${res.status}, then the connection failed (${e.cause?.message ?? e.message}): ` +
          'the request may or may not have run',
        { kind: 'outcome_unknown' },
      );
    }
    if (res.status === 204) return null;
    let reply;
    try {
      reply = parse(text);
    } catch {
      if (!res.ok) throw statusError(`${this.url}/rpc`, res);
      throw new OutcomeUnknownError(
        `${this.url}/rpc answered ${res.status} with no JSON: ${text.slice(0, 200)}; ` +
          'the request may or may not have run',
        { kind: 'outcome_unknown' },
      );
    }
    // Not a JSON-RPC reply: a proxy's answer, or the standby's.
    if (!res.ok && !Array.isArray(reply) && !(reply?.error && typeof reply.error === 'object')) {
      throw statusError(`${this.url}/rpc`, res, true, saidOf(reply));
    }
    return reply;
  }

  async request(obj, signal) {
    if (!this.batch || signal) return this.post(stringify(obj), signal);
    // Gathered until the end of this tick, sent as one batch.
    if (!this.queue || this.queue.length >= MAX_BATCH) {
      const queue = (this.queue = []);
      queueMicrotask(() => this.flush(queue));
    }
    return new Promise((resolve, reject) => this.queue.push({ obj, resolve, reject }));
  }

  async flush(queue) {
    if (this.queue === queue) this.queue = null;
    try {
      const replies = await this.post(stringify(queue.map((q) => q.obj)));
      if (!Array.isArray(replies) && replies?.error) {
        // One answer for the whole batch (a bad key, overloaded): everyone's.
        for (const q of queue) q.reject(fromWire(replies.error));
        return;
      }
      const byId = new Map((Array.isArray(replies) ? replies : [replies]).map((r) => [String(r?.id), r]));
      for (const q of queue) {
        const r = byId.get(String(q.obj.id));
        if (r) q.resolve(r);
        else q.reject(new ConnectionError('the batch reply had no answer for this request', { kind: 'internal' }));
      }
    } catch (e) {
      for (const q of queue) q.reject(e);
    }
  }

  cancel() {
    // The aborted fetch is the cancellation.
  }

  /**
   * Reads `GET /events`, reconnecting with `Last-Event-ID` until closed:
   * after 1 s, doubling to 30 s while it keeps failing, or after the
   * server's `Retry-After`. A refusal for good (401, 403: a bad or revoked
   * key) ends it and is given to `onEnd`.
   */
  subscribe(onEvent, onEnd = () => {}) {
    if (this.streams) return;
    const controller = (this.streams = new AbortController());
    let last;
    let pause = 1000;
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
            headers: this.headers(last ? { 'last-event-id': last } : {}),
            signal: connection.signal,
          });
          if (!res.ok) {
            const error = await errorOf(res, 'GET /events');
            if (res.status === 401 || res.status === 403) {
              this.streams = null;
              onEnd(error);
              return;
            }
            const after = Number(res.headers.get('retry-after'));
            if (Number.isFinite(after) && after >= 0) wait = Math.min(after, 300) * 1000;
            throw error;
          }
          pause = 1000;
          let buffer = '';
          let id;
          let data = '';
          for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
            clearTimeout(silence);
            silence = setTimeout(stop, EVENTS_SILENCE).unref();
            buffer += chunk;
            let nl;
            while ((nl = buffer.indexOf('\n')) >= 0) {
              const line = buffer.slice(0, nl).replace(/\r$/, '');
              buffer = buffer.slice(nl + 1);
              if (line === '') {
                if (data) {
                  if (id) last = id;
                  let event;
                  try {
                    event = parse(data);
                  } catch {
                    // not JSON: skipped
                  }
                  if (event !== undefined) {
                    try {
                      onEvent(event);
                    } catch (e) {
                      // A listener's own error: thrown on its own, the stream goes on.
                      process.nextTick(() => {
                        throw e;
                      });
                    }
                  }
                }
                data = '';
                id = undefined;
              } else if (line.startsWith('data:')) data += line.slice(5).trimStart();
              else if (line.startsWith('id:')) id = line.slice(3).trim();
            }
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
    run();
  }

  async close() {
    this.streams?.abort();
  }
}
