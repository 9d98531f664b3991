"""What review 241 found the SDK did wrong, each against a real worker: a
call left unanswered, a cancelled call that ran, a `$/ready` run into by
what the program printed, request ids missing from log records, an error
without its traceback, constants JSON does not have, and calls sent twice
under one id."""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

from tests.test_hostile_handlers import read_within, script_worker, script_worker_running, worker_file
from tests.test_worker import PYTHON_DIR, Peer

WORKER_ERROR = -32004
PARSE_ERROR = -32700
INVALID_REQUEST = -32600


class UnansweredTest(unittest.TestCase):
    def test_an_exception_whose_class_attribute_raises_is_answered(self):
        with script_worker_running((
                "import asyncio\n"
                "from litebridge_worker import WorkerError\n"
                "class NoClass(Exception):\n"
                "    @property\n"
                "    def __class__(self):\n"
                "        raise RuntimeError('no class')\n"
                "@w.method()\n"
                "def sync():\n"
                "    raise NoClass('x')\n"
                "@w.method()\n"
                "async def eager():\n"
                "    raise NoClass('x')\n"
                "@w.method()\n"
                "async def later():\n"
                "    await asyncio.sleep(0)\n"
                "    raise NoClass('x')\n"
                "@w.method()\n"
                "def ok(n):\n"
                "    return n\n"
        )) as peer:
            for rid, method in enumerate(["sync", "eager", "later"], 1):
                peer.send({"jsonrpc": "2.0", "id": rid, "method": method})
                r = read_within(peer, 5)
                self.assertEqual(r["id"], rid)
                self.assertEqual(r["error"]["code"], WORKER_ERROR, r)
                self.assertEqual(r["error"]["data"]["type"], "NoClass", r)
            self.assertEqual(peer.roundtrip("ok", [9])["result"], 9)


class CancelledWhileQueuedTest(unittest.TestCase):
    def test_a_sync_call_cancelled_while_it_waits_for_a_thread_never_runs(self):
        with tempfile.TemporaryDirectory() as d:
            ran = os.path.join(d, "ran")
            peer = script_worker(d, (
                "import time\n"
                "w = Worker(max_threads=1)\n"
                "@w.method()\n"
                "def charge(n, tag):\n"
                "    time.sleep(n)\n"
                "    with open(%r, 'a') as f:\n"
                "        f.write(tag + '\\n')\n"
                "    return 'charged'\n" % ran
            ))
            try:
                peer.send({"jsonrpc": "2.0", "id": 1, "method": "charge", "params": [0.5, "first"]})
                peer.send({"jsonrpc": "2.0", "id": 2, "method": "charge", "params": [0.0, "second"]})
                time.sleep(0.1)
                peer.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}})
                replies = {}
                r = read_within(peer, 5)
                replies[r["id"]] = r
                # Perhaps read with the first already.
                r = peer.read()
                replies[r["id"]] = r
                self.assertEqual(replies[1]["result"], "charged")
                self.assertEqual(replies[2]["error"]["message"], "cancelled", replies[2])
                self.assertEqual(replies[2]["error"]["data"]["type"], "CancelledError")
                with open(ran) as f:
                    self.assertEqual(f.read().split(), ["first"])
            finally:
                peer.close()

    def test_a_cancellation_litebridge_did_not_send_is_the_handlers_error_with_its_traceback(self):
        with script_worker_running((
                "import asyncio\n"
                "@w.method()\n"
                "async def waits_on_a_cancelled_future():\n"
                "    f = asyncio.get_running_loop().create_future()\n"
                "    asyncio.get_running_loop().call_soon(f.cancel)\n"
                "    await f\n"
        )) as peer:
            e = peer.roundtrip("waits_on_a_cancelled_future")["error"]
            self.assertEqual(e["data"]["type"], "CancelledError", e)
            self.assertIn("waits_on_a_cancelled_future", e["data"]["traceback"], e)


