"""The worker: a method registry and the JSON-RPC loop.

Design:
- The protocol owns stdout and stdin. At start the real fd 1 is duplicated
  to a private descriptor for replies, and fd 1 itself is pointed at stderr,
  so nothing a handler prints (``print()``, a C library writing to fd 1) can
  corrupt it (``sys.stdout`` becomes a stream of its own onto stderr's pipe,
  which a handler's ``close()`` only flushes); the real fd 0 is duplicated to a private descriptor for
  requests, and fd 0 itself is pointed at ``/dev/null``, so a program a
  handler starts (which inherits fd 0, as ffmpeg polls it) cannot read the
  requests meant for the worker.
- The event loop reads stdin itself (a non-blocking descriptor and a byte
  buffer, so lines of any length work, unlike asyncio streams' 64 KiB limit)
  and dispatches each line where it reads it: no thread hand-off on the way in.
- ``async def`` handlers run as tasks on the loop; plain functions run in a
  thread pool, and the pool thread writes the reply itself (one hand-off per
  call: see ``_Pool`` for how it is kept to few context switches). Many calls
  are in flight at once; replies are written whole, under a lock, as they
  are made (a pool thread's at once), except the replies made on the
  loop's thread while it dispatches the lines of one read: those are
  written together once the read is dispatched, in one ``write``
  (``_on_readable``), so calls litebridge sends together cost one system
  call for their answers, not one each. They wait only behind ``async def``
  handlers that were quick their last few calls, at most a millisecond or
  so, so a crash or a handler that keeps the loop seldom holds a reply
  already made. A plain function that returns an
  awaitable (an ``async def`` behind a plain decorator) has it awaited on
  the loop.
- Every call runs in a context of its own, a copy of the loop's (which no
  handler runs in), as an asyncio Task would: what a handler sets in a
  ``ContextVar`` (``decimal``'s context too) ends with its call. An
  ``async def`` handler runs in an asyncio Task from its first line
  (``asyncio.timeout``, ``TaskGroup`` work), started eagerly, so one that
  returns without waiting is answered where its line was read (see
  ``_eager_task``).
- ``$/cancelRequest`` cancels an async handler's task and marks a sync
  handler's call, which can look with ``cancelled()``.
- When stdin closes the worker stops taking calls, lets the ones in flight
  finish (up to ``drain_timeout``) and exits, so a worker never outlives
  litebridge.
"""

import ast
import asyncio
import base64
import builtins as _builtins
import collections
import contextvars
import functools
import inspect
import io
import json
from json.encoder import encode_basestring as _encode_str
import logging
import os
import re
import select
import sys
import threading
import time
import traceback
import types
import typing as _typing
import weakref

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
WORKER_ERROR = -32004

def _fast_encoder():
    """The C encoder behind json.dumps, built once with the SDK's options
    (compact, not ASCII-only) and no circular-reference bookkeeping, so it
    holds no state threads could share: a circular result raises, and the
    caller falls back to json's own encoder, which names the problem. None
    when this Python does not have it or it does not encode as json does
    (checked here on a sample)."""
    try:
        from json.encoder import c_make_encoder, encode_basestring
        if c_make_encoder is None:
            return None

        def default(o):
            raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)

        enc = c_make_encoder(None, default, encode_basestring, None, ":", ",", False, False, False)
        sample = {"a": [1, 2.5, None, True, "\u00e9\n"], "b": {"c": 1e300}}
        ref = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(sample)
        if "".join(enc(sample, 0)) != ref:
            return None
        try:
            enc([float("nan")], 0)
            return None  # it writes NaN, which no JSON reader litebridge has takes
        except ValueError:
            pass
        return lambda o: "".join(enc(o, 0))
    except Exception:
        return None


# A result's JSON the fast way (None: json's own encoder only).
_FAST_ENCODE = _fast_encoder()

# Results that are never awaitable, looked up before inspect.isawaitable
# (which costs more) on a sync handler's result.
_PLAIN = frozenset({str, int, float, bool, type(None), dict, list, tuple})


def _identity(value):
    return value


def _refuse_constant(name):
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON: a line that
    holds one is a parse error (review 241: read as Python's floats, a NaN
    reached handlers, and an id of NaN was echoed in a reply no JSON reader
    takes)."""
    raise ValueError("%s is not JSON" % name)


# json.loads's reading, without the constants JSON does not have.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _fast_decoder():
    """json.loads for a line that is one JSON value and nothing else (but
    the line's end), at half its cost: the scanner behind it, called
    directly, without the two whitespace matches around it (measured: 1.2 us
    against 2.6 us for a call's line). Anything else (whitespace before the
    value or other whitespace after it, a second value, bad JSON, a Python
    without the C scanner) goes to json.loads itself, so the answer and
    every error are json.loads's. A line read alone keeps its newline: it
    went to json.loads, and each call read one at a time was parsed twice."""
    decode = _DECODER.decode
    try:
        from json.scanner import c_make_scanner
        if c_make_scanner is None:
            return decode
        scan = c_make_scanner(_DECODER)
    except Exception:
        return decode

    def loads(s):
        try:
            value, end = scan(s, 0)
        except (StopIteration, ValueError):
            return decode(s)
        if end != len(s) and (end != len(s) - 1 or s[end] != "\n"):
            return decode(s)
        return value

    return loads


_LOADS = _fast_decoder()
_INFINITIES = (float("inf"), float("-inf"))


# Values JSON has no word for, as litebridge's clients send and read them:
# bytes as {"$blob": base64}, an infinity as {"$real": "Infinity"}.
def _revive(d):
    """A {"$blob"} as bytes and a {"$real"} as float (``object_hook``)."""
    if len(d) == 1:
        if isinstance(d.get("$blob"), str):
            try:
                return base64.b64decode(d["$blob"], validate=True)
            except ValueError:
                return d
        if isinstance(d.get("$real"), str) and d["$real"] in ("Infinity", "-Infinity"):
            return float(d["$real"])
    return d


def _blob(v):
    """bytes (and bytearray, memoryview) as {"$blob": base64} (``default``)."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$blob": base64.b64encode(bytes(v)).decode("ascii")}
    raise TypeError("Object of type %s is not JSON serializable" % type(v).__name__)


