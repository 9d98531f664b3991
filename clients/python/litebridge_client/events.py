"""The pool's events as iterators: ``for e in client.events()`` and
``async for e in async_client.events()``.

Events come from a thread (the stdio reader, or an HTTP stream's own) and
nobody waits for a slow reader: past ``maxsize`` queued events the newest are
dropped and counted, and the reader is told how many with a ``missed`` event
(the server's own name for the same thing), as ``GET /events`` does.

A stream ends (its iterator stops) when it is closed, when its client is
closed, or when the server refuses it for good (a revoked or bad key, or a
redirect, never followed), or the thread reading it fails: then the iterator
raises that error (a ``ConnectionError`` for a redirect or a failure) once
the events before it are read. Over HTTP a broken connection is opened again
with ``Last-Event-ID``, after 1 s, doubling to 30 s while it keeps failing
(or after the server's ``Retry-After``); the server's ring gives back what
was missed meanwhile, or says how many are lost. A line or an event longer
than 1 MiB, or one that is not a JSON object, is dropped, and an event id a
header cannot carry is not sent back. A stream's end shuts the connection
reading it.
"""

import asyncio
import collections
import threading

_END = object()


class EventStream:
    """The synchronous stream: an iterator and a context manager."""

    def __init__(self, maxsize=1024, on_close=None):
        self._items = collections.deque()
        self._cond = threading.Condition()
        self._maxsize = maxsize
        self._dropped = 0
        self._on_close = on_close
        self._ended = False
        self._error = None
        self._closer = None  # shuts the connection reading the stream

    @property
    def closed(self):
        return self._ended

    def put(self, event):
        """Called by the transport's thread; never blocks. What is not an
        object (a server's ``null``, a list) is no event: dropped."""
        if not isinstance(event, dict):
            return
        with self._cond:
            if self._ended:
                return
            if len(self._items) >= self._maxsize:
                self._dropped += 1
                return
            if self._dropped:
                self._items.append({"event": "missed", "count": self._dropped})
                self._dropped = 0
            self._items.append(event)
            self._cond.notify()

    def end(self, error=None):
        """Ends the stream after what is queued; ``error`` is raised then.
        The connection reading it, if any, is shut."""
        with self._cond:
            if self._ended:
                return
            self._ended = True
            self._error = error
            self._items.append(_END)
            self._cond.notify_all()
            closer, self._closer = self._closer, None
        if closer is not None:
            closer()

    def hold(self, closer):
        """``closer`` shuts the connection now reading the stream (None:
        there is none): called when the stream ends, at once if it has."""
        with self._cond:
            if not self._ended:
                self._closer = closer
                return
        if closer is not None:
            closer()

    def close(self):
        """Stops the stream (and its subscription); the iterator ends."""
        self.end()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    def wait_closed(self, timeout):
        """Whether the stream ended within ``timeout`` seconds (for the
        transport's pauses between reconnections)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._ended, timeout)

    def _take(self, timeout=None):
        with self._cond:
            if not self._cond.wait_for(lambda: self._items, timeout):
                raise TimeoutError("no event within %s s" % timeout)
            item = self._items.popleft()
            if item is _END:
                self._items.append(_END)  # stays ended
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopIteration
            return item

    def get(self, timeout=None):
        """The next event, waiting up to ``timeout`` seconds (``TimeoutError``);
        ``StopIteration`` once the stream has ended."""
        return self._take(timeout)

    def __iter__(self):
        return self

    def __next__(self):
        return self._take()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncEventStream(EventStream):
    """The asyncio stream: ``async for``; events handed to the loop that
    created it."""

    def __init__(self, maxsize=1024, on_close=None):
        super().__init__(maxsize, on_close)
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()

    def _wake(self):
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:
            pass  # the loop is closed: nobody is reading

    def put(self, event):
        super().put(event)
        self._wake()

    def end(self, error=None):
        super().end(error)
        self._wake()

    def __aiter__(self):
        return self

    async def __anext__(self):
        while True:
            self._ready.clear()
            with self._cond:
                if self._items:
                    break
            await self._ready.wait()
        try:
            return self._take(0)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
