"""HTTP (``POST /rpc`` and ``GET /events``) for both clients, and what the
transports share (the request line, the binary). The child ``litebridge
stdio`` is ``stdio`` (synchronous) and ``astdio`` (asyncio).

Over HTTP a redirect is never followed (a 3xx is an error: the request was
not run); the environment's proxy settings (``HTTP_PROXY``, ``HTTPS_PROXY``,
``NO_PROXY``, as urllib reads them) are used for remote URLs only, never for
one of this machine (``_is_loopback``: 127.0.0.0/8 in any form, ::1,
::ffff:127.x.y.z, 0.0.0.0, ::, localhost); answers are read up to
``max_response_bytes`` and never inflated; and every call has a deadline
(its own ``timeout`` and ``DEADLINE_MARGIN``, else the client's
``deadline``), which bounds connecting (name lookup included) and past
which its connection is shut."""

import asyncio
import base64
import concurrent.futures
import errno
import http.client
import ipaddress
import json
import math
import os
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import ssl
except ImportError:  # a Python built without it: no HTTPS
    ssl = None

from .errors import ConnectionError, InvalidArgumentError, OutcomeUnknownError, TooLargeError
from .errors import TimeoutError as _TimeoutError

_EVENTS_SILENCE = 30.0

# A call's deadline on the client when it has no timeout of its own (seconds;
# the ``deadline`` option of ``connect``).
DEFAULT_DEADLINE = 600.0
# How long past a call's own timeout the client waits for its answer (seconds).
DEADLINE_MARGIN = 5.0
# The largest answer read (bytes; ``max_response_bytes``): twice the server's
# default ``db.max_result_bytes`` (64 MiB), room for the JSON of the largest
# rows (a blob is a third longer in base64).
MAX_RESPONSE_BYTES = 128 * 1024 * 1024
# The largest request body litebridge reads (16 MiB): a larger one is refused unsent.
MAX_BODY = 16 * 1024 * 1024
# The longest body of an HTTP error answer read (litebridge's are short).
_MAX_ERROR_BODY = 1024 * 1024
# The longest line, and event, of ``GET /events`` kept (litebridge's are far shorter).
_MAX_EVENT = 1024 * 1024
# An event id sent back as ``Last-Event-ID``: printable ASCII, as a header can carry it.
_EVENT_ID = re.compile(r"[\x20-\x7e]{1,1024}\Z")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class _EventLines:
    """Splits an event stream's bytes into lines as the format ends them:
    at CRLF, LF or a lone CR, a CRLF split across two reads ending one line;
    a byte order mark first in the stream is dropped. A line longer than
    ``_MAX_EVENT`` is given as one None (and its bytes are not kept). A
    line's pieces are kept apart until it ends: joined at each read, a line
    sent a byte at a time cost time in the square of its length (review
    218)."""

    def __init__(self):
        self.pieces, self.held = [], 0  # the line's bytes so far, and how many
        self.skipping = False  # the rest of a line too long to keep
        self.after_cr = False  # the last read ended with CR: a LF first in the next ends no line
        self.first = True

    def feed(self, chunk):
        """The lines ``chunk`` completes."""
        if self.first and chunk:
            if self.held + len(chunk) < 3 and b"\xef\xbb\xbf".startswith(b"".join(self.pieces) + chunk):
                self.pieces.append(chunk)  # a byte order mark's start: wait for the rest
                self.held += len(chunk)
                return []
            chunk = b"".join(self.pieces) + chunk
            self.pieces, self.held, self.first = [], 0, False
            if chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
        start = 1 if self.after_cr and chunk[:1] == b"\n" else 0
        self.after_cr = chunk.endswith(b"\r")
        lines = []
        for end in _LINE_END.finditer(chunk, start):
            line, start = chunk[start:end.start()], end.end()
            if self.skipping:
                self.skipping = False
                continue
            if self.pieces:
                self.pieces.append(line)
                line = b"".join(self.pieces)
                self.pieces, self.held = [], 0
            lines.append(line)
        if not self.skipping and start < len(chunk):
            self.pieces.append(chunk[start:])
            self.held += len(chunk) - start
            if self.held > _MAX_EVENT:
                self.pieces, self.held, self.skipping = [], 0, True
                lines.append(None)
        return lines

# What a key may hold: printable ASCII (litebridge's are ``lb_`` and base64url).
_KEY = re.compile(r"[\x20-\x7e]*\Z")
_POST_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}

# The methods that change nothing. An answer to one of them that is not
# litebridge's reply is a plain error (nothing can have happened); any other
# request may have run, and is then an ``OutcomeUnknownError``.
_READS = frozenset({
    "sql.query", "sql.schema", "bridge.stats", "bridge.health", "state.load", "state.list", "memory.get",
    "memory.list", "cache.get", "cache.stats", "pool.health", "pool.stats", "persistence.stats", "rpc.discover",
})


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