def _reals(v, depth=0):
    """``v`` with its infinities as {"$real": ...} (NaN stays, and is refused)."""
    if depth > 200:
        return v
    if type(v) is float and v in (_INF, -_INF):
        return {"$real": "Infinity" if v > 0 else "-Infinity"}
    if isinstance(v, dict):
        return {k: _reals(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_reals(x, depth + 1) for x in v]
    return v


_INF = float("inf")

# Stdin is read in chunks of this size. Reading 1 MiB at a time made the C
# library map and unmap a fresh buffer on every read (~13 us per call, most
# of the SDK's cost over a bare loop); a longer line still arrives whole, over
# several reads.
_READ_SIZE = 65536
# How long and how much of the replies made while one read's lines are
# dispatched are kept to be written together (see ``Worker._on_readable``).
_GATHER_S = 0.001

# How long the tasks still running when the drain ends have, once
# cancelled, before the worker leaves without them (``_end_tasks``).
_CANCEL_GRACE = 3.0

# How long past the drain and that grace the watchdog waits, once stdin has
# ended, before it ends the process whatever runs (``_Watchdog``).
_WATCHDOG_MARGIN = 1.0
_GATHER_BYTES = 65536
# How many quick first steps in a row make a handler one replies wait behind.
_TRUSTED = 8
_monotonic = time.monotonic
_get_ident = threading.get_ident

def _finite_seconds(v):
    """A number of seconds JSON can carry and litebridge can read: not a
    bool, not negative, not NaN or infinite, not past a float's range."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return 0 <= float(v) < float("inf")
    except OverflowError:
        return False


# ----- method names ----------------------------------------------------------

# What litebridge routes (crates/litebridge-cli/src/rpc/params.rs, MethodName;
# workers/names.rs): 1 to 256 characters, none of them one printable.rs's
# unprintable() refuses, and not starting with "$" (the protocol's own).
# unprintable() is, exactly: a control character (Rust's char::is_control:
# C0, DEL, C1), the soft hyphen, the Arabic letter mark, the Hangul fillers
# (U+115F, U+1160, U+3164, U+FFA0), the Mongolian vowel separator, the
# zero-width and direction marks (U+200B-U+200F), the line and paragraph
# separators and embeddings and overrides (U+2028-U+202E), the word joiner,
# invisible operators and isolates (U+2060-U+2069), the byte order mark,
# the interlinear annotation characters (U+FFF9-U+FFFB) and the tags
# (U+E0000-U+E007F). Lone surrogates are refused too: they are not Unicode,
# and the name would reach litebridge as "?".
MAX_METHOD_NAME = 256
_UNROUTABLE_CHAR = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u115f\u1160\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u2069\u3164\ufeff\uffa0\ufff9-\ufffb\U000e0000-\U000e007f\ud800-\udfff]")


def _shown(name, limit=64):
    return repr(name if len(name) <= limit else name[:limit] + "...")


def check_method_name(name, what="method"):
    """Raises ``ValueError`` naming ``name`` and the rule it breaks when
    litebridge would never route a call of it (so announcing it would offer
    callers a method they cannot reach); ``TypeError`` if it is not a str."""
    if not isinstance(name, str):
        raise TypeError("%s name must be a str, got %r" % (what, type(name).__name__))
    if not name:
        raise ValueError("%s name must not be empty" % what)
    if name.startswith("$"):
        raise ValueError("%s %s: names starting with '$' belong to the worker protocol; "
                         "litebridge never routes them" % (what, _shown(name)))
    if len(name) > MAX_METHOD_NAME:
        raise ValueError("%s %s: %d characters, longer than the %d litebridge routes"
                         % (what, _shown(name), len(name), MAX_METHOD_NAME))
    bad = _UNROUTABLE_CHAR.search(name)
    if bad is not None:
        raise ValueError("%s %s: holds U+%04X at %d, a control, invisible or surrogate character; "
                         "litebridge never routes such names" % (what, _shown(name), ord(bad.group()), bad.start()))


# ----- results litebridge would not read as they were sent -------------------

# litebridge reads a JSON integer exactly in this range (64 bits, signed or
# not), and anything beyond as a float, silently rounded.
_INT_MIN = -(2 ** 63)
_INT_MAX = 2 ** 64 - 1

# A cheap look at a reply's JSON for what could be such a problem, on a copy
# with every digit made "0" (one bytes.translate, then five substring
# searches: about 0.5 us for a small result, and a fifth of what json's C
# encoder took for a large one full of numbers; a regular expression over
# the whole text took as long as the encoder): 19 digits in a row (an
# integer that may be beyond 64 bits, or a float whose repr has that many),
# or a key that is what json writes for an int, float, bool or None key
# (the keys that can collide with a str key; only a key is followed by
# ":"). Out of reach of this look, and sent as json writes them: two keys
# of a str subclass whose own equality keeps equal text apart, and a dict
# subclass whose items() yields one key twice. A numeric key is written as an int's or a float's repr
# (-12, 1.5, 1e+16, -1.5e-07; json refuses an infinite or NaN one), so a
# key such as "item1" or "sha256", which ends in a digit too, is told apart
# by a regular expression run only when some key ends in one (a walk of a
# large result cost twice its encoding). A string holding such text only
# sends the result to _unsendable, which walks it; nothing found, and
# neither problem is there.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = "0" * 19
_NUMERIC_KEY = re.compile(r'"-?0+(?:\.0+)?(?:e[-+]0+)?":')


def _may_be_unsendable(line):
    """Whether a reply's encoded ``line`` (bytes) may hold what
    ``_unsendable`` looks for; False means it cannot."""
    seen = line.translate(_DIGITS_AS_ZERO).decode("latin-1")
    return (_NINETEEN_DIGITS in seen or ('0":' in seen and _NUMERIC_KEY.search(seen) is not None)
            or '"true":' in seen or '"false":' in seen or '"null":' in seen)


def _key_text(k):
    """The key json writes for ``k`` (None: json refuses such a key)."""
    if isinstance(k, str):
        return str.__str__(k)
    if k is True:
        return "true"
    if k is False:
        return "false"
    if k is None:
        return "null"
    if isinstance(k, float):
        return float.__repr__(k)
    if isinstance(k, int):
        return int.__repr__(k)
    return None


def _where(crumb):
    parts = []
    while crumb is not None:
        crumb, key = crumb
        text = repr(key)
        parts.append("[%s]" % (text if len(text) <= 40 else text[:40] + "..."))
    return "result" + "".join(reversed(parts))


def _unsendable(result):
    """What in a result json encoded litebridge would not read as it was
    sent: an integer outside 64 bits (read as a float, rounded), or an object
    with two keys json writes as the same text (``1`` and ``"1"``: one would
    be lost). A message naming it and where it is, or None. Walks the result
    as json's encoder does, without recursion (a result json encoded may be
    nested deeper than Python's recursion limit on 3.12+)."""
    todo = [(result, None)]  # (value, crumb); a crumb is (parent's crumb, key)
    while todo:
        value, crumb = todo.pop()
        if isinstance(value, dict):
            pairs = list(dict.items(value) if type(value) is dict else value.items())
            seen = None
            for k, _ in pairs:
                if type(k) is not str:
                    seen = {}
                    break
            if seen is not None:
                for k, _ in pairs:
                    text = _key_text(k)
                    if text in seen:
                        return ("%s with the keys %r and %r, which JSON writes as the same key %s: "
                                "one would be lost; make them distinct strings"
                                % ("the result is an object" if crumb is None else
                                   "the result holds an object at " + _where(crumb),
                                   seen[text], k, _encode_str(text)))
                    seen[text] = k
        elif isinstance(value, (list, tuple)):
            # As json's encoders read it: a subclass through its own __iter__.
            t = type(value)
            pairs = enumerate(list.__iter__(value) if t is list else
                              tuple.__iter__(value) if t is tuple else list(value))
        else:
            if isinstance(value, int) and value is not True and value is not False:
                n = int.__index__(value)
                if not _INT_MIN <= n <= _INT_MAX:
                    return ("%s of %d bits, outside the 64-bit range litebridge reads exactly (it "
                            "would arrive rounded to a float): return it as a string"
                            % ("the result is an integer" if crumb is None else
                               "the result holds at %s an integer" % _where(crumb), n.bit_length()))
            continue
        for k, v in pairs:
            t = type(v)
            if t is str or t is float or t is bool or v is None:
                continue
            if t is int:
                if _INT_MIN <= v <= _INT_MAX:
                    continue
            todo.append((v, (crumb, k)))
    return None


# ----- exceptions ------------------------------------------------------------

def _describe_exception(e):
    """``(type name, message, traceback)`` of an exception for its error
    reply. Never raises: a ``type_name``, ``__str__`` or ``__name__`` that
    raises, or returns something odd, gets a plain stand-in."""
    try:
        cls_name = type(e).__name__
        if not isinstance(cls_name, str) or not cls_name:
            cls_name = "Error"
        cls_name = str.__str__(cls_name)
    except BaseException:
        cls_name = "Error"
    try:
        type_name = getattr(e, "type_name", None)
        if isinstance(type_name, str) and str.__len__(type_name):
            type_name = str.__str__(type_name)
        else:
            type_name = cls_name
    except BaseException:
        type_name = cls_name
    try:
        message = str(e)
        message = str.__str__(message) if str.__len__(message) else type_name
    except BaseException:
        message = type_name
    try:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        tb = str.__str__(tb)
    except BaseException:
        tb = ""
    return type_name, message, tb


def _safe_str(e):
    try:
        return str.__str__(str(e))
    except BaseException:
        return _describe_exception(e)[0]


def _wait_writable(fd):
    """Blocks until ``fd`` can be written to."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.poll()
    else:
        select.select([], [fd], [])


# The workers serving in this process: a handler's child that goes on past a
# fork must not write the replies its parent gathered (the parent writes
# them). One hook for the process, which keeps no worker alive.
_SERVING = weakref.WeakSet()


def _forget_gathered_after_fork():
    for worker in list(_SERVING):
        worker._forget_gathered()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_gathered_after_fork)

# How many handlers' shapes and speeds are kept: a resolver that makes a new
# callable for each call (a partial, a closure) would otherwise grow them
# (and keep its callables alive) for good; past it they start again.
_REMEMBERED = 4096


# ----- starting a Task eagerly -----------------------------------------------

if sys.version_info >= (3, 12):
    def _eager_task(loop, coro):
        """A Task for ``coro``, in a copy of the current context, that has
        taken its first step already: one that returns without waiting is
        done when this returns, never scheduled. A task factory the program
        set on the loop makes it instead (scheduled as it decides)."""
        if loop.get_task_factory() is not None:
            return loop.create_task(coro)
        return asyncio.Task(coro, loop=loop, eager_start=True)
else:
    _PY_TASK_STEP = asyncio.tasks._PyTask._Task__step
    _NOTHING = object()

    def _put_back(attrs, own):
        """Undoes the stand-in: the instance's own ``call_soon`` put back if
        it had one, else the class's left to be found."""
        if own is _NOTHING:
            attrs.pop("call_soon", None)
        else:
            attrs["call_soon"] = own

    def _forward(loop, own):
        """The ``call_soon`` the loop had before the stand-in."""
        return types.MethodType(type(loop).call_soon, loop) if own is _NOTHING else own

    _step_type = [None]  # the C Task's TaskStepMethWrapper, once seen

    def _is_task_step(callback):
        """Whether ``callback`` is a Task's step as a Task schedules it (the
        C Task's TaskStepMethWrapper, the Python Task's bound ``__step``);
        its ``__self__`` is the Task."""
        cls = type(callback)
        if cls is _step_type[0]:
            return True
        if cls is types.MethodType:
            return callback.__func__ is _PY_TASK_STEP
        if cls.__name__ == "TaskStepMethWrapper" and cls.__module__ == "builtins":
            _step_type[0] = cls
            return True
        return False

    def _eager_task(loop, coro):
        """As ``asyncio.Task(..., eager_start=True)`` does on 3.12+: a Task
        made and its first step run now, so an ``async def`` that returns
        without waiting is answered without a pass through the loop (which
        costs a call a few microseconds here). A Task schedules its first
        step with ``loop.call_soon(step, context=...)``, looked up on the
        loop object on 3.9-3.11 (C and Python Task alike); a callable
        standing in for it on the instance while the Task is made keeps the
        first Task step scheduled from this thread, which, if it is the new
        Task's, runs here, in the Task's context, with the Task current, as
        the loop would run it. Anything else scheduled meanwhile (a finalizer
        the garbage collector runs then, as an unclosed StreamWriter's,
        closing its transport; another thread) is passed on at once to the
        ``call_soon`` the loop had: one the program put on the instance too,
        which is put back after. The caller is a callback of the loop (no
        Task is running), as the loop's own callbacks are. A loop that takes
        no instance attribute (uvloop), or has a task factory the program
        set, gets the Task made and scheduled as usual."""
        if loop.get_task_factory() is not None:
            return loop.create_task(coro)
        try:
            attrs = loop.__dict__
        except AttributeError:  # no instance attributes
            return loop.create_task(coro)
        own = attrs.get("call_soon", _NOTHING)
        thread = _get_ident()
        grabbed = []

        def grab(callback, *args, context=None):
            if (not grabbed and (type(callback) is _step_type[0] or _is_task_step(callback))
                    and _get_ident() == thread):
                grabbed.append((callback, args, context))
                return None
            return _forward(loop, own)(callback, *args, context=context)

        attrs["call_soon"] = grab
        try:
            task = asyncio.Task(coro, loop=loop)
        except BaseException:
            _put_back(attrs, own)
            if grabbed:  # made, then failed: the step still runs
                callback, args, context = grabbed[0]
                _forward(loop, own)(callback, *args, context=context)
            raise
        _put_back(attrs, own)
        if not grabbed:
            return task
        callback, args, context = grabbed[0]
        if callback.__self__ is not task:  # another Task's, made meanwhile
            _forward(loop, own)(callback, *args, context=context)
        elif context is None:
            callback(*args)
        else:
            context.run(callback, *args)
        return task


# ----- sys.stdout ------------------------------------------------------------

class _Stdout(io.TextIOWrapper):
    """``sys.stdout`` while the worker runs: stderr's pipe, through an object
    of its own, buffered as stderr is. Closing it only flushes: every handler shares
    it, and one that closes stdout when done with it (as command-line code
    does) must not take ``print()`` from the others, nor stderr (logging)
    with it, as when ``sys.stdout`` was ``sys.stderr`` itself. Its buffer's
    and raw stream's ``close()`` only flush too. It writes through a private
    duplicate of stderr's descriptor, and ``fileno()`` says 1 (stderr's pipe
    too, which programs a handler starts inherit): a handler that closes fd 1
    (``with open(sys.stdout.fileno(), "w")``) leaves ``print()`` where it was,
    not writing into whatever file is opened next as fd 1."""

    def close(self):
        self.flush()

    def fileno(self):
        return 1


class _StdoutBuffer(io.BufferedWriter):
    def close(self):
        self.flush()

    def fileno(self):
        return 1


class _StdoutRaw(io.FileIO):
    def close(self):
        pass

    def fileno(self):
        return 1


# ----- handlers' parameters --------------------------------------------------

def _bound_names(func):
    """Names a call may not pass by keyword although the handler's signature
    (``**kwargs``, or a parameter a partial fixed) would take them: the
    parameters bound before the call (a bound method's ``self`` or ``cls``, a
    callable object's ``self``, positionals a ``functools.partial`` bound),
    which fail at the call with "got multiple values", and keywords a
    ``functools.partial`` fixed, which the handler's author chose (a
    connection, a root directory), not the caller."""
    P = inspect.Parameter
    names = set()
    for _ in range(64):
        if isinstance(func, types.MethodType):
            inner = func.__func__
        elif isinstance(func, functools.partial):
            names.update(k for k in func.keywords if isinstance(k, str))
            inner = func.func
        elif isinstance(func, type):
            for attr in ("__new__", "__init__"):
                f = getattr(func, attr, None)
                if isinstance(f, types.FunctionType):
                    try:
                        first = next(iter(inspect.signature(f).parameters.values()), None)
                    except (TypeError, ValueError):
                        first = None
                    if first is not None and first.kind is P.POSITIONAL_OR_KEYWORD:
                        names.add(first.name)
            break
        elif getattr(func, "__wrapped__", None) is not None and not hasattr(func, "__signature__"):
            inner = func.__wrapped__
        elif isinstance(func, (types.FunctionType, types.BuiltinFunctionType, types.BuiltinMethodType)):
            break
        else:
            inner = getattr(type(func), "__call__", None)
            if not isinstance(inner, types.FunctionType):
                break
        try:
            outer = inspect.signature(func).parameters
            inner_params = inspect.signature(inner).parameters
        except (TypeError, ValueError):
            break
        for p in inner_params.values():
            if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) and p.name not in outer:
                names.add(p.name)
        func = inner
    return frozenset(names)


