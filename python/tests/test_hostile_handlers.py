"""What a handler or a module in generic mode can do to a worker, one test
per way a review found to leave a call unanswered or to take other callers'
calls down with it; each against a real worker."""

import contextlib
import json
import os
import select
import shutil
import sys
import tempfile
import unittest

from tests.test_worker import Peer

INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
WORKER_ERROR = -32004


def worker_file(d, body):
    """A worker's script in ``d``: ``body`` (which makes ``w``), then ``w.run()``."""
    path = os.path.join(d, "w.py")
    with open(path, "w") as f:
        f.write("from litebridge_worker import Worker\n" + body + "w.run()\n")
    return path


def script_worker(d, source):
    return Peer([sys.executable, worker_file(d, "w = Worker()\n" + source)])


@contextlib.contextmanager
def script_worker_running(source):
    """``script_worker`` in a directory of its own, closed (and the
    directory removed) when the block ends, however it ends."""
    with tempfile.TemporaryDirectory() as d:
        peer = script_worker(d, source)
        try:
            yield peer
        finally:
            peer.close()


def read_within(peer, seconds):
    """The next reply, failing the test (not hanging it) if none comes."""
    ready, _, _ = select.select([peer.proc.stdout], [], [], seconds)
    if not ready:
        raise AssertionError("no answer within %s s" % seconds)
    return peer.read()


def read_until(peer, rid, seen):
    """Reads replies until ``rid``'s, keeping the others in ``seen``."""
    while rid not in seen:
        r = peer.read()
        seen[r["id"]] = r
    return seen[rid]


class ParamsTest(unittest.TestCase):
    def test_required_keyword_and_positional_only_params_are_checked_before_the_call(self):
        with script_worker_running((
                "@w.method()\n"
                "def kwonly(a, *, b):\n"
                "    return [a, b]\n"
                "@w.method()\n"
                "def posonly(a, /, *, b=2):\n"
                "    return [a, b]\n"
        )) as peer:
            for method, params in [("kwonly", [1]), ("kwonly", None), ("kwonly", {"a": 1}),
                                   ("posonly", {"a": 1}), ("posonly", {"b": 1})]:
                e = peer.roundtrip(method, params)["error"]
                self.assertEqual(e["code"], INVALID_PARAMS, (method, params, e))
            self.assertEqual(peer.roundtrip("kwonly", {"a": 1, "b": 2})["result"], [1, 2])
            self.assertEqual(peer.roundtrip("posonly", [1])["result"], [1, 2])


