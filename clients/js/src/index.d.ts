// Type declarations of the litebridge client (src/index.js).

import { EventEmitter } from 'node:events';

export type Value = null | number | bigint | string | boolean | Uint8Array;
export type Params = Value[] | Record<string, Value>;
export type Row = Record<string, Value>;

export interface RequestOptions {
  /**
   * Aborting withdraws a read or a worker call (stdio: `$/cancelRequest`;
   * HTTP: the request is closed). A write ignores it: once sent it may
   * commit whatever the client does, so its answer is awaited.
   */
  signal?: AbortSignal;
  /**
   * Integers past 2^53 of a read's result as BigInt; without it such an
   * integer is a RangeError. The result of anything that ran (a write, a
   * worker call) always has them as BigInt.
   */
  bigint?: boolean;
}

export interface QueryOptions extends RequestOptions {
  /** Deadline in ms, sent to the server (`timeout_ms`). */
  timeout?: number;
  maxRows?: number;
  lane?: 'read' | 'heavy';
  /** Rows as objects keyed by column (default) or as arrays. */
  rows?: 'objects' | 'arrays';
}

export interface WriteOptions {
  /**
   * Deadline in ms, sent to the server: a write that timed out did not
   * commit. (There is no `signal`: a write once sent may commit whatever the
   * client does, so it is answered with its outcome.)
   */
  timeout?: number;
  /**
   * The write applies once however often it is sent with this key (at most
   * 200 bytes): a repeat is answered with the first outcome, and the same
   * key with another write is refused. Send a write that failed with
   * `OutcomeUnknownError` again with the same key.
   */
  idempotencyKey?: string;
  /** Rows a statement returns (`RETURNING`) as objects keyed by column (default) or as arrays. */
  rows?: 'objects' | 'arrays';
}

export interface CallOptions extends RequestOptions {
  timeout?: number;
  retry?: boolean;
  maxRetries?: number;
  cacheKey?: string;
  /** Seconds. */
  cacheTtl?: number;
}

export interface SpawnOptions {
  /** The `litebridge` binary; default `LITEBRIDGE_CLIENT_BIN`, then `litebridge` on PATH. */
  bin?: string;
  db?: string;
  config?: string;
  /** Worker command line, e.g. `python3 worker.py`. */
  workers?: string;
  processes?: number;
  /** Serve the Python functions under this directory (generic mode). */
  frameworkPath?: string;
  args?: string[];
  env?: Record<string, string>;
  shutdownGrace?: number;
  /**
   * The longest answer line read, in characters (default 128 MiB, and
   * within the longest string Node makes); past it the child is stopped
   * and its calls fail (`OutcomeUnknownError` for those it may have run).
   */
  maxResponseBytes?: number;
  bigint?: boolean;
}

export interface ConnectOptions {
  /**
   * Default `LITEBRIDGE_CLIENT_KEY`. Surrounding whitespace (a key file's
   * newline) is dropped; a key with a control or non-ASCII character is
   * refused with a TypeError that does not show it.
   */
  key?: string;
  /**
   * How long a call without a `timeout` of its own may take over HTTP, in
   * ms, answer included (default 600000); a call with a `timeout` gets that
   * and 5000 ms. Past it a read fails with `TimeoutError`, anything else
   * with `OutcomeUnknownError`.
   */
  deadline?: number;
  /**
   * The largest answer read, in bytes (default 128 MiB); past it a read
   * fails with `TooLargeError`, anything else with `OutcomeUnknownError`.
   */
  maxResponseBytes?: number;
  /**
   * The fetch to send with. By default the client's own, over `node:http`,
   * whose requests only the deadline (or `close()`) ends: Node's built-in `fetch` (undici)
   * gives up on an answer whose headers take more than 300 s whatever the
   * deadline (that failure names the limit). Pass one to go through
   * undici's global dispatcher (a proxy agent), or to test.
   */
  fetch?: typeof fetch;
  /** Send the calls of one tick as one JSON-RPC batch (several, to stay under the server's 16 MiB body limit). */
  batch?: boolean;
  bigint?: boolean;
}

export class Statement {
  readonly text: string;
  readonly params: Value[];
}

/** sql`... ${value} ...`: the values become bound parameters. */
export function sql(strings: TemplateStringsArray, ...values: Value[]): Statement;

export interface ExecResult<R = Row> {
  changes: number;
  last_insert_rowid: number | bigint;
  /** The columns of the rows it returned, when it returns rows (`RETURNING`). */
  columns?: string[];
  /** The rows it returned (`RETURNING`): objects keyed by column, or arrays with `rows: 'arrays'`. */
  rows?: R[];
}

export interface LitebridgeEvent {
  seq: number;
  event: string;
  ts: string;
  [field: string]: unknown;
}