class _Call:
    """The call being handled: its id, litebridge's request id, and whether it
    was cancelled. A plain attribute (set under the GIL) is all a flag needs;
    a threading.Event per call cost more than the call itself."""

    __slots__ = ("id", "request_id", "cancelled")

    def __init__(self, rid, request_id=None):
        self.id = rid
        self.request_id = request_id
        self.cancelled = False


_current = contextvars.ContextVar("litebridge_call", default=None)


def _own_decimal_context(modules=sys.modules):
    """Gives the call a decimal context of its own: a copy of the one it
    inherited (what the program set at import kept). Once decimal's context
    has been set in the context calls are copied from (any Decimal
    arithmetic at import does it, as does ``getcontext()``), every copy
    holds that same object, and ``getcontext().prec = 3`` in one call would
    reach every other. Costs a dict look-up when decimal is not imported."""
    dec = modules.get("decimal")
    if dec is not None:
        try:
            dec.setcontext(dec.getcontext().copy())
        except Exception:  # not the real module (a stand-in the program put there)
            pass


def current_request_id():
    """litebridge's request id for the call being handled (the X-Request-Id of
    the HTTP request behind it), or None outside a call or when none was sent.
    Log records carry it as ``request_id`` (see ``Worker.run``)."""
    call = _current.get()
    return None if call is None else call.request_id


def _install_request_ids():
    """Has every log record carry ``request_id``, whatever logger or handler
    formats it: a filter on the root's handlers reached neither a logger
    that does not propagate nor handlers set up after ``run()`` began, and
    a ``%(request_id)s`` format there failed on every record (review 241).
    Installed once, over whatever factory the program set; a value the
    program's own factory gave is kept (review 243).

    ``Logger.makeRecord`` is wrapped first: a record's ``extra`` may not
    name what a factory set (it refuses to overwrite it), so a handler's own
    ``extra={"request_id": ...}`` (or a ``LoggerAdapter``'s) failed its call
    (review 242); its value now wins. A ``Logger`` subclass whose own
    ``makeRecord`` does not call the base class's is not reached."""
    make = logging.Logger.makeRecord
    if not getattr(make, "_litebridge_request_id", False):

        def make_record(self, name, level, fn, lno, msg, args, exc_info, func=None, extra=None,
                        sinfo=None):
            own = _NO_ID
            if extra is not None:
                try:
                    if "request_id" in extra:
                        # Read as makeRecord reads it: its keys, each looked up.
                        rest = {k: extra[k] for k in extra if k != "request_id"}
                        own = extra["request_id"]
                        extra = rest
                except Exception:  # an odd mapping: makeRecord's to judge
                    own = _NO_ID
            record = make(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)
            if own is not _NO_ID:
                record.request_id = own
            return record

        make_record._litebridge_request_id = True
        logging.Logger.makeRecord = make_record
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_litebridge_request_id", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if "request_id" not in record.__dict__:
            record.request_id = current_request_id() or "-"
        return record

    factory._litebridge_request_id = True
    logging.setLogRecordFactory(factory)


_NO_ID = object()


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a call) to every log record."""

    def filter(self, record):
        # A record made by the program's own means; one's own value is kept.
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


def cancelled():
    """True once litebridge has cancelled the call being handled.

    A long synchronous handler should look now and then and stop early; an
    ``async def`` handler is cancelled with ``asyncio.CancelledError``.
    """
    call = _current.get()
    return call is not None and call.cancelled


class WorkerError(Exception):
    """Raise to return an error with a chosen ``type`` (default: the class name).

    An answer, not a failure: litebridge does not count it against the
    method's circuit breaker (a caller sending bad input again and again
    cannot open it for everyone). Any other exception a handler raises
    counts."""

    def __init__(self, message, type_name=None):
        super().__init__(message)
        self.type_name = type_name


class _Method:
    __slots__ = ("name", "func", "idempotent", "cache_ttl_s", "is_async")

    def __init__(self, name, func, idempotent, cache_ttl_s):
        self.name = name
        self.func = func
        self.idempotent = idempotent
        self.cache_ttl_s = cache_ttl_s
        self.is_async = inspect.iscoroutinefunction(func)

    def describe_safely(self):
        """``describe``, or, when the handler cannot be described (a
        callable whose signature raises), its name and what was registered,
        with a warning: the worker serves it all the same."""
        try:
            return self.describe()
        except BaseException as e:
            logging.getLogger("litebridge_worker").warning(
                "method %s: its parameters cannot be described (%s); announced without them",
                self.name, _safe_str(e))
            d = {"name": self.name, "idempotent": self.idempotent}
            if self.cache_ttl_s is not None:
                d["cache_ttl_s"] = self.cache_ttl_s
            return d

    def describe(self):
        d = {"name": self.name, "idempotent": self.idempotent}
        if self.cache_ttl_s is not None:
            d["cache_ttl_s"] = self.cache_ttl_s
        doc = inspect.getdoc(self.func)
        if doc:
            # The first paragraph: what litebridge shows agents (MCP tools).
            d["description"] = doc.split("\n\n", 1)[0].strip()[:1000]
        params = _describe_params(self.func)
        if params is not None:
            d["params"] = params
        elif _takes_positional(self.func):
            d["positional"] = True
        return d


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean",
               list: "array", tuple: "array", dict: "object"}
_UnionType = getattr(types, "UnionType", None)  # int | None, 3.10+


def _takes_positional(func):
    """Whether the handler takes its arguments by position only (``*args``
    or positional-only parameters, and no ``**kwargs``): an MCP tool's
    ``{"args": [...]}`` is then its positional arguments."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    kinds = [p.kind for p in sig.parameters.values()]
    P = inspect.Parameter
    return P.VAR_KEYWORD not in kinds and (P.VAR_POSITIONAL in kinds or P.POSITIONAL_ONLY in kinds)


