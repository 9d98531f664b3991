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
        self.events = None  # a callable, once subscribed
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
        if self.events is not None:
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
                if self.events is not None:
                    self.events(msg.get("params"))
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

    def subscribe(self, on_event):
        with self.lock:
            self.events = on_event
            if self.closing:
                return
            if self.proc is None:
                self._start()
            proc = self.proc
        self._write(proc, {"jsonrpc": "2.0", "id": None, "method": "events.subscribe"})

    def close(self):
        """Closes stdin (litebridge finishes, commits, checkpoints and exits),
        then SIGTERM, then SIGKILL if it does not."""
        with self.lock:
            self.closing = True
            proc = self.proc
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

    def open_events(self):
        """Opens ``GET /events`` (server-sent events); the response."""
        req = urllib.request.Request(self.url + "/events", headers=self.headers({"Accept": "text/event-stream"}))
        try:
            return urllib.request.urlopen(req)
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                from .errors import from_wire
                raise from_wire(json.loads(body)["error"]) from None
            except (ValueError, KeyError, TypeError):
                raise ConnectionError("GET /events answered %d" % e.code, kind="unavailable") from None

    @staticmethod
    def read_events(res):
        """The events of an open ``GET /events`` response."""
        with res:
            data = ""
            for raw in res:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data += line[5:].lstrip()
                elif line == "" and data:
                    yield json.loads(data)
                    data = ""

    def close(self):
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