export class Client extends EventEmitter {
  static spawn(options?: SpawnOptions): Client;
  static connect(url?: string, options?: ConnectOptions): Client;
  request<T = unknown>(method: string, params?: unknown, options?: RequestOptions): Promise<T>;
  query<R = Row>(sql: string | Statement, params?: Params, options?: QueryOptions): Promise<R[]>;
  get<R = Row>(sql: string | Statement, params?: Params, options?: QueryOptions): Promise<R | undefined>;
  execute<R = Row>(sql: string | Statement, params?: Params, options?: WriteOptions): Promise<ExecResult<R>>;
  batch(
    statements: ({ sql: string; params?: Params } | Statement)[],
    options?: WriteOptions,
  ): Promise<{ results: ExecResult[] }>;
  executeMany(sql: string, rows: Params[], options?: WriteOptions): Promise<{ changes: number }>;
  schema(options?: RequestOptions): Promise<unknown>;
  call<T = unknown>(method: string, params?: unknown[] | Record<string, unknown>, options?: CallOptions): Promise<T>;
  stats(options?: RequestOptions): Promise<Record<string, unknown>>;
  health(options?: RequestOptions): Promise<Record<string, unknown>>;
  isHealthy(options?: RequestOptions): Promise<boolean>;
  /** `GET /metrics` (HTTP only); an error answer or an unreachable server fails as other calls do. */
  metrics(): Promise<string>;
  resetBreaker(method: string, options?: RequestOptions): Promise<{ reset: boolean }>;
  readonly state: {
    save(runId: string, state: unknown, extra?: Record<string, unknown>): Promise<unknown>;
    load(runId: string): Promise<unknown>;
    list(options?: { status?: string; limit?: number; after?: string }): Promise<unknown>;
    delete(runId: string): Promise<unknown>;
  };
  readonly memory: {
    store(namespace: string, key: string, value: unknown, ttl?: number): Promise<unknown>;
    get(namespace: string, key: string): Promise<{ found: boolean; value?: unknown }>;
    /** `{entries, next}`: pass `next` as `after` for the next page. */
    list(namespace: string, options?: { prefix?: string; limit?: number; after?: string }): Promise<unknown>;
    delete(namespace: string, key: string): Promise<unknown>;
  };
  readonly cache: {
    get(key: string): Promise<{ found: boolean; value?: unknown }>;
    set(key: string, value: unknown, ttl?: number): Promise<unknown>;
    delete(key: string): Promise<unknown>;
    stats(): Promise<Record<string, unknown>>;
  };
  readonly admin: {
    backup(to?: string): Promise<unknown>;
    check(full?: boolean): Promise<unknown>;
    checkpoint(mode?: string): Promise<unknown>;
    createKey(scope: string, options?: { tier?: string; name?: string }): Promise<unknown>;
    listKeys(): Promise<unknown>;
    revokeKey(name: string): Promise<unknown>;
  };
  close(): Promise<void>;
  shutdown(): Promise<void>;
  /** A refused event stream (a bad or revoked key over HTTP), emitted only when listened for. */
  on(event: 'error', listener: (error: LitebridgeError) => void): this;
  on(event: string, listener: (event: LitebridgeEvent) => void): this;
}

export function spawnClient(options?: SpawnOptions): Client;
export function connect(url?: string, options?: ConnectOptions): Client;

export class LitebridgeError extends Error {
  readonly code: number;
  readonly kind: string;
  readonly recoverable: boolean;
  /** Milliseconds, when the server said when to try again. */
  readonly retryAfter?: number;
  readonly data: Record<string, unknown>;
}
export class SqlError extends LitebridgeError {}
export class TimeoutError extends LitebridgeError {}
export class OverloadedError extends LitebridgeError {}
export class BusyError extends LitebridgeError {}
export class ReadOnlyError extends LitebridgeError {}
export class CorruptError extends LitebridgeError {}
export class UnavailableError extends LitebridgeError {}
export class InvalidArgumentError extends LitebridgeError {}
export class ConfigError extends LitebridgeError {}
export class IoError extends LitebridgeError {}
export class CheckFailedError extends LitebridgeError {}
export class ForbiddenError extends LitebridgeError {}
export class InternalError extends LitebridgeError {}
export class CircuitOpenError extends LitebridgeError {}
export class UnauthorizedError extends LitebridgeError {}
export class QuotaExceededError extends LitebridgeError {}
export class TooLargeError extends LitebridgeError {}
export class UnsupportedError extends LitebridgeError {}
export class CancelledError extends LitebridgeError {}
export class ProtocolError extends LitebridgeError {}
/**
 * The connection to litebridge failed; recoverable only when the request
 * certainly never reached it. Also (kind `unavailable`, not recoverable): a
 * request fetch refused to make, a redirect (never followed: not run), and
 * a read answered with something that is not litebridge's reply.
 */
export class ConnectionError extends LitebridgeError {}
/**
 * The request may or may not have run (the server's `outcome_unknown`, -32013,
 * a connection to litebridge that failed with it in flight, or, for a write
 * or a worker call, no answer within the client's deadline or an HTTP answer
 * that is not litebridge's JSON-RPC reply to it): not to be sent again
 * blindly unless it is safe to run twice.
 */
export class OutcomeUnknownError extends ConnectionError {}
export class WorkerError extends LitebridgeError {
  readonly type?: string;
  readonly traceback?: string;
}
export class WorkerCrashedError extends LitebridgeError {}
export function fromWire(error: { code?: number; message?: string; data?: unknown }): LitebridgeError;
export function isRecoverableError(e: unknown): boolean;