def _describe_params(func):
    """The handler's parameters as ``[{name, required, type?, nullable?}]``;
    None when they cannot be described (``*args`` or ``**kwargs``:
    ``_takes_positional`` says which handlers take a list).
    Parameters a ``functools.partial`` fixed are not the caller's, and are
    left out (``_bound_names``)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    fixed = None
    out = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return None
        if p.kind is p.POSITIONAL_ONLY:
            return None
        if fixed is None:
            fixed = _bound_names(func)
        if p.name in fixed:
            continue
        item = {"name": p.name, "required": p.default is p.empty}
        json_type, nullable = _annotated_type(func, p.annotation)
        if json_type is not None:
            item["type"] = json_type
            # ``x: str = None`` takes None too (PEP 484's implicit Optional,
            # still common): announced as a plain string, MCP refused a null
            # the handler was written for.
            if nullable or p.default is None:
                item["nullable"] = True
        out.append(item)
    return out


def _annotated_type(func, annotation):
    """The JSON type a parameter's annotation declares, and whether it
    allows None: ``int`` is ``("integer", False)``, ``Optional[int]`` and
    ``int | None`` ``("integer", True)``, ``Annotated[int, "doc"]`` as
    ``int``, ``list[str]`` and ``List[str]`` an array, ``Union[int, float]``
    a number. A string annotation (``from __future__ import annotations``)
    is read in the handler's module without running anything (``_read``).
    Anything else, or an annotation that cannot be read, declares no type:
    ``(None, False)``, never an exception (describing a handler must not
    stop the worker), and never a type stricter than the handler takes."""
    try:
        if isinstance(annotation, str):
            annotation = _read(annotation, _globals_of(func))
        return _json_type_of(annotation, 0)
    except BaseException:  # a user type whose __class__, __or__, ... raises anything at all
        return None, False


def _json_type_of(t, depth):
    if depth > 8:
        return None, False
    kind = type(t)
    if kind is type:  # type(t), not isinstance: a class may define __eq__/__hash__
        return _JSON_TYPES.get(t), False
    if not _is_form(t):  # nothing of the program's is asked (its __class__, __origin__...)
        return None, False
    origin = _typing.get_origin(t)
    if origin is None:
        return None, False
    if origin is _typing.Annotated:
        # Metadata that is only documentation keeps the type; anything else
        # may change what the handler takes (a validator that turns "ff"
        # into 255), so the type is not announced.
        args = _typing.get_args(t)
        budget = [10000]
        if not all(_plain(m, 0, budget) for m in args[1:]):
            return None, False
        return _json_type_of(args[0], depth + 1)
    if origin is _typing.Union or (_UnionType is not None and origin is _UnionType):
        nullable = False
        found = set()
        for arg in _typing.get_args(t):
            if arg is type(None):
                nullable = True
                continue
            json_type, none_too = _json_type_of(arg, depth + 1)
            if json_type is None:
                return None, False  # a member this check cannot judge
            found.add(json_type)
            nullable = nullable or none_too
        if found == {"integer", "number"}:
            found = {"number"}
        return (found.pop(), nullable) if len(found) == 1 else (None, False)
    if type(origin) is type:  # list[int], List[int], dict[str, int], tuple[int, ...]
        return _JSON_TYPES.get(origin), False
    return None, False


def _plain(value, depth, budget):
    """Whether ``value`` is plain data (text, numbers, and lists, tuples and
    dicts of them, at most 10,000 items in all, ``budget``): documentation
    in an ``Annotated``, not behaviour. Types compared by identity (a
    metaclass's ``__eq__`` is not asked)."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    kind = type(value)
    if value is None or kind is str or kind is int or kind is float or kind is bool or kind is bytes:
        return True
    if depth < 4 and (kind is list or kind is tuple):
        return all(_plain(v, depth + 1, budget) for v in value)
    if depth < 4 and kind is dict:
        return all(_plain(k, depth + 1, budget) and _plain(v, depth + 1, budget)
                   for k, v in value.items())
    return False


_FORM_MODULES = ("typing", "typing_extensions")
# Builtin classes a string annotation may subscript (list[int]); typing's
# forms (Optional, List, ...) too, by their module.
_GENERIC_BUILTINS = (list, dict, tuple, set, frozenset, type)


def _is_form(value):
    """Whether ``value`` is one of typing's forms (``Optional``, a
    ``List[int]``, an ``int | None``): looked up without asking the value
    anything (a metaclass's ``__getattribute__`` is not called)."""
    kind = type(value)
    if kind is types.GenericAlias or (_UnionType is not None and kind is _UnionType):
        return True
    try:
        module = type.__getattribute__(kind, "__module__")
    except BaseException:
        return False
    return type(module) is str and module in _FORM_MODULES


# What a string annotation may hold to be read: names, attributes,
# subscripts, constants, tuples and lists (Dict[str, int], Callable[[int],
# str]) and ``|``. No call, no operator but ``|``: reading it runs nothing
# of the program's (an annotation string is not always an expression
# meant to be run: "int or None").
_READABLE = (ast.Expression, ast.Name, ast.Attribute, ast.Subscript, ast.Constant,
             ast.Tuple, ast.List, ast.Load, ast.BinOp, ast.BitOr)


def _read(text, module_globals):
    """The object a string annotation names, looked up in the handler's
    module and the builtins without running the program's code: names and
    attributes through dictionaries and ``inspect.getattr_static`` (a
    module's lazy ``__getattr__``, which may import a model, is not
    called); subscripts only of classes and ``typing``'s forms. A string
    holding a string ("'int'") is read once more. Raises when it cannot."""
    for _ in range(2):
        text = str.__str__(text)  # a str subclass's own methods are not called
        if len(text) > 1000:  # before parsing: a long one costs seconds, a deep one crashed 3.9
            raise ValueError("not an annotation litebridge reads")
        tree = ast.parse(text.strip(), mode="eval")
        if not all(isinstance(n, _READABLE) for n in ast.walk(tree)):
            raise ValueError("not an annotation litebridge reads")
        body = tree.body
        if isinstance(body, ast.Constant) and isinstance(body.value, str):
            text = body.value
            continue
        return _read_node(body, module_globals)
    raise ValueError("not an annotation litebridge reads")


def _read_node(node, module_globals):
    if isinstance(node, ast.Name):
        if node.id in module_globals:
            return module_globals[node.id]
        return _builtins.__dict__[node.id]
    if isinstance(node, ast.Attribute):
        return inspect.getattr_static(_read_node(node.value, module_globals), node.attr)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_read_node(n, module_globals) for n in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Subscript):
        base = _read_node(node.value, module_globals)
        # Only builtin classes and typing's forms: a class of the program's
        # may run anything in its __class_getitem__ or its metaclass's
        # __getitem__, and answer any type.
        if not (any(base is g for g in _GENERIC_BUILTINS) or _is_form(base)):
            raise ValueError("not an annotation litebridge reads")
        return base[_read_node(node.slice, module_globals)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left = _read_node(node.left, module_globals)
        right = _read_node(node.right, module_globals)
        # Only plain classes (their metaclass is type, whose | is
        # typing's), None and typing's forms: another's __or__ or
        # __ror__ is the program's code.
        for side in (left, right):
            if not (side is None or type(side) is type or _is_form(side)):
                raise ValueError("not an annotation litebridge reads")
        return left | right
    raise ValueError("not an annotation litebridge reads")


def _globals_of(func):
    """The module globals a handler's string annotations are read in: those
    of the function under its bound methods, partials and wrappers."""
    for _ in range(64):
        if isinstance(func, types.MethodType):
            func = func.__func__
        elif isinstance(func, functools.partial):
            func = func.func
        elif getattr(func, "__wrapped__", None) is not None:
            func = func.__wrapped__
        else:
            break
    found = getattr(func, "__globals__", None)
    if found is None and not isinstance(func, type):
        found = getattr(getattr(type(func), "__call__", None), "__globals__", None)
    return found if isinstance(found, dict) else {}


class _Shape:
    """What a function accepts, precomputed: checking a call against it costs
    a few comparisons instead of ``Signature.bind``'s microseconds."""

    __slots__ = ("required", "positional", "varargs", "names", "varkw", "required_names",
                 "required_kwonly", "required_posonly", "sig", "bound", "bound_kw")

    @classmethod
    def of(cls, func):
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return None
        P = inspect.Parameter
        shape = cls()
        params = list(sig.parameters.values())
        pos = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
        shape.positional = len(pos)
        shape.required = sum(1 for p in pos if p.default is P.empty)
        shape.varargs = any(p.kind == P.VAR_POSITIONAL for p in params)
        shape.varkw = any(p.kind == P.VAR_KEYWORD for p in params)
        # Not the caller's to pass: self, cls, what a partial bound or fixed.
        shape.bound = _bound_names(func)
        shape.bound_kw = shape.bound if shape.varkw else frozenset()
        shape.names = frozenset(p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
                                and p.name not in shape.bound)
        shape.required_names = frozenset(
            p.name for p in params
            if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) and p.default is P.empty
        )
        # Params given as a list cannot fill these, nor an object those.
        shape.required_kwonly = any(p.kind == P.KEYWORD_ONLY and p.default is P.empty for p in params)
        shape.required_posonly = any(p.kind == P.POSITIONAL_ONLY and p.default is P.empty for p in params)
        shape.sig = sig
        return shape

    def check(self, args, kwargs):
        if not kwargs:
            if (len(args) < self.required or (len(args) > self.positional and not self.varargs)
                    or self.required_kwonly):
                return self._explain(args, kwargs)
            return None
        if (args or self.required_posonly or not (self.varkw or kwargs.keys() <= self.names)
                or not (self.required_names <= kwargs.keys())
                or (self.bound_kw and not self.bound_kw.isdisjoint(kwargs))):
            return self._explain(args, kwargs)
        return None

    def _explain(self, args, kwargs):
        taken = sorted(k for k in kwargs if k in self.bound)
        if taken:
            return ("%s cannot be passed: the handler binds %s itself (a method's self or cls, or "
                    "what functools.partial bound or fixed)"
                    % (", ".join(repr(k) for k in taken), "it" if len(taken) == 1 else "them"))
        try:
            self.sig.bind(*args, **kwargs)
        except TypeError as e:
            return str(e)
        return None


