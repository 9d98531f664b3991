"""A child ``litebridge stdio`` for the synchronous client: one JSON value
per line on its pipes, replies matched by id.

Why no reader thread: handing each reply from a reader thread to the caller
is two thread wake-ups per call where a hand-written loop has one; measured
here it added ~100 us to a call of ~100 us (``bench/bench.py``). So the
calling threads read the replies themselves, one at a time (leader and
followers): a caller takes the reader's place if it is free and reads until
its own reply comes, handing the others' replies to them on the way; a
caller that finds the place taken waits until its reply is handed over or
the place is free again. One thread alone reads its own replies, like the
hand-written loop.

Events need a reader when nobody calls: while event streams are subscribed
a follower thread holds the reader's place (calls then pay the hand-off).

A child that died is noticed by whoever reads next (end of its stdout:
every request still waiting on it fails, naming the exit and its last
stderr lines, with ``OutcomeUnknownError``, a ``ConnectionError`` that is
not recoverable: the child may have run it before it died; only a request
none of whose line could be written is a recoverable ``ConnectionError``),
or by the next request (``poll``), which starts a new one.

A new child is sent a request of the client's own first (``pool.health``),
and the caller's only once it answers: one that exits before never started,
and the request fails as not sent (``_started``).
"""

import collections
import io
import os
import subprocess
import threading

from .errors import ConnectionError, OutcomeUnknownError
from .transports import (MAX_LINE, MAX_REPLY_LINE, START_ID, STDERR_PIECE, decode_line, encode_line, ended,
                         pending_key, start_failure)

_STDERR_LINES = 20
_START_LINE = encode_line({"jsonrpc": "2.0", "id": START_ID, "method": "pool.health"})
# How long a thread waiting for its reply sleeps before it looks again.
_RECHECK = 0.1
# Bytes of stdout read at once.
_READ = 1 << 16


class _Waiter:
    """One request's reply, or why its child ended before answering it."""

    __slots__ = ("reply", "lost", "done")

    def __init__(self):
        self.reply = None
        self.lost = None  # the child's exit and its last stderr lines, if it ended first
        self.done = False


def _lost(lost, sent):
    """The error of a request whose child ended before answering it: not
    recoverable once any of its line was written (the child may have read
    and run it), recoverable if none was."""
    if sent:
        return OutcomeUnknownError("%s with the request in flight: it may or may not have run%s" % lost,
                                   kind="outcome_unknown")
    return ConnectionError("%s before the request was written to it (it was not sent)%s" % lost,
                           kind="unavailable", recoverable=True)


class _Child:
    """One litebridge process and the requests sent to it."""

    def __init__(self, proc):
        self.proc = proc
        # The pipes are unbuffered (a write never waits on another's buffer,
        # and close never on a blocked writer). stdout is read into `buf`,
        # whose lines from `start` on are not yet handed over (`_read_one`).
        self.fd = proc.stdout.fileno()
        self.buf = bytearray()
        self.start = 0
        self.err = io.BufferedReader(proc.stderr, 1 << 12)
        self.pending = {}  # request id (see pending_key) -> _Waiter
        self.read_lock = threading.Lock()  # held by the thread reading stdout
        self.turn = threading.Condition()  # a reply handed over, or the reader's place freed
        self.waiting = 0  # threads waiting on `turn` (changed under it)
        self.stderr = collections.deque(maxlen=_STDERR_LINES)
        self.ended = False
        self.followed = False  # a follower thread reads for the event streams
        self.stderr_thread = None
        self.reason = None  # why this client stopped it, if it did


def _close_pipes(child):
    for pipe in (child.proc.stdin, child.proc.stdout):
        try:
            pipe.close()
        except (OSError, ValueError):
            pass


