"""Each call runs in a context of its own, as an asyncio Task would: what a
handler sets in a ContextVar (or decimal's context) never reaches another
call, whoever made it; an ``async def`` handler runs in a real Task from its
first line; and an ``async def`` behind a plain decorator is awaited, not
sent back as a coroutine. Each against a real worker."""

import json
import sys
import tempfile
import time
import unittest

from tests.test_hostile_handlers import read_until, script_worker

WORKER_ERROR = -32004

STATE = (
    "import asyncio, contextvars, decimal, functools\n"
    "from litebridge_worker import current_request_id, cancelled\n"
    "user = contextvars.ContextVar('user', default=None)\n"
    "@w.method()\n"
    "async def login(name):\n"
    "    user.set(name)\n"  # before any await: the step run where the line was read
    "    return 'hello ' + name\n"
    "@w.method()\n"
    "async def login_then_wait(name):\n"
    "    user.set(name)\n"
    "    await asyncio.sleep(0.01)\n"
    "    return user.get()\n"
    "@w.method()\n"
    "def login_sync(name):\n"
    "    user.set(name)\n"
    "    return name\n"
    "@w.method()\n"
    "async def whoami():\n"
    "    return user.get()\n"
    "@w.method()\n"
    "async def whoami_later():\n"
    "    await asyncio.sleep(0)\n"
    "    return user.get()\n"
    "@w.method()\n"
    "def whoami_sync():\n"
    "    return user.get()\n"
    "@w.method()\n"
    "async def low_precision():\n"
    "    decimal.getcontext().prec = 3\n"
    "    return str(decimal.Decimal(1) / decimal.Decimal(7))\n"
    "@w.method()\n"
    "def low_precision_sync():\n"
    "    decimal.getcontext().prec = 3\n"
    "    return str(decimal.Decimal(1) / decimal.Decimal(7))\n"
    "@w.method()\n"
    "async def divide():\n"
    "    return str(decimal.Decimal(1) / decimal.Decimal(7))\n"
    "@w.method()\n"
    "def divide_sync():\n"
    "    return str(decimal.Decimal(1) / decimal.Decimal(7))\n"
)

FULL = str(__import__("decimal").Decimal(1) / __import__("decimal").Decimal(7))


class ContextIsolationTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.peer = script_worker(self.tmp.name, STATE)

    def tearDown(self):
        self.peer.close()
        self.tmp.cleanup()

    def nobody_is_logged_in(self, after):
        for method in ["whoami", "whoami_later", "whoami_sync"]:
            r = self.peer.roundtrip(method)
            self.assertIsNone(r["result"], "%s after %s: %r" % (method, after, r))

    def test_a_context_variable_set_by_one_call_is_not_seen_by_later_calls(self):
        self.nobody_is_logged_in("nothing")
        for method in ["login", "login_then_wait", "login_sync"]:
            r = self.peer.roundtrip(method, {"name": "alice"})
            self.assertIn("alice", r["result"], r)
            self.nobody_is_logged_in(method)

    def test_a_value_set_stays_with_its_call_through_its_awaits(self):
        # Calls that overlap each see their own value.
        ids = {self.peer.call("login_then_wait", {"name": "caller-%d" % i}): "caller-%d" % i for i in range(5)}
        seen = {}
        for rid, name in ids.items():
            self.assertEqual(read_until(self.peer, rid, seen)["result"], name)

    def test_decimal_precision_set_by_one_call_is_not_seen_by_later_calls(self):
        for setter in ["low_precision", "low_precision_sync"]:
            self.assertEqual(self.peer.roundtrip(setter)["result"], "0.143")
            for method in ["divide", "divide_sync"]:
                self.assertEqual(self.peer.roundtrip(method)["result"], FULL, (setter, method))