class _Pool:
    """Threads for synchronous handlers, started on demand up to
    ``max_threads`` and kept. The threads are daemons, so a handler that
    never returns cannot keep the process alive past ``drain_timeout`` once
    stdin has closed (ThreadPoolExecutor's threads are joined at exit, which
    kept such a worker alive for as long as the handler ran). A job claims an
    idle thread when it is submitted, so two calls in a row never wait behind
    one waking thread.

    An idle thread waits in ``os.read`` on a pipe of its own and is woken by
    a byte written to it, once the loop's thread has dispatched every line it
    read (``flush``). ``os.write`` lets go of the GIL before the write wakes
    the thread, so the thread finds the GIL free. A lock or a queue (the pool
    before) woke it while the loop's thread still held the GIL: measured on
    one core, 9.7 context switches per call against 2 for an ``async def``
    handler, and 3.7 this way; p50 45-50 us this way against 72-105 us
    before, in alternating runs (BENCHMARKS.md)."""

    def __init__(self, max_threads, prefix):
        self._jobs = collections.deque()
        self._max = max(1, max_threads)
        self._prefix = prefix
        self._lock = threading.Lock()
        self._idle = []  # the pipes (write ends) of threads waiting for a job
        self._started = 0
        self._stopping = False
        self._to_wake = []  # claimed in submit, woken in flush

    def submit(self, fn, *args):
        """Queues a job; the thread it claims is woken by ``flush``. Called
        from the loop's thread only."""
        with self._lock:
            self._jobs.append((fn, args))
            if self._idle:
                self._to_wake.append(self._idle.pop())  # this job is that thread's
                return
            if self._started >= self._max:
                return  # it waits for the first thread to come free
            self._started += 1
        try:
            self._start()
        except BaseException:
            # No thread (the system has none left): the job is taken back,
            # so its call is answered once, by the caller's error; unless a
            # thread that came free took it already, and runs it.
            with self._lock:
                self._started -= 1
                try:
                    self._jobs.remove((fn, args))
                except ValueError:
                    return
            raise

    def _start(self):
        threading.Thread(target=self._work, name="%s_%d" % (self._prefix, self._started),
                         daemon=True).start()

    def flush(self):
        """Wakes the threads the jobs submitted since the last flush claimed.
        The loop's thread calls it once it has dispatched every line it read:
        a thread woken at once would take the GIL from the dispatching of the
        next line, and calls that arrive together would be handed over one
        switch at a time instead of together."""
        to_wake, self._to_wake = self._to_wake, []
        for wake in to_wake:
            self._wake(wake)

    def _wake(self, wake):
        try:
            os.write(wake, b"\0")
        except OSError as e:
            # Its pipe is broken (a handler closed a descriptor it did not
            # own): that thread is lost to the pool, and another takes its
            # place, so its job still runs.
            logging.getLogger("litebridge_worker").warning(
                "a handler thread could not be woken (%s); starting another", e)
            with self._lock:
                replace = not self._stopping
            if replace:
                self._start()

    def _work(self):
        lock, jobs, idle = self._lock, self._jobs, self._idle
        pid = os.getpid()
        try:
            wait, wake = os.pipe()
        except OSError:
            # No descriptors left: run what is queued, then leave the slot
            # to a thread that can wait for more.
            wait = wake = None
        try:
            while True:
                with lock:
                    if jobs:
                        fn, args = jobs.popleft()
                    elif self._stopping or wake is None:
                        if wake is None:
                            self._started -= 1
                        return
                    else:
                        idle.append(wake)
                        fn = None
                if fn is None:
                    os.read(wait, 1)
                    continue
                try:
                    fn(*args)
                except BaseException:  # the job answers its own errors; never lose the thread
                    pass
                fn = args = None
                if os.getpid() != pid:
                    # The handler forked and the child came back here: this
                    # copy stops, so it cannot take the parent's wake-ups.
                    return
        finally:
            if wait is not None:
                os.close(wait)
                os.close(wake)

    def shutdown(self):
        with self._lock:
            self._stopping = True
            idle, self._idle = self._idle, []
        for wake in idle:
            self._wake(wake)


class _Watchdog:
    """The worker never outlives litebridge, whatever its handlers do.

    A thread (``watch``) waits for stdin's writer to be gone, seen by the
    kernel (the event loop may be held by ``time.sleep`` in an ``async def``
    and never read the end). Then the loop has ``drain_timeout`` plus the
    tasks' grace plus a margin from the moment it reads the end, or from the
    moment it stops turning (a turn is counted each second while it reads
    on), before the process is ended whatever runs. What kept workers
    alive: threads that are not daemons, tasks made while others were
    cancelled, a blocked loop, a KeyboardInterrupt in ``asyncio.run``'s
    cleanup (review 164). Counted from the hang-up alone, it ended workers
    still answering what was sent before it (review 165). ``run`` returning
    disarms it (unless threads that are not daemons still run).

    It holds what it needs, not the worker: a worker that has run must not
    be kept alive by its watchdog, blocked for good on a stdin that never
    ends.
    """

    def __init__(self, out_lock, drain_timeout):
        self.out_lock = out_lock
        self.limit = drain_timeout + _CANCEL_GRACE + _WATCHDOG_MARGIN
        self.finished = threading.Event()  # run() returned
        self.eof_seen = threading.Event()  # the loop read the end of stdin
        self.turns = 0
        self.loop = None

    def turned(self):
        self.turns += 1

    def watch(self, fd):
        # epoll, not poll: a poll under way holds the pipe open, so a handler
        # that closed the descriptor (a library closing one it does not own)
        # left litebridge writing calls into a pipe that was read as ended,
        # and they were taken as crashes (worker_pool.rs); an epoll watch
        # goes with the descriptor's last close. Linux only: elsewhere the
        # loop's end of stdin is all there is.
        try:
            watch = select.epoll()
            try:
                watch.register(fd, 0)  # the end only: EPOLLHUP, EPOLLERR
                while not watch.poll():
                    pass
            finally:
                watch.close()
        except Exception:  # not a descriptor epoll can watch (a file): the loop's EOF is all
            return
        # Counted from the hang-up, or from the last turn seen since (the
        # loop is asked to turn each second); a wait ends at the limit, not
        # at the next whole second (the count had started a second late, and
        # ended up to a second late too).
        turns, still_since = self.turns, time.monotonic()
        self._ask_turn()
        while not self.eof_seen.wait(min(1.0, max(0.0, still_since + self.limit
                                                  - time.monotonic()))):
            if self.finished.is_set():
                return
            now = time.monotonic()
            if self.turns != turns:
                turns, still_since = self.turns, now
            elif now - still_since >= self.limit:
                self.leave_now("the event loop has not turned for %.1f s, and stdin has ended"
                               % (now - still_since))
            self._ask_turn()
        if self.finished.wait(self.limit):
            return
        self.leave_now("still running %.1f s after stdin ended" % self.limit)

    def _ask_turn(self):
        """Has the loop count a turn, when it next turns."""
        loop = self.loop
        if loop is not None:  # None: not started yet, no turns
            try:
                loop.call_soon_threadsafe(self.turned)
            except RuntimeError:  # the loop is closed: run() is returning
                pass

    def leave_now(self, why):
        """Ends the process (status 1), never in the middle of a reply line
        (a write under way gets ``_CANCEL_GRACE`` to finish), with what
        handlers printed flushed and one line on stderr, given a second on a
        thread of its own: a stream nobody reads must not hold the exit
        (review 165)."""
        self.out_lock.acquire(timeout=_CANCEL_GRACE)

        def say():
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # gone with litebridge
                    pass
            try:
                sys.stderr.write("litebridge worker: %s; leaving without waiting for it\n" % why)
                sys.stderr.flush()
            except Exception:
                pass

        try:
            saying = threading.Thread(target=say, name="litebridge-leaving", daemon=True)
            saying.start()
            saying.join(1.0)
        except RuntimeError:  # no new threads at interpreter shutdown (3.12+)
            pass
        os._exit(1)