# The HTTP call this thread is making (its ``_Deadline``), for the connection it opens.
_CALL = threading.local()


class _NotConnected(OSError):
    """An error while connecting: no byte of the request was sent.
    ``permanent`` for a TLS failure (a certificate refused), which trying
    again cannot mend."""

    permanent = False


def _shut(sock):
    """Shuts ``sock`` down, waking whoever reads it (the plain socket's
    shutdown, also under TLS: nothing of the TLS object is touched)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError, TypeError):
        pass


class _Deadline:
    """One HTTP call's deadline (``at``, monotonic) and its connection's socket."""

    __slots__ = ("at", "sock", "expired", "cancelled")

    def __init__(self, at):
        self.at = at
        self.sock = None
        self.expired = False
        self.cancelled = False

    def passed(self):
        """Whether the deadline has come: set by the watchdog, or due by the
        clock (a socket timeout as long as the deadline may fail the read
        before the watchdog wakes, and the failure is the deadline's)."""
        return self.expired or time.monotonic() >= self.at


class _Watchdog:
    """Shuts the connection of every HTTP call still running at its
    deadline, so that the thread reading it wakes at once: a socket timeout
    bounds each read, not the call (a server trickling its answer would hold
    it for ever). One daemon thread for every client, started on first use,
    waking at the earliest deadline; a call whose deadline is earlier than
    that is the only one that wakes it sooner."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._calls = set()
        self._wake = None  # when the thread wakes next; None: when told
        self._thread = None

    def start(self, seconds):
        deadline = _Deadline(time.monotonic() + seconds)
        with self._cond:
            self._calls.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="litebridge-deadlines", daemon=True)
                self._thread.start()
            elif self._wake is None or deadline.at < self._wake:
                self._cond.notify()
        return deadline

    def end(self, deadline):
        with self._cond:
            self._calls.discard(deadline)

    def attach(self, deadline, sock):
        """``sock`` is ``deadline``'s call's connection (shut now if it is late)."""
        with self._cond:
            deadline.sock = sock
            if deadline.expired or deadline.cancelled:
                _shut(sock)

    def cancel(self, deadline):
        """The call is withdrawn: its connection is shut."""
        with self._cond:
            deadline.cancelled = True
            if deadline.sock is not None:
                _shut(deadline.sock)

    def _run(self):
        with self._cond:
            while True:
                now = time.monotonic()
                wake = None
                for deadline in list(self._calls):
                    if deadline.at <= now:
                        deadline.expired = True
                        self._calls.discard(deadline)
                        if deadline.sock is not None:
                            _shut(deadline.sock)
                    elif wake is None or deadline.at < wake:
                        wake = deadline.at
                self._wake = wake
                self._cond.wait(None if wake is None else wake - now)


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    # A forked child has none of its parent's threads: its own watchdog, started on its first call.
    os.register_at_fork(after_in_child=_WATCHDOG.__init__)


def _ip(host):
    """``host`` as an IP address (IPv4 in any form inet_aton reads), else None."""
    host = host.split("%")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # the legacy forms of IPv4 (127.1, 0x7f000001, 2130706433) that getaddrinfo reads too
        return ipaddress.ip_address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _numeric(host):
    return isinstance(host, str) and _ip(host) is not None


def _resolve(host, port, deadline):
    """``getaddrinfo`` for a connection, within what is left of ``deadline``:
    a name is looked up in a helper thread (a resolver may take its time,
    and cannot be interrupted), waited on until the deadline; an address
    (the usual case) at once."""
    if _numeric(host):
        try:
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            pass
    done, result = threading.Event(), []

    def lookup():
        try:
            result.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except BaseException as e:  # noqa: B036 - raised in the caller's thread
            result.append(e)
        done.set()

    threading.Thread(target=lookup, name="litebridge-resolve", daemon=True).start()
    if not done.wait(max(deadline.at - time.monotonic(), 0)):
        raise socket.timeout(errno.ETIMEDOUT, "the name lookup of the host took longer than the deadline")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _create_connection(deadline, address, timeout=None, source_address=None, *args, **kwargs):
    """``socket.create_connection`` within ``deadline``: the name looked up
    (``_resolve``), then each address tried with the time then left; the
    socket keeps ``timeout`` for its reads."""
    host, port = address
    error = None
    for family, kind, proto, _, sockaddr in _resolve(host, port, deadline):
        left = deadline.at - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left if timeout is None else min(timeout, left))
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            sock.settimeout(timeout)
            return sock
        except OSError as e:
            sock.close()
            error = e
    if error is None or deadline.at <= time.monotonic():
        raise socket.timeout(errno.ETIMEDOUT, "no connection within the deadline")
    raise error


#: Interim answers (1xx) skipped before an answer's own, at most; and the
#: header lines of each, and their length (http.client's own bounds).
_MAX_INTERIM = 16
_MAX_HEADER_LINES = 100
_MAX_HEADER_LINE = 65536


class _Response(http.client.HTTPResponse):
    """An answer that skips interim ones (``103 Early Hints`` from a proxy
    or a CDN) as http.client skips ``100 Continue``: read as the answer,
    a 103 ended the call as a failure that may have run (a proxy's
    status). ``101`` (never asked for here) stays an answer."""

    def _read_status(self):
        for _ in range(_MAX_INTERIM):
            version, status, reason = super()._read_status()
            if not 101 < status < 200:
                return version, status, reason
            for _ in range(_MAX_HEADER_LINES + 1):
                line = self.fp.readline(_MAX_HEADER_LINE + 1)
                if len(line) > _MAX_HEADER_LINE:
                    raise http.client.LineTooLong("an interim answer's header line")
                if line in (b"\r\n", b"\n", b""):
                    break
            else:
                raise http.client.HTTPException("an interim answer with more than %d header lines"
                                                % _MAX_HEADER_LINES)
        raise http.client.HTTPException("more than %d interim (1xx) answers" % _MAX_INTERIM)


def _connecting(base):
    """``base`` (an ``http.client`` connection) whose connect errors are
    ``_NotConnected``, connecting (name lookup included) within what is left
    of the call's deadline, and whose socket the deadline's watchdog then
    knows."""

    class Connection(base):
        response_class = _Response

        def connect(self):
            deadline = getattr(_CALL, "deadline", None)
            if deadline is not None:
                left = deadline.at - time.monotonic()
                if left <= 0:
                    raise _NotConnected(errno.ETIMEDOUT, "no connection within the deadline (TimeoutError)")
                mine = self.timeout if isinstance(self.timeout, (int, float)) else None
                self.timeout = left if mine is None else min(mine, left)
                self._create_connection = lambda *a, **k: _create_connection(deadline, *a, **k)
            try:
                super().connect()
            except OSError as e:
                failed = _NotConnected(e.errno, "%s (%s)" % (e.strerror or e, type(e).__name__))
                failed.permanent = ssl is not None and isinstance(e, ssl.SSLError)
                raise failed from e
            if deadline is not None:
                _WATCHDOG.attach(deadline, self.sock)

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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follows a redirect: a 3xx comes back as an ``HTTPError``.
    urllib's own handler re-sends a POST answered 301, 302 or 303 as a GET,
    and any GET, to whatever host the answer names, with the key."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENERS = {}


def _opener(loopback=False):
    """The opener of ``POST /rpc`` and ``GET /events``, built on first use
    (as ``urlopen``'s is: the proxy settings of the environment are read
    then); for a loopback URL one that never uses a proxy."""
    opener = _OPENERS.get(loopback)
    if opener is None:
        handlers = _HANDLERS + [_NoRedirect]
        if loopback:
            handlers.append(urllib.request.ProxyHandler({}))
        opener = _OPENERS[loopback] = urllib.request.build_opener(*handlers)
    return opener


def _is_loopback(url):
    """Whether ``url``'s host is this machine: its loopback (127.0.0.0/8,
    ::1, localhost, and ::ffff:127.x.y.z), or the unspecified address
    (0.0.0.0, ::), which reaches it too. IPv4 in any form the system's
    resolver reads (``127.1``, ``0x7f000001``, ``2130706433``)."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    if ip is None:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


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