class SharedDecimalContextTest(unittest.TestCase):
    """decimal's context, once set where calls are copied from (Decimal
    arithmetic at import sets it), is one object every copy holds: each call
    gets a copy of its own, what the module set at import kept."""

    def check(self, prelude, full):
        with tempfile.TemporaryDirectory() as d:
            peer = script_worker(d, STATE + prelude)
            try:
                for setter in ["low_precision", "low_precision_sync"]:
                    for method in ["divide", "divide_sync"]:
                        self.assertEqual(peer.roundtrip(method)["result"], full, (method, "before"))
                    self.assertEqual(peer.roundtrip(setter)["result"], "0.143")
                    for method in ["divide", "divide_sync"]:
                        self.assertEqual(peer.roundtrip(method)["result"], full, (setter, method))
            finally:
                peer.close()

    def test_arithmetic_at_import_does_not_make_one_context_for_every_call(self):
        self.check("RATE = decimal.Decimal('0.2') * 100\n", FULL)

    def test_precision_set_at_import_is_every_calls_starting_point(self):
        self.check("decimal.getcontext().prec = 5\n", "0.14286")


TASKS = (
    "import asyncio, functools, sys\n"
    "from litebridge_worker import current_request_id\n"
    "@w.method()\n"
    "async def current():\n"
    "    first = asyncio.current_task()\n"
    "    await asyncio.sleep(0)\n"
    "    return [first is not None, first is asyncio.current_task()]\n"
    "@w.method()\n"
    "async def wait_for_first():\n"
    "    return await asyncio.wait_for(asyncio.sleep(0.01, 'slept'), 5)\n"
    "@w.method()\n"
    "async def wait_for_times_out():\n"
    "    try:\n"
    "        await asyncio.wait_for(asyncio.sleep(5), 0.05)\n"
    "    except asyncio.TimeoutError:\n"
    "        return 'timed out'\n"
    "@w.method()\n"
    "async def ids():\n"
    "    first = current_request_id()\n"
    "    await asyncio.sleep(0)\n"
    "    return [first, current_request_id()]\n"
    "made = []\n"
    "@w.method()\n"
    "async def install_factory():\n"
    "    def factory(loop, coro, **kw):\n"
    "        made.append(1)\n"
    "        return asyncio.Task(coro, loop=loop, **kw)\n"
    "    asyncio.get_running_loop().set_task_factory(factory)\n"
    "@w.method()\n"
    "async def tasks_made():\n"
    "    await asyncio.sleep(0)\n"
    "    return [len(made), asyncio.current_task() is not None]\n"
    "if sys.version_info >= (3, 11):\n"
    "    @w.method()\n"
    "    async def timeout_first():\n"
    "        try:\n"
    "            async with asyncio.timeout(0.05):\n"
    "                await asyncio.sleep(5)\n"
    "        except TimeoutError:\n"
    "            return 'timed out'\n"
    "    @w.method()\n"
    "    async def taskgroup_first():\n"
    "        async with asyncio.TaskGroup() as tg:\n"
    "            t = tg.create_task(asyncio.sleep(0.01, 'x'))\n"
    "        return t.result()\n"
)


class TaskFromTheFirstLineTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.peer = script_worker(self.tmp.name, TASKS)

    def tearDown(self):
        self.peer.close()
        self.tmp.cleanup()

    def test_the_first_step_runs_in_the_task_that_carries_the_call_on(self):
        self.assertEqual(self.peer.roundtrip("current")["result"], [True, True])

    def test_asyncio_helpers_that_need_the_current_task_work_before_the_first_await(self):
        self.assertEqual(self.peer.roundtrip("wait_for_first")["result"], "slept")
        self.assertEqual(self.peer.roundtrip("wait_for_times_out")["result"], "timed out")
        if sys.version_info >= (3, 11):
            # The timeout cancels the Task the handler goes on in, so it ends.
            started = time.monotonic()
            self.assertEqual(self.peer.roundtrip("timeout_first")["result"], "timed out")
            self.assertLess(time.monotonic() - started, 3)
            self.assertEqual(self.peer.roundtrip("taskgroup_first")["result"], "x")

    def test_a_task_factory_the_program_sets_makes_the_handlers_tasks(self):
        self.peer.roundtrip("install_factory")
        self.assertEqual(self.peer.roundtrip("tasks_made")["result"], [1, True])
        self.assertEqual(self.peer.roundtrip("tasks_made")["result"], [2, True])

    def test_the_request_id_is_seen_before_and_after_the_first_await(self):
        self.peer.send({"jsonrpc": "2.0", "id": 7, "method": "ids", "meta": {"request_id": "req-7"}})
        self.assertEqual(self.peer.read()["result"], ["req-7", "req-7"])
        self.assertEqual(self.peer.roundtrip("ids")["result"], [None, None])


