"""End-to-end tests of the worker SDK: real processes, real pipes."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(HERE)
EXAMPLE = os.path.join(PYTHON_DIR, "..", "examples", "worker.py")


class Peer:
    """litebridge's side of the pipes, minimal."""

    def __init__(self, argv, env=None):
        full_env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=full_env,
        )
        self.next_id = 0
        self.ready = self.read()

    def send(self, obj):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.proc.stdin.write(data + b"\n")
        self.proc.stdin.flush()

    def read(self):
        """The next message; blank lines (one comes before `$/ready`) are
        passed over, as litebridge does."""
        line = self.proc.stdout.readline()
        while line.strip() == b"" and line:
            line = self.proc.stdout.readline()
        if not line:
            raise EOFError("the worker closed stdout; stderr: %s" % self.proc.stderr.read().decode())
        return json.loads(line)

    def call(self, method, params=None):
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self.next_id

    def roundtrip(self, method, params=None):
        rid = self.call(method, params)
        reply = self.read()
        assert reply["id"] == rid, reply
        return reply

    def abandon(self):
        """Kills the worker if it still runs, and closes the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class ExampleWorkerTest(unittest.TestCase):
    def setUp(self):
        self.peer = Peer([sys.executable, EXAMPLE])

    def tearDown(self):
        self.peer.close()

    def test_ready_lists_methods_with_their_flags(self):
        ready = self.peer.ready
        self.assertEqual(ready["method"], "$/ready")
        self.assertEqual(ready["params"]["pid"], self.peer.proc.pid)
        methods = {m["name"]: m for m in ready["params"]["methods"]}
        self.assertTrue(methods["echo"]["idempotent"])
        self.assertFalse(methods["charge"]["idempotent"])
        self.assertEqual(methods["analyze"]["cache_ttl_s"], 60)
        self.assertNotIn("cache_ttl_s", methods["echo"])
        # What agents are shown (MCP tools): the docstring and the parameters.
        self.assertEqual(methods["analyze"]["description"], "A stand-in for real work: counts words per domain.")
        self.assertEqual(
            methods["analyze"]["params"],
            [{"name": "description", "required": True}, {"name": "domain", "required": False}],
        )
        self.assertEqual(methods["wait"]["params"], [{"name": "seconds", "required": True}])

    def test_parameter_types_come_from_annotations(self):
        from litebridge_worker.worker import _describe_params

        def typed(a: int, b: str = "x", *, c: float = 1.0, d=None):
            pass

        def anything(*args, **kwargs):
            pass

        self.assertEqual(
            _describe_params(typed),
            [
                {"name": "a", "required": True, "type": "integer"},
                {"name": "b", "required": False, "type": "string"},
                {"name": "c", "required": False, "type": "number"},
                {"name": "d", "required": False},
            ],
        )
        self.assertIsNone(_describe_params(anything))

    def test_optional_annotated_generic_and_string_annotations_are_read(self):
        """``Optional[int]`` is a nullable integer (so is ``list[str] = None``:
        a default of None takes None), ``Annotated`` its first
        argument (an unhashable one made describing the worker raise),
        string annotations are read in the handler's module, and what
        cannot be read declares no type instead of raising."""
        import functools
        import typing
        from litebridge_worker.worker import _describe_params

        def handler(a: typing.Optional[int], b: typing.Annotated[str, {"doc": 1}] = "",
                    c: "list[str]" = None, d: "NoSuchName" = None,
                    e: typing.Union[int, float] = 0, f: typing.Union[int, str] = 0,
                    g: typing.Dict[str, int] = None, h: typing.Any = None,
                    i: "'int'" = 0, j: typing.Optional[typing.Annotated[bool, "flag"]] = None):
            pass

        want = [
            {"name": "a", "required": True, "type": "integer", "nullable": True},
            {"name": "b", "required": False, "type": "string"},
            {"name": "c", "required": False, "type": "array", "nullable": True},
            {"name": "d", "required": False},
            {"name": "e", "required": False, "type": "number"},
            {"name": "f", "required": False},
            {"name": "g", "required": False, "type": "object", "nullable": True},
            {"name": "h", "required": False},
            {"name": "i", "required": False, "type": "integer"},
            {"name": "j", "required": False, "type": "boolean", "nullable": True},
        ]
        self.assertEqual(_describe_params(handler), want)
        self.assertEqual(_describe_params(functools.partial(handler, 1)), want[1:])
        if sys.version_info >= (3, 10):
            def union(x: eval("int | None")):
                pass

            self.assertEqual(_describe_params(union),
                             [{"name": "x", "required": True, "type": "integer", "nullable": True}])

    def test_annotations_are_read_without_running_anything(self):
        """A string annotation is read, not run (review 149): a call in it
        is not made, a doc-style string ("int or None") declares nothing, a
        module's lazy ``__getattr__`` (an import of a model) is not called;
        ``Annotated`` metadata that may change what a handler takes (a
        validator) declares nothing; a handler that cannot be described is
        announced by name."""
        import types as _types
        import typing
        from litebridge_worker.worker import _Method, _describe_params

        asked = []
        heavy = _types.ModuleType("heavy")
        heavy.__getattr__ = lambda name: asked.append(name) or int

        class Validator:
            def __init__(self, f):
                self.f = f

        def handler(a: "__import__('sys').exit(3)" = 0, b: "int or None" = None,
                    c: "heavy.Model" = None, d: typing.Annotated[int, Validator(int)] = 0,
                    e: typing.Annotated[int, "doc", {"k": [1, 2.5]}] = 0,
                    f: "typing.Optional[typing.List[int]]" = None, g: "int | None" = None):
            pass

        added = {"heavy": heavy, "typing": typing}
        added = {k: v for k, v in added.items() if k not in handler.__globals__}
        handler.__globals__.update(added)
        try:
            described = _describe_params(handler)
        finally:
            for k in added:
                del handler.__globals__[k]
        self.assertEqual(asked, [])
        by_name = {p["name"]: p for p in described}
        for untyped in "abcd":
            self.assertNotIn("type", by_name[untyped], untyped)
        self.assertEqual(by_name["e"]["type"], "integer")
        self.assertEqual((by_name["f"]["type"], by_name["f"]["nullable"]), ("array", True))
        if sys.version_info >= (3, 10):
            self.assertEqual((by_name["g"]["type"], by_name["g"]["nullable"]), ("integer", True))
        else:
            self.assertNotIn("type", by_name["g"])

        # The program's classes are not asked (review 151): a metaclass's
        # __getitem__, a __class_getitem__, an __or__ that answer int.
        ran = []

        class Meta(type):
            def __getitem__(cls, item):
                ran.append("getitem")
                return int

            def __ror__(cls, other):
                ran.append("ror")
                return int

        class Box(metaclass=Meta):
            pass

        class Gen:
            def __class_getitem__(cls, item):
                ran.append("class_getitem")
                return int

        class Inst:
            def __or__(self, other):
                ran.append("or")
                return int

        class Text(str):
            def strip(self, *args):
                ran.append("strip")
                return "int"

        row = [0.0] * 1000
        huge = [[row] * 1000] * 1000  # 10^9 items walked, a few lists held

        def hostile(a: "Box[str]" = None, b: "Gen[str]" = None, c: "inst | str" = None,
                    d: "str | Box" = None, e: typing.Annotated[int, {"example": huge}] = 0,
                    f: "Tuple[" + "int, " * 300000 + "]" = None, g: "a." * 150000 + "b" = None, h=None):
            pass

        hostile.__annotations__["h"] = Text("str")
        added = {k: v for k, v in {"Box": Box, "Gen": Gen, "inst": Inst(), "typing": typing}.items()
                 if k not in hostile.__globals__}
        hostile.__globals__.update(added)
        began = time.monotonic()
        try:
            described = _describe_params(hostile)
        finally:
            for k in added:
                del hostile.__globals__[k]
        self.assertLess(time.monotonic() - began, 2.0)
        self.assertEqual(ran, [])
        # Only h is typed: its text, read without its class's strip().
        self.assertEqual([(p["name"], p["type"]) for p in described if "type" in p],
                         [("h", "string")], described)

        class Broken:
            @property
            def __signature__(self):
                raise RuntimeError("no signature")

            def __call__(self, *args):
                pass

        self.assertEqual(_Method("broken", Broken(), True, 5.0).describe_safely(),
                         {"name": "broken", "idempotent": True, "cache_ttl_s": 5.0})

    def test_handlers_that_take_arguments_by_position_only_say_so(self):
        from litebridge_worker.worker import _takes_positional

        def spread(*args):
            pass

        def only(a, b, /):
            pass

        def anything(*args, **kwargs):
            pass

        def named(**kwargs):
            pass

        self.assertTrue(_takes_positional(spread))
        self.assertTrue(_takes_positional(only))
        self.assertFalse(_takes_positional(anything))
        self.assertFalse(_takes_positional(named))

    def test_positional_and_named_params(self):
        self.assertEqual(self.peer.roundtrip("echo", [42])["result"], 42)
        r = self.peer.roundtrip("analyze", {"description": "a b c", "domain": "finance"})
        self.assertEqual(r["result"], {"domain": "finance", "words": 3})
        self.assertEqual(self.peer.roundtrip("analyze", ["x y"])["result"]["domain"], "general")

    def test_exceptions_carry_type_and_traceback(self):
        err = self.peer.roundtrip("fail", ["kaput"])["error"]
        self.assertEqual(err["code"], -32004)
        self.assertEqual(err["message"], "kaput")
        self.assertEqual(err["data"]["type"], "ValueError")
        self.assertIn("raise ValueError(message)", err["data"]["traceback"])
        self.assertEqual(err["data"]["kind"], "worker_error")
        custom = self.peer.roundtrip("charge", ["acct", -1])["error"]
        self.assertEqual(custom["data"]["type"], "ValueError")

    def test_unknown_methods_and_bad_params(self):
        self.assertEqual(self.peer.roundtrip("nope")["error"]["code"], -32601)
        self.assertEqual(self.peer.roundtrip("echo", {"wrong": 1})["error"]["code"], -32602)
        self.assertEqual(self.peer.roundtrip("echo", "scalar")["error"]["code"], -32602)

    def test_garbage_lines_get_parse_errors_and_the_worker_goes_on(self):
        self.peer.send(b"{not json")
        self.assertEqual(self.peer.read()["error"]["code"], -32700)
        self.peer.send({"jsonrpc": "1.0", "id": 9, "method": "echo"})
        self.assertEqual(self.peer.read()["error"]["code"], -32600)
        self.assertEqual(self.peer.roundtrip("echo", [1])["result"], 1)

    def test_print_in_a_handler_cannot_corrupt_the_protocol(self):
        for _ in range(20):
            self.assertEqual(self.peer.roundtrip("analyze", ["hello world"])["result"]["words"], 2)

    def test_lines_of_any_size(self):
        big = "x" * (10 * 1024 * 1024)
        self.assertEqual(len(self.peer.roundtrip("echo", [big])["result"]), len(big))

    def test_calls_run_concurrently(self):
        started = time.monotonic()
        ids = [self.peer.call("wait", [0.3]) for _ in range(10)]
        ids += [self.peer.call("spin", [0.3]) for _ in range(4)]
        replies = [self.peer.read() for _ in ids]
        self.assertEqual(sorted(r["id"] for r in replies), sorted(ids))
        self.assertLess(time.monotonic() - started, 2.0, "calls ran one after another")

    def test_sync_calls_arriving_together_each_get_a_thread_and_threads_are_reused(self):
        # Each burst arrives in one write, so the worker reads it at once and
        # hands every call to a thread in one go (the pool's flush); the
        # second burst finds the first one's threads idle again.
        for burst in range(2):
            started = time.monotonic()
            ids = list(range(1000 * (burst + 1), 1000 * (burst + 1) + 24))
            lines = b"".join(
                json.dumps({"jsonrpc": "2.0", "id": i, "method": "spin", "params": [0.3]}).encode() + b"\n"
                for i in ids
            )
            self.peer.proc.stdin.write(lines)
            self.peer.proc.stdin.flush()
            replies = [self.peer.read() for _ in ids]
            self.assertEqual(sorted(r["id"] for r in replies), ids)
            self.assertTrue(all(r.get("result") == "done" for r in replies), replies[:2])
            self.assertLess(time.monotonic() - started, 2.0, "burst %d ran one call at a time" % burst)

    def test_cancellation_reaches_async_and_sync_handlers(self):
        a = self.peer.call("wait", [30])
        s = self.peer.call("spin", [30])
        time.sleep(0.1)
        self.peer.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": a}})
        self.peer.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": s}})
        replies = {r["id"]: r for r in (self.peer.read(), self.peer.read())}
        self.assertEqual(replies[a]["error"]["data"]["type"], "CancelledError")
        self.assertEqual(replies[s]["result"], "cancelled")

    def test_log_records_carry_the_request_id(self):
        self.peer.send({"jsonrpc": "2.0", "id": 77, "method": "analyze",
                        "params": ["x y", "finance"], "meta": {"request_id": "req-4242"}})
        self.assertEqual(self.peer.read()["result"]["words"], 2)
        self.peer.call("analyze", ["no meta"])
        self.peer.read()
        self.peer.proc.stdin.close()
        self.peer.proc.wait(timeout=10)
        err = self.peer.proc.stderr.read().decode()
        self.assertIn("INFO example [request req-4242] analyzing for finance", err)
        self.assertIn("[request -] analyzing for general", err)

    def test_ping(self):
        r = self.peer.roundtrip("$/ping")["result"]
        self.assertTrue(r["pong"])
        self.assertEqual(r["pid"], self.peer.proc.pid)

    def test_exits_when_stdin_closes_after_finishing_calls(self):
        rid = self.peer.call("wait", [0.2])
        self.peer.proc.stdin.close()
        reply = self.peer.read()
        self.assertEqual(reply["id"], rid)
        self.assertEqual(self.peer.proc.wait(timeout=10), 0)


@contextlib.contextmanager
def script_worker(source):
    """A Peer on a worker of the test's own (``source``), killed if it
    still runs when the test ends."""
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "worker_under_test.py")
        with open(script, "w") as f:
            f.write(source)
        peer = Peer([sys.executable, script])
        try:
            yield peer
        finally:
            peer.abandon()


class DrainTest(unittest.TestCase):
    def test_calls_sent_before_stdin_ended_are_answered_within_the_drain(self):
        """Calls sent, then stdin closed at once, while a handler holds the
        loop for 5 s: the drain counts from when the loop reads the end, so
        the pool call after it (1.8 s, within a 2 s drain) is answered and
        the worker exits 0. Counted from the hang-up, the watchdog ended it
        at 6 s with that answer lost (review 165)."""
        with script_worker("import time\nfrom litebridge_worker import Worker\n"
                           "w = Worker(drain_timeout=2)\n"
                           "@w.method()\nasync def hold(s):\n    time.sleep(s)\n    return s\n"
                           "@w.method()\ndef work(s):\n    time.sleep(s)\n    return s\n"
                           "w.run()\n") as peer:
            peer.call("hold", [5])
            peer.call("work", [1.8])
            peer.proc.stdin.close()
            answers = [peer.read(), peer.read()]
            peer.proc.wait(timeout=15)
            self.assertEqual(sorted(a["result"] for a in answers), [1.8, 5])
            self.assertEqual(peer.proc.returncode, 0)

    def test_nothing_a_handler_does_keeps_the_worker_once_stdin_ends(self):
        """A thread that is not a daemon (``asyncio.to_thread``), and an
        ``async def`` that blocks the loop itself: once stdin ends the
        worker leaves drain + 3 s + 1 s later (review 164: both kept it for
        their whole 30 s, and the loop never saw the end at all), counted
        from the hang-up when the loop is blocked."""
        handlers = {
            "to_thread": "async def h():\n    await asyncio.to_thread(time.sleep, 30)\n",
            "blocking": "async def h():\n    time.sleep(30)\n",
            # A thread the interpreter waits for at exit (review 165).
            "thread": "async def h():\n    import threading\n"
                      "    threading.Thread(target=time.sleep, args=(30,)).start()\n",
        }
        for name, handler in handlers.items():
            with script_worker("import asyncio, time\nfrom litebridge_worker import Worker\n"
                               "w = Worker(drain_timeout=0.3)\n@w.method()\n" + handler
                               + "w.run()\n") as peer:
                peer.call("h")
                time.sleep(0.3)  # the handler is running
                started = time.monotonic()
                peer.proc.stdin.close()
                peer.proc.wait(timeout=15)
                # drain + 4 s = 4.3 s (the count had started a second late
                # and ended on a whole second: 6 s)
                self.assertLess(time.monotonic() - started, 5.5, name)
                self.assertEqual(peer.proc.returncode, 1, name)

    def test_a_task_that_swallows_cancellation_does_not_keep_the_worker(self):
        """An ``async def`` handler that catches ``CancelledError`` and goes
        on: past the drain it is cancelled, and the worker leaves a second
        later anyway. asyncio.run waited for it for good, so the worker
        outlived a litebridge that was killed."""
        with script_worker(
            "import asyncio\n"
            "from litebridge_worker import Worker\n"
            "w = Worker(drain_timeout=0.3)\n"
            "@w.method()\n"
            "async def stubborn():\n"
            "    while True:\n"
            "        try:\n"
            "            await asyncio.sleep(10)\n"
            "        except asyncio.CancelledError:\n"
            "            pass\n"
            "w.run()\n"
        ) as peer:
            peer.call("stubborn")
            time.sleep(0.2)  # the handler is running
            started = time.monotonic()
            peer.proc.stdin.close()
            peer.proc.wait(timeout=10)
            self.assertLess(time.monotonic() - started, 6.0)
            self.assertEqual(peer.proc.returncode, 1)
            self.assertIn(b"still running", peer.proc.stderr.read())

    def test_a_partial_line_at_eof_with_litebridge_gone_ends_the_worker(self):
        """litebridge killed while it wrote a call (a partial line, then
        EOF, and nobody reading stdout): the worker answered the partial
        line, its write failed, and it read the EOF again and again, at
        full CPU, for good (found as an orphan after CI's NATS tests)."""
        peer = Peer([sys.executable, EXAMPLE])
        try:
            peer.proc.stdout.close()  # litebridge's end of the pipe is gone
            peer.proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"ec')
            peer.proc.stdin.close()
            peer.proc.wait(timeout=10)
        finally:
            peer.abandon()

    def test_a_hung_sync_handler_does_not_keep_the_worker_past_its_drain(self):
        with tempfile.TemporaryDirectory() as d:
            script = os.path.join(d, "stuck.py")
            with open(script, "w") as f:
                f.write(
                    "import time\n"
                    "from litebridge_worker import Worker\n"
                    "w = Worker(drain_timeout=0.3)\n"
                    "@w.method()\n"
                    "def stuck():\n"
                    "    time.sleep(30)\n"
                    "w.run()\n"
                )
            peer = Peer([sys.executable, script])
            try:
                peer.call("stuck")
                time.sleep(0.2)  # the handler is running
                started = time.monotonic()
                peer.proc.stdin.close()
                peer.proc.wait(timeout=10)
                self.assertLess(time.monotonic() - started, 3.0)
            finally:
                peer.close()


class UnencodableResultTest(unittest.TestCase):
    def test_a_result_json_cannot_encode_is_an_error_reply_and_the_worker_goes_on(self):
        with tempfile.TemporaryDirectory() as d:
            script = os.path.join(d, "odd.py")
            with open(script, "w") as f:
                f.write(
                    "from litebridge_worker import Worker\n"
                    "w = Worker()\n"
                    "@w.method()\n"
                    "def opaque():\n"
                    "    return {'x': object()}\n"
                    "@w.method()\n"
                    "def circular():\n"
                    "    c = []\n"
                    "    c.append(c)\n"
                    "    return c\n"
                    "@w.method()\n"
                    "def text():\n"
                    "    return 'é\\n'\n"
                    "w.run()\n"
                )
            peer = Peer([sys.executable, script])
            try:
                e = peer.roundtrip("opaque")["error"]
                self.assertIn("not JSON serializable", e["message"])
                e = peer.roundtrip("circular")["error"]
                self.assertIn("Circular reference", e["message"])
                self.assertEqual(peer.roundtrip("text")["result"], "é\n")
            finally:
                peer.close()


    def test_bytes_and_infinities_cross_as_litebridges_clients_send_them(self):
        """A client's bytes ({"$blob"}) and infinity ({"$real"}) reach a
        handler as bytes and float, and a handler's bytes and infinities go
        back the same way (a handler got dicts, and bytes it returned failed
        the call). NaN stays refused; a dict of other keys stays a dict."""
        with tempfile.TemporaryDirectory() as d:
            script = os.path.join(d, "values.py")
            with open(script, "w") as f:
                f.write(
                    "from litebridge_worker import Worker\n"
                    "w = Worker()\n"
                    "@w.method()\n"
                    "def kinds(*values):\n"
                    "    return [type(v).__name__ for v in values]\n"
                    "@w.method()\n"
                    "def back(value):\n"
                    "    return value\n"
                    "@w.method()\n"
                    "def nan():\n"
                    "    return float('nan')\n"
                    "w.run()\n"
                )
            peer = Peer([sys.executable, script])
            try:
                sent = [{"$blob": "AAH/"}, {"$real": "Infinity"}, {"$blob": "AA", "other": 1}, {"$real": "x"}]
                self.assertEqual(peer.roundtrip("kinds", sent)["result"], ["bytes", "float", "dict", "dict"])
                self.assertEqual(peer.roundtrip("back", [{"$blob": "AAH/"}])["result"], {"$blob": "AAH/"})
                self.assertEqual(peer.roundtrip("back", [{"$real": "-Infinity"}])["result"],
                                 {"$real": "-Infinity"})
                self.assertEqual(peer.roundtrip("back", [[{"$blob": "AA=="}, 1.5]])["result"],
                                 [{"$blob": "AA=="}, 1.5])
                self.assertIn("error", peer.roundtrip("nan"))
            finally:
                peer.close()


class ChildProcessTest(unittest.TestCase):
    def test_a_program_a_handler_starts_cannot_read_the_requests(self):
        with tempfile.TemporaryDirectory() as d:
            script = os.path.join(d, "child.py")
            with open(script, "w") as f:
                f.write(
                    "import subprocess, sys\n"
                    "from litebridge_worker import Worker\n"
                    "w = Worker()\n"
                    "@w.method()\n"
                    "def child():\n"
                    "    # Reads its stdin to the end, as a tool that polls it would.\n"
                    "    out = subprocess.run([sys.executable, '-c', 'import sys; print(len(sys.stdin.buffer.read()))'],\n"
                    "                         capture_output=True, timeout=5)\n"
                    "    return int(out.stdout)\n"
                    "@w.method()\n"
                    "def own_stdin():\n"
                    "    return sys.stdin.read()\n"
                    "@w.method()\n"
                    "def ok(n):\n"
                    "    return n\n"
                    "w.run()\n"
                )
            peer = Peer([sys.executable, script])
            try:
                # Requests sent behind the child's call reach the worker, not the child.
                first = peer.call("child")
                ids = [peer.call("ok", [n]) for n in range(5)]
                replies = {}
                for _ in range(6):
                    r = peer.read()
                    replies[r["id"]] = r
                self.assertEqual(replies[first]["result"], 0, replies[first])
                for n, rid in enumerate(ids):
                    self.assertEqual(replies[rid]["result"], n)
                self.assertEqual(peer.roundtrip("own_stdin")["result"], "")
            finally:
                peer.close()


class ExitingHandlerTest(unittest.TestCase):
    def test_a_handler_raising_system_exit_is_answered_and_the_worker_goes_on(self):
        with tempfile.TemporaryDirectory() as d:
            script = os.path.join(d, "exiting.py")
            with open(script, "w") as f:
                f.write(
                    "import asyncio, sys\n"
                    "from litebridge_worker import Worker\n"
                    "w = Worker()\n"
                    "@w.method()\n"
                    "def quit_sync():\n"
                    "    sys.exit(3)\n"
                    "@w.method()\n"
                    "def interrupt_sync():\n"
                    "    raise KeyboardInterrupt()\n"
                    "@w.method()\n"
                    "async def quit_eager():\n"
                    "    sys.exit(4)\n"
                    "@w.method()\n"
                    "async def quit_later():\n"
                    "    await asyncio.sleep(0.01)\n"
                    "    sys.exit(5)\n"
                    "@w.method()\n"
                    "def ok():\n"
                    "    return 'still here'\n"
                    "w.run()\n"
                )
            peer = Peer([sys.executable, script])
            try:
                for method, kind in [("quit_sync", "SystemExit"), ("interrupt_sync", "KeyboardInterrupt"),
                                     ("quit_eager", "SystemExit"), ("quit_later", "SystemExit")]:
                    e = peer.roundtrip(method)["error"]
                    self.assertEqual(e["data"]["type"], kind, method)
                    self.assertEqual(peer.roundtrip("ok")["result"], "still here", method)
            finally:
                peer.close()


class GenericModeTest(unittest.TestCase):
    def setUp(self):
        self.trace = tempfile.mktemp()
        self.peer = Peer(
            [sys.executable, "-m", "litebridge_worker", "--root", os.path.join(HERE, "fixtures"),
             "--allow", "pkg.tools"],
            env={"SECRET_TRACE": self.trace},
        )

    def tearDown(self):
        self.peer.close()
        if os.path.exists(self.trace):
            os.unlink(self.trace)

    def test_dotted_functions_and_class_methods(self):
        self.assertTrue(self.peer.ready["params"]["dynamic"])
        self.assertEqual(self.peer.roundtrip("pkg.tools.add", [2, 3])["result"], 5)
        r = self.peer.roundtrip("pkg.tools.Agent.analyze_requirements",
                                {"description": "portfolio risk", "domain": "finance"})
        self.assertEqual(r["result"], {"domain": "finance", "length": 14, "calls": 1})
        r = self.peer.roundtrip("pkg.tools.Agent.analyze_requirements", ["x"])
        self.assertEqual(r["result"]["calls"], 2, "the instance is reused")

    def test_paths_outside_the_prefixes_are_refused_before_import(self):
        for name in ["secret.run", "os.system", "pkg.tools._private", "pkg.tools.__class__"]:
            err = self.peer.roundtrip(name, ["echo pwned"])["error"]
            self.assertEqual(err["code"], -32601, name)
        self.assertFalse(os.path.exists(self.trace), "a refused module was imported")
        self.assertEqual(self.peer.roundtrip("pkg.tools.missing")["error"]["code"], -32601)


if __name__ == "__main__":
    unittest.main()
