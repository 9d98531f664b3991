"""A child ``litebridge stdio`` for the asyncio client, read and written by
the event loop itself (``asyncio.create_subprocess_exec``): replies resolve
their futures where they are read, with no thread in between (a reader
thread waking the loop for every reply held pipelined calls to a third of a
hand-written loop's rate; ``bench/bench.py``).

An ``AsyncClient`` belongs to the event loop of its first request: the
child, its pipes and the futures are that loop's.

A child that died fails the requests still waiting on it with
``OutcomeUnknownError`` (a ``ConnectionError``, not recoverable: it may have
run them), except those whose lines were never written to it (still queued
when it ended), which get a recoverable ``ConnectionError``. A new child
is sent a request of the client's own first (``pool.health``), and the
callers' only once it answers: one that exits before never started, and
theirs fail as not sent.
"""

import asyncio
import collections

from .errors import ConnectionError, OutcomeUnknownError
from .transports import (MAX_LINE, MAX_REPLY_LINE, START_ID, STDERR_PIECE, decode_line, encode_line, ended,
                         pending_key, start_failure)

_STDERR_LINES = 20
_START_LINE = encode_line({"jsonrpc": "2.0", "id": START_ID, "method": "pool.health"})
_LINE_LIMIT = MAX_REPLY_LINE
# Written data past this waits for the pipe to drain (backpressure).
_HIGH_WATER = 1 << 20


class _Child:
    def __init__(self, proc, loop):
        self.proc = proc
        self.loop = loop  # the loop its pipes belong to
        self.reason = None  # why this client stopped it, if it did
        self.pending = {}  # request id (see pending_key) -> future
        self.stderr = collections.deque(maxlen=_STDERR_LINES)
        self.ended = False
        self.tasks = ()
        self.outbox = []  # lines of this loop iteration, written together at its end
        self.outbox_keys = []  # the requests whose lines are in `outbox`
        self.unsent = set()  # requests whose lines were never written (the child had ended)
        self.end = ("", "")  # why it ended, and its last stderr lines


