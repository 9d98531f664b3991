"""Replies made while the lines of one read are dispatched are written
together. None is lost or mixed up; none waits behind a handler not known to
be quick (one run fewer than 8 times, one that kept the loop lately), nor
behind a name the resolver has to import, nor for more than a millisecond
behind quick ones.

The waits here are not timed: the handler that keeps the loop waits for a
file the test makes only once it has read the earlier replies, so a reply
held back makes the handler give up (after 10 s) and say so."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from tests.test_worker import PYTHON_DIR

WORKER = r"""
import asyncio, os, sys, time
from litebridge_worker import Worker

GO = sys.argv[1]
w = Worker()

def wait_for_go():
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if os.path.exists(GO):
            return True
        time.sleep(0.005)
    return False

@w.method()
async def echo(value=None):
    return value

@w.method()
def sync_echo(value=None):
    return value

@w.method()
async def busy(ms):
    time.sleep(ms / 1000)  # keeps the loop, as CPU work without an await does
    return ms

@w.method()
async def keeps_the_loop_until_go():
    return wait_for_go()

@w.method()
async def quick_or_until_go(wait=False, ms=0):
    time.sleep(ms / 1000)  # keeps the loop
    return wait_for_go() if wait else "quick"

@w.method()
async def exits_now():
    os._exit(3)

@w.method()
async def tick():
    time.sleep(0.0003)
    return "tick"

@w.method()
async def big(n):
    return "x" * n

def resolver(name):
    if name == "slow.import":
        ok = wait_for_go()
        async def f():
            return ok
        return f
    return None