class PrintedBeforeRunTest(unittest.TestCase):
    SOURCE = (
        "print('loading the model...', end='')\n"
        "@w.method()\n"
        "def ok(n):\n"
        "    return n\n"
    )

    def test_what_python_still_buffers_before_run_goes_to_stderr(self):
        # Unflushed, without its newline: flushed onto the protocol's
        # channel, it ran into `$/ready`.
        with tempfile.TemporaryDirectory() as d:
            path = worker_file(d, "w = Worker()\n" + self.SOURCE)
            peer = Peer([sys.executable, path], env={"PYTHONUNBUFFERED": ""})
            try:
                self.assertEqual(peer.ready["method"], "$/ready")
                self.assertEqual(peer.roundtrip("ok", [1])["result"], 1)
                peer.proc.stdin.close()
                self.assertIn(b"loading the model...", peer.proc.stderr.read())
            finally:
                peer.close()

    def test_what_was_written_to_stdout_before_run_does_not_run_into_ready(self):
        with tempfile.TemporaryDirectory() as d:
            path = worker_file(d, "w = Worker()\n" + self.SOURCE)
            proc = subprocess.Popen([sys.executable, path], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    env=dict(os.environ, PYTHONPATH=PYTHON_DIR, PYTHONUNBUFFERED="1"))
            try:
                self.assertEqual(proc.stdout.readline(), b"loading the model...\n")
                self.assertEqual(json.loads(proc.stdout.readline())["method"], "$/ready")
            finally:
                proc.stdin.close()
                proc.wait(timeout=20)
                proc.stdout.close()


class RequestIdsInLogsTest(unittest.TestCase):
    def test_a_logger_of_its_own_that_does_not_propagate_gets_request_ids(self):
        with script_worker_running((
                "import logging, sys\n"
                "log = logging.getLogger('mine')\n"
                "log.propagate = False\n"
                "h = logging.StreamHandler(sys.stderr)\n"
                "h.setFormatter(logging.Formatter('MINE [%(request_id)s] %(message)s'))\n"
                "log.addHandler(h)\n"
                "log.setLevel(logging.INFO)\n"
                "@w.method()\n"
                "def logs():\n"
                "    log.info('inside')\n"
                "    return 'ok'\n"
        )) as peer:
            peer.send({"jsonrpc": "2.0", "id": 1, "method": "logs", "meta": {"request_id": "R1"}})
            self.assertEqual(read_within(peer, 5)["result"], "ok")
            peer.proc.stdin.close()
            err = peer.proc.stderr.read().decode()
            self.assertIn("MINE [R1] inside", err)
            self.assertNotIn("Formatting field not found", err)


class OwnRequestIdTest(unittest.TestCase):
    def test_a_handler_logging_a_request_id_of_its_own_is_answered_and_keeps_it(self):
        # Review 242: the record factory's request_id made `extra` naming it
        # raise (makeRecord refuses to overwrite), and each call failed.
        with script_worker_running((
                "import logging, sys\n"
                "log = logging.getLogger('app')\n"
                "log.propagate = False\n"
                "h = logging.StreamHandler(sys.stderr)\n"
                "h.setFormatter(logging.Formatter('APP [%(request_id)s] %(message)s'))\n"
                "log.addHandler(h)\n"
                "log.setLevel(logging.INFO)\n"
                "adapter = logging.LoggerAdapter(log, {'request_id': 'adapted'})\n"
                "@w.method()\n"
                "def sync():\n"
                "    log.info('sync', extra={'request_id': 'mine'})\n"
                "    adapter.info('through an adapter')\n"
                "    return 'ok'\n"
                "@w.method()\n"
                "async def eager():\n"
                "    log.warning('eager', extra={'request_id': 'mine too'})\n"
                "    return 'ok'\n"
        )) as peer:
            for rid, method in enumerate(["sync", "eager"], 1):
                peer.send({"jsonrpc": "2.0", "id": rid, "method": method, "meta": {"request_id": "R9"}})
                self.assertEqual(read_within(peer, 5).get("result"), "ok", method)
            peer.proc.stdin.close()
            err = peer.proc.stderr.read().decode()
            for line in ["APP [mine] sync", "APP [adapted] through an adapter", "APP [mine too] eager"]:
                self.assertIn(line, err)


class DrainEndTest(unittest.TestCase):
    def test_an_async_call_cut_off_at_the_end_of_the_drain_is_answered_cancelled(self):
        # Review 242: cancelled by the worker itself, it was answered as
        # the handler's own CancelledError, with a traceback.
        with tempfile.TemporaryDirectory() as d:
            path = worker_file(d, (
                "import asyncio\n"
                "w = Worker(drain_timeout=0.2)\n"
                "@w.method()\n"
                "async def slow():\n"
                "    await asyncio.sleep(10)\n"
            ))
            peer = Peer([sys.executable, path])
            try:
                peer.send({"jsonrpc": "2.0", "id": 1, "method": "slow"})
                peer.proc.stdin.close()
                e = peer.read()["error"]
                self.assertEqual((e["message"], e["data"]["type"]), ("cancelled", "CancelledError"), e)
            finally:
                peer.close()


