"""The litebridge client for Python programs (3.9+, standard library only):
one API over a spawned ``litebridge stdio`` or a server's HTTP endpoint,
synchronous (``Client``) and asyncio (``AsyncClient``)."""

import asyncio
import itertools
import math
import os

from .errors import *  # noqa: F401,F403 - the error classes are the package's
from .errors import ConnectionError, LitebridgeError, OutcomeUnknownError, TooLargeError, from_wire
from .events import AsyncEventStream, EventStream
from .astdio import AsyncStdioTransport
from .stdio import StdioTransport
from .transports import HttpTransport, _is_reply, find_binary

__all__ = ["Client", "AsyncClient"] + [n for n in dir() if n.endswith("Error")]


def _result(reply, rid):
    """The result of ``reply`` to request ``rid``, or its error raised. One
    not of JSON-RPC's shape (a broken child's: ``"error": {}``, or neither
    member) is not taken for a success: the request may have run (review
    192). The HTTP transport checks it before."""
    if not _is_reply(reply, rid):
        raise OutcomeUnknownError("litebridge answered with JSON that is not a JSON-RPC reply to this request: "
                                  "it may or may not have run", kind="outcome_unknown")
    if "error" in reply:
        raise from_wire(reply["error"])
    return reply["result"]


def _ms(seconds):
    if seconds is None:
        return None
    # Not a bool (True is no number of seconds), nor NaN or an infinity.
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        raise ValueError("timeout must be a positive number of seconds, not %r" % (seconds,))
    return max(1, int(round(seconds * 1000)))


def _key(key):
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError("idempotency_key must be a non-empty string, not %r" % (key,))
    return key


def _healthy(health):
    return isinstance(health, dict) and health.get("healthy") is True


def _clean(params):
    return {k: v for k, v in params.items() if v is not None}


def _spawn_transport(kind, bin=None, db=None, workers=None, processes=None, framework_path=None, config=None,
                     args=None, env=None, shutdown_grace=10.0):
    argv = [find_binary(bin), "stdio"]
    if db:
        argv += ["--db", str(db)]
    if config:
        argv += ["--config", str(config)]
    if workers:
        argv += ["--workers", workers]
    if processes:
        argv += ["--processes", str(processes)]
    argv += list(args or [])
    child_env = dict(os.environ)
    child_env.update(env or {})
    # The client's own variables (its key above all) are not the server's.
    for name in [n for n in child_env if n.startswith("LITEBRIDGE_CLIENT_")]:
        del child_env[name]
    if framework_path:
        child_env["LITEBRIDGE_WORKERS_FRAMEWORK_PATH"] = str(framework_path)
    return kind(argv, child_env, shutdown_grace)


def _written(r, rows):
    """A write's result, with the rows it returned shaped as ``query`` shapes rows."""
    if isinstance(r, dict) and "columns" in r and "rows" in r:
        if rows == "tuples":
            r["rows"] = [tuple(row) for row in r["rows"]]
        else:
            r["rows"] = [dict(zip(r["columns"], row)) for row in r["rows"]]
    return r