class BoundParamsTest(unittest.TestCase):
    """Params that fit what the signature shows but name a parameter the
    handler has bound already (a method's self or cls, what a partial bound
    or fixed) are the caller's mistake (-32602), refused before the call:
    not the handler's error (-32004), which litebridge's breaker counts."""

    def test_bound_and_fixed_names_are_invalid_params(self):
        with script_worker_running((
                "import functools\n"
                "class Svc:\n"
                "    def search(self, **filters):\n"
                "        return sorted(filters)\n"
                "    @classmethod\n"
                "    def build(cls, **parts):\n"
                "        return sorted(parts)\n"
                "    def __call__(self, **kw):\n"
                "        return sorted(kw)\n"
                "svc = Svc()\n"
                "w.add(svc.search, name='search')\n"
                "w.add(Svc.build, name='build')\n"
                "w.add(svc, name='callable')\n"
                "def query(db, sql, **opts):\n"
                "    return [db, sql, sorted(opts)]\n"
                "w.add(functools.partial(query, 'the-db'), name='bound_positional')\n"
                "w.add(functools.partial(query, db='the-db'), name='fixed_keyword')\n"
                "def plain(db, sql):\n"
                "    return [db, sql]\n"
                "w.add(functools.partial(plain, db='the-db'), name='fixed_plain')\n"
                "@w.method()\n"
                "def takes_kwargs(a, **rest):\n"
                "    return [a, sorted(rest)]\n"
        )) as peer:
            methods = {m["name"]: m for m in peer.ready["params"]["methods"]}
            # What a partial fixed is not offered to callers.
            self.assertEqual(methods["fixed_plain"]["params"], [{"name": "sql", "required": True}])
            for method, params in [("search", {"self": 1}), ("search", {"self": 1, "q": 2}),
                                   ("build", {"cls": 1}), ("callable", {"self": 1}),
                                   ("bound_positional", {"sql": "s", "db": "other"}),
                                   ("fixed_keyword", {"sql": "s", "db": "other"}),
                                   ("fixed_plain", {"sql": "s", "db": "other"})]:
                e = peer.roundtrip(method, params)["error"]
                self.assertEqual(e["code"], INVALID_PARAMS, (method, params, e))
                self.assertIn("cannot be passed", e["message"])
            # Everything else still reaches the handler.
            self.assertEqual(peer.roundtrip("search", {"q": 1})["result"], ["q"])
            self.assertEqual(peer.roundtrip("build", {"x": 1})["result"], ["x"])
            self.assertEqual(peer.roundtrip("callable", {"x": 1})["result"], ["x"])
            self.assertEqual(peer.roundtrip("bound_positional", {"sql": "s", "x": 1})["result"],
                             ["the-db", "s", ["x"]])
            self.assertEqual(peer.roundtrip("fixed_keyword", {"sql": "s"})["result"], ["the-db", "s", []])
            self.assertEqual(peer.roundtrip("fixed_plain", {"sql": "s"})["result"], ["the-db", "s"])
            # A name that is not bound anywhere is the handler's to take.
            self.assertEqual(peer.roundtrip("takes_kwargs", {"a": 1, "self": 2})["result"], [1, ["self"]])

    def test_generic_mode_class_methods_refuse_self_and_cls(self):
        root = tempfile.mkdtemp()
        try:
            os.mkdir(os.path.join(root, "app"))
            with open(os.path.join(root, "app", "__init__.py"), "w"):
                pass
            with open(os.path.join(root, "app", "api.py"), "w") as f:
                f.write("class Search:\n"
                        "    def find(self, **filters):\n"
                        "        return sorted(filters)\n"
                        "    @classmethod\n"
                        "    def make(cls, **parts):\n"
                        "        return sorted(parts)\n")
            peer = Peer([sys.executable, "-m", "litebridge_worker", "--root", root, "--allow", "app.api"])
            try:
                for method, params in [("app.api.Search.find", {"self": 1}),
                                       ("app.api.Search.make", {"cls": 1})]:
                    e = peer.roundtrip(method, params)["error"]
                    self.assertEqual(e["code"], INVALID_PARAMS, (method, e))
                self.assertEqual(peer.roundtrip("app.api.Search.find", {"q": 1})["result"], ["q"])
                self.assertEqual(peer.roundtrip("app.api.Search.make", {"q": 1})["result"], ["q"])
            finally:
                peer.close()
        finally:
            shutil.rmtree(root)

    def test_the_shape_check_knows_what_each_kind_of_callable_bound(self):
        import functools
        from litebridge_worker.worker import _bound_names

        class C:
            def m(self, a, **kw):
                pass

            @classmethod
            def c(cls, **kw):
                pass

            @staticmethod
            def s(**kw):
                pass

            def __call__(self, **kw):
                pass

        def f(a, b, c=1, **kw):
            pass

        def wraps_bound(g):
            @functools.wraps(g)
            def wrapper(*a, **kw):
                return g(*a, **kw)
            return wrapper

        class Made:
            def __init__(self, **kw):
                pass

        self.assertEqual(_bound_names(C().m), {"self"})
        self.assertEqual(_bound_names(C.c), {"cls"})
        self.assertEqual(_bound_names(C.s), set())
        self.assertEqual(_bound_names(C()), {"self"})
        self.assertEqual(_bound_names(functools.partial(f, 1)), {"a"})
        self.assertEqual(_bound_names(functools.partial(f, 1, c=2)), {"a", "c"})
        self.assertEqual(_bound_names(functools.partial(C().m, 1)), {"self", "a"})
        self.assertEqual(_bound_names(wraps_bound(C().m)), {"self"})
        self.assertEqual(_bound_names(Made), {"self"})
        self.assertEqual(_bound_names(f), set())
        self.assertEqual(_bound_names(len), set())