w.set_resolver(resolver)
w.run()
"""


class GatheringTest(unittest.TestCase):
    def setUp(self):
        fd, self.go = tempfile.mkstemp()
        os.close(fd)
        os.unlink(self.go)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, self.go], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        self.assertEqual(self.read()["method"], "$/ready")

    def tearDown(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=20)
        self.proc.stdout.close()
        if os.path.exists(self.go):
            os.unlink(self.go)

    def send_together(self, calls):
        """Writes the calls in one write, so the worker reads them together."""
        lines = [json.dumps(dict({"jsonrpc": "2.0"}, **c)) for c in calls]
        data = ("\n".join(lines) + "\n").encode()
        self.assertLess(len(data), 4096, "one write, one read: under PIPE_BUF")
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def warm_up(self, *methods):
        """Calls each method 8 times, each time read together with another
        call (a line read alone has no reply to gather): known quick."""
        for i in range(8):
            self.send_together([{"id": "warm-%s-%d" % (m, i), "method": m} for m in methods]
                               + [{"id": "warm-%d" % i, "method": "echo"}])
            for _ in range(len(methods) + 1):
                self.assertIn("result", self.read())

    def read(self):
        line = self.proc.stdout.readline()
        while line == b"\n":  # before $/ready
            line = self.proc.stdout.readline()
        if not line:
            raise EOFError("the worker closed stdout")
        return json.loads(line)

    def assert_written_before(self, call, what="it"):
        """Sends an echo and ``call`` (which waits for the go file)
        together: the echo's answer must come before the go is given, then
        ``call``'s answer, True (it did not give up waiting)."""
        self.send_together([{"id": 1, "method": "echo", "params": ["first"]}, dict(call, id=2)])
        self.assertEqual(self.read(), {"jsonrpc": "2.0", "id": 1, "result": "first"})
        open(self.go, "w").close()
        self.assertEqual(self.read(), {"jsonrpc": "2.0", "id": 2, "result": True},
                         "the answer before it was held back until %s gave up" % what)

    def test_calls_sent_together_are_each_answered_once(self):
        calls = []
        for i in range(40):
            calls.append({"id": i, "method": ("echo", "sync_echo")[i % 2], "params": [i]})
        calls.append({"id": "bad", "method": "echo", "params": [1, 2, 3]})
        calls.append({"id": "missing", "method": "nope"})
        calls.append({"id": "ping", "method": "$/ping"})
        calls.append({"method": "echo", "params": ["a notification: no answer"]})
        self.send_together(calls)
        replies = {}
        for _ in range(43):
            r = self.read()
            self.assertNotIn(r["id"], replies, "answered twice")
            replies[r["id"]] = r
        for i in range(40):
            self.assertEqual(replies[i]["result"], i)
        self.assertEqual(replies["bad"]["error"]["code"], -32602)
        self.assertEqual(replies["missing"]["error"]["code"], -32601)
        self.assertTrue(replies["ping"]["result"]["pong"])
        # Nothing else is on its way: the next answer is the next call's.
        self.send_together([{"id": "last", "method": "echo", "params": ["z"]}])
        self.assertEqual(self.read(), {"jsonrpc": "2.0", "id": "last", "result": "z"})

    def test_answers_past_the_size_limit_are_written_whole(self):
        # 64 KiB gathered is written at once; every line still arrives whole.
        calls = [{"id": i, "method": "big", "params": [30000]} for i in range(10)]
        self.send_together(calls)
        got = sorted(self.read()["id"] for _ in range(10))
        self.assertEqual(got, list(range(10)))

    def test_answers_are_written_before_a_handler_run_for_the_first_time(self):
        # It may keep the loop (as this one does until the test has read the
        # answer before it), or end the process.
        self.assert_written_before({"method": "keeps_the_loop_until_go"})

    def test_answers_made_before_a_handler_ends_the_process_are_not_lost(self):
        self.send_together([
            {"id": 1, "method": "echo", "params": [1]},
            {"id": 2, "method": "sync_echo", "params": [2]},
            {"id": 3, "method": "echo", "params": [3]},  # echo is known quick by now
            {"id": 4, "method": "exits_now"},
        ])
        got = [json.loads(line)["id"] for line in self.proc.stdout]
        self.assertEqual(self.proc.wait(timeout=10), 3)
        # The sync call may not have started (a thread is woken once every
        # line read is dispatched, unless it is a new one): if not, it is
        # not answered, as it did not run.
        self.assertIn(sorted(got), ([1, 3], [1, 2, 3]))

    def test_answers_wait_no_longer_than_a_millisecond_behind_quick_handlers(self):
        # Each tick is quick (0.3 ms), but some of them together pass the
        # millisecond an answer may wait: the answers so far are written
        # before the handler at the end, known quick, keeps the loop.
        self.warm_up("tick", "quick_or_until_go")
        calls = [{"id": 1, "method": "echo", "params": ["first"]}]
        calls += [{"id": 10 + i, "method": "tick"} for i in range(8)]
        calls.append({"id": 2, "method": "quick_or_until_go", "params": [True]})
        self.send_together(calls)
        early = [self.read(), self.read()]
        self.assertIn({"jsonrpc": "2.0", "id": 1, "result": "first"}, early)
        open(self.go, "w").close()
        rest = [self.read() for _ in range(8)]
        self.assertIn({"jsonrpc": "2.0", "id": 2, "result": True}, rest,
                      "the answers before it were held back until it gave up")

    def test_a_handler_that_kept_the_loop_lately_has_the_answers_written_before_it(self):
        self.warm_up("quick_or_until_go")
        self.send_together([{"id": "w", "method": "quick_or_until_go", "params": [False, 5]},
                            {"id": "w2", "method": "echo"}])
        self.assertEqual({self.read()["id"], self.read()["id"]}, {"w", "w2"})  # it kept the loop 5 ms
        self.assert_written_before({"method": "quick_or_until_go", "params": [True]})

    def test_a_handler_that_kept_the_loop_on_a_call_that_came_alone_is_no_longer_trusted(self):
        self.warm_up("quick_or_until_go")
        # One line, read alone: its reply is not gathered, but its first
        # step keeping the loop 5 ms counts all the same.
        self.proc.stdin.write((json.dumps({"jsonrpc": "2.0", "id": "alone", "method": "quick_or_until_go",
                                           "params": [False, 5]}) + "\n").encode())
        self.proc.stdin.flush()
        self.assertEqual(self.read()["id"], "alone")
        self.assert_written_before({"method": "quick_or_until_go", "params": [True]})

    def test_a_stdout_that_shares_stdins_non_blocking_mode_tears_no_line(self):
        # One socket for stdin and stdout (socat, inetd): the worker's
        # non-blocking stdin makes stdout non-blocking too. A reader slower
        # than the answers still gets every one, whole.
        a, b = socket.socketpair()
        proc = subprocess.Popen([sys.executable, "-c", WORKER, self.go], stdin=b.fileno(),
                                stdout=b.fileno(), stderr=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        b.close()
        with a, a.makefile("rb") as f:
            self.assertEqual(f.readline(), b"\n")
            self.assertIn(b"$/ready", f.readline())
            a.sendall(b"".join((json.dumps({"jsonrpc": "2.0", "id": i, "method": "big",
                                            "params": [20000]}) + "\n").encode() for i in range(40)))
            time.sleep(0.5)  # the reader is busy: the socket's buffer fills
            a.shutdown(socket.SHUT_WR)
            ids = sorted(json.loads(line)["id"] for line in f)
        self.assertEqual(proc.wait(timeout=20), 0)
        self.assertEqual(ids, list(range(40)))

    def test_answers_are_written_before_a_name_the_resolver_imports(self):
        self.assert_written_before({"method": "slow.import"}, "the import")


if __name__ == "__main__":
    unittest.main()


HOSTILE_WORKER = r"""
import functools, time
import litebridge_worker.worker
from litebridge_worker import Worker
litebridge_worker.worker._REMEMBERED = 64  # the bound, small enough for a quick test
w = Worker()

async def base(x=None):
    return x

async def slow_base(x=None):
    time.sleep(0.0012)  # a first step past the millisecond: never trusted
    return x

armed = [False]

class Hostile(functools.partial):
    def __hash__(self):
        if armed[0]:
            raise RuntimeError("hash refused")
        return id(self) >> 4

async def arming(x=None):
    armed[0] = True
    return "ran"

hostile = Hostile(arming)

def resolver(name):
    if name == "fresh.partial":
        return functools.partial(base)  # a new callable for each call
    if name == "fresh.slow":
        return functools.partial(slow_base)
    if name == "hostile.hash":
        armed[0] = False
        return hostile
    if name == "sizes.now":
        async def sizes():
            return [len(w._quick), len(w._signatures)]
        return sizes
    return None

w.set_resolver(resolver)
w.run()
"""


class HostileCallablesTest(unittest.TestCase):
    def setUp(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOSTILE_WORKER], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        self.assertEqual(self.proc.stdout.readline(), b"\n")
        self.assertIn(b"$/ready", self.proc.stdout.readline())

    def tearDown(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=20)
        self.proc.stdout.close()

    def send(self, calls):
        self.proc.stdin.write(b"".join((json.dumps(dict({"jsonrpc": "2.0"}, **c)) + "\n").encode()
                                       for c in calls))
        self.proc.stdin.flush()

    def read(self):
        return json.loads(self.proc.stdout.readline())

    def test_a_handler_whose_hash_fails_once_it_ran_is_answered_once(self):
        self.send([{"id": 1, "method": "fresh.partial", "params": [1]},
                   {"id": "h", "method": "hostile.hash"},
                   {"id": 2, "method": "fresh.partial", "params": [2]}])
        self.send([{"id": "after", "method": "fresh.partial", "params": [3]}])
        got = []
        while not got or got[-1]["id"] != "after":
            got.append(self.read())
        answers = [r for r in got if r["id"] == "h"]
        self.assertEqual(answers, [{"jsonrpc": "2.0", "id": "h", "result": "ran"}])

    def test_what_is_kept_of_handlers_made_for_each_call_is_bounded(self):
        # Quick ones and slow ones (whose speed is kept too), each made anew
        # for every call, read together (the speeds are noted then).
        for method in ("fresh.partial", "fresh.slow"):
            for start in range(0, 200, 20):
                self.send([{"id": i, "method": method, "params": [i]} for i in range(start, start + 20)])
                for _ in range(20):
                    self.read()
            self.send([{"id": "s", "method": "sizes.now"}])
            quick, signatures = self.read()["result"]
            self.assertLessEqual(quick, 64, method)
            self.assertLessEqual(signatures, 64, method)


class WorkerLifetimeTest(unittest.TestCase):
    def test_a_worker_that_has_run_is_not_kept_alive(self):
        # run() twice in one process (stdin at its end each time): neither
        # Worker is kept alive by anything the worker set up for the process.
        script = (
            "import gc, os, sys, weakref\n"
            "from litebridge_worker import Worker\n"
            "refs = []\n"
            "for _ in range(2):\n"
            "    r, wr = os.pipe()\n"
            "    os.dup2(r, 0)\n"
            "    os.close(r)\n"
            "    os.close(wr)  # stdin at its end\n"
            "    w = Worker()\n"
            "    refs.append(weakref.ref(w))\n"
            "    w.run()\n"
            "    del w\n"
            "gc.collect()\n"
            "sys.stderr.write('alive=%d\\n' % sum(r() is not None for r in refs))\n"
        )
        out = subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=60,
                             env=dict(os.environ, PYTHONPATH=PYTHON_DIR))
        self.assertIn(b"alive=0", out.stderr, out.stderr)