def _redirected(what, status):
    """A 3xx, never followed: the server that answered it did not run the request."""
    return ConnectionError(
        "%s answered %d, a redirect, which the client does not follow (it would send the key and the request "
        "elsewhere): the request was not run; connect to the URL it names if that is the server" % (what, status),
        kind="unavailable")


def _not_reply(what, status, ran, how):
    """An answer that is not litebridge's reply to the request."""
    answered = "%s answered %s %s" % (what, status, how)
    if ran:
        return OutcomeUnknownError(answered + "; the request may or may not have run", kind="outcome_unknown")
    return ConnectionError(answered, kind="unavailable")


def _late(what, seconds, ran, answering):
    """No (whole) answer within the deadline: a read timed out, anything else may have run."""
    waited = "%s gave no %s within %g s (the client's deadline: the call's timeout and %g s, else the " \
             "deadline option)" % (what, "whole answer" if answering else "answer", seconds, DEADLINE_MARGIN)
    if ran:
        return OutcomeUnknownError(waited + ": the request may or may not have run", kind="outcome_unknown")
    return _TimeoutError(waited, kind="timeout", recoverable=True)


def _too_long(what, status, limit, ran):
    """An answer over ``max_response_bytes``, not read."""
    if ran:
        return OutcomeUnknownError(
            "%s answered %d with more than %d bytes (the client's max_response_bytes), which were not read: "
            "the request may or may not have run" % (what, status, limit), kind="outcome_unknown")
    return TooLargeError("%s answered with more than %d bytes, the client's limit (max_response_bytes): ask for "
                         "less (max_rows, LIMIT) or raise it" % (what, limit), kind="too_large")