class ReviewTwoFortyThreeTest(unittest.TestCase):
    def test_a_def_call_running_at_the_end_of_the_drain_is_not_told_it_was_cancelled(self):
        # Review 243: told so, with an async call still pending beside it,
        # it returned early, and its cut-short result went out as an answer.
        with tempfile.TemporaryDirectory() as d:
            path = worker_file(d, (
                "import asyncio, time\n"
                "from litebridge_worker import cancelled\n"
                "w = Worker(drain_timeout=0.3)\n"
                "@w.method()\n"
                "def report():\n"
                "    n = 0\n"
                "    while not cancelled() and n < 500:\n"
                "        n += 1\n"
                "        time.sleep(0.01)\n"
                "    return {'rows': n}\n"
                "@w.method()\n"
                "async def slow():\n"
                "    try:\n"
                "        await asyncio.sleep(10)\n"
                "    finally:\n"
                "        await asyncio.sleep(0.1)\n"
            ))
            peer = Peer([sys.executable, path])
            try:
                peer.send({"jsonrpc": "2.0", "id": 1, "method": "report"})
                peer.send({"jsonrpc": "2.0", "id": 2, "method": "slow"})
                time.sleep(0.1)
                peer.proc.stdin.close()
                replies = {}
                while True:
                    try:
                        r = peer.read()
                    except EOFError:
                        break
                    replies[r["id"]] = r
                self.assertEqual(replies[2]["error"]["message"], "cancelled", replies)
                self.assertNotIn("result", replies.get(1, {}), replies)
            finally:
                peer.close()

    def test_a_request_id_the_programs_own_factory_gives_is_kept(self):
        with script_worker_running((
                "import logging, sys\n"
                "base = logging.getLogRecordFactory()\n"
                "def mine(*args, **kwargs):\n"
                "    record = base(*args, **kwargs)\n"
                "    record.request_id = 'from-the-program'\n"
                "    return record\n"
                "logging.setLogRecordFactory(mine)\n"
                "log = logging.getLogger('app')\n"
                "log.propagate = False\n"
                "h = logging.StreamHandler(sys.stderr)\n"
                "h.setFormatter(logging.Formatter('APP [%(request_id)s] %(message)s'))\n"
                "log.addHandler(h)\n"
                "class Odd:\n"
                "    def __contains__(self, key):\n"
                "        raise RuntimeError('no')\n"
                "    def __iter__(self):\n"
                "        return iter(())\n"
                "@w.method()\n"
                "def logs():\n"
                "    log.warning('inside')\n"
                "    log.warning('odd extra', extra=Odd())\n"
                "    return 'ok'\n"
        )) as peer:
            peer.send({"jsonrpc": "2.0", "id": 1, "method": "logs", "meta": {"request_id": "R1"}})
            self.assertEqual(read_within(peer, 5).get("result"), "ok")
            peer.proc.stdin.close()
            err = peer.proc.stderr.read().decode()
            self.assertIn("APP [from-the-program] inside", err)
            self.assertIn("APP [from-the-program] odd extra", err)


class NotJsonTest(unittest.TestCase):
    def test_nan_and_infinities_are_parse_errors_and_an_infinite_id_is_refused(self):
        with script_worker_running((
                "@w.method()\n"
                "def echo(x):\n"
                "    return repr(x)\n"
        )) as peer:
            for line in [b'{"jsonrpc":"2.0","id":NaN,"method":"echo","params":[1]}',
                         b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[NaN]}',
                         b'{"jsonrpc":"2.0","id":2,"method":"echo","params":[-Infinity]}']:
                peer.send(line)
                r = read_within(peer, 5)
                self.assertIsNone(r["id"], r)
                self.assertEqual(r["error"]["code"], PARSE_ERROR, r)
            peer.send(b'{"jsonrpc":"2.0","id":1e999,"method":"echo","params":[1]}')
            r = read_within(peer, 5)
            self.assertIsNone(r["id"], r)
            self.assertEqual(r["error"]["code"], INVALID_REQUEST, r)
            self.assertEqual(peer.roundtrip("echo", [1.5])["result"], "1.5")


class SameIdTwiceTest(unittest.TestCase):
    def test_a_call_sent_again_under_the_id_of_one_in_flight_is_still_answered(self):
        with script_worker_running((
                "import time\n"
                "@w.method()\n"
                "def nap(n):\n"
                "    time.sleep(n)\n"
                "    return n\n"
        )) as peer:
            peer.send({"jsonrpc": "2.0", "id": 7, "method": "nap", "params": [0.05]})
            peer.send({"jsonrpc": "2.0", "id": 7, "method": "nap", "params": [0.5]})
            first = read_within(peer, 5)
            self.assertEqual(first["result"], 0.05)
            # The end of stdin now: the second is still in flight, and is
            # waited for.
            peer.proc.stdin.close()
            second = peer.read()
            self.assertEqual((second["id"], second["result"]), (7, 0.5))


if __name__ == "__main__":
    unittest.main()