class StdoutTest(unittest.TestCase):
    def test_a_handler_closing_stdout_leaves_print_stderr_and_logging_working(self):
        with tempfile.TemporaryDirectory() as d:
            peer = script_worker(d, (
                "import logging, os, sys\n"
                "log = logging.getLogger('app')\n"
                "@w.method()\n"
                "def report():\n"
                "    print('report line')\n"
                "    sys.stdout.close()\n"
                "    return 'done'\n"
                "@w.method()\n"
                "def other():\n"
                "    print('other prints')\n"
                "    return [sys.stdout is sys.stderr, sys.stdout.fileno(), os.path.samestat(\n"
                "        os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno()))]\n"
                "@w.method()\n"
                "def logs():\n"
                "    log.warning('a warning after the close')\n"
                "    sys.stderr.write('straight to stderr\\n')\n"
                "    return 'logged'\n"
            ))
            try:
                # sys.stdout is an object of its own, onto fd 1, which is stderr's pipe.
                self.assertEqual(peer.roundtrip("other")["result"], [False, 1, True])
                self.assertEqual(peer.roundtrip("report")["result"], "done")
                self.assertEqual(peer.roundtrip("other")["result"], [False, 1, True])
                self.assertEqual(peer.roundtrip("logs")["result"], "logged")
            finally:
                peer.proc.stdin.close()
                peer.proc.wait(timeout=10)
                err = peer.proc.stderr.read().decode()
                peer.close()
            self.assertEqual(err.count("other prints"), 2, err)
            self.assertIn("report line", err)
            self.assertIn("a warning after the close", err)
            self.assertIn("straight to stderr", err)

    def test_closing_stdouts_buffer_or_fd_1_leaves_print_where_it_was(self):
        with tempfile.TemporaryDirectory() as d:
            data = os.path.join(d, "data.txt")
            peer = script_worker(d, (
                "import os, sys\n"
                "OPEN = []\n"
                "@w.method()\n"
                "def close_buffer():\n"
                "    sys.stdout.buffer.close()\n"
                "    getattr(sys.stdout.buffer, 'raw', sys.stdout.buffer).close()\n"
                "    return [sys.stdout.closed, sys.stdout.buffer.closed]\n"
                "@w.method()\n"
                "def reopen_fd_1():\n"
                "    with open(sys.stdout.fileno(), 'w') as out:  # closes fd 1 on the way out\n"
                "        out.write('through fd 1\\n')\n"
                "    return 'closed fd 1'\n"
                "@w.method()\n"
                "def open_a_file(path):\n"
                "    f = open(path, 'w')  # a data file a handler keeps open\n"
                "    if f.fileno() != 1:  # another thread took the free fd 1 first (seen in CI)\n"
                "        os.dup2(f.fileno(), 1)\n"
                "        f.close()\n"
                "        f = open(1, 'w')\n"
                "    OPEN.append(f)\n"
                "    return f.fileno()\n"
                "@w.method()\n"
                "def say(text):\n"
                "    print(text)\n"
                "    sys.stdout.flush()\n"
                "    for f in OPEN:\n"
                "        f.flush()\n"
                "    return sys.stdout.fileno()\n"
            ))
            try:
                self.assertEqual(peer.roundtrip("close_buffer")["result"], [False, False])
                self.assertEqual(peer.roundtrip("say", {"text": "after the buffer's close"})["result"], 1)
                self.assertEqual(peer.roundtrip("reopen_fd_1")["result"], "closed fd 1")
                self.assertEqual(peer.roundtrip("open_a_file", {"path": data})["result"], 1)
                self.assertEqual(peer.roundtrip("say", {"text": "after fd 1 was closed"})["result"], 1)
            finally:
                peer.proc.stdin.close()
                peer.proc.wait(timeout=10)
                err = peer.proc.stderr.read().decode()
                peer.close()
            self.assertIn("after the buffer's close", err)
            self.assertIn("through fd 1", err)
            self.assertIn("after fd 1 was closed", err)
            with open(data) as f:
                self.assertEqual(f.read(), "")


