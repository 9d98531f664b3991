"""HTTP (``POST /rpc`` and ``GET /events``) for both clients, and what the
transports share (the request line, the binary). The child ``litebridge
stdio`` is ``stdio`` (synchronous) and ``astdio`` (asyncio)."""

import asyncio
import base64
import concurrent.futures
import errno
import http.client
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request

try:
    import ssl
except ImportError:  # a Python built without it: no HTTPS
    ssl = None

from .errors import ConnectionError, OutcomeUnknownError

_EVENTS_SILENCE = 30.0


# Why a connection was never made, so the request certainly never reached
# the server: urllib wraps in URLError what connecting (and sending) raised;
# what reading the answer raised comes through as it is. The connections of
# ``_opener()`` mark what failed while connecting (a refusal, a timeout, a TLS
# handshake) as ``_NotConnected``. Anything else (a timeout or a reset while
# sending or after) may have let the request through.
_NEVER_CONNECTED = (ConnectionRefusedError, socket.gaierror, FileNotFoundError)
_UNREACHABLE = (errno.ENETUNREACH, errno.EHOSTUNREACH)
# The header on litebridge's own 503s for requests it did not run.
_NOT_RUN = "litebridge-not-run"


class _NotConnected(OSError):
    """An error while connecting: no byte of the request was sent.
    ``permanent`` for a TLS failure (a certificate refused), which trying
    again cannot mend."""

    permanent = False


def _connecting(base):
    """``base`` (an ``http.client`` connection) whose connect errors are ``_NotConnected``."""

    class Connection(base):
        def connect(self):
            try:
                super().connect()
            except OSError as e:
                failed = _NotConnected(e.errno, "%s (%s)" % (e.strerror or e, type(e).__name__))
                failed.permanent = ssl is not None and isinstance(e, ssl.SSLError)
                raise failed from e

    return Connection


_HTTPConnection = _connecting(http.client.HTTPConnection)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


_HANDLERS = [_HTTPHandler]
if hasattr(http.client, "HTTPSConnection"):
    _HTTPSConnection = _connecting(http.client.HTTPSConnection)

    class _HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            args = {"context": self._context}
            if hasattr(self, "_check_hostname"):  # Python < 3.12
                args["check_hostname"] = self._check_hostname
            return self.do_open(_HTTPSConnection, req, **args)

    _HANDLERS.append(_HTTPSHandler)

_OPENER = None


def _opener():
    """The opener of ``POST /rpc``, built on first use (as ``urlopen``'s is:
    the proxy settings of the environment are read then)."""
    global _OPENER
    if _OPENER is None:
        _OPENER = urllib.request.build_opener(*_HANDLERS)
    return _OPENER


def _never_connected(e):
    """Whether ``e`` (from ``_opener()``) says the connection was never made."""
    if not isinstance(e, urllib.error.URLError) or isinstance(e, urllib.error.HTTPError):
        return False
    reason = e.reason
    return isinstance(reason, (_NotConnected,) + _NEVER_CONNECTED) or (
        isinstance(reason, OSError) and reason.errno in _UNREACHABLE)


def _status_error(what, status, headers, may_have_run=True, said=None):
    """The error for an HTTP answer without a JSON-RPC reply (a proxy's, or
    litebridge's standby's ``{"error": said}``): recoverable when it was not
    run (below); otherwise the request may or may not have run
    (``may_have_run``: a request that runs something)."""
    answered = "%s answered %d%s" % (what, status, ": %s" % said[:200] if said else " without litebridge's JSON")
    # A 429 (a rate limit refuses before passing a request on), or a 503 of
    # litebridge's own: not run. A proxy's 503 may come after the request
    # reached litebridge (Envoy's "reset before headers", a platform's request
    # timeout), so it is not.
    if status == 429 or (status == 503 and headers is not None and headers.get(_NOT_RUN) is not None):
        return ConnectionError("%s (the request was not run)" % answered, kind="unavailable", recoverable=True,
                               retry_after=_retry_after(headers))
    if not may_have_run:
        return ConnectionError(answered, kind="unavailable")
    return OutcomeUnknownError("%s: the request may or may not have run" % answered, kind="outcome_unknown")


def _http_error(e, what):
    """The litebridge error an HTTP error response carries, else a ConnectionError
    (``GET /events`` runs nothing, so it is never an ``OutcomeUnknownError``)."""
    from .errors import from_wire
    said = None
    try:
        error = json.loads(e.read())["error"]
        if isinstance(error, dict):
            return from_wire(error)
        said = error if isinstance(error, str) else None
    except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
        pass
    return _status_error(what, e.code, e.headers, may_have_run=False, said=said)


def _retry_after(headers):
    """Seconds from a ``Retry-After`` header, if any."""
    try:
        return min(max(float(headers.get("Retry-After", "")), 0.0), 300.0)
    except (AttributeError, TypeError, ValueError):
        return None