def _is_reply(reply, rid):
    """Whether ``reply`` is a JSON-RPC reply to request ``rid``: ``jsonrpc``
    "2.0", exactly one of ``result`` and ``error``, an error a dict with an
    integer ``code``, and the request's ``id`` (or null on an error: a
    request litebridge could not read, or refused whole)."""
    if type(reply) is not dict or reply.get("jsonrpc") != "2.0" or "id" not in reply:
        return False
    has_result = "result" in reply
    if has_result == ("error" in reply):
        return False
    got = reply["id"]
    if has_result:
        return type(got) is int and got == rid
    error = reply["error"]
    return type(error) is dict and type(error.get("code")) is int and (
        got is None or (type(got) is int and got == rid))


# The request errors of JSON-RPC, which litebridge sends without ``data``.
_REQUEST_ERRORS = frozenset({-32700, -32600, -32601, -32602})


def _is_own_error(reply, rid):
    """Whether ``reply``, with an HTTP error status, is litebridge's own
    error: a JSON-RPC error reply (``_is_reply``) whose ``data`` has
    litebridge's ``kind`` and ``recoverable``, or a request error (no
    ``data``). A gateway's JSON (``{"error": {"code": 504, ...}}``) is not,
    and the status says what happened."""
    if not _is_reply(reply, rid) or "error" not in reply:
        return False
    error = reply["error"]
    if "data" not in error:
        return error["code"] in _REQUEST_ERRORS
    data = error["data"]
    return type(data) is dict and isinstance(data.get("kind"), str) and type(data.get("recoverable")) is bool


class _TooLong(Exception):
    def __init__(self, limit):
        super().__init__(limit)
        self.limit = limit


class _Unasked(Exception):
    """An answer in an encoding it was not asked for (never inflated)."""


def _encoding(headers):
    """The answer's ``Content-Encoding`` if it is not identity."""
    encoding = headers.get("Content-Encoding") if headers is not None else None
    return encoding if encoding is not None and encoding.strip().lower() != "identity" else None


def _read_capped(res, limit):
    """The body of ``res``, ``limit`` bytes at most (``_TooLong`` past it)."""
    if res is None:
        return b""
    length = getattr(res, "length", None)
    if length is not None:
        if length > limit:
            raise _TooLong(limit)
        return res.read()
    chunks, size = [], 0
    while True:
        chunk = res.read(min(limit + 1 - size, 1 << 20))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            raise _TooLong(limit)


def _text_of(body):
    """A body as text, to quote it (bytes decoded, what is not UTF-8 replaced)."""
    return body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)


def _http_error(e, what, redact):
    """The litebridge error a GET's HTTP error answer carries, else a ConnectionError
    (``GET /events`` runs nothing, so it is never an ``OutcomeUnknownError``);
    what it said is passed through ``redact``."""
    from .errors import from_wire
    said = None
    try:
        reply = json.loads(_read_capped(getattr(e, "fp", None), _MAX_ERROR_BODY))
        if _is_own_error(reply, None):
            return from_wire(_blanked(reply, redact)["error"])
        error = reply.get("error") if isinstance(reply, dict) else None
        said = redact(error) if isinstance(error, str) else None
    except (ValueError, RecursionError, TypeError, OSError, http.client.HTTPException, _TooLong):
        pass
    return _status_error(what, e.code, e.headers, may_have_run=False, said=said)


def _blanked(reply, redact):
    """``reply`` with the key blanked in every string of its error (``data``
    too): litebridge never quotes it, but a server of its shape (a proxy's,
    a debugging one's) may quote the request's headers, and errors go to
    logs."""
    stack = [reply.get("error")]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in list(items):
            if isinstance(v, str):
                node[k] = redact(v)
            elif isinstance(v, (dict, list)):
                stack.append(v)
    return reply


def _retry_after(headers):
    """Seconds from a ``Retry-After`` header (0 to 300), if it has a number of them."""
    try:
        after = float(headers.get("Retry-After", ""))
    except (AttributeError, TypeError, ValueError):
        return None
    return min(max(after, 0.0), 300.0) if math.isfinite(after) else None


_NO_JSON = object()


def _why(e):
    """An exception as a few words: its type, and its message if it has one."""
    if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException):
        e = e.reason
    text = str(e)
    return "%s: %s" % (type(e).__name__, text) if text else type(e).__name__


