// The litebridge client: one API over a spawned `litebridge stdio` (the
// embedded default) or a server's HTTP endpoint. See README.md.

import { EventEmitter } from 'node:events';

import { fromWire, CancelledError, ConnectionError, TooLargeError, UnsupportedError } from './errors.js';
import { revive } from './json.js';
import { HttpTransport, READS, StdioTransport } from './transports.js';

export * from './errors.js';

const EVENT_NAMES = new Set([
  'started',
  'process-started',
  'process-error',
  'process-restarted',
  'process-recycling',
  'host-joined',
  'host-lost',
  'retry',
  'circuit-breaker-state-change',
  'shutdown',
  'missed',
]);

// What an AbortSignal may withdraw: reads and worker calls. A write already
// sent may commit whatever the client does, so its answer is awaited and is
// its outcome (bound a write with `timeout`: one that timed out did not commit).
const WITHDRAWABLE = new Set([...READS, 'bridge.call']);

/** A statement with its values bound: what `sql` tagged templates make. */
export class Statement {
  constructor(text, params) {
    this.text = text;
    this.params = params;
  }
}

/**
 * sql`SELECT * FROM t WHERE id = ${id}`: the values become bound
 * parameters (`?1`, `?2`, ...), never text of the statement.
 */
export function sql(strings, ...values) {
  let text = strings[0];
  for (let i = 0; i < values.length; i++) text += `?${i + 1}${strings[i + 1]}`;
  return new Statement(text, values);
}

function statementOf(sqlOrStatement, params) {
  if (sqlOrStatement instanceof Statement) return [sqlOrStatement.text, sqlOrStatement.params];
  return [sqlOrStatement, params];
}

function ms(value) {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new TypeError(`timeout must be a positive number of milliseconds, not ${JSON.stringify(value) ?? String(value)}`);
  }
  return Math.max(1, Math.round(value));
}

/** What a write sends of its options: its deadline and idempotency key. */
function writeOptions(options) {
  const key = options.idempotencyKey;
  if (key !== undefined && (typeof key !== 'string' || key === '')) {
    throw new TypeError(`idempotencyKey must be a non-empty string, not ${JSON.stringify(key) ?? String(key)}`);
  }
  return { timeout_ms: ms(options.timeout), idempotency_key: key };
}

/** A write's result, its returned rows (`RETURNING`) as `query` gives rows. */
function written(r, options) {
  if (r && Array.isArray(r.columns) && Array.isArray(r.rows) && options.rows !== 'arrays') {
    r.rows = objects(r.columns, r.rows);
  }
  return r;
}

/** Rows as objects keyed by column (`__proto__` a column like any other). */
function objects(columns, rows) {
  const out = new Array(rows.length);
  const n = columns.length;
  const special = columns.includes('__proto__');
  for (let r = 0; r < rows.length; r++) {
    const row = rows[r];
    const o = {};
    for (let i = 0; i < n; i++) {
      if (special) {
        Object.defineProperty(o, columns[i], { value: row[i], enumerable: true, writable: true, configurable: true });
      } else {
        o[columns[i]] = row[i];
      }
    }
    out[r] = o;
  }
  return out;
}

export class Client extends EventEmitter {
  /**
   * Starts `litebridge stdio` as a child and talks to it over its pipes.
   * The binary: `options.bin`, else `LITEBRIDGE_CLIENT_BIN`, else `litebridge`
   * on PATH (never through a shell).
   */
  static spawn(options = {}) {
    const bin = options.bin ?? process.env.LITEBRIDGE_CLIENT_BIN ?? 'litebridge';
    const args = ['stdio'];
    if (options.db) args.push('--db', options.db);
    if (options.config) args.push('--config', options.config);
    if (options.workers) args.push('--workers', options.workers);
    if (options.processes) args.push('--processes', String(options.processes));
    args.push(...(options.args ?? []));
    const env = { ...process.env, ...(options.env ?? {}) };
    // The client's own variables (its key above all) are not the server's
    // nor its workers' business.
    for (const name of Object.keys(env)) if (name.startsWith('LITEBRIDGE_CLIENT_')) delete env[name];
    // The server's own name: an inherited setting cannot silently win over it.
    if (options.frameworkPath) env.LITEBRIDGE_WORKERS_FRAMEWORK_PATH = options.frameworkPath;
    const transport = new StdioTransport({
      bin,
      args,
      env,
      shutdownGrace: options.shutdownGrace,
      maxResponseBytes: options.maxResponseBytes,
    });
    return new Client(transport, options);
  }