class StdioTransport:
    """A ``litebridge stdio`` child, started again on the next request after it died."""

    def __init__(self, argv, env, shutdown_grace=10.0):
        self.argv = argv
        self.env = env
        self.shutdown_grace = shutdown_grace
        self.lock = threading.Lock()
        # Whole lines only: two threads writing at once would interleave them.
        self.write_lock = threading.Lock()
        self.child = None
        self.streams = set()  # the event streams subscribed
        self.closing = False

    # ----- starting ---------------------------------------------------------

    def _live_child(self):
        """The running child, started if there is none. Call with ``lock`` held."""
        child = self.child
        if child is not None and not child.ended and child.proc.poll() is None:
            return child
        if child is not None and not child.ended and not child.pending and not child.followed:
            # Died while idle: nobody will read its end, so its pipes are closed here.
            child.ended = True
            _close_pipes(child)
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=self.env, bufsize=0)
        except OSError as e:
            raise ConnectionError("could not run %s: %s" % (self.argv[0], e), kind="unavailable") from e
        child = self.child = _Child(proc)
        child.stderr_thread = threading.Thread(target=self._read_stderr, args=(child,), daemon=True,
                                               name="litebridge-stderr")
        child.stderr_thread.start()
        self._started(child)
        if self.streams:
            self._write(child, encode_line({"jsonrpc": "2.0", "id": None, "method": "events.subscribe"}))
            self._follow(child)
        return child

    def _started(self, child):
        """Sends a request of the client's own and reads until its answer.
        A child that exits first never started (a bad configuration, a
        database it cannot open): the caller's request, not yet written,
        fails as not sent (it was answered "may or may not have run")."""
        self._write(child, _START_LINE)
        buf = child.buf
        while True:
            nl = buf.find(b"\n", child.start)
            if nl >= 0:
                line = bytes(buf[child.start:nl])
                child.start = nl + 1
                try:
                    msg = decode_line(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(msg, dict) and msg.get("id") == START_ID:
                    return
                continue
            try:
                data = os.read(child.fd, _READ)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            if len(buf) - child.start > MAX_REPLY_LINE:
                self._stop(child, "its first answer was longer than %d bytes" % MAX_REPLY_LINE)
                break
        code = child.proc.wait()
        child.stderr_thread.join(1.0)  # its last lines
        child.ended = True
        _close_pipes(child)
        if self.child is child:
            self.child = None
        why, tail = ended(code, child.stderr)
        if child.reason:
            why = "%s, so it was stopped (%s)" % (child.reason, why)
        raise start_failure(why, tail)

    @staticmethod
    def _read_stderr(child):
        # In pieces: a line without end is not held whole (review 192).
        while True:
            piece = child.err.readline(STDERR_PIECE)
            if not piece:
                break
            child.stderr.append(piece.decode("utf-8", "replace").rstrip("\n"))
        child.err.close()

    # ----- writing ----------------------------------------------------------

    def _write(self, child, data):
        """Writes one whole line; whether any of it was written (False: the
        pipe was closed, or the child gone, before its first byte). An
        exception (Ctrl-C) that arrives once part of it is written waits until
        the rest is: half a line would join the next request to it, and
        litebridge could answer neither."""
        interrupted = None
        view = memoryview(data)
        try:
            with self.write_lock:
                # Blocks while the pipe is full: backpressure.
                while view:
                    try:
                        n = child.proc.stdin.write(view)
                    except (OSError, ValueError):
                        raise
                    except BaseException as e:
                        if len(view) == len(data):
                            raise  # nothing written: nothing to finish
                        interrupted = e
                        continue
                    if n:
                        view = view[n:]
        except (BrokenPipeError, OSError, ValueError):
            pass  # whoever reads next sees the end and says why
        if interrupted is not None:
            raise interrupted
        return len(view) < len(data)

    # ----- requests ---------------------------------------------------------

    def call(self, obj):
        """Sends ``obj`` and returns its reply (a dict)."""
        data = encode_line(obj, MAX_LINE)  # refused here, before anything waits on it
        waiter = _Waiter()
        with self.lock:
            if self.closing:
                raise ConnectionError("the client is closed", kind="unavailable")
            child = self._live_child()
            child.pending[pending_key(obj["id"])] = waiter
        sent = self._write(child, data)
        self._wait(child, waiter)
        if waiter.lost is not None:
            raise _lost(waiter.lost, sent)
        return waiter.reply

    def _wait(self, child, waiter):
        """Until ``waiter`` is done: reads when the reader's place is free,
        else waits to be handed the reply (or the place)."""
        while not waiter.done:
            if child.read_lock.acquire(blocking=False):
                try:
                    while not waiter.done:
                        self._read_one(child, waiter)
                finally:
                    child.read_lock.release()
                    self._wake(child)
            else:
                with child.turn:
                    # Counted before looking: a reader that frees its place
                    # or hands this reply over after the look sees the count.
                    # The wait is bounded all the same: an exception landing
                    # between a reader's release and its wake-up skips the
                    # wake-up, and this thread then looks again soon.
                    child.waiting += 1
                    try:
                        if not waiter.done and child.read_lock.locked():
                            child.turn.wait(_RECHECK)
                    finally:
                        child.waiting -= 1

    @staticmethod
    def _wake(child):
        """Wakes the threads waiting on ``child``, if any (most calls have none)."""
        if child.waiting:
            with child.turn:
                child.turn.notify_all()

    def _read_one(self, child, mine):
        """Reads one line of ``child`` and hands it to whom it is for. Call
        with ``child.read_lock`` held.

        The line leaves ``child.buf`` only once it is handed over, and handing
        it over twice does no harm: a reader interrupted on the way (Ctrl-C
        lands in the thread that happens to read) leaves it for the next one,
        so no other thread's reply is lost. (What stays open is the instant
        between the read system call's return and its bytes joining the
        buffer.)"""
        buf = child.buf
        nl = buf.find(b"\n", child.start)
        while nl < 0:
            if child.start:
                if child.start == len(buf):
                    buf.clear()
                else:
                    del buf[:child.start]
                child.start = 0
            try:
                data = os.read(child.fd, _READ)
            except OSError:
                data = b""  # closed under it: the end, as far as this reader goes
            if not data:
                self._ended(child)
                return
            buf += data
            nl = buf.find(b"\n", len(buf) - len(data))
            if nl < 0 and len(buf) - child.start > MAX_REPLY_LINE:
                # Held whole, it would take the process's memory (review 192).
                self._stop(child, "a reply line was longer than %d bytes, which this client does not read"
                           % MAX_REPLY_LINE)
                self._ended(child)
                return
        line = buf[child.start:nl]
        try:
            msg = decode_line(line)
        except (ValueError, RecursionError):
            msg = None  # litebridge writes only JSON: nothing to answer
        if isinstance(msg, dict):
            if msg.get("method") == "event" and "id" not in msg:
                for stream in list(self.streams):
                    stream.put(msg.get("params"))
            else:
                key = pending_key(msg.get("id"))
                waiter = child.pending.get(key)
                if waiter is not None:
                    waiter.reply = msg
                    waiter.done = True
                    child.pending.pop(key, None)
                    if waiter is not mine:
                        self._wake(child)
        child.start = nl + 1

    @staticmethod
    def _stop(child, reason):
        """Kills ``child``, of no more use for ``reason``."""
        child.reason = reason
        try:
            child.proc.kill()
        except OSError:
            pass

    def _ended(self, child):
        """``child``'s stdout ended: every request still waiting on it fails."""
        code = child.proc.wait()
        _close_pipes(child)
        with self.lock:
            child.ended = True
            waiting = list(child.pending.values())
            child.pending.clear()
            if self.child is child:
                self.child = None
        why, tail = ended(code, child.stderr)
        if child.reason:
            why = "%s, so it was stopped (%s)" % (child.reason, why)
        for waiter in waiting:
            waiter.lost = (why, tail)  # the error is its caller's to make: it knows what it wrote
            waiter.done = True
        with child.turn:
            child.turn.notify_all()

    def cancel(self, rid):
        """Withdraws request ``rid``: ``$/cancelRequest``, its answer no longer awaited."""
        with self.lock:
            child = self.child
        if child is None:
            return
        waiter = child.pending.pop(pending_key(rid), None)
        if waiter is not None:
            self._write(child, encode_line({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": rid}}))

    # ----- events -----------------------------------------------------------

    def subscribe(self, stream):
        """Feeds ``stream`` the events (``events.subscribe`` once for all)."""
        with self.lock:
            if self.closing:
                stream.end()
                return
            first = not self.streams
            self.streams.add(stream)
            if self.child is None or self.child.ended:
                self._live_child()  # subscribes and follows
                return
            child = self.child
        if first:
            self._write(child, encode_line({"jsonrpc": "2.0", "id": None, "method": "events.subscribe"}))
        self._follow(child)

    def _follow(self, child):
        """A thread that reads ``child`` while event streams are subscribed."""
        with child.turn:  # (not `lock`: `_live_child` calls this holding it)
            if child.followed:
                return
            child.followed = True

        def follow():
            try:
                with child.read_lock:
                    while self.streams and not child.ended:
                        self._read_one(child, None)
            finally:
                with child.turn:
                    child.followed = False
                    again = bool(self.streams) and not child.ended
                self._wake(child)
                if again:  # subscribed again as it stopped
                    self._follow(child)

        threading.Thread(target=follow, daemon=True, name="litebridge-events").start()

    def unsubscribe(self, stream):
        with self.lock:
            self.streams.discard(stream)
            last = not self.streams
            child = None if self.closing else self.child
        if last and child is not None:
            # Its answer wakes the follower, which then stops.
            self._write(child, encode_line({"jsonrpc": "2.0", "id": None, "method": "events.unsubscribe"}))

    # ----- stopping ---------------------------------------------------------

    def close(self):
        """Closes stdin (litebridge finishes, commits, checkpoints and exits),
        then SIGTERM, then SIGKILL if it does not. Interrupted (Ctrl-C), it
        kills the child before giving up: no litebridge is left behind."""
        with self.lock:
            self.closing = True
            child = self.child
            streams, self.streams = self.streams, set()
        for stream in streams:
            stream.end()
        if child is None:
            return
        proc = child.proc
        try:
            # Not under another thread's write: its descriptor could be
            # reused by the time that write goes on. A writer stuck on a full
            # pipe is freed by ending the child.
            if not self.write_lock.acquire(timeout=self.shutdown_grace):
                proc.terminate()
                self.write_lock.acquire()
            try:
                proc.stdin.close()
            except (OSError, ValueError):
                pass
            finally:
                self.write_lock.release()
            for step, limit in ((None, self.shutdown_grace), (proc.terminate, 5.0), (proc.kill, None)):
                if step is not None:
                    step()
                try:
                    proc.wait(timeout=limit)
                    break
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:
            proc.kill()
            raise
        # Whoever still waits on it is told, and its pipes are closed.
        if child.read_lock.acquire(timeout=1.0):
            try:
                while not child.ended:
                    self._read_one(child, None)
            finally:
                child.read_lock.release()
