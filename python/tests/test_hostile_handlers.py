"""What a handler or a module in generic mode can do to a worker, one test
per way a review found to leave a call unanswered or to take other callers'
calls down with it; each against a real worker."""

import json
import os
import shutil
import sys
import tempfile
import unittest

from tests.test_worker import Peer

INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
WORKER_ERROR = -32004


def script_worker(d, source):
    path = os.path.join(d, "w.py")
    with open(path, "w") as f:
        f.write("from litebridge_worker import Worker\nw = Worker()\n" + source + "w.run()\n")
    return Peer([sys.executable, path])


def read_until(peer, rid, seen):
    """Reads replies until ``rid``'s, keeping the others in ``seen``."""
    while rid not in seen:
        r = peer.read()
        seen[r["id"]] = r
    return seen[rid]


class ParamsTest(unittest.TestCase):
    def test_required_keyword_and_positional_only_params_are_checked_before_the_call(self):
        with tempfile.TemporaryDirectory() as d:
            peer = script_worker(d, (
                "@w.method()\n"
                "def kwonly(a, *, b):\n"
                "    return [a, b]\n"
                "@w.method()\n"
                "def posonly(a, /, *, b=2):\n"
                "    return [a, b]\n"
            ))
            try:
                for method, params in [("kwonly", [1]), ("kwonly", None), ("kwonly", {"a": 1}),
                                       ("posonly", {"a": 1}), ("posonly", {"b": 1})]:
                    e = peer.roundtrip(method, params)["error"]
                    self.assertEqual(e["code"], INVALID_PARAMS, (method, params, e))
                self.assertEqual(peer.roundtrip("kwonly", {"a": 1, "b": 2})["result"], [1, 2])
                self.assertEqual(peer.roundtrip("posonly", [1])["result"], [1, 2])
            finally:
                peer.close()


class UnsendableResultTest(unittest.TestCase):
    def test_results_that_cannot_be_sent_are_answered_with_an_error(self):
        with tempfile.TemporaryDirectory() as d:
            peer = script_worker(d, (
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
            ))
            try:
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
            finally:
                peer.close()


class HandlingFailureTest(unittest.TestCase):
    def test_every_call_is_answered_whatever_its_handler_is_or_raises(self):
        with tempfile.TemporaryDirectory() as d:
            peer = script_worker(d, (
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
            ))
            try:
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
            finally:
                peer.close()

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