_NO_JSON = object()


def _why(e):
    """An exception as a few words: its type, and its message if it has one."""
    if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException):
        e = e.reason
    text = str(e)
    return "%s: %s" % (type(e).__name__, text) if text else type(e).__name__


class HttpTransport:
    """``POST /rpc`` with a bearer key, one request per call."""

    def __init__(self, url, key=None, timeout=None):
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="litebridge-http")
        self.lock = threading.Lock()
        self.streams = set()
        self.closing = False

    def headers(self, extra=None):
        h = dict(extra or {})
        if self.key:
            h["Authorization"] = "Bearer %s" % self.key
        return h

    def _post(self, body):
        req = urllib.request.Request(
            self.url + "/rpc", data=body, method="POST",
            headers=self.headers({"Content-Type": "application/json"}),
        )
        status = headers = None
        try:
            with _opener().open(req, timeout=self.timeout) as res:
                text = res.read()
        except urllib.error.HTTPError as e:
            status, headers = e.code, e.headers
            try:
                text = e.read()
            except (OSError, http.client.HTTPException) as x:
                raise OutcomeUnknownError(
                    "%s/rpc answered %d, then the connection failed (%s): the request may or may not have run"
                    % (self.url, status, _why(x)), kind="outcome_unknown") from x
        except (OSError, http.client.HTTPException) as e:
            if _never_connected(e):
                # Not sent; worth trying again unless TLS refused the server.
                raise ConnectionError("cannot reach %s: %s" % (self.url, _why(e.reason)), kind="unavailable",
                                      recoverable=not getattr(e.reason, "permanent", False)) from e
            if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, OSError):
                # Refused before sending (an unknown URL scheme): trying again cannot help.
                raise ConnectionError("cannot send to %s: %s" % (self.url, e.reason), kind="unavailable") from e
            # Reset, closed or timed out once connected: the request may have been
            # read, and run, by the time the connection failed.
            raise OutcomeUnknownError(
                "the connection to %s failed with the request sent or on its way (%s): it may or may not "
                "have run" % (self.url, _why(e)), kind="outcome_unknown") from e
        try:
            reply = decode_line(text)
        except ValueError:
            reply = _NO_JSON
        if status is not None and not (
                isinstance(reply, list) or (isinstance(reply, dict) and isinstance(reply.get("error"), dict))):
            # Not a JSON-RPC reply: a proxy's answer, or the standby's.
            said = reply.get("error") if isinstance(reply, dict) and isinstance(reply.get("error"), str) else None
            raise _status_error("%s/rpc" % self.url, status, headers, said=said)
        if reply is _NO_JSON:
            raise OutcomeUnknownError("%s/rpc answered with no JSON: %r; the request may or may not have run"
                                      % (self.url, text[:200]), kind="outcome_unknown")
        return reply

    def call(self, obj):
        """Sends ``obj`` and returns its reply (a dict), in this thread."""
        return self._post(encode_line(obj))

    async def acall(self, obj):
        """``call`` for asyncio, in a thread of the transport's."""
        body = encode_line(obj)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._post, body)

    def cancel(self, rid):
        pass  # an HTTP request cannot be withdrawn once sent

    def subscribe(self, stream):
        """Feeds ``stream`` from ``GET /events`` in a thread of its own."""
        with self.lock:
            if self.closing:
                stream.end()
                return
            self.streams.add(stream)
        threading.Thread(target=self._pump, args=(stream,), daemon=True, name="litebridge-events").start()

    def unsubscribe(self, stream):
        with self.lock:
            self.streams.discard(stream)

    def _pump(self, stream):
        """Reads the stream, reconnecting with ``Last-Event-ID`` after a
        pause (1 s, doubling to 30 s, or the server's ``Retry-After``) until
        ``stream`` ends; a refusal for good (401, 403) ends it with its error."""
        last_id, pause = None, 1.0
        while not stream.closed:
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            req = urllib.request.Request(self.url + "/events", headers=self.headers(headers))
            wait = None
            try:
                # The server writes a comment every 15 s: 30 s of silence is a lost connection.
                with urllib.request.urlopen(req, timeout=_EVENTS_SILENCE) as res:
                    pause = 1.0
                    last_id = self._read_events(res, stream, last_id)
            except urllib.error.HTTPError as e:
                error = _http_error(e, "GET /events")
                if e.code in (401, 403):
                    stream.end(error)
                    return
                wait = _retry_after(e.headers)
            except (OSError, http.client.HTTPException):
                pass
            if stream.wait_closed(wait if wait is not None else pause):
                return
            pause = min(pause * 2, 30.0)

    @staticmethod
    def _read_events(res, stream, last_id):
        """Hands the events of an open ``GET /events`` to ``stream``; the
        last event id seen."""
        data, event_id = "", None
        for raw in res:
            if stream.closed:
                break
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                data += line[5:].lstrip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line == "" and data:
                if event_id:
                    last_id = event_id
                try:
                    stream.put(json.loads(data))
                except ValueError:
                    pass
                data, event_id = "", None
        return last_id

    def close(self):
        with self.lock:
            self.closing = True
            streams, self.streams = self.streams, set()
        for stream in streams:
            stream.end()
        self.executor.shutdown(wait=False)

    async def aclose(self):
        self.close()