class AsyncStdioTransport:
    """A ``litebridge stdio`` child, started again on the next request after it died."""

    def __init__(self, argv, env, shutdown_grace=10.0):
        self.argv = argv
        self.env = env
        self.shutdown_grace = shutdown_grace
        self.child = None
        self.starting = None  # the start under way, shared by those who wait for it
        self.unstarted = None  # its child, until it answers (for aclose)
        self.streams = set()
        self.closing = False

    async def _live_child(self):
        child = self.child
        if child is not None and not child.ended and child.proc.returncode is None:
            return child
        if self.starting is None:
            self.starting = asyncio.ensure_future(self._start())
            # Its failure is its waiters' to raise; with none left (all
            # cancelled, a close cancelled) it is not an unretrieved error.
            self.starting.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            return await asyncio.shield(self.starting)
        finally:
            if self.starting is not None and self.starting.done():
                self.starting = None

    async def _start(self):
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self.env, limit=_LINE_LIMIT)
        except OSError as e:
            raise ConnectionError("could not run %s: %s" % (self.argv[0], e), kind="unavailable") from e
        # Known to the callers only once it answered (below): a caller that
        # came meanwhile waits for the start, and never writes to a child
        # that may not start (review 142).
        child = self.unstarted = _Child(proc, asyncio.get_running_loop())
        child.tasks = (asyncio.ensure_future(self._read(child)), asyncio.ensure_future(self._read_stderr(child)))
        # Until litebridge answers a request of the client's own, no caller's
        # is written: a child that exits first never started (a bad
        # configuration, a database it cannot open), and theirs fail as not
        # sent (they were answered "may or may not have run").
        started = child.loop.create_future()
        child.pending[pending_key(START_ID)] = started
        self._send(child, _START_LINE)
        try:
            await started
        except ConnectionError:
            why, tail = child.end
            raise start_failure(why, tail) from None
        except BaseException:
            # Cancelled (every waiter gave up): the child goes too, not left
            # running with nobody to close it (review 143).
            self._kill(child)
            raise
        finally:
            self.unstarted = None
        self.child = child
        if self.streams:
            self._send(child, encode_line({"jsonrpc": "2.0", "id": None, "method": "events.subscribe"}))
        return child

    @staticmethod
    async def _read_stderr(child):
        # In pieces: a line without end is not held whole (review 192).
        stderr, piece = child.proc.stderr, b""
        while True:
            data = await stderr.read(STDERR_PIECE)
            if not data:
                break
            lines = (piece + data).split(b"\n")
            piece = lines.pop()
            if len(piece) >= STDERR_PIECE:
                lines.append(piece)
                piece = b""
            for line in lines:
                child.stderr.append(line.decode("utf-8", "replace"))
        if piece:
            child.stderr.append(piece.decode("utf-8", "replace"))

    async def _read(self, child):
        try:
            while True:
                line = await child.proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = decode_line(line)
                except (ValueError, RecursionError):
                    continue  # litebridge writes only JSON: nothing to answer
                if not isinstance(msg, dict):
                    continue
                if msg.get("method") == "event" and "id" not in msg:
                    for stream in list(self.streams):
                        stream.put(msg.get("params"))
                    continue
                fut = child.pending.pop(pending_key(msg.get("id")), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ValueError, asyncio.LimitOverrunError, OSError) as e:
            # A line past the limit, or the pipe failed: the child is of no more use.
            child.reason = ("a reply line was longer than %d bytes, which this client does not read"
                            % _LINE_LIMIT if not isinstance(e, OSError) else "reading its answers failed: %s" % e)
            if child.proc.returncode is None:
                child.proc.kill()
        finally:
            await self._ended(child)

    async def _ended(self, child):
        child.ended = True
        if self.child is child:
            self.child = None
        if child.proc.returncode is None and child.proc.stdin is not None:
            child.proc.stdin.close()
        code = await child.proc.wait()
        try:
            await asyncio.wait_for(asyncio.shield(child.tasks[1]), 1.0)  # its last stderr lines
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass
        why, tail = ended(code, child.stderr)
        if child.reason:
            why = "%s, so it was stopped (%s)" % (child.reason, why)
        child.end = (why, tail)
        waiting, child.pending = list(child.pending.items()), {}
        for key, fut in waiting:
            if fut.done():
                continue
            if key in child.unsent:
                fut.set_exception(ConnectionError(
                    "%s before the request was written to it (it was not sent)%s" % (why, tail),
                    kind="unavailable", recoverable=True))
            else:
                fut.set_exception(OutcomeUnknownError(
                    "%s with the request in flight: it may or may not have run%s" % (why, tail),
                    kind="outcome_unknown"))

    @classmethod
    def _send(cls, child, data, key=None):
        """Queues a line (of request ``key``, if it is one): the lines of one
        iteration of the loop go in one write (pipelined calls: one system
        call for many, not one each), in the order they were sent."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not child.loop:
            # From another thread (a stream closed there): the pipe is the loop's.
            try:
                child.loop.call_soon_threadsafe(cls._send, child, data, key)
            except RuntimeError:
                pass  # that loop is closed: nobody reads this child any more
            return
        if not child.outbox:
            child.loop.call_soon(cls._flush, child)
        child.outbox.append(data)
        if key is not None:
            child.outbox_keys.append(key)

    @classmethod
    def _flush(cls, child):
        if child.outbox:
            data = b"".join(child.outbox)
            child.outbox.clear()
            keys, child.outbox_keys = child.outbox_keys, []
            if child.ended:
                # Its stdin is closed or it is gone: these lines never reach it.
                child.unsent.update(keys)
                return
            cls._write(child, data)

    @staticmethod
    def _write(child, data):
        try:
            child.proc.stdin.write(data)
        except (OSError, RuntimeError):
            pass  # the reader sees the end and says why

    async def acall(self, obj):
        """Sends ``obj`` and returns its reply (a dict)."""
        data = encode_line(obj, MAX_LINE)  # refused here, before anything waits on it
        if self.closing:
            raise ConnectionError("the client is closed", kind="unavailable")
        child = self.child
        if child is None or child.ended or child.proc.returncode is not None:
            child = await self._live_child()
        fut = asyncio.get_running_loop().create_future()
        key = pending_key(obj["id"])
        child.pending[key] = fut
        self._send(child, data, key)
        transport = child.proc.stdin.transport
        if transport is not None and transport.get_write_buffer_size() > _HIGH_WATER:
            try:
                await child.proc.stdin.drain()
            except OSError:
                pass
        return await fut

    def cancel(self, rid):
        """Withdraws request ``rid``: ``$/cancelRequest``, its answer no longer awaited."""
        child = self.child
        if child is not None and child.pending.pop(pending_key(rid), None) is not None:
            self._send(child, encode_line({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": rid}}))

    def subscribe(self, stream):
        """Feeds ``stream`` the events (``events.subscribe`` once for all)."""
        if self.closing:
            stream.end()
            return
        first = not self.streams
        self.streams.add(stream)
        child = self.child
        if child is None or child.ended:
            # Subscribes when started; a start that fails ends the streams
            # with its error (they waited for ever: review 143).
            starting = asyncio.ensure_future(self._live_child())
            starting.add_done_callback(self._end_streams_if_failed)
        elif first:
            self._send(child, encode_line({"jsonrpc": "2.0", "id": None, "method": "events.subscribe"}))

    def _end_streams_if_failed(self, starting):
        if starting.cancelled():
            return
        error = starting.exception()
        if error is not None:
            streams, self.streams = self.streams, set()
            for stream in streams:
                stream.end(error)

    @staticmethod
    def _kill(child):
        try:
            child.proc.kill()
        except ProcessLookupError:
            pass

    def unsubscribe(self, stream):
        self.streams.discard(stream)
        child = self.child
        if not self.streams and child is not None and not self.closing:
            self._send(child, encode_line({"jsonrpc": "2.0", "id": None, "method": "events.unsubscribe"}))

    async def aclose(self):
        """Closes stdin (litebridge finishes, commits, checkpoints and exits),
        then SIGTERM, then SIGKILL if it does not."""
        self.closing = True
        streams, self.streams = self.streams, set()
        for stream in streams:
            stream.end()
        if self.starting is not None:
            # A start that hangs (a long check of the database, a worker
            # slow to start) is given the grace period, then its child is
            # stopped (close waited for ever, and left it running: review
            # 143).
            try:
                await asyncio.wait_for(asyncio.shield(self.starting), self.shutdown_grace)
            except (ConnectionError, asyncio.TimeoutError):
                pass
            except asyncio.CancelledError:
                # This close was cancelled: the child is stopped all the
                # same, and the cancel goes on (review 144).
                if self.unstarted is not None:
                    self._kill(self.unstarted)
                raise
            unstarted = self.unstarted
            if unstarted is not None and not self.starting.done():
                self._kill(unstarted)
                try:
                    await asyncio.wait_for(asyncio.shield(self.starting), 5.0)
                except (ConnectionError, asyncio.TimeoutError):
                    pass
        child = self.child
        if child is None:
            return
        proc = child.proc
        self._flush(child)  # what was asked before the close is answered
        proc.stdin.close()
        for step, limit in ((None, self.shutdown_grace), (proc.terminate, 5.0), (proc.kill, None)):
            if step is not None:
                try:
                    step()
                except ProcessLookupError:
                    pass
            try:
                await asyncio.wait_for(proc.wait(), limit)
                break
            except asyncio.TimeoutError:
                continue
        await asyncio.gather(*child.tasks, return_exceptions=True)
