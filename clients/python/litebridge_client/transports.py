"""The ways to reach litebridge: a child ``litebridge stdio`` (its pipes,
one JSON value per line, replies matched by id in a reader thread) and
HTTP (``POST /rpc``). Both take a request and give a concurrent Future."""

import collections
import concurrent.futures
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request

from .errors import ConnectionError

_STDERR_LINES = 20
_EVENTS_SILENCE = 30.0


def _http_error(e, what):
    """The litebridge error an HTTP error response carries, else a ConnectionError."""
    from .errors import from_wire
    try:
        return from_wire(json.loads(e.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return ConnectionError("%s answered %d" % (what, e.code), kind="unavailable")


def _retry_after(e):
    """Seconds from a ``Retry-After`` header, if any."""
    try:
        return min(max(float(e.headers.get("Retry-After", "")), 0.0), 300.0)
    except (TypeError, ValueError):
        return None


class StdioTransport:
    """A ``litebridge stdio`` child, started again on the next request after it died."""

    def __init__(self, argv, env, shutdown_grace=10.0):
        self.argv = argv
        self.env = env
        self.shutdown_grace = shutdown_grace
        self.lock = threading.Lock()
        # Whole lines only: two threads writing at once would interleave them.
        self.write_lock = threading.Lock()
        self.proc = None
        self.pending = {}
        self.stderr = collections.deque(maxlen=_STDERR_LINES)
        self.streams = set()  # the event streams subscribed
        self.closing = False

    def _start(self):
        try:
            proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, bufsize=0,
            )
        except OSError as e:
            raise ConnectionError("could not run %s: %s" % (self.argv[0], e), kind="unavailable") from e
        self.proc = proc
        self.stderr = collections.deque(maxlen=_STDERR_LINES)
        threading.Thread(target=self._read, args=(proc,), daemon=True, name="litebridge-stdout").start()
        threading.Thread(target=self._read_stderr, args=(proc, self.stderr), daemon=True,
                         name="litebridge-stderr").start()
        if self.streams:
            self._write(proc, {"jsonrpc": "2.0", "id": None, "method": "events.subscribe"})

    def _read_stderr(self, proc, tail):
        for line in proc.stderr:
            tail.append(line.decode("utf-8", "replace").rstrip("\n"))
        proc.stderr.close()

    def _read(self, proc):
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("method") == "event" and "id" not in msg:
                with self.lock:
                    streams = list(self.streams)
                for stream in streams:
                    stream.put(msg.get("params"))
                continue
            with self.lock:
                fut = self.pending.pop(json.dumps(msg.get("id")) if isinstance(msg, dict) else None, None)
            if fut is not None:
                try:
                    fut.set_result(msg)
                except concurrent.futures.InvalidStateError:
                    pass  # cancelled meanwhile
        proc.stdout.close()
        code = proc.wait()
        try:
            proc.stdin.close()
        except OSError:
            pass
        with self.lock:
            if self.proc is proc:
                self.proc = None
            waiting = list(self.pending.values())
            self.pending.clear()
        why = ("litebridge was killed by signal %d" % -code) if code < 0 else ("litebridge exited with code %d" % code)
        tail = "; its last lines on stderr:\n%s" % "\n".join(self.stderr) if self.stderr else ""
        for fut in waiting:
            try:
                fut.set_exception(ConnectionError(why + tail, kind="unavailable", recoverable=True))
            except concurrent.futures.InvalidStateError:
                pass

    def _write(self, proc, obj, data=None):
        if data is None:
            data = encode_line(obj)
        try:
            with self.write_lock:
                # Blocks while the pipe is full: backpressure.
                view = memoryview(data)
                while view:
                    n = proc.stdin.write(view)
                    view = view[n or len(view):]
                proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the reader thread reports the exit

    def request(self, obj):
        data = encode_line(obj)  # refused here, before anything waits on it
        fut = concurrent.futures.Future()
        with self.lock:
            if self.closing:
                raise ConnectionError("the client is closed", kind="unavailable")
            if self.proc is None:
                self._start()
            proc = self.proc
            self.pending[json.dumps(obj["id"])] = fut
        self._write(proc, obj, data)
        return fut

    def cancel(self, rid):
        with self.lock:
            self.pending.pop(json.dumps(rid), None)
            proc = self.proc
        if proc is not None:
            self._write(proc, {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": rid}})

    def subscribe(self, stream):
        """Feeds ``stream`` the events (``events.subscribe`` once for all)."""
        with self.lock:
            if self.closing:
                stream.end()
                return
            first = not self.streams
            self.streams.add(stream)
            if self.proc is None:
                self._start()  # subscribes
                return
            proc = self.proc
        if first:
            self._write(proc, {"jsonrpc": "2.0", "id": None, "method": "events.subscribe"})

    def unsubscribe(self, stream):
        with self.lock:
            self.streams.discard(stream)
            last = not self.streams
            proc = None if self.closing else self.proc
        if last and proc is not None:
            self._write(proc, {"jsonrpc": "2.0", "id": None, "method": "events.unsubscribe"})

    def close(self):
        """Closes stdin (litebridge finishes, commits, checkpoints and exits),
        then SIGTERM, then SIGKILL if it does not."""
        with self.lock:
            self.closing = True
            proc = self.proc
            streams, self.streams = self.streams, set()
        for stream in streams:
            stream.end()
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        for step, limit in ((None, self.shutdown_grace), (proc.terminate, 5.0), (proc.kill, None)):
            if step is not None:
                step()
            try:
                proc.wait(timeout=limit)
                return
            except subprocess.TimeoutExpired:
                continue


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
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                text = res.read()
        except urllib.error.HTTPError as e:
            text = e.read()
        except OSError as e:
            raise ConnectionError("cannot reach %s: %s" % (self.url, e), kind="unavailable", recoverable=True) from e
        try:
            return json.loads(text)
        except ValueError as e:
            raise ConnectionError("%s/rpc answered with no JSON: %r" % (self.url, text[:200]), kind="unavailable") from e

    def request(self, obj):
        body = encode_line(obj)
        return self.executor.submit(self._post, body)

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
                wait = _retry_after(e)
            except OSError:
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


def encode_line(obj):
    """A request as a line of strict JSON: NaN and infinities are refused
    here (litebridge could not read the line, nor say which request it was)."""
    try:
        return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
    except ValueError as e:
        from .errors import InvalidArgumentError
        raise InvalidArgumentError(
            "a value is NaN or infinite, which JSON cannot carry (pass float('inf') to SQL as a parameter "
            "only through {'$real': 'Infinity'})", kind="invalid_argument") from e


def find_binary(explicit=None):
    """``explicit``, else ``LITEBRIDGE_CLIENT_BIN``, else ``litebridge`` on PATH."""
    return explicit or os.environ.get("LITEBRIDGE_CLIENT_BIN") or "litebridge"