class _Methods:
    """The method table, over ``self._call(method, params)``."""

    def _request(self, method, params):
        """A new request id, and the request."""
        rid = next(self._ids)
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        return rid, msg

    def query(self, sql, params=(), *, timeout=None, max_rows=None, lane=None, rows="dicts"):
        """Rows of a read-only statement: dicts keyed by column (``rows="tuples"`` for tuples)."""
        p = {"sql": sql, "params": params}
        if timeout is not None:
            p["timeout_ms"] = _ms(timeout)
        if max_rows is not None:
            p["max_rows"] = max_rows
        if lane is not None:
            p["lane"] = lane
        return self._then(self._call("sql.query", p), lambda r: self._rows(r, rows, max_rows))

    @staticmethod
    def _rows(r, rows, max_rows):
        # Litebridge's answer always has this shape; a server that is not litebridge may not.
        if not isinstance(r, dict) or not isinstance(r.get("columns"), list) or not isinstance(r.get("rows"), list) \
                or not all(isinstance(row, list) for row in r["rows"]):
            raise ConnectionError("the answer to sql.query is not a result of rows (columns and rows): not "
                                  "litebridge's", kind="unavailable")
        if r.get("truncated") and max_rows is None:
            raise TooLargeError(
                "the query has more than %d rows, the server's default limit: pass max_rows (up to 1000000) "
                "or page with LIMIT" % len(r["rows"]), kind="too_large")
        if rows == "tuples":
            return [tuple(row) for row in r["rows"]]
        return [dict(zip(r["columns"], row)) for row in r["rows"]]

    def get(self, sql, params=(), *, timeout=None, lane=None, rows="dicts"):
        """The first row of a read-only statement, or None."""
        return self._then(self.query(sql, params, timeout=timeout, max_rows=1, lane=lane, rows=rows),
                          lambda r: r[0] if r else None)

    def execute(self, sql, params=(), *, timeout=None, idempotency_key=None, rows="dicts"):
        """One statement that changes data, committed when this returns:
        ``{"changes", "last_insert_rowid"}``, with ``"columns"`` and
        ``"rows"`` (dicts keyed by column, or tuples with ``rows="tuples"``)
        when it returns rows (``INSERT ... RETURNING id``).

        With ``idempotency_key``, the write applies once however often it is
        sent with that key (a repeat is answered with the first outcome): the
        way to send again a write that raised ``OutcomeUnknownError``."""
        return self._then(self._call("sql.execute", _clean({"sql": sql, "params": params, "timeout_ms": _ms(timeout),
                                                            "idempotency_key": _key(idempotency_key)})),
                          lambda r: _written(r, rows))

    def batch(self, statements, *, timeout=None, idempotency_key=None, rows="dicts"):
        """Statements in one transaction: ``{"results": [...]}``, one result
        per statement as ``execute`` gives it."""
        def each(r):
            for one in r.get("results", ()):
                _written(one, rows)
            return r
        return self._then(self._call("sql.batch", _clean({"statements": statements, "timeout_ms": _ms(timeout),
                                                          "idempotency_key": _key(idempotency_key)})), each)

    def execute_many(self, sql, rows, *, timeout=None, idempotency_key=None):
        return self._call("sql.execute_many", _clean({"sql": sql, "rows": rows, "timeout_ms": _ms(timeout),
                                                      "idempotency_key": _key(idempotency_key)}))

    def schema(self):
        return self._call("sql.schema", {})

    def call(self, method, params=None, *, timeout=None, retry=None, max_retries=None, cache_key=None,
             cache_ttl=None):
        """Calls a worker method; its result."""
        p = {"method": method}
        if params is not None:
            p["params"] = params
        if timeout is not None or retry is not None or max_retries is not None or cache_key is not None \
                or cache_ttl is not None:
            p.update(_clean({"timeout_ms": _ms(timeout), "retry": retry, "max_retries": max_retries,
                             "cache_key": cache_key, "cache_ttl_s": cache_ttl}))
        return self._call("bridge.call", p)

    def stats(self):
        return self._call("bridge.stats", {})

    def health(self):
        return self._call("pool.health", {})

    def reset_breaker(self, method):
        return self._call("bridge.breaker.reset", {"method": method})

    def cache_get(self, key):
        return self._call("cache.get", {"key": key})

    def cache_set(self, key, value, ttl=None):
        return self._call("cache.set", dict(_clean({"key": key, "ttl_s": ttl}), value=value))

    def memory_store(self, namespace, key, value, ttl=None):
        return self._call("memory.store", dict(_clean({"namespace": namespace, "key": key, "ttl_s": ttl}),
                                                value=value))

    def memory_get(self, namespace, key):
        return self._call("memory.get", {"namespace": namespace, "key": key})

    def state_save(self, run_id, state, **extra):
        return self._call("state.save", dict({"run_id": run_id, "state": state}, **extra))

    def state_load(self, run_id):
        return self._call("state.load", {"run_id": run_id})

    def state_list(self, *, status=None, limit=None, after=None):
        """Saved runs in order of run id: ``{"runs": [...], "next": ...}``."""
        return self._call("state.list", _clean({"status": status, "limit": limit, "after": after}))

    def state_delete(self, run_id):
        return self._call("state.delete", {"run_id": run_id})

    def memory_list(self, namespace, *, prefix=None, limit=None, after=None):
        """``{"entries": [...], "next": key or None}``: pass ``next`` as ``after`` for the next page."""
        return self._call("memory.list", _clean({"namespace": namespace, "prefix": prefix, "limit": limit,
                                                 "after": after}))

    def memory_delete(self, namespace, key):
        return self._call("memory.delete", {"namespace": namespace, "key": key})

    def cache_delete(self, key):
        return self._call("cache.delete", {"key": key})

    def cache_stats(self):
        return self._call("cache.stats", {})

    def bridge_health(self):
        """The worker pool's figures with ``healthy``."""
        return self._call("bridge.health", {})

    def pool_stats(self):
        """The database's figures: reads, writes, latency percentiles, WAL."""
        return self._call("pool.stats", {})

    def persistence_stats(self):
        return self._call("persistence.stats", {})

    def discover(self):
        """The method table as an OpenRPC document."""
        return self._call("rpc.discover", {})

    def backup(self, to=None):
        """An online backup, verified (admin scope)."""
        return self._call("admin.backup", _clean({"to": to}))

    def check(self, full=False):
        return self._call("admin.check", {"full": full})

    def checkpoint(self, mode=None):
        return self._call("admin.checkpoint", _clean({"mode": mode}))

    def create_key(self, scope, *, tier=None, name=None):
        """A new API key; its ``secret`` is shown only this once."""
        return self._call("admin.keys.create", _clean({"scope": scope, "tier": tier, "name": name}))

    def list_keys(self):
        return self._call("admin.keys.list", {})

    def revoke_key(self, name):
        return self._call("admin.keys.revoke", {"name": name})