  /**
   * Talks to `litebridge serve` at `url` (`http://127.0.0.1:7070`). Options:
   * `key` (trimmed; one with a control character is refused, never shown),
   * `batch`, `deadline` (ms a call without a `timeout` may take, default
   * 600 s; one with a `timeout` gets that and 5 s), `maxResponseBytes`
   * (default 128 MiB), `fetch`, `bigint`.
   */
  static connect(url = process.env.LITEBRIDGE_CLIENT_URL, options = {}) {
    if (!url) throw new TypeError('connect(url): give the server URL, or set LITEBRIDGE_CLIENT_URL');
    const key = options.key ?? process.env.LITEBRIDGE_CLIENT_KEY;
    const transport = new HttpTransport({
      url,
      key,
      fetch: options.fetch,
      batch: options.batch,
      deadline: options.deadline,
      maxResponseBytes: options.maxResponseBytes,
    });
    return new Client(transport, options);
  }

  constructor(transport, options = {}) {
    super();
    this.transport = transport;
    this.bigint = options.bigint === true;
    this.nextId = 1;
    this.on('newListener', (name) => {
      if (!EVENT_NAMES.has(name)) return;
      this.transport.subscribe(
        // Only the events named: a server (or anyone between on plain HTTP)
        // that sent `null`, or an event named 'error', took the process
        // down through the client's own code (review 192).
        (e) => {
          if (e !== null && typeof e === 'object' && EVENT_NAMES.has(e.event)) this.emit(e.event, e);
        },
        // A stream refused for good (a bad or revoked key); 'error' only when listened for.
        (error) => this.listenerCount('error') > 0 && this.emit('error', error),
      );
    });
  }