class UnsendableResultTest(unittest.TestCase):
    def test_results_that_cannot_be_sent_are_answered_with_an_error(self):
        with script_worker_running((
                "@w.method()\n"
                "def surrogate():\n"
                "    return b'caf\\xe9.txt'.decode('utf-8', 'surrogateescape')\n"
                "@w.method()\n"
                "async def surrogate_async():\n"
                "    return {'name': b'\\xff'.decode('utf-8', 'surrogateescape')}\n"
                "@w.method()\n"
                "def deep():\n"
                "    v = []\n"
                "    for _ in range(100000):\n"
                "        v = [v]\n"
                "    return v\n"
                "@w.method()\n"
                "def raises_with_surrogate():\n"
                "    open(b'/nonexistent/caf\\xe9'.decode('utf-8', 'surrogateescape'))\n"
                "@w.method()\n"
                "def ok():\n"
                "    return 'still here'\n"
        )) as peer:
            for method, words in [("surrogate", "not valid Unicode"),
                                  ("surrogate_async", "not valid Unicode"),
                                  ("deep", "not JSON serializable")]:
                e = peer.roundtrip(method)["error"]
                self.assertEqual(e["code"], WORKER_ERROR, (method, e))
                self.assertIn(words, e["message"], method)
                self.assertEqual(peer.roundtrip("ok")["result"], "still here")
            # An error quoting such text is sent as valid UTF-8 (the Peer
            # reads with json.loads on bytes, which refuses anything else).
            peer.send({"jsonrpc": "2.0", "id": 99, "method": "raises_with_surrogate"})
            line = peer.proc.stdout.readline()
            line.decode("utf-8")  # strict
            e = json.loads(line)["error"]
            self.assertEqual(e["data"]["type"], "FileNotFoundError", e)


class InexactResultTest(unittest.TestCase):
    """A result litebridge would not read as it was sent is refused with an
    error naming the problem: an integer beyond 64 bits (litebridge would
    read it as a float, rounded) or an object with two keys JSON writes the
    same (one would be lost)."""

    def test_integers_beyond_64_bits_and_colliding_keys_are_refused(self):
        with script_worker_running((
                "import asyncio, enum\n"
                "class Big(enum.IntEnum):\n"
                "    HUGE = 2 ** 70\n"
                "VALUES = {\n"
                "    'top': 2 ** 64, 'below': -2 ** 63 - 1, 'nested': {'a': [1, 2, {'b': 3 ** 50}]},\n"
                "    'in_tuple': (1, -(10 ** 30)), 'enum': [Big.HUGE],\n"
                "    'int_and_str': {1: 'a', '1': 'b'}, 'float_and_str': {'x': {1.5: 'a', '1.5': 'b'}},\n"
                "    'bool_and_str': {True: 1, 'true': 2}, 'none_and_str': {'null': 1, None: 2},\n"
                "    'edges': [2 ** 64 - 1, -2 ** 63, 2 ** 63],\n"
                "    'int_keys': {1: 'a', 2: 'b', 2 ** 70: 'big keys are strings'},\n"
                "    'digits_in_text': {'id': '123456789012345678901234567890', '2024': 'x', 'true': 1},\n"
                "    'floats': [1e300, 1.2345678901234567e-4, 1234567890123456.8],\n"
                "}\n"
                "@w.method()\n"
                "def value(name):\n"
                "    return VALUES[name]\n"
                "@w.method()\n"
                "async def value_async(name):\n"
                "    return VALUES[name]\n"
                "@w.method()\n"
                "async def value_later(name):\n"
                "    await asyncio.sleep(0)\n"
                "    return VALUES[name]\n"
        )) as peer:
            refused = {
                "top": ("result is an integer of 65 bits",),
                "below": ("result is an integer of 64 bits",),
                "nested": ("integer", "at result['a'][2]['b'] an integer of 80 bits"),
                "in_tuple": ("integer", "at result[1] an integer of 100 bits"),
                "enum": ("integer", "at result[0] an integer of 71 bits"),
                "int_and_str": ("keys 1 and '1'", 'same key "1"', "result is an object"),
                "float_and_str": ("keys 1.5 and '1.5'", "object at result['x']"),
                "bool_and_str": ("keys True and 'true'", 'same key "true"'),
                "none_and_str": ("keys 'null' and None", 'same key "null"'),
            }
            for method in ["value", "value_async", "value_later"]:
                for name, words in refused.items():
                    e = peer.roundtrip(method, [name])["error"]
                    self.assertEqual(e["code"], WORKER_ERROR, (method, name, e))
                    for w in words:
                        self.assertIn(w, e["message"], (method, name, e))
                    if "integer" in words[0]:
                        self.assertIn("return it as a string", e["message"])
                    else:
                        self.assertIn("one would be lost", e["message"])
                # What litebridge reads exactly goes through unchanged.
                line_of = {}
                for name in ["edges", "int_keys", "digits_in_text", "floats"]:
                    peer.call(method, [name])
                    line_of[name] = peer.proc.stdout.readline()
                self.assertIn(b"[18446744073709551615,-9223372036854775808,9223372036854775808]",
                              line_of["edges"])
                self.assertEqual(json.loads(line_of["int_keys"])["result"],
                                 {"1": "a", "2": "b", str(2 ** 70): "big keys are strings"})
                self.assertEqual(json.loads(line_of["digits_in_text"])["result"],
                                 {"id": "123456789012345678901234567890", "2024": "x", "true": 1})
                self.assertEqual(json.loads(line_of["floats"])["result"],
                                 [1e300, 1.2345678901234567e-4, 1234567890123456.8])