class Worker:
    """A registry of methods and the loop that serves them."""

    def __init__(self, max_threads=32, drain_timeout=10.0):
        self._methods = {}
        self._resolver = None
        self._prefixes = None
        self._resolved = None
        self._max_threads = max_threads
        self._drain_timeout = drain_timeout
        self._out = None
        self._out_lock = threading.Lock()
        # What the watchdog thread shares with the worker (not the worker
        # itself, which it would keep alive: see ``_Watchdog``).
        self._watchdog = _Watchdog(self._out_lock, drain_timeout)
        # Replies the loop's thread makes while it dispatches the lines of
        # one read: written together when that read's lines are dispatched
        # (see ``_on_readable``). None when not gathering.
        self._gathered = None
        self._gathered_size = 0
        self._gathered_at = 0.0
        # Handler -> how many of its first steps in a row, up to _TRUSTED,
        # were quicker than _GATHER_S (replies are gathered only behind
        # handlers at _TRUSTED).
        self._quick = {}
        self._loop_thread = None
        # json.dumps with non-default options builds an encoder per call.
        # NaN is refused (ValueError, answered as an error): no JSON reader
        # litebridge has takes it. Bytes and infinities are written as
        # litebridge's clients write and read them ({"$blob"}, {"$real"}).
        encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                  allow_nan=False, default=_blob).encode

        def _encode(value):
            try:
                return encode(value)
            except ValueError as e:
                # An infinity, sent as the clients send theirs (the rare
                # result with one pays for the walk); NaN stays refused.
                if "Out of range float" not in str(e):
                    raise
                return encode(_reals(value))

        self._encode = _encode
        self._loop = None
        self._inflight = {}  # id -> (task, cancel flag, is_async)
        self._signatures = {}

    # ----- registration -------------------------------------------------

    def method(self, name=None, idempotent=True, cache_ttl_s=None):
        """Decorator registering a function (sync or ``async def``).

        ``idempotent=False`` tells litebridge never to retry the call on
        another worker after a crash. ``cache_ttl_s`` makes results cacheable.
        A name litebridge would never route (starting with ``$``, longer than
        256 characters, or holding a control or invisible character) raises
        ``ValueError`` naming it and the rule.
        """

        if cache_ttl_s is not None and not _finite_seconds(cache_ttl_s):
            raise ValueError("cache_ttl_s must be a finite number of seconds >= 0, got %r" % (cache_ttl_s,))

        if name is not None:
            check_method_name(name)

        def register(func):
            key = name if name is not None else getattr(func, "__name__", None)
            if key is None:
                raise TypeError("%r has no __name__: register it with name=..." % (func,))
            check_method_name(key)
            self._methods[key] = _Method(key, func, idempotent, cache_ttl_s)
            return func

        return register

    def add(self, func, name=None, idempotent=True, cache_ttl_s=None):
        """Registers ``func`` without the decorator syntax."""
        return self.method(name, idempotent, cache_ttl_s)(func)

    def set_resolver(self, resolver):
        """Resolves names not registered: ``resolver(name) -> callable or None``.

        The resolver runs on the event loop's thread, as module code expects
        of an import: while it imports, the worker answers nothing, and an
        import longer than litebridge's ping timeout (5 s) gets the worker
        replaced, so modules that load a model should load it
        on first use. An exception from the resolver (``SystemExit`` from a
        module that exits as it is imported too) is answered as method not
        found, with its message. If the resolver has a ``prefixes`` attribute (dotted
        names, as ``dotted.DottedResolver`` has), ``$/ready`` announces them,
        without trailing dots, as the only names it may serve; a plain
        callable announces none; a prefix litebridge could route no name
        under raises ``ValueError`` as a method name does. ``None`` removes
        the resolver.
        """
        prefixes = getattr(resolver, "prefixes", None)
        if prefixes is not None:
            if isinstance(prefixes, str):
                prefixes = [prefixes]
            prefixes = list(prefixes)
            if not all(isinstance(p, str) for p in prefixes):
                raise TypeError("resolver.prefixes must be strings")
            prefixes = [p.rstrip(".") for p in prefixes]
            for p in prefixes:
                check_method_name(p, "prefix")
        from .dotted import DottedResolver

        self._resolver = resolver
        self._prefixes = prefixes
        # Which names resolve without an import (None: any may import).
        self._resolved = resolver.resolved if isinstance(resolver, DottedResolver) else None

    # ----- serving --------------------------------------------------------

    def run(self):
        """Serves stdin/stdout until stdin closes. Never returns early.

        Logging goes to stderr (which litebridge forwards to its own log); if
        the program set up no logging, records are formatted with the request
        id of the call that logged them.
        """
        self._take_stdout()
        self._take_stdin()
        root = logging.getLogger()
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(
                "%(levelname)s %(name)s [request %(request_id)s] %(message)s"))
            root.addHandler(handler)
            root.setLevel(logging.INFO)
        for handler in root.handlers:
            handler.addFilter(RequestIdFilter())
        _install_request_ids()
        if hasattr(select, "epoll"):
            threading.Thread(target=self._watchdog.watch, args=(self._in,),
                             name="litebridge-watchdog", daemon=True).start()
        try:
            asyncio.run(self._serve())
        except KeyboardInterrupt:
            pass
        finally:
            try:
                # A reply a pool thread is still writing is finished
                # (bounded) before the interpreter ends under it: a line is
                # whole or never started.
                if self._out_lock.acquire(timeout=_CANCEL_GRACE):
                    self._out_lock.release()
            finally:
                # Disarmed, so code after run() goes on, unless threads that
                # are not daemons run on: the interpreter would wait for them
                # at exit for good, so the watchdog stays armed.
                if not any(t.is_alive() and not t.daemon and t is not threading.main_thread()
                           for t in threading.enumerate()):
                    self._watchdog.finished.set()

    def _take_stdout(self):
        self._out = os.dup(1)
        os.dup2(2, 1)
        # What the program printed before run() and Python still buffers
        # (stdout is a pipe: block-buffered) goes to stderr with the rest:
        # flushed onto the protocol's channel, a line without its newline
        # ran into $/ready, and the worker never got ready (review 241).
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        # fd 1 is stderr's pipe now. sys.stdout gets an object of its own
        # onto it (not sys.stderr itself, which a handler's close() would
        # close for logging too), buffered as stderr is: by line, or not at
        # all (python -u).
        err = sys.stderr
        encoding = getattr(err, "encoding", None)
        if not isinstance(encoding, str):
            encoding = "utf-8"
        # Written through a descriptor of its own (not inherited: os.dup),
        # which stays stderr's pipe whatever a handler does to fd 1.
        raw = _StdoutRaw(os.dup(2), "w", closefd=False)
        unbuffered = isinstance(getattr(err, "buffer", None), io.RawIOBase)
        sys.stdout = _Stdout(raw if unbuffered else _StdoutBuffer(raw), encoding=encoding,
                             errors="backslashreplace", line_buffering=not unbuffered,
                             write_through=unbuffered)

    def _take_stdin(self):
        # os.dup's copy is not inherited by child processes; fd 0 now reads
        # nothing, for the worker's own code and for the programs it starts.
        self._in = os.dup(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            os.dup2(devnull, 0)
        finally:
            os.close(devnull)

    async def _serve(self):
        self._loop = asyncio.get_running_loop()
        self._watchdog.loop = self._loop
        self._loop_thread = _get_ident()
        _SERVING.add(self)
        self._pool = _Pool(self._max_threads, "litebridge-handler")
        self._eof = self._loop.create_future()
        self._buf = bytearray()
        fd = self._in
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable, fd)
        ready = {
            "pid": os.getpid(),
            "methods": [m.describe_safely() for m in self._methods.values()],
            "dynamic": self._resolver is not None,
        }
        if self._resolver is not None and self._prefixes is not None:
            ready["prefixes"] = self._prefixes
        # On a line of its own whatever was written to the real stdout
        # before run() (a print(..., end="") under PYTHONUNBUFFERED, a
        # process started at import): it ran into $/ready, and the worker
        # never got ready (review 241). litebridge passes over blank lines.
        line = self._encode({"jsonrpc": "2.0", "method": "$/ready", "params": ready})
        self._send_now(("\n" + line + "\n").encode("utf-8", "replace"))
        await self._eof
        self._loop.remove_reader(fd)
        deadline = self._loop.time() + self._drain_timeout
        while self._inflight and self._loop.time() < deadline:
            await asyncio.sleep(0.01)
        self._pool.shutdown()
        await self._end_tasks()

    async def _end_tasks(self):
        """Cancels the tasks still running (handlers past the drain, the
        program's own), and leaves at once if some are still running
        ``_CANCEL_GRACE`` later: ``asyncio.run`` would wait for them for
        good, and a handler that swallows ``CancelledError`` kept the worker
        alive after litebridge was gone (an orphan, when litebridge is
        killed: it cannot stop its workers then)."""
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not pending:
            return
        # The async calls among them are cancelled by the worker, as
        # litebridge would: answered "cancelled", not as the handler's own
        # error. Not the `def` calls still running: told so, one would
        # return early, and its cut-short result go out as an answer
        # (review 243).
        for _task, flag, is_async in list(self._inflight.values()):
            if is_async:
                flag.cancelled = True
        for t in pending:
            t.cancel()
        _, still = await asyncio.wait(pending, timeout=_CANCEL_GRACE)
        if still:
            self._watchdog.leave_now("%d task(s) still running %.1f s after they were "
                                     "cancelled at the end of the drain"
                                     % (len(still), _CANCEL_GRACE))

    def _on_readable(self, fd):
        """Reads and dispatches what stdin has. Unless that is one whole
        line with nothing before it, the replies the calls it dispatches
        make at once (``async def`` handlers that return without waiting,
        errors) are gathered and written together once every line read is
        dispatched: one ``write`` for the lot, where litebridge sends many
        calls at once, instead of one each. They wait only behind handlers
        known to be quick: before an ``async def`` handler whose last
        ``_TRUSTED`` first steps in such reads did not each take less than
        ``_GATHER_S``, or one of whose first steps took longer since (in a
        read of one line too: ``_distrust``), and before a name the
        resolver may import, they are written; so they are too once the
        first has waited ``_GATHER_S``, or ``_GATHER_BYTES`` are gathered.
        What a quick handler can still do is end the process, or keep the
        loop, the first time it is not quick: the replies of the millisecond
        before it are then lost (their calls were not answered: litebridge
        reports them as it reports a crash) or late."""
        try:
            self._read(fd)
        finally:
            try:
                if self._gathered is not None:
                    self._write_gathered()
            except (BrokenPipeError, ConnectionResetError):
                pass  # litebridge's end of the pipe is gone: stdin ends next
            finally:
                self._gathered = None
                self._pool.flush()

    def _forget_gathered(self):
        if self._gathered:
            self._gathered = []
            self._gathered_size = 0

    def _write_gathered(self):
        gathered = self._gathered
        if gathered:
            payload = gathered[0] if len(gathered) == 1 else b"".join(gathered)
            gathered.clear()
            self._gathered_size = 0
            self._send_now(payload)

    def _read(self, fd):
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # The end: never read again (a reader left on it is called at
            # every turn of the loop), and ended before the last partial
            # line is answered, whose write fails when litebridge is gone.
            # A failed write here used to skip both: the worker answered
            # the same line again and again, at full CPU, for good.
            rest = bytes(self._buf)
            self._buf.clear()
            self._loop.remove_reader(fd)
            if not self._eof.done():
                self._eof.set_result(None)
            self._watchdog.eof_seen.set()  # the watchdog counts from here
            # Whole lines a failed write left unread, then the last partial
            # one: each answered on its own.
            for line in rest.split(b"\n"):
                if line.strip():
                    try:
                        self._dispatch(line)
                    except (BrokenPipeError, ConnectionResetError):
                        return  # nobody reads the answers any more
            return
        buf = self._buf
        if not buf and data.find(b"\n") == len(data) - 1:
            # The usual case when calls come one at a time, one whole line:
            # no copy into the buffer, and nothing to gather its reply with.
            if data.strip():
                self._dispatch(data)
            return
        start = len(buf)
        buf += data
        if b"\n" not in data:
            return
        self._gathered = []
        begin = 0
        search = start
        try:
            while True:
                nl = buf.find(b"\n", search)
                if nl < 0:
                    break
                line = bytes(buf[begin:nl])
                begin = search = nl + 1
                if line.strip():
                    self._dispatch(line)
                    if self._gathered and _monotonic() - self._gathered_at > _GATHER_S:
                        self._write_gathered()
        finally:
            del buf[:begin]

    def _dispatch(self, line):
        try:
            text = line.decode("utf-8", "surrogatepass")
            # Bytes and infinities a client sent ({"$blob"}, {"$real"}) as
            # Python's own; only a line that names one pays for the hook.
            if b'"$blob"' in line or b'"$real"' in line:
                msg = json.loads(text, object_hook=_revive, parse_constant=_refuse_constant)
            else:
                msg = _LOADS(text)
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
            self._reply_error(None, PARSE_ERROR, "parse error: %s" % e)
            return
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" or not isinstance(
            msg.get("method"), str
        ):
            if isinstance(msg, dict) and "method" not in msg and "id" in msg:
                return  # a stray response: litebridge does not send these
            self._reply_error(msg.get("id") if isinstance(msg, dict) else None,
                              INVALID_REQUEST, "invalid request")
            return
        rid = msg.get("id")
        # An id past a float's range (1e999) reads as an infinity, which no
        # reply could carry back as JSON.
        if rid is not None and (
            type(rid) not in (int, float, str) or (type(rid) is float and rid in _INFINITIES)
        ):
            self._reply_error(None, INVALID_REQUEST, "invalid request: the id must be a number or a string")
            return
        try:
            self._route(msg, rid)
        except BaseException as e:  # an exception that cannot be shown, an unhashable handler...
            self._answer_failure(rid, e)

    def _route(self, msg, rid):
        method = msg["method"]
        params = msg.get("params")
        if method == "$/cancelRequest":
            self._cancel(params)
            return
        if method == "$/ping":
            if rid is not None:
                self._reply(rid, {"pong": True, "pid": os.getpid(), "in_flight": len(self._inflight)})
            return
        if params is None:
            args, kwargs = (), {}
        elif isinstance(params, list):
            args, kwargs = tuple(params), {}
        elif isinstance(params, dict):
            args, kwargs = (), params
        else:
            self._reply_error(rid, INVALID_PARAMS, "params must be an array or an object")
            return
        meta = msg.get("meta")
        flag = _Call(rid, meta.get("request_id") if isinstance(meta, dict) else None)
        target = self._methods.get(method)
        if target is not None:
            self._begin(method, target.func, target.is_async, args, kwargs, flag)
            return
        func = None
        if self._resolver is not None:
            # On the loop's thread, as module code expects of an import
            # (signal handlers, asyncio.get_event_loop(), a sqlite3
            # connection used later by async handlers): an import that takes
            # longer than litebridge's ping timeout gets the worker replaced.
            # Replies gathered so far are written first, not held behind it.
            if self._gathered and (self._resolved is None or self._resolved(method) is None):
                self._write_gathered()
            try:
                func = self._resolver(method)
            except BaseException as e:  # refused, broken, or a module that exits as it is imported
                self._reply_exception(rid, e, METHOD_NOT_FOUND)
                return
        if func is None:
            if rid is not None:
                self._reply_error(rid, METHOD_NOT_FOUND, "method not found: %s" % method)
            return
        self._begin(method, func, inspect.iscoroutinefunction(func), args, kwargs, flag)

    def _begin(self, method, func, is_async, args, kwargs, flag):
        """Checks the params and starts the call, in a context of its own (a
        copy of this one, which no handler runs in): a coroutine function
        in a Task started eagerly, answered here if it does not wait; a
        plain function on a pool thread."""
        rid = flag.id
        problem = self._check_params(func, args, kwargs)
        if problem is not None:
            self._reply_error(rid, INVALID_PARAMS, "invalid params for %s: %s" % (method, problem))
            return
        if is_async:
            # The Task copies this context and sets the call's flag in its copy.
            if self._gathered is None:
                began = _monotonic()
                task = _eager_task(self._loop, self._run_async(flag, func, args, kwargs))
                if _monotonic() - began >= _GATHER_S:
                    self._distrust(func)
            else:
                task = self._eager_gathering(func, flag, args, kwargs)
            if rid is not None and not task.done():
                self._track(rid, task, flag)
        else:
            if rid is not None:
                self._inflight[rid] = (None, flag, False)
            try:
                self._pool.submit(contextvars.copy_context().run, self._run_sync, flag, func, args, kwargs)
            except BaseException:
                self._untrack(rid, flag)
                raise

    def _eager_gathering(self, func, flag, args, kwargs):
        """``_eager_task`` while replies are gathered: they are written
        first unless ``func``'s last ``_TRUSTED`` first steps each took less
        than ``_GATHER_S`` (a handler seen for the first time, or one that
        kept the loop longer lately, may keep it, or end the process, with
        them unsent); this one's time is noted. Wall time: a step the system
        paused counts as slow, and costs only the next few calls gathering."""
        quick = self._quick
        try:
            runs = quick.get(func, 0)
        except TypeError:  # an unhashable callable: never trusted
            runs = None
        if (runs is None or runs < _TRUSTED) and self._gathered:
            self._write_gathered()
        began = _monotonic()
        task = _eager_task(self._loop, self._run_async(flag, func, args, kwargs))
        if runs is not None:
            try:
                slow = _monotonic() - began >= _GATHER_S
                if runs < _TRUSTED or slow:
                    if runs == 0 and len(quick) >= _REMEMBERED and func not in quick:
                        quick.clear()
                    quick[func] = 0 if slow else runs + 1
            except BaseException:
                # A callable whose hash fails now: the call has started and
                # answers itself, so nothing here may reach the caller's
                # error path (it would be answered twice).
                pass
        return task

    def _distrust(self, func):
        """A first step of ``func`` that came alone took ``_GATHER_S`` or
        more: replies no longer wait behind it until it has been quick
        ``_TRUSTED`` times again."""
        try:
            if func in self._quick:
                self._quick[func] = 0
        except BaseException:  # a hash that fails now: the call answers itself
            pass

    def _untrack(self, rid, flag):
        """Forgets call ``rid`` if it is the one ``flag`` belongs to: a
        call sent again under the id of one in flight (a buggy sender) keeps
        its place when the first ends (review 241: the first took it, so a
        cancel of the second was lost, and at the end of stdin nothing was
        waited for)."""
        entry = self._inflight.get(rid)
        if entry is not None and entry[1] is flag:
            self._inflight.pop(rid, None)

    def _track(self, rid, task, flag):
        """Keeps a Task that goes on waiting where ``$/cancelRequest`` finds it."""
        self._inflight[rid] = (task, flag, True)
        task.add_done_callback(lambda _t, rid=rid, flag=flag: self._untrack(rid, flag))
        if flag.cancelled:  # cancelled while a sync handler handed it over
            task.cancel()

    def _check_params(self, func, args, kwargs):
        """Binds the params to the signature (cached per function): a mismatch
        is the caller's mistake and must not look like the handler failing."""
        try:
            shape = self._signatures.get(func, False)
        except TypeError:  # an unhashable callable (a dataclass instance with __call__)
            shape = _Shape.of(func)
        else:
            if shape is False:
                shape = _Shape.of(func)
                if len(self._signatures) >= _REMEMBERED:
                    self._signatures.clear()
                self._signatures[func] = shape
        return None if shape is None else shape.check(args, kwargs)

    def _run_sync(self, flag, func, args, kwargs):
        """Runs on a pool thread, in the call's own context, and answers from
        there; an awaitable the handler returns is awaited on the loop."""
        _current.set(flag)
        _own_decimal_context()
        rid = flag.id
        handed_over = False
        try:
            if flag.cancelled:
                # Cancelled while it waited for a thread: never started
                # (review 241: it ran in full, after litebridge had told its
                # caller it was cancelled).
                self._reply_error(rid, WORKER_ERROR, "cancelled", {"type": "CancelledError", "traceback": ""})
                return
            try:
                result = func(*args, **kwargs)
            except BaseException as e:  # SystemExit would end the thread with no answer
                self._reply_exception(rid, e)
                return
            try:
                awaitable = type(result) not in _PLAIN and inspect.isawaitable(result)
            except BaseException:  # a result whose __class__ raises: _reply answers it
                awaitable = False
            if awaitable:
                handed_over = self._hand_over(flag, result)
                return
            self._reply(rid, result)
        finally:
            if rid is not None and not handed_over:
                self._untrack(rid, flag)

    def _hand_over(self, flag, awaitable):
        """Has the loop await what a sync handler returned (an ``async def``
        behind a plain decorator returns its coroutine), in a copy of the
        call's context. True once the loop has it; False if it was answered
        here instead."""
        ctx = contextvars.copy_context()
        try:
            self._loop.call_soon_threadsafe(ctx.run, self._await_handed, flag, awaitable)
        except BaseException as e:  # the loop has closed
            close = getattr(awaitable, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException:
                    pass
            self._reply_exception(flag.id, e)
            return False
        return True

    def _await_handed(self, flag, awaitable):
        """On the loop: awaits what ``_hand_over`` handed over, as an
        ``async def`` call, in a Task of its own."""
        try:
            task = _eager_task(self._loop, self._run_async(flag, _identity, (awaitable,), {}))
        except BaseException as e:
            self._untrack(flag.id, flag)
            self._reply_exception(flag.id, e)
            return
        if flag.id is not None:
            if task.done():
                self._untrack(flag.id, flag)
            else:
                self._track(flag.id, task, flag)

    async def _run_async(self, flag, func, args, kwargs):
        """An ``async def`` call, as its Task's coroutine: it answers whatever
        happens, since an exception out of a Task (SystemExit) would stop the
        event loop."""
        _current.set(flag)
        _own_decimal_context()
        rid = flag.id
        try:
            result = await func(*args, **kwargs)
        except asyncio.CancelledError as e:
            if flag.cancelled:
                self._reply_error(rid, WORKER_ERROR, "cancelled", {"type": "CancelledError", "traceback": ""})
            else:
                # Not litebridge's cancel (an awaited future something else
                # cancelled): an error of the handler's, with its traceback
                # (review 241).
                self._reply_exception(rid, e)
            return
        except BaseException as e:  # SystemExit out of a Task would stop the event loop
            self._reply_exception(rid, e)
            return
        self._reply(rid, result)

    def _cancel(self, params):
        rid = params.get("id") if isinstance(params, dict) else None
        entry = self._inflight.get(rid)
        if entry is None:
            return
        task, flag, is_async = entry
        flag.cancelled = True
        if is_async and task is not None:
            task.cancel()
        # A thread cannot be stopped from outside: a synchronous handler sees
        # cancelled() and returns early; its answer is still sent.

    # ----- writing --------------------------------------------------------

    def _write(self, obj):
        try:
            data = self._encode(obj)
        except Exception as e:  # not serializable, circular, or nested too deep
            rid = obj.get("id")
            data = json.dumps({
                "jsonrpc": "2.0", "id": rid,
                "error": {"code": WORKER_ERROR,
                          "message": "the result is not JSON serializable: %s" % e,
                          "data": {"type": "TypeError", "traceback": "",
                                   "kind": "worker_error", "recoverable": False}},
            })
        # An error's message and traceback may quote text that is not valid
        # Unicode (a file name decoded with "surrogateescape"): replaced, so
        # the line stays one litebridge can read.
        self._send((data + "\n").encode("utf-8", "replace"))

    def _send(self, payload):
        """Writes ``payload`` (whole lines), or gathers it when the loop's
        thread is dispatching a read's lines (``_on_readable``)."""
        gathered = self._gathered
        if gathered is not None and _get_ident() == self._loop_thread:
            if not gathered:
                self._gathered_at = _monotonic()
            gathered.append(payload)
            self._gathered_size += len(payload)
            if self._gathered_size >= _GATHER_BYTES:
                self._write_gathered()
            return
        self._send_now(payload)

    def _send_now(self, payload):
        with self._out_lock:
            try:
                n = os.write(self._out, payload)
            except BlockingIOError:
                n = 0
            if n < len(payload):
                view = memoryview(payload)[n:]
                while view:
                    try:
                        n = os.write(self._out, view)
                    except BlockingIOError:
                        # stdout shares stdin's non-blocking mode (one
                        # socket for both, as socat or inetd give): wait
                        # until litebridge reads, never tear a line.
                        _wait_writable(self._out)
                        continue
                    view = view[n:]

    def _notify(self, method, params):
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    def _reply(self, rid, result):
        """Answers with ``result``; anything that keeps it from being sent
        as it is (not JSON, not Unicode, not read back as it was sent) is
        answered with an error instead. Never raises, but for the write."""
        if rid is None:
            return
        try:
            if type(result) is str:
                body = _encode_str(result)
            elif _FAST_ENCODE is not None:
                try:
                    body = _FAST_ENCODE(result)
                except Exception:  # a circular result, or one json refuses
                    body = self._encode(result)
            else:
                body = self._encode(result)
            rid_text = "%d" % rid if type(rid) is int else self._encode(rid)
            line = ('{"jsonrpc":"2.0","id":%s,"result":%s}\n' % (rid_text, body)).encode("utf-8")
            if len(body) > 12 and type(result) is not str:
                # Only a result whose JSON could hold an integer beyond 64
                # bits, or a key that could collide, is walked.
                if _may_be_unsendable(line):
                    problem = _unsendable(result)
                    if problem is not None:
                        self._reply_error(rid, WORKER_ERROR, problem, {"type": "ValueError", "traceback": ""})
                        return
        except UnicodeEncodeError as e:
            # A lone surrogate (what bytes decoded with "surrogateescape", as
            # os.listdir gives for a file name that is not UTF-8, hold): no
            # JSON reader litebridge has takes it, so the call gets an error
            # rather than no answer.
            self._reply_error(rid, WORKER_ERROR,
                              "the result holds text that is not valid Unicode (%s); decode bytes "
                              "with errors='replace', or return them as base64" % e,
                              {"type": "UnicodeEncodeError", "traceback": ""})
            return
        except BaseException as e:  # not serializable, circular, nested too deep; or a dict
            # subclass whose items() raises anything at all
            self._reply_error(rid, WORKER_ERROR, "the result is not JSON serializable: %s" % _safe_str(e),
                              {"type": _describe_exception(e)[0], "traceback": ""})
            return
        self._send(line)

    def _reply_error(self, rid, code, message, data=None):
        err = {"code": code, "message": message}
        if data is not None:
            d = {"kind": "worker_error", "recoverable": False}
            d.update(data)
            err["data"] = d
        self._write({"jsonrpc": "2.0", "id": rid, "error": err})

    def _reply_exception(self, rid, e, code=WORKER_ERROR):
        """Answers with exception ``e``: its type (or ``type_name``), message
        and traceback. Never raises, but for the write: whatever the
        exception's attributes do, the call is answered once."""
        if rid is None:
            return
        type_name, message, tb = _describe_exception(e)
        data = {"type": type_name, "traceback": tb}
        # Its type, not its __class__, which may be a property that raises
        # (review 241: isinstance() read it, and the call went unanswered).
        if issubclass(type(e), WorkerError):
            # Raised on purpose: an answer (a refusal of the input, say), which
            # litebridge does not count against the method's circuit breaker.
            data["deliberate"] = True
        self._reply_error(rid, code, message, data)

    def _answer_failure(self, rid, e):
        """Answers a call whose handling failed outside its handler; the
        last resort, so it never raises."""
        try:
            self._reply_exception(rid, e)
        except BaseException:
            pass