WRAPPED = (
    "import asyncio, functools, contextvars\n"
    "from litebridge_worker import current_request_id\n"
    "user = contextvars.ContextVar('user', default=None)\n"
    "def logged(f):\n"
    "    @functools.wraps(f)\n"
    "    def wrapper(*a, **kw):\n"
    "        user.set('set by the wrapper')\n"
    "        return f(*a, **kw)\n"
    "    return wrapper\n"
    "@w.method()\n"
    "@logged\n"
    "async def fetch(x):\n"
    "    await asyncio.sleep(0)\n"
    "    return [x * 2, current_request_id(), user.get()]\n"
    "@w.method()\n"
    "@logged\n"
    "async def at_once(x):\n"
    "    return x\n"
    "@w.method()\n"
    "@logged\n"
    "async def fails():\n"
    "    await asyncio.sleep(0)\n"
    "    raise ValueError('inner')\n"
    "@w.method()\n"
    "@logged\n"
    "async def slow():\n"
    "    await asyncio.sleep(30)\n"
    "@w.method()\n"
    "@logged\n"
    "async def exits():\n"
    "    await asyncio.sleep(0)\n"
    "    raise SystemExit(3)\n"
    "@w.method()\n"
    "def future_like():\n"
    "    # A plain function handing back another coroutine function's coroutine.\n"
    "    return fetch.__wrapped__(5)\n"
    "@w.method()\n"
    "def syncify():\n"
    "    # The other shape of decorator: a sync function that runs a coroutine itself.\n"
    "    return asyncio.run(asyncio.sleep(0, 'ran'))\n"
    "@w.method()\n"
    "async def whoami():\n"
    "    return user.get()\n"
)


class AwaitableFromSyncHandlerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.peer = script_worker(self.tmp.name, WRAPPED)

    def tearDown(self):
        self.peer.close()
        self.tmp.cleanup()

    def test_an_async_def_behind_a_plain_decorator_is_awaited(self):
        self.peer.send({"jsonrpc": "2.0", "id": 1, "method": "fetch", "params": [21],
                        "meta": {"request_id": "req-1"}})
        self.assertEqual(self.peer.read()["result"], [42, "req-1", "set by the wrapper"])
        self.assertEqual(self.peer.roundtrip("at_once", [3])["result"], 3)
        self.assertEqual(self.peer.roundtrip("future_like")["result"], [10, None, None])
        self.assertEqual(self.peer.roundtrip("syncify")["result"], "ran")
        # What the wrapper set stayed with its calls.
        self.assertIsNone(self.peer.roundtrip("whoami")["result"])

    def test_its_errors_and_cancellation_are_answered(self):
        e = self.peer.roundtrip("fails")["error"]
        self.assertEqual((e["code"], e["message"], e["data"]["type"]), (WORKER_ERROR, "inner", "ValueError"))
        e = self.peer.roundtrip("exits")["error"]
        self.assertEqual(e["data"]["type"], "SystemExit")
        rid = self.peer.call("slow")
        time.sleep(0.2)
        self.peer.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": rid}})
        r = self.peer.read()
        self.assertEqual(r["id"], rid)
        self.assertEqual(r["error"]["data"]["type"], "CancelledError")
        self.assertEqual(self.peer.roundtrip("$/ping")["result"]["in_flight"], 0)

    def test_a_cancel_that_arrives_with_the_call_is_not_lost(self):
        # Both lines in one write: the cancel is read before the pool thread
        # hands the coroutine over.
        self.peer.proc.stdin.write(
            json.dumps({"jsonrpc": "2.0", "id": 50, "method": "slow"}).encode() + b"\n"
            + json.dumps({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 50}}).encode() + b"\n")
        self.peer.proc.stdin.flush()
        r = self.peer.read()
        self.assertEqual(r["id"], 50)
        self.assertEqual(r["error"]["data"]["type"], "CancelledError")


if __name__ == "__main__":
    unittest.main()