def _blob(v):
    """What the encoder cannot write itself: bytes, as {"$blob": base64}."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$blob": base64.b64encode(bytes(v)).decode("ascii")}
    raise TypeError("a %s is not a value litebridge takes (JSON values and bytes)" % type(v).__name__)


# Non-ASCII written as UTF-8 (shorter), and encoded strictly: a lone
# surrogate is refused here (litebridge's parser refuses it, and could not
# say which request it was).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_blob)
_INF = float("inf")
_I64 = (-(1 << 63), (1 << 63) - 1)
# A run of 19 digits or more: maybe an integer past 64 bits.
_LONG = re.compile(r"\d{19,}")
# The longest line `litebridge stdio` reads (its MAX_LINE), newline aside.
MAX_LINE = 64 * 1024 * 1024


def _reals(v, depth=0):
    """Infinities as {"$real": "Infinity"} (JSON has no word for them)."""
    if depth > 200:
        raise ValueError("the value is nested more than 200 deep, or contains itself")
    if isinstance(v, float) and v in (_INF, -_INF):
        return {"$real": "Infinity" if v > 0 else "-Infinity"}
    if isinstance(v, dict):
        return {k: _reals(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_reals(x, depth + 1) for x in v]
    return v


def _past_i64(v, depth=0):
    """The first integer of ``v`` outside SQLite's 64 bits, if any."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v if not _I64[0] <= v <= _I64[1] else None
    if depth < 200 and isinstance(v, (dict, list, tuple)):
        for x in (v.values() if isinstance(v, dict) else v):
            found = _past_i64(x, depth + 1)
            if found is not None:
                return found
    return None


def _invalid(message):
    from .errors import InvalidArgumentError
    return InvalidArgumentError(message, kind="invalid_argument")


def encode_line(obj, limit=None):
    """A request as a line of strict JSON in UTF-8: bytes as blobs,
    infinities as reals. Refused here, with ``InvalidArgumentError``, what
    litebridge could not read or would store as something else (NaN, a
    lone surrogate, an integer past 64 bits, a value that contains itself),
    and with ``TooLargeError`` a line over ``limit`` bytes: litebridge would
    answer such a line without its id, so nobody would get the answer."""
    try:
        text = _ENCODER.encode(obj)
    except ValueError:
        try:
            text = _ENCODER.encode(_reals(obj))  # the rare request with an infinity
        except (ValueError, RecursionError) as e:
            why = str(e)
            if "nan" in why.lower() or "float" in why.lower():
                why = "a value is NaN, which JSON cannot carry (SQLite stores it as NULL: pass None)"
            raise _invalid("cannot send the request: %s" % why) from None
    except RecursionError:
        raise _invalid("cannot send the request: a value is nested too deep") from None
    if _LONG.search(text):
        if _past_i64(obj) is not None:
            raise _invalid("an integer is past SQLite's 64 bits (-2**63 to 2**63-1): pass it as text or a float")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid("a string holds a lone surrogate (half of a UTF-16 pair), which is not Unicode "
                       "text and JSON cannot carry") from None
    if limit is not None and len(data) > limit:
        from .errors import TooLargeError
        raise TooLargeError("the request is %d bytes; litebridge stdio reads lines of %d bytes at most"
                            % (len(data), limit), kind="too_large")
    return data + b"\n"


def _revive(d):
    """{"$blob"} as bytes and {"$real"} as float, wherever they are."""
    if len(d) == 1:
        if isinstance(d.get("$blob"), str):
            try:
                return base64.b64decode(d["$blob"], validate=True)
            except ValueError:
                return d
        if isinstance(d.get("$real"), str):
            try:
                return float(d["$real"])
            except ValueError:
                return d
    return d


_DECODER = json.JSONDecoder()
_REVIVER = json.JSONDecoder(object_hook=_revive)


def decode_line(line):
    """A reply (UTF-8 bytes); values decoded, and only a line with a "$...
    key anywhere pays for looking at every object."""
    return (_REVIVER if b'"$' in line else _DECODER).decode(line.decode("utf-8"))


def pending_key(rid):
    """A request id as a key of the requests waiting (ids are ours: ints)."""
    return rid if type(rid) in (int, str) else json.dumps(rid)


def find_binary(explicit=None):
    """``explicit``, else ``LITEBRIDGE_CLIENT_BIN``, else ``litebridge`` on PATH."""
    return explicit or os.environ.get("LITEBRIDGE_CLIENT_BIN") or "litebridge"