def _checked_key(key):
    """The key to send: ``key`` stripped (a key file's newline); refused,
    never shown, if a header cannot carry it."""
    if key is None:
        return None
    if not isinstance(key, str):
        raise TypeError("connect(): the key must be a str")
    key = key.strip()
    if not _KEY.match(key):
        raise ValueError("connect(): the key holds a control character (a line break inside it?) or a character "
                         "that is not ASCII, which an HTTP header cannot carry; litebridge keys are printable "
                         "ASCII (the key is not shown here)")
    return key or None


def _checked_url(url):
    """``url`` stripped, without its trailing slashes; refused, never
    shown, if it holds an ``@`` (a user name or password), a query or
    fragment, a space or control character, or does not parse."""
    base = str(url).strip().rstrip("/")  # stripped as the key is (a file's newline)
    # An ``@`` anywhere, looked for in the raw text: a password holding ``/``,
    # ``?`` or ``#`` ends the authority early (``http://user:12?pw@host``
    # reads as host ``user``, port 12), and its URL would send the key there.
    if "@" in base:
        raise ValueError("connect(url): the URL holds a user name or password (user:password@host), which "
                         "messages would show; give the key with key= (the URL is not shown here)")
    # A base URL has paths added to it: a query or fragment would take them.
    if "?" in base or "#" in base:
        raise ValueError("connect(url): the URL holds a query or fragment (?, #); write it as http://host:port "
                         "or http://host:port/prefix (the URL is not shown here)")
    if any(c <= " " or c == "\x7f" for c in base):
        raise ValueError("connect(url): the URL holds a space or control character (the URL is not shown here)")
    # A backslash is a slash to some readers, and a host not in ASCII is read
    # through IDNA (``127。0。0。1`` is loopback, and would go to a proxy): the
    # host would not be the one the text shows.
    if "\\" in base or not base.isascii():
        raise ValueError("connect(url): the URL holds a backslash or a character that is not ASCII; write the "
                         "host in its ASCII form (the URL is not shown here)")
    try:
        parts = urllib.parse.urlsplit(base)
        parts.hostname, parts.port  # noqa: B018 - raise on a bracket left open, a port out of range
    except ValueError:
        # Not urllib's reason: it may quote a password written without its
        # host (``http://admin:s3cret``).
        raise ValueError("connect(url): the URL cannot be read (a bracket left open, a port that is not a "
                         "number from 1 to 65535?): write it as http://host:port (the URL is not shown here)") from None
    # urllib's opener reads file:, ftp: and data: URLs too: a local file
    # was taken for litebridge's answer (review 192).
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("connect(url): the URL must be http://host:port or https://host:port "
                         "(the URL is not shown here)")
    return base


def _positive(value, name, fallback):
    """A positive finite number of the options (not a bool), or ``fallback``."""
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError("connect(): %s must be a positive number, not %r" % (name, value))
    return value


class _Threads(concurrent.futures.Executor):
    """The threads of ``AsyncClient``'s HTTP calls: daemon threads, up to
    ``size``, started as needed. A ``ThreadPoolExecutor``'s threads are
    joined at the interpreter's exit, so a call still waiting on a server
    would hold the exit; these are not waited for."""

    def __init__(self, size, name):
        self.size = self._size = size
        self._name = name
        self._work = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._count = 0
        self._closed = False

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new calls after close()")
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(timeout=0) and self._count < self._size:
                self._count += 1
                threading.Thread(target=self._run, name="%s_%d" % (self._name, self._count), daemon=True).start()
        return future

    def _run(self):
        while True:
            item = self._work.get()
            if item is None:
                self._work.put(None)  # for the next thread
                return
            future, fn, args, kwargs = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as e:  # noqa: B036 - the caller's to see
                    future.set_exception(e)
                else:
                    future.set_result(result)
            del future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            if not self._closed:
                self._closed = True
                self._work.put(None)


