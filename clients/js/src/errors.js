// One error class per litebridge error kind, chosen by the reply's
// `data.kind` (falling back to its code). Each carries the code, the kind,
// whether trying again later can help, when (`retryAfter`, ms) and the
// reply's `data`. Messages are the server's, which name parameters and
// limits but never quote SQL text or values.

export class LitebridgeError extends Error {
  constructor(message, { code = 0, kind = 'internal', recoverable = false, retryAfter, data } = {}) {
    super(message);
    this.name = new.target.name;
    this.code = code;
    this.kind = kind;
    this.recoverable = recoverable;
    this.retryAfter = retryAfter;
    this.data = data ?? {};
  }
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
/** The request itself was malformed (parse error, invalid request, unknown method). */
export class ProtocolError extends LitebridgeError {}
/**
 * The connection to litebridge failed: the child exited, or HTTP failed.
 * Recoverable (kind `unavailable`) only when the request certainly never
 * reached litebridge (connection refused, unknown host, the child gone
 * before the line was written). A request that never left the process
 * (fetch refused to make it: a header or URL it cannot carry) and a redirect
 * (never followed: the server did not run the request) are of kind
 * `unavailable` and not recoverable: the same request would fail the same way.
 * A read answered with something that is not litebridge's reply is one too;
 * anything that may have run is an `OutcomeUnknownError`.
 */
export class ConnectionError extends LitebridgeError {}

/**
 * The request may or may not have run: a connection failed with it in
 * flight, so it must not be sent again blindly unless it is safe to run
 * twice (`recoverable` is false, unless the server knows it is).
 *
 * The server's `outcome_unknown` (-32013: litebridge lost its own link to
 * the database or NATS, or a COMMIT's log sync failed), and the client's own
 * when its connection to litebridge failed after a write or a worker call
 * may have reached it: the `litebridge stdio` child died with the request
 * pending, an HTTP connection was reset or closed after the request was sent,
 * no answer came within the client's deadline, or the HTTP answer was not
 * litebridge's JSON-RPC reply to the request (a proxy's 502 or 504, even
 * with a JSON body of its own; a 204; a reply to another id; a batch reply
 * without an answer for it; an answer past `maxResponseBytes`). A subclass
 * of `ConnectionError`, so that `instanceof ConnectionError` still holds for
 * those.
 */
export class OutcomeUnknownError extends ConnectionError {}

/** An exception raised in a worker: its Python `type` and `traceback`. */
export class WorkerError extends LitebridgeError {
  get type() {
    return this.data.type;
  }
  get traceback() {
    return this.data.traceback;
  }
}

/** A worker died with the call in flight: its `pid` and `exit` (its stderr stays in the server's log). */
export class WorkerCrashedError extends LitebridgeError {}

const BY_KIND = {
  sql: SqlError,
  timeout: TimeoutError,
  overloaded: OverloadedError,
  busy: BusyError,
  read_only: ReadOnlyError,
  corrupt: CorruptError,
  unavailable: UnavailableError,
  invalid_argument: InvalidArgumentError,
  invalid_params: InvalidArgumentError,
  config: ConfigError,
  io: IoError,
  check_failed: CheckFailedError,
  forbidden: ForbiddenError,
  internal: InternalError,
  circuit_open: CircuitOpenError,
  worker_error: WorkerError,
  worker_crashed: WorkerCrashedError,
  unauthorized: UnauthorizedError,
  quota_exceeded: QuotaExceededError,
  too_large: TooLargeError,
  unsupported: UnsupportedError,
  cancelled: CancelledError,
  outcome_unknown: OutcomeUnknownError,
};

const BY_CODE = {
  [-32700]: ['parse_error', ProtocolError],
  [-32600]: ['invalid_request', ProtocolError],
  [-32601]: ['method_not_found', ProtocolError],
  [-32602]: ['invalid_params', InvalidArgumentError],
  [-32603]: ['internal', InternalError],
  [-32800]: ['cancelled', CancelledError],
  [-32000]: ['sql', SqlError],
  [-32001]: ['timeout', TimeoutError],
  [-32002]: ['overloaded', OverloadedError],
  [-32003]: ['circuit_open', CircuitOpenError],
  [-32004]: ['worker_error', WorkerError],
  [-32005]: ['worker_crashed', WorkerCrashedError],
  [-32006]: ['unauthorized', UnauthorizedError],
  [-32007]: ['forbidden', ForbiddenError],
  [-32008]: ['quota_exceeded', QuotaExceededError],
  [-32009]: ['read_only', ReadOnlyError],
  [-32010]: ['unavailable', UnavailableError],
  [-32011]: ['too_large', TooLargeError],
  [-32012]: ['unsupported', UnsupportedError],
  [-32013]: ['outcome_unknown', OutcomeUnknownError],
};

/** The longest wait a `retryAfter` may ask for (ms), as the `Retry-After` header's. */
const MAX_RETRY_AFTER = 300_000;

/** The error for a JSON-RPC error object. */
export function fromWire(error) {
  const e = error !== null && typeof error === 'object' ? error : {};
  const data = e.data !== null && typeof e.data === 'object' && !Array.isArray(e.data) ? e.data : {};
  const code = Number.isSafeInteger(e.code) ? e.code : 0;
  const byCode = Object.hasOwn(BY_CODE, code) ? BY_CODE[code] : undefined;
  const kind = typeof data.kind === 'string' ? data.kind : byCode?.[0] ?? 'internal';
  // Own properties only: a kind named `constructor` or `__proto__` is no class.
  const Class = (Object.hasOwn(BY_KIND, kind) ? BY_KIND[kind] : undefined) ?? byCode?.[1] ?? LitebridgeError;
  const after = data.retry_after_ms;
  return new Class(typeof e.message === 'string' ? e.message : 'unknown error', {
    code,
    kind,
    recoverable: data.recoverable === true,
    retryAfter:
      typeof after === 'number' && Number.isFinite(after) ? Math.min(Math.max(after, 0), MAX_RETRY_AFTER) : undefined,
    data,
  });
}

/** Whether trying the same thing again later can succeed. */
export function isRecoverableError(e) {
  return e instanceof LitebridgeError && e.recoverable;
}