class HandlingFailureTest(unittest.TestCase):
    def test_every_call_is_answered_whatever_its_handler_is_or_raises(self):
        with script_worker_running((
                "import asyncio, dataclasses\n"
                "class Mute(Exception):\n"
                "    def __str__(self):\n"
                "        raise RuntimeError('no words')\n"
                "@w.method()\n"
                "def mute_sync():\n"
                "    raise Mute()\n"
                "@w.method()\n"
                "async def mute_eager():\n"
                "    raise Mute()\n"
                "@w.method()\n"
                "async def mute_later():\n"
                "    await asyncio.sleep(0.01)\n"
                "    raise Mute()\n"
                "@dataclasses.dataclass\n"
                "class Tool:\n"
                "    n: int = 1\n"
                "    def __call__(self):\n"
                "        return 'tool'\n"
                "w.add(Tool(), name='unhashable')\n"
                "@w.method()\n"
                "def ok(n):\n"
                "    return n\n"
        )) as peer:
            for method in ["mute_sync", "mute_eager", "mute_later"]:
                e = peer.roundtrip(method)["error"]
                self.assertEqual(e["data"]["type"], "Mute", (method, e))
            # Calls that arrive together, one of them to a handler the
            # worker cannot look up: each gets its answer.
            lines = b"".join(
                json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p}).encode() + b"\n"
                for i, m, p in [(101, "ok", [101]), (102, "unhashable", []), (103, "ok", [103])]
            )
            peer.proc.stdin.write(lines)
            peer.proc.stdin.flush()
            seen = {}
            self.assertEqual(read_until(peer, 101, seen)["result"], 101)
            self.assertEqual(read_until(peer, 102, seen)["result"], "tool")
            self.assertEqual(read_until(peer, 103, seen)["result"], 103)
            self.assertEqual(peer.roundtrip("ok", [104])["result"], 104)

    def test_every_call_is_answered_whatever_its_exception_does(self):
        with script_worker_running((
                "import asyncio\n"
                "class NoTypeName(Exception):\n"
                "    @property\n"
                "    def type_name(self):\n"
                "        raise RuntimeError('no type name')\n"
                "class Interrupting(Exception):\n"
                "    def __str__(self):\n"
                "        raise KeyboardInterrupt()\n"
                "class OddName(Exception):\n"
                "    type_name = 42\n"
                "class Meta(type):\n"
                "    @property\n"
                "    def __name__(cls):\n"
                "        raise RuntimeError('no name')\n"
                "class Nameless(Exception, metaclass=Meta):\n"
                "    pass\n"
                "class Items(dict):\n"
                "    def items(self):\n"
                "        raise SystemExit(9)\n"
                "def raising(cls):\n"
                "    def sync():\n"
                "        raise cls('x')\n"
                "    async def eager():\n"
                "        raise cls('x')\n"
                "    async def later():\n"
                "        await asyncio.sleep(0)\n"
                "        raise cls('x')\n"
                "    return sync, eager, later\n"
                "for cls in [NoTypeName, Interrupting, OddName, Nameless]:\n"
                "    for f in raising(cls):\n"
                "        w.add(f, name=cls.__qualname__ + '_' + f.__name__)\n"
                "@w.method()\n"
                "def bad_items():\n"
                "    return Items(a=1)\n"
                "@w.method()\n"
                "async def bad_items_async():\n"
                "    return Items(a=1)\n"
                "@w.method()\n"
                "def ok(n):\n"
                "    return n\n"
        )) as peer:
            expected = {"NoTypeName": ("NoTypeName", "x"), "Interrupting": ("Interrupting", "Interrupting"),
                        "OddName": ("OddName", "x"), "Nameless": (None, "x")}
            rid = 0
            for cls, (type_name, message) in expected.items():
                for how in ["sync", "eager", "later"]:
                    rid += 1
                    peer.send({"jsonrpc": "2.0", "id": rid, "method": "%s_%s" % (cls, how)})
                    r = read_within(peer, 5)
                    self.assertEqual(r["id"], rid)
                    e = r["error"]
                    self.assertEqual(e["code"], WORKER_ERROR, (cls, how, e))
                    self.assertEqual(e["message"], message, (cls, how, e))
                    if type_name is not None:
                        self.assertEqual(e["data"]["type"], type_name, (cls, how, e))
                    self.assertIsInstance(e["data"]["type"], str)
                    self.assertEqual(peer.roundtrip("ok", [rid])["result"], rid)
            for method in ["bad_items", "bad_items_async"]:
                peer.call(method)
                e = read_within(peer, 5)["error"]
                self.assertIn("not JSON serializable", e["message"], (method, e))
                self.assertEqual(e["data"]["type"], "SystemExit")
            self.assertEqual(peer.roundtrip("ok", [0])["result"], 0)
            self.assertIsNone(peer.proc.poll())

    def test_a_cache_lifetime_no_reader_takes_is_refused_at_registration(self):
        from litebridge_worker import Worker
        w = Worker()
        for ttl in [float("inf"), float("nan"), -1, "60", True, 10 ** 400]:
            with self.assertRaises(ValueError, msg=repr(ttl)):
                w.method(cache_ttl_s=ttl)
        w.method(cache_ttl_s=0.5)(lambda: None)
        w.method(cache_ttl_s=1e10)(lambda: None)  # "forever"


class GenericModeImportTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp()
        pkg = os.path.join(self.root, "pkg")
        os.mkdir(pkg)
        files = {
            "__init__.py": "",
            "exits.py": "import sys\nsys.exit(2)\ndef f():\n    return 1\n",
            "mod.py": "import time\ndef sleepy(s):\n    time.sleep(s)\n    return 'done'\n",
            # What module code may expect of its import: the main thread,
            # the worker's event loop, and objects used later by handlers.
            "main.py": (
                "import asyncio, signal, sqlite3\n"
                "signal.signal(signal.SIGUSR1, lambda *_: None)\n"
                "loop = asyncio.get_event_loop()\n"
                "lock = asyncio.Lock()\n"
                "db = sqlite3.connect(':memory:')\n"
                "async def answer():\n"
                "    async with lock:\n"
                "        return db.execute('SELECT 42').fetchone()[0]\n"
                "def nan():\n"
                "    return float('nan')\n"
            ),
        }
        for name, text in files.items():
            with open(os.path.join(pkg, name), "w") as f:
                f.write(text)
        self.peer = Peer([sys.executable, "-m", "litebridge_worker", "--root", self.root, "--allow", "pkg"])

    def tearDown(self):
        self.peer.close()
        shutil.rmtree(self.root)

    def test_a_module_that_exits_as_it_is_imported_takes_no_other_call_down(self):
        seen = {}
        running = self.peer.call("pkg.mod.sleepy", [0.5])
        for _ in range(2):
            exiting = self.peer.call("pkg.exits.f")
            e = read_until(self.peer, exiting, seen)["error"]
            self.assertEqual(e["code"], METHOD_NOT_FOUND, e)
            self.assertEqual(e["data"]["type"], "SystemExit", e)
        self.assertEqual(read_until(self.peer, running, seen)["result"], "done")
        self.assertIsNone(self.peer.proc.poll())

    def test_modules_are_imported_as_their_code_expects(self):
        reply = self.peer.roundtrip("pkg.main.answer")
        self.assertEqual(reply.get("result"), 42, reply)

    def test_a_result_no_json_reader_takes_is_answered_with_an_error(self):
        e = self.peer.roundtrip("pkg.main.nan")["error"]
        self.assertEqual(e["code"], WORKER_ERROR, e)
        self.assertIn("not JSON serializable", e["message"])


if __name__ == "__main__":
    unittest.main()
