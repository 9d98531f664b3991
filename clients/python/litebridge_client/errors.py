"""One exception class per litebridge error kind, chosen by the reply's
``data.kind`` (falling back to its code). Each carries ``code``, ``kind``,
``recoverable``, ``retry_after`` (seconds) and ``data``; messages are the
server's, which never quote SQL text or values."""

import builtins
import math


class LitebridgeError(Exception):
    def __init__(self, message, code=0, kind="internal", recoverable=False, retry_after=None, data=None):
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.recoverable = recoverable
        self.retry_after = retry_after
        self.data = data or {}


class SqlError(LitebridgeError): pass
class TimeoutError(LitebridgeError, builtins.TimeoutError): pass  # noqa: A001 - also the built-in
class OverloadedError(LitebridgeError): pass
class BusyError(LitebridgeError): pass
class ReadOnlyError(LitebridgeError): pass
class CorruptError(LitebridgeError): pass
class UnavailableError(LitebridgeError): pass
class InvalidArgumentError(LitebridgeError): pass
class ConfigError(LitebridgeError): pass
class IoError(LitebridgeError): pass
class CheckFailedError(LitebridgeError): pass
class ForbiddenError(LitebridgeError): pass
class InternalError(LitebridgeError): pass
class CircuitOpenError(LitebridgeError): pass
class UnauthorizedError(LitebridgeError): pass
class QuotaExceededError(LitebridgeError): pass
class TooLargeError(LitebridgeError): pass
class UnsupportedError(LitebridgeError): pass
class CancelledError(LitebridgeError): pass
class ProtocolError(LitebridgeError): pass
class ConnectionError(LitebridgeError): pass  # noqa: A001 - the client's, not the built-in
class WorkerCrashedError(LitebridgeError): pass


class OutcomeUnknownError(ConnectionError):
    """The request may or may not have run: a connection failed with it in
    flight, so it must not be sent again blindly unless it is safe to run
    twice (``recoverable`` is False, unless the server knows it is).

    Raised for the server's ``outcome_unknown`` (-32013: litebridge lost its
    own link to the database or NATS, or a COMMIT's log sync failed), and by
    the client itself when its connection to litebridge failed after a
    write or a worker call may have reached it: the ``litebridge stdio``
    child died with the request pending, an HTTP connection was reset,
    closed or timed out after the request was sent, no answer came within
    the client's deadline, or the HTTP answer was not litebridge's JSON-RPC
    reply to the request (a proxy's 502 or 504, even with a JSON body of its
    own; a 204; a reply to another id; an answer past
    ``max_response_bytes``). A subclass of ``ConnectionError`` so that code
    checking for a failed connection still sees those; a connection that
    certainly never carried the request (refused, unknown host) is a plain
    ``ConnectionError`` of kind ``unavailable``, recoverable, and so is a
    request refused before it was sent or answered with a redirect (never
    followed; not recoverable: it would fail the same way). A read answered
    with something that is not litebridge's reply is a plain
    ``ConnectionError``: it changed nothing."""


class WorkerError(LitebridgeError):
    """An exception raised in a worker: its Python ``type`` and ``traceback``."""

    @property
    def type(self):
        return self.data.get("type")

    @property
    def traceback(self):
        return self.data.get("traceback")


_BY_KIND = {
    "sql": SqlError, "timeout": TimeoutError, "overloaded": OverloadedError, "busy": BusyError,
    "read_only": ReadOnlyError, "corrupt": CorruptError, "unavailable": UnavailableError,
    "invalid_argument": InvalidArgumentError, "invalid_params": InvalidArgumentError,
    "config": ConfigError, "io": IoError, "check_failed": CheckFailedError, "forbidden": ForbiddenError,
    "internal": InternalError, "circuit_open": CircuitOpenError, "worker_error": WorkerError,
    "worker_crashed": WorkerCrashedError, "unauthorized": UnauthorizedError,
    "quota_exceeded": QuotaExceededError, "too_large": TooLargeError, "unsupported": UnsupportedError,
    "cancelled": CancelledError, "outcome_unknown": OutcomeUnknownError,
}

_BY_CODE = {
    -32700: "parse_error", -32600: "invalid_request", -32601: "method_not_found", -32602: "invalid_params",
    -32603: "internal", -32800: "cancelled", -32000: "sql", -32001: "timeout", -32002: "overloaded",
    -32003: "circuit_open", -32004: "worker_error", -32005: "worker_crashed", -32006: "unauthorized",
    -32007: "forbidden", -32008: "quota_exceeded", -32009: "read_only", -32010: "unavailable",
    -32011: "too_large", -32012: "unsupported", -32013: "outcome_unknown",
}


# The longest wait a ``retry_after`` may ask for (seconds), as the ``Retry-After`` header's.
_MAX_RETRY_AFTER = 300.0


def from_wire(error):
    """The exception for a JSON-RPC error object (whatever its members hold)."""
    if not isinstance(error, dict):
        error = {}
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    code = error.get("code")
    code = code if type(code) is int else 0
    kind = data.get("kind") if isinstance(data.get("kind"), str) else _BY_CODE.get(code, "internal")
    cls = _BY_KIND.get(kind, ProtocolError if code in (-32700, -32600, -32601) else LitebridgeError)
    retry = data.get("retry_after_ms")
    if type(retry) in (int, float) and math.isfinite(retry):
        retry = min(max(retry / 1000.0, 0.0), _MAX_RETRY_AFTER)
    else:
        retry = None
    message = error.get("message")
    return cls(
        message if isinstance(message, str) else "unknown error", code=code, kind=kind,
        recoverable=data.get("recoverable") is True, retry_after=retry, data=data,
    )