class HttpTransport:
    """``POST /rpc`` with a bearer key, one request per call, each within
    its deadline."""

    def __init__(self, url, key=None, timeout=None, deadline=None, max_response_bytes=None):
        self.url = _checked_url(url)
        self._key = _checked_key(key)
        self.timeout = _positive(timeout, "timeout", None)
        self.deadline = _positive(deadline, "deadline", DEFAULT_DEADLINE)
        self.max_response_bytes = int(_positive(max_response_bytes, "max_response_bytes", MAX_RESPONSE_BYTES))
        self._loopback = _is_loopback(self.url)
        self.executor = _Threads(32, "litebridge-http")
        self.lock = threading.Lock()
        self.streams = set()
        self.closing = False
        self.calls = {}  # request id -> its _Deadline, for cancel()

    def __repr__(self):
        return "<litebridge_client HttpTransport %s>" % self.url

    def headers(self, extra=None):
        h = dict(extra or {})
        if self._key:
            h["Authorization"] = "Bearer %s" % self._key
        return h

    def _redact(self, text):
        """``text`` with the key blanked, should a message quote a header."""
        text = str(text)
        return text.replace(self._key, "<the key>") if self._key else text

    def _seconds(self, obj):
        """How long request ``obj`` may take: its own ``timeout_ms`` and a margin, else the client's deadline."""
        params = obj.get("params")
        t = params.get("timeout_ms") if type(params) is dict else None
        if type(t) in (int, float) and 0 < t < 1e12:
            return t / 1000.0 + DEADLINE_MARGIN
        return self.deadline

    def _post(self, body, obj, deadline=None):
        """Sends ``obj`` within its deadline: ``deadline`` if given (started
        by ``acall`` when the call was queued, and ended by it), else one
        started now."""
        rid = obj.get("id")
        seconds = self._seconds(obj)
        if self.closing:
            raise self._closed()
        if len(body) > MAX_BODY:
            # The server answers 413 and closes before reading it: the send
            # would break, and a write look as if it may have run.
            raise TooLargeError("the request is %d bytes; litebridge reads bodies of %d bytes at most (the request "
                                "was not sent)" % (len(body), MAX_BODY), kind="too_large")
        own = deadline is None
        if own:
            deadline = _WATCHDOG.start(seconds)
            self.calls[rid] = deadline
        elif deadline.cancelled:
            raise ConnectionError("the call was withdrawn before it was sent", kind="unavailable", recoverable=True)
        elif deadline.expired or deadline.at <= time.monotonic():
            raise _TimeoutError(
                "%s/rpc: the call waited its whole deadline (%g s: its timeout and %g s, else the deadline option) "
                "for one of the client's %d threads, all taken by other calls, and was not sent"
                % (self.url, seconds, DEADLINE_MARGIN, self.executor.size), kind="timeout", recoverable=True)
        _CALL.deadline = deadline
        try:
            return self._exchange(body, rid, obj.get("method") not in _READS, seconds, deadline)
        finally:
            _CALL.deadline = None
            if own:
                _WATCHDOG.end(deadline)
                self.calls.pop(rid, None)

    def _exchange(self, body, rid, ran, seconds, deadline):
        what = "%s/rpc" % self.url
        req = urllib.request.Request(what, data=body, method="POST", headers=self.headers(_POST_HEADERS))
        status = headers = None
        ok = True
        try:
            with _opener(self._loopback).open(req, timeout=self.timeout) as res:
                status = res.status
                encoding = _encoding(res.headers)
                if encoding is not None:
                    raise _Unasked(encoding)
                text = _read_capped(res, self.max_response_bytes)
        except urllib.error.HTTPError as e:
            ok = False
            status, headers = e.code, e.headers
            try:
                if 300 <= status < 400:
                    raise _redirected(what, status) from None
                text = b"" if _encoding(headers) else _read_capped(getattr(e, "fp", None), _MAX_ERROR_BODY)
            except _TooLong:
                text = b""  # the status says what happened
            except (OSError, http.client.HTTPException) as x:
                if deadline.cancelled and self.closing:
                    raise self._cut_off(ran) from None
                if deadline.passed():
                    raise _late(what, seconds, ran, True) from x
                raise OutcomeUnknownError(
                    "%s/rpc answered %d, then the connection failed (%s): the request may or may not have run"
                    % (self.url, status, _why(x)), kind="outcome_unknown") from x
            finally:
                e.close()
        except _Unasked as e:
            raise _not_reply(what, status, ran, "in the encoding %s, not asked for" % self._redact(str(e))[:40]) from None
        except _TooLong as e:
            if deadline.cancelled and self.closing:
                raise self._cut_off(ran) from None
            if deadline.passed():
                raise _late(what, seconds, ran, True) from None
            raise _too_long(what, status, e.limit, ran) from None
        except http.client.InvalidURL as e:
            # Refused by http.client before sending (a URL it cannot carry).
            raise ConnectionError("cannot send to %s: %s (the request was not sent)" % (self.url, _why(e)),
                                  kind="unavailable") from None
        except (OSError, http.client.HTTPException) as e:
            if _never_connected(e):
                # Not sent; worth trying again unless TLS refused the server.
                raise ConnectionError("cannot reach %s: %s" % (self.url, _why(e.reason)), kind="unavailable",
                                      recoverable=not getattr(e.reason, "permanent", False)) from e
            if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, OSError):
                # Refused before sending (an unknown URL scheme): trying again cannot help.
                raise ConnectionError("cannot send to %s: %s" % (self.url, e.reason), kind="unavailable") from e
            if deadline.cancelled and self.closing:
                raise self._cut_off(ran) from None
            if deadline.passed():
                raise _late(what, seconds, ran, status is not None) from e
            # Reset, closed or timed out once connected: the request may have been
            # read, and run, by the time the connection failed.
            raise OutcomeUnknownError(
                "the connection to %s failed with the request sent or on its way (%s): it may or may not "
                "have run" % (self.url, self._redact(_why(e))), kind="outcome_unknown") from e
        except ValueError as e:
            # Refused by http.client before sending (a URL or header it cannot carry).
            raise ConnectionError("cannot send to %s: %s (the request was not sent)"
                                  % (self.url, self._redact(_why(e))), kind="unavailable") from None
        if deadline.cancelled and self.closing:
            raise self._cut_off(ran) from None
        if deadline.expired:  # an answer cut short by the deadline may look whole
            raise _late(what, seconds, ran, True)
        try:
            reply = decode_line(text)
        except (ValueError, RecursionError):  # not JSON, or JSON nested past Python's recursion limit
            reply = _NO_JSON
        if ok:
            if _is_reply(reply, rid):
                return _blanked(reply, self._redact)
            if reply is _NO_JSON:
                # A proxy's or a debugging server's page may quote the
                # request's headers: the key is blanked (as review 244 found
                # in the JavaScript client).
                raise _not_reply(what, status, ran, "with no JSON: %s" % repr(self._redact(_text_of(text)))[:200])
            raise _not_reply(what, status, ran, "with JSON that is not a JSON-RPC reply to this request")
        if _is_own_error(reply, rid):
            return _blanked(reply, self._redact)
        # Not litebridge's reply: a proxy's answer, or the standby's.
        said = reply.get("error") if isinstance(reply, dict) and isinstance(reply.get("error"), str) else None
        raise _status_error(what, status, headers, may_have_run=ran, said=None if said is None else self._redact(said))

    def call(self, obj):
        """Sends ``obj`` and returns its reply (a dict), in this thread."""
        return self._post(encode_line(obj), obj)

    def _cut_off(self, ran):
        """A call in flight cut off by ``close()``."""
        what = "%s/rpc: the client was closed with the call in flight" % self.url
        if ran:
            return OutcomeUnknownError("%s: the request may or may not have run" % what, kind="outcome_unknown")
        return ConnectionError("%s (not answered)" % what, kind="unavailable", recoverable=False)

    def _closed(self):
        return ConnectionError("cannot send to %s/rpc: the client is closed (the request was not sent)" % self.url,
                               kind="unavailable", recoverable=False)

    async def acall(self, obj):
        """``call`` for asyncio, in a (daemon) thread of the transport's. Its
        deadline starts now, while it may wait for a thread."""
        if self.closing:
            raise self._closed()
        body = encode_line(obj)
        rid = obj.get("id")
        deadline = _WATCHDOG.start(self._seconds(obj))
        self.calls[rid] = deadline
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self._post, body, obj, deadline)
        except RuntimeError:
            if self.closing:  # closed while this call was on its way to a thread
                raise self._closed() from None
            raise
        except asyncio.CancelledError:
            _WATCHDOG.cancel(deadline)  # its connection shut, its thread freed (or never taken)
            raise
        finally:
            _WATCHDOG.end(deadline)
            self.calls.pop(rid, None)

    def cancel(self, rid):
        """Withdraws call ``rid`` (an asyncio task cancelled): its connection
        is shut, which frees its thread. A write already sent may commit all
        the same."""
        deadline = self.calls.get(rid)
        if deadline is not None:
            _WATCHDOG.cancel(deadline)

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
        """``_events``, whose every failure ends the stream with an error
        (a thread that died would leave its reader waiting for ever)."""
        try:
            self._events(stream)
        except BaseException as e:  # noqa: B036 - surfaced to the reader
            error = ConnectionError("the event stream stopped: the client failed with %s" % type(e).__name__,
                                    kind="internal")
            error.__cause__ = e
            stream.end(error)

    def _events(self, stream):
        """Reads the stream, reconnecting with ``Last-Event-ID`` after a
        pause (1 s, doubling to 30 s, or the server's ``Retry-After``) until
        ``stream`` ends; a refusal for good (401, 403; a redirect, never
        followed) ends it with its error."""
        last_id, pause = None, 1.0
        while not stream.closed:
            headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            req = urllib.request.Request(self.url + "/events", headers=self.headers(headers))
            wait = None
            # The connection is shut when the stream ends (closed, or its
            # client), waking this thread at once: a server that never
            # ends a line would hold it for good.
            connection = _Deadline(time.monotonic() + _EVENTS_SILENCE)  # connecting's bound; never expired
            stream.hold(lambda connection=connection: _WATCHDOG.cancel(connection))
            _CALL.deadline = connection
            try:
                # The server writes a comment every 15 s: 30 s of silence is a lost connection.
                with _opener(self._loopback).open(req, timeout=_EVENTS_SILENCE) as res:
                    pause = 1.0
                    if _encoding(res.headers) is None:
                        last_id = self._read_events(res, stream, last_id)
            except urllib.error.HTTPError as e:
                with e:
                    if 300 <= e.code < 400:
                        stream.end(_redirected("GET /events", e.code))
                        return
                    error = _http_error(e, "GET /events", self._redact)
                if e.code in (401, 403):
                    stream.end(error)
                    return
                wait = _retry_after(e.headers)
            except (OSError, http.client.HTTPException):
                pass
            finally:
                _CALL.deadline = None
                stream.hold(None)
            if stream.wait_closed(max(wait if wait is not None else pause, 1.0)):
                return
            pause = min(pause * 2, 30.0)

    @staticmethod
    def _read_events(res, stream, last_id):
        """Hands the events of an open ``GET /events`` to ``stream``; the
        last event id seen, also when the connection failed half way (a
        chunked answer cut short raises: the id must survive it, or the
        next connection would not ask for what it missed). An event's
        ``data:`` lines are joined by LF, each without the one space after
        the colon. A line or an event longer than ``_MAX_EVENT`` is dropped;
        an id a header could not carry is not kept."""
        data, size, event_id, dropped = [], 0, None, False
        lines = _EventLines()
        try:
            while not stream.closed:
                chunk = res.read1(65536)
                if not chunk:
                    break
                for raw in lines.feed(chunk):
                    if raw is None:  # a line too long: its event is dropped
                        data, size, dropped = [], 0, True
                        continue
                    line = raw.decode("utf-8", "replace")
                    if line.startswith("data:"):
                        value = line[6:] if line.startswith("data: ") else line[5:]
                        size += len(value) + (1 if data else 0)
                        if size > _MAX_EVENT:
                            data, size, dropped = [], 0, True
                        elif not dropped:
                            data.append(value)
                    elif line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line == "":
                        text = "\n".join(data)
                        if text and not dropped:
                            if event_id and _EVENT_ID.match(event_id):
                                last_id = event_id
                            try:
                                stream.put(json.loads(text))  # not an object: dropped
                            except (ValueError, RecursionError):
                                pass
                        data, size, event_id, dropped = [], 0, None, False
        except (OSError, http.client.HTTPException):
            pass  # the connection failed: connected again after the pause
        return last_id

    def close(self):
        """Ends the event streams and cuts off the calls in flight (their
        connections shut: a read fails as not answered, anything else as
        may have run); calls made after it fail as not sent."""
        with self.lock:
            self.closing = True
            streams, self.streams = self.streams, set()
        for stream in streams:
            stream.end()
        for deadline in list(self.calls.values()):
            _WATCHDOG.cancel(deadline)
        self.executor.shutdown(wait=False)

    async def aclose(self):
        self.close()