  /**
   * Calls `method` of the method table with `params`; its result. `signal`
   * withdraws a read or a worker call; a write, once sent, is answered with
   * its outcome whatever the signal does. An integer past 2^53 in the result
   * of a read is a RangeError unless `bigint`; in the result of anything
   * else (a write, a worker call), which has run by then, it is a BigInt.
   */
  async request(method, params, { signal, bigint = this.bigint } = {}) {
    signal?.throwIfAborted();
    if (!WITHDRAWABLE.has(method)) signal = undefined;
    // What ran is never reported as failed for the shape of its result.
    if (!READS.has(method)) bigint = true;
    const id = this.nextId++;
    const msg = { jsonrpc: '2.0', id, method };
    if (params !== undefined) msg.params = params;
    if (!signal) {
      const reply = await this.transport.request(msg);
      if (reply?.error) throw fromWire(reply.error);
      return revive(reply?.result, { bigint });
    }
    let onAbort;
    const aborted = new Promise((_, reject) => {
      onAbort = () => {
        this.transport.cancel(id);
        reject(signal.reason ?? new CancelledError('aborted', { kind: 'cancelled' }));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    try {
      const reply = await Promise.race([this.transport.request(msg, signal), aborted]);
      if (reply?.error) throw fromWire(reply.error);
      return revive(reply?.result, { bigint });
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  // ----- SQL ------------------------------------------------------------

  /**
   * Rows of a read-only statement: objects keyed by column (`rows:
   * 'arrays'` for arrays). Options: `timeout` (ms), `maxRows`, `lane`
   * ('read' or 'heavy'), `signal`, `bigint`.
   */
  async query(sqlText, params, options = {}) {
    const [text, values] = statementOf(sqlText, params);
    const r = await this.request(
      'sql.query',
      { sql: text, params: values ?? [], timeout_ms: ms(options.timeout), max_rows: options.maxRows, lane: options.lane },
      options,
    );
    // Litebridge's answer always has this shape; a server that is not litebridge may not.
    if (!r || !Array.isArray(r.columns) || !Array.isArray(r.rows) || !r.rows.every(Array.isArray)) {
      throw new ConnectionError('the answer to sql.query is not a result of rows (columns and rows): not litebridge\'s', {
        kind: 'unavailable',
      });
    }
    if (r.truncated && options.maxRows === undefined) {
      throw new TooLargeError(
        `the query has more than ${r.rows.length} rows, the server's default limit: pass maxRows (up to 1000000) or page with LIMIT`,
        { kind: 'too_large' },
      );
    }
    if (options.rows === 'arrays') return r.rows;
    return objects(r.columns, r.rows);
  }

  /** The first row, or undefined. */
  async get(sqlText, params, options = {}) {
    const rows = await this.query(sqlText, params, { ...options, maxRows: 1 });
    return rows[0];
  }

  /**
   * One statement that changes data, committed when this resolves:
   * `{changes, last_insert_rowid}`, with `columns` and `rows` (objects
   * keyed by column, or arrays with `rows: 'arrays'`) when it returns rows
   * (`INSERT ... RETURNING id`). Its deadline (`timeout`, ms) is sent
   * with it: a write that timed out did not commit. With `idempotencyKey`,
   * the write applies once however often it is sent with that key (the
   * server answers a repeat with the first outcome): the way to send again
   * a write that failed with `OutcomeUnknownError`.
   */
  async execute(sqlText, params, options = {}) {
    const [text, values] = statementOf(sqlText, params);
    // A committed write is never reported as a failure: an unsafe rowid is a BigInt (`request`).
    const r = await this.request('sql.execute', { sql: text, params: values ?? [], ...writeOptions(options) }, options);
    return written(r, options);
  }

  /** Statements (`[{sql, params}]` or sql`` statements) in one transaction. */
  async batch(statements, options = {}) {
    const list = statements.map((s) => (s instanceof Statement ? { sql: s.text, params: s.params } : s));
    const r = await this.request('sql.batch', { statements: list, ...writeOptions(options) }, options);
    if (r && Array.isArray(r.results)) r.results.forEach((one) => written(one, options));
    return r;
  }

  /** One statement for each row of parameters, in one transaction. */
  async executeMany(sqlText, rows, options = {}) {
    return this.request(
      'sql.execute_many',
      { sql: sqlText, rows, ...writeOptions(options) },
      options,
    );
  }

  async schema(options = {}) {
    return this.request('sql.schema', {}, options);
  }

  // ----- the bridge -------------------------------------------------------

  /**
   * Calls a worker method. Options: `timeout` (ms), `retry` (default true),
   * `maxRetries`, `cacheKey`, `cacheTtl` (s), `signal` (aborting cancels the
   * call in its worker). An integer of its result past 2^53 is a BigInt
   * (the call has run: it is not reported as failed for that).
   */
  async call(method, params, options = {}) {
    return this.request(
      'bridge.call',
      {
        method,
        params,
        timeout_ms: ms(options.timeout),
        retry: options.retry,
        max_retries: options.maxRetries,
        cache_key: options.cacheKey,
        cache_ttl_s: options.cacheTtl,
      },
      options,
    );
  }

  async stats(options) {
    return this.request('bridge.stats', {}, options);
  }

  async health(options) {
    return this.request('pool.health', {}, options);
  }

  async isHealthy(options) {
    try {
      return (await this.health(options)).healthy === true;
    } catch {
      return false;
    }
  }

  /** `/metrics` in Prometheus' text format (HTTP only). */
  async metrics() {
    const t = this.transport;
    if (!(t instanceof HttpTransport)) {
      throw new UnsupportedError('metrics are served over HTTP (GET /metrics); this client runs litebridge stdio', {
        kind: 'unsupported',
      });
    }
    return t.metrics();
  }

  async resetBreaker(method, options) {
    return this.request('bridge.breaker.reset', { method }, options);
  }

  get state() {
    return {
      save: (runId, state, extra = {}) => this.request('state.save', { run_id: runId, state, ...extra }),
      load: (runId) => this.request('state.load', { run_id: runId }),
      list: (options = {}) => this.request('state.list', options),
      delete: (runId) => this.request('state.delete', { run_id: runId }),
    };
  }

  get memory() {
    return {
      store: (namespace, key, value, ttl) => this.request('memory.store', { namespace, key, value, ttl_s: ttl }),
      get: (namespace, key) => this.request('memory.get', { namespace, key }),
      list: (namespace, options = {}) => this.request('memory.list', { namespace, ...options }),
      delete: (namespace, key) => this.request('memory.delete', { namespace, key }),
    };
  }

  get cache() {
    return {
      get: (key) => this.request('cache.get', { key }),
      set: (key, value, ttl) => this.request('cache.set', { key, value, ttl_s: ttl }),
      delete: (key) => this.request('cache.delete', { key }),
      stats: () => this.request('cache.stats', {}),
    };
  }

  get admin() {
    return {
      backup: (to) => this.request('admin.backup', to === undefined ? {} : { to }),
      check: (full = false) => this.request('admin.check', { full }),
      checkpoint: (mode) => this.request('admin.checkpoint', mode === undefined ? {} : { mode }),
      createKey: (scope, options = {}) => this.request('admin.keys.create', { scope, ...options }),
      listKeys: () => this.request('admin.keys.list', {}),
      revokeKey: (name) => this.request('admin.keys.revoke', { name }),
    };
  }

  /** Stops: a spawned litebridge drains, commits, checkpoints and exits. */
  async close() {
    await this.transport.close();
  }

  async shutdown() {
    await this.close();
  }
}

/** `Client.spawn(options)`. */
export function spawnClient(options) {
  return Client.spawn(options);
}

/** `Client.connect(url, options)`. */
export function connect(url, options) {
  return Client.connect(url, options);
}