class Client(_Methods):
    """Synchronous client; a context manager that closes on exit."""

    def __init__(self, transport):
        self._transport = transport
        self._ids = itertools.count(1)

    @classmethod
    def spawn(cls, *, bin=None, db=None, workers=None, processes=None, framework_path=None, config=None,
              args=None, env=None, shutdown_grace=10.0):
        """Starts ``litebridge stdio`` (``bin``, else ``LITEBRIDGE_CLIENT_BIN``, else PATH; no shell)."""
        return cls(_spawn_transport(StdioTransport, bin, db, workers, processes, framework_path, config, args, env,
                                    shutdown_grace))

    @classmethod
    def connect(cls, url=None, *, key=None, timeout=None, deadline=None, max_response_bytes=None):
        """Talks to ``litebridge serve`` at ``url`` (else ``LITEBRIDGE_CLIENT_URL``).

        ``key`` (else ``LITEBRIDGE_CLIENT_KEY``) is stripped of surrounding
        whitespace (a key file's newline); one with a control character is
        refused with a ``ValueError`` that does not show it. ``timeout``
        bounds each socket operation (seconds; default none). ``deadline``
        bounds a whole call without a ``timeout`` of its own, answer
        included (seconds, default 600); a call with one gets it and 5 s.
        Past it a read raises ``TimeoutError``, anything else
        ``OutcomeUnknownError``. ``max_response_bytes`` (default 128 MiB)
        is the largest answer read: past it a read raises ``TooLargeError``,
        anything else ``OutcomeUnknownError``. Redirects are never followed;
        a loopback URL never goes through the environment's proxy."""
        url = url or os.environ.get("LITEBRIDGE_CLIENT_URL")
        if not url:
            raise ValueError("connect(url): give the server URL, or set LITEBRIDGE_CLIENT_URL")
        return cls(HttpTransport(url, key or os.environ.get("LITEBRIDGE_CLIENT_KEY"), timeout, deadline,
                                 max_response_bytes))

    def request(self, method, params=None):
        """Calls ``method`` of the method table; its result."""
        return self._call(method, params)

    def _call(self, method, params):
        rid, msg = self._request(method, params)
        try:
            reply = self._transport.call(msg)
        except BaseException:  # Ctrl-C, a signal handler's exception: the call is withdrawn
            self._transport.cancel(rid)
            raise
        return _result(reply, rid)

    @staticmethod
    def _then(value, f):
        return f(value)

    def is_healthy(self):
        """Whether the database answers and says it is healthy (False when unreachable)."""
        try:
            return _healthy(self.health())
        except LitebridgeError:
            return False

    def events(self, maxsize=1024):
        """The pool's events (dicts with ``event``, ``seq``, ``ts``) from now
        on: an iterator that ends when it or the client is closed (see
        ``litebridge_client.events``). A reader more than ``maxsize`` behind
        misses events, and is told how many, rather than slowing the bridge."""
        stream = EventStream(maxsize, on_close=self._transport.unsubscribe)
        self._transport.subscribe(stream)
        return stream

    def close(self):
        """A spawned litebridge drains, commits, checkpoints and exits."""
        self._transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Methods):
    """The asyncio mirror of ``Client``: every method is awaited, and
    cancelling the task sends ``$/cancelRequest`` (over stdio)."""

    def __init__(self, transport):
        self._transport = transport
        self._ids = itertools.count(1)

    @classmethod
    def spawn(cls, **options):
        """``Client.spawn``'s options; the child belongs to the event loop of the first request."""
        return cls(_spawn_transport(AsyncStdioTransport, **options))

    @classmethod
    def connect(cls, url=None, **options):
        """``Client.connect``'s options. Each call runs in a daemon thread of
        the client's (never one that holds the interpreter's exit), within
        its deadline; a cancelled call's connection is shut."""
        return cls(Client.connect(url, **options)._transport)

    async def request(self, method, params=None):
        return await self._call(method, params)

    async def _call(self, method, params):
        rid, msg = self._request(method, params)
        try:
            reply = await self._transport.acall(msg)
        except asyncio.CancelledError:
            self._transport.cancel(rid)
            raise
        return _result(reply, rid)

    @staticmethod
    async def _then(value, f):
        return f(await value)

    async def is_healthy(self):
        """Whether the database answers and says it is healthy (False when unreachable)."""
        try:
            return _healthy(await self.health())
        except LitebridgeError:
            return False

    def events(self, maxsize=1024):
        """The pool's events for ``async for``; see ``Client.events``. Call
        it from the event loop that reads them."""
        stream = AsyncEventStream(maxsize, on_close=self._transport.unsubscribe)
        self._transport.subscribe(stream)
        return stream

    async def close(self):
        await self._transport.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