def _blob(v):
    """What the encoder cannot write itself: bytes, as {"$blob": base64}."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$blob": base64.b64encode(bytes(v)).decode("ascii")}
    raise _NotAValue("a %s is not a value litebridge takes (JSON values and bytes)" % type(v).__name__,
                     kind="invalid_argument")


class _NotAValue(InvalidArgumentError, TypeError):
    """A parameter of a type JSON cannot carry: the caller's error, and a
    ``TypeError`` as ``json`` raises it."""


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
# The longest reply line the stdio transports read (a query's rows come in
# one line): past it the child is stopped and its calls fail.
MAX_REPLY_LINE = 1 << 30
# The longest piece of a stderr line kept (a longer line is kept in pieces,
# the last few of which say why a child ended).
STDERR_PIECE = 4096


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


# The id of the request a new child is sent first (``pool.health``): any
# answer to it, even a refusal, says litebridge started and reads requests.
START_ID = "litebridge-client-start"


def ended(code, stderr):
    """How a child ended (its exit code, or the signal that killed it) and
    its last lines on stderr, for an error's message."""
    why = ("litebridge was killed by signal %d" % -code) if code < 0 else ("litebridge exited with code %d" % code)
    tail = "; its last lines on stderr:\n%s" % "\n".join(stderr) if stderr else ""
    return why, tail


def start_failure(why, tail):
    """The error of requests not sent because their child never answered
    its first request: it did not start. Recoverable: nothing ran, and what
    stopped it may pass (a lock another process held) or be mended."""
    from .errors import ConnectionError
    return ConnectionError("litebridge did not start (%s); the request was not sent%s" % (why, tail),
                           kind="unavailable", recoverable=True)


def pending_key(rid):
    """A request id as a key of the requests waiting (ids are ours: ints)."""
    return rid if type(rid) in (int, str) else json.dumps(rid)


def find_binary(explicit=None):
    """``explicit``, else ``LITEBRIDGE_CLIENT_BIN``, else ``litebridge`` on PATH."""
    return explicit or os.environ.get("LITEBRIDGE_CLIENT_BIN") or "litebridge"
