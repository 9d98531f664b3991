"""The Python client against the real binary (spawned, and over HTTP with a key)."""

import asyncio
import concurrent.futures
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.dirname(HERE))

import litebridge_client as lb  # noqa: E402

BIN = os.environ.get("LITEBRIDGE_CLIENT_BIN") or os.path.join(
    os.path.join(REPO, os.environ.get("CARGO_TARGET_DIR", "target")), "debug", "litebridge")
WORKER = "python3 %s" % os.path.join(REPO, "examples", "worker.py")
PACKAGE = os.path.join(os.path.dirname(HERE), "litebridge_client")


class SpawnedTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.client = lb.Client.spawn(bin=BIN, db=os.path.join(self.dir.name, "c.db"), workers=WORKER, processes=1)

    def tearDown(self):
        self.client.close()
        self.dir.cleanup()

    def test_a_call_refused_for_what_it_holds_is_answered(self):
        """Nesting past 128 levels: litebridge refused it with a null id,
        and the call waited for good (review 159)."""
        deep = 1
        for _ in range(130):
            deep = [deep]
        with self.assertRaises(lb.LitebridgeError) as e:
            self.client.call("echo", [deep], timeout=10)
        self.assertNotIsInstance(e.exception, TimeoutError)
        self.assertIn("recursion", str(e.exception))
        self.assertEqual(self.client.query("SELECT 1 AS x"), [{"x": 1}])

    def test_rows_values_and_errors(self):
        c = self.client
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB, big INTEGER UNIQUE)")
        c.execute("INSERT INTO t(data, big) VALUES (?1, ?2)", (b"\x00\x01\xff", 2 ** 63 - 1))
        self.assertEqual(c.query("SELECT data, big FROM t"), [{"data": b"\x00\x01\xff", "big": 2 ** 63 - 1}])
        self.assertEqual(c.query("SELECT id FROM t", rows="tuples"), [(1,)])
        with self.assertRaises(lb.SqlError) as e:
            c.execute("INSERT INTO t(big) VALUES (?1)", (2 ** 63 - 1,))
        self.assertEqual(e.exception.data["sqlite_extended_code"], 2067)
        with self.assertRaises(lb.ForbiddenError):
            c.execute("BEGIN")
        with self.assertRaises(lb.ReadOnlyError):
            c.query("DELETE FROM t")
        with self.assertRaises(lb.WorkerError) as e:
            c.call("fail", ["bad input"])
        self.assertEqual(e.exception.type, "ValueError")
        self.assertIn("Traceback", e.exception.traceback)
        with self.assertRaises(TimeoutError):  # the built-in, too
            c.call("wait", [5], timeout=0.2)
        many = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) SELECT i FROM n"
        with self.assertRaises(lb.TooLargeError):
            c.query(many)
        self.assertEqual(len(c.query(many, max_rows=20000)), 20000)

    def test_a_write_answers_the_rows_it_returns_as_query_gives_rows(self):
        c = self.client
        c.execute("CREATE TABLE n(id INTEGER PRIMARY KEY, body BLOB)")
        r = c.execute("INSERT INTO n(body) VALUES (?1) RETURNING id, body", (b"\x00\x01",))
        self.assertEqual(r, {"changes": 1, "last_insert_rowid": 1, "columns": ["id", "body"],
                             "rows": [{"id": 1, "body": b"\x00\x01"}]})
        r = c.execute("UPDATE n SET body = NULL RETURNING id, body", rows="tuples")
        self.assertEqual(r["rows"], [(1, None)])
        r = c.batch([{"sql": "INSERT INTO n(id) VALUES (5) RETURNING id"}, {"sql": "DELETE FROM n WHERE id = 1"}])
        self.assertEqual(r["results"], [
            {"changes": 1, "last_insert_rowid": 5, "columns": ["id"], "rows": [{"id": 5}]},
            {"changes": 1, "last_insert_rowid": 5},
        ])

    def test_a_write_sent_again_with_its_idempotency_key_applies_once(self):
        c = self.client
        c.execute("CREATE TABLE once(x)")
        first = c.execute("INSERT INTO once VALUES (1)", idempotency_key="order-17")
        again = c.execute("INSERT INTO once VALUES (1)", idempotency_key="order-17")
        self.assertEqual(first, again)
        c.batch([{"sql": "INSERT INTO once VALUES (2)"}], idempotency_key="batch-1")
        c.batch([{"sql": "INSERT INTO once VALUES (2)"}], idempotency_key="batch-1")
        c.execute_many("INSERT INTO once VALUES (?1)", [[3], [4]], idempotency_key="many-1")
        c.execute_many("INSERT INTO once VALUES (?1)", [[3], [4]], idempotency_key="many-1")
        self.assertEqual(c.query("SELECT x FROM once ORDER BY x", rows="tuples"), [(1,), (2,), (3,), (4,)])
        with self.assertRaises(lb.LitebridgeError):
            c.execute("INSERT INTO once VALUES (5)", idempotency_key="order-17")
        for bad in ("", 17):
            with self.assertRaises(ValueError):
                c.execute("INSERT INTO once VALUES (6)", idempotency_key=bad)
        self.assertEqual(c.query("SELECT count(*) AS n FROM once")[0]["n"], 4)

    def test_threads_share_a_client_and_bad_values_are_refused_not_hung(self):
        import concurrent.futures as cf
        c = self.client
        big = "x" * 100_000  # past a pipe's 64 KiB: writes of two threads would interleave
        with cf.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: c.call("echo", {"value": big + str(i)}), range(32)))
        self.assertEqual(results, [big + str(i) for i in range(32)])
        with self.assertRaises(lb.InvalidArgumentError):
            c.query("SELECT ?1", (float("nan"),))
        self.assertEqual(c.query("SELECT ?1 AS x", (float("inf"),)), [{"x": float("inf")}])
        c.cache_set("k", {"b": [1]})
        self.assertEqual(c.cache_get("k"), {"found": True, "value": {"b": [1]}})
        self.assertEqual(c.health()["healthy"], True)

    def test_a_killed_litebridge_fails_pending_calls_and_the_next_one_works(self):
        c = self.client
        self.assertEqual(c.call("echo", {"value": 1}), 1)
        child = c._transport.child
        pid = child.proc.pid
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(c.call, "wait", [10])
            # The caller reads once its line is written: litebridge may have read it.
            _until(child.read_lock.locked)
            os.kill(pid, signal.SIGKILL)
            with self.assertRaises(lb.ConnectionError) as e:
                fut.result(timeout=10)
        self.assertIn("killed by signal 9", str(e.exception))
        # It may have run: not to be tried again blindly.
        self.assertIsInstance(e.exception, lb.OutcomeUnknownError)
        self.assertEqual(e.exception.kind, "outcome_unknown")
        self.assertFalse(e.exception.recoverable)
        self.assertIn("may or may not have run", str(e.exception))
        self.assertEqual(c.call("echo", {"value": 2}), 2)

    def test_a_request_never_written_to_a_killed_litebridge_is_recoverable_the_one_it_was_reading_is_not(self):
        c = self.client
        self.assertEqual(c.call("echo", {"value": 1}), 1)
        transport, child = c._transport, c._transport.child
        pid = child.proc.pid
        # Stopped, litebridge reads nothing: a line past the pipe's 64 KiB
        # fills it, its writer holding the write lock, and the next line
        # waits for that lock.
        os.kill(pid, signal.SIGSTOP)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            big = pool.submit(c.query, "SELECT length(?1) AS n", ("x" * (1 << 20),))
            _until(lambda: transport.write_lock.locked() and len(child.pending) == 1)
            small = pool.submit(c.execute, "CREATE TABLE never(x)")
            _until(lambda: len(child.pending) == 2)
            os.kill(pid, signal.SIGKILL)
            with self.assertRaises(lb.OutcomeUnknownError) as partly:
                big.result(timeout=10)
            with self.assertRaises(lb.ConnectionError) as unsent:
                small.result(timeout=10)
        self.assertFalse(partly.exception.recoverable)
        self.assertNotIsInstance(unsent.exception, lb.OutcomeUnknownError)
        self.assertEqual(unsent.exception.kind, "unavailable")
        self.assertTrue(unsent.exception.recoverable)
        self.assertIn("killed by signal 9 before the request was written to it", str(unsent.exception))
        # Indeed never run.
        self.assertEqual(c.query("SELECT count(*) AS n FROM sqlite_master WHERE name = 'never'"), [{"n": 0}])

    def test_a_killed_worker_fails_calls_that_may_not_be_retried_and_the_next_one_works(self):
        c = self.client
        self.assertEqual(c.call("echo", {"value": 1}), 1)
        pid = c.stats()["workers"][0]["pid"]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            not_retried = pool.submit(c.call, "wait", [5], retry=False)
            retried = pool.submit(c.call, "wait", [0.5])
            time.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
            with self.assertRaises(lb.WorkerCrashedError) as e:
                not_retried.result(timeout=10)
            self.assertEqual(e.exception.kind, "worker_crashed")
            self.assertIn("worker process %d died (signal 9 (SIGKILL))" % pid, str(e.exception))
            self.assertEqual(retried.result(timeout=10), 0.5)
        self.assertEqual(c.call("echo", {"value": 2}), 2)
        self.assertNotEqual(c.stats()["workers"][0]["pid"], pid)

    def test_events_and_breaker(self):
        c = self.client
        events, also = c.events(), c.events()
        for _ in range(5):
            with self.assertRaises(lb.WorkerError):
                c.call("fail", ["x"])
        with self.assertRaises(lb.CircuitOpenError) as e:
            c.call("fail", ["x"])
        self.assertGreater(e.exception.retry_after, 0)
        for stream in (events, also):  # every stream gets every event
            seen = next(e for e in stream if e["event"] == "circuit-breaker-state-change")
            self.assertEqual((seen["from"], seen["to"]), ("closed", "open"))
        also.close()
        self.assertEqual(list(also), [])
        self.assertEqual(c.reset_breaker("fail"), {"reset": True})
        seen = next(e for e in events if e["event"] == "circuit-breaker-state-change")
        self.assertEqual(seen["to"], "closed")
        with self.assertRaises(TimeoutError):  # no event within 0.1 s
            events.get(timeout=0.1)
        c.close()
        self.assertEqual(list(events), [])  # ends with its client

    def test_values_litebridge_could_not_read_are_refused_before_they_are_sent(self):
        c = self.client
        # Each would have been answered without its id (the call waiting for ever), or stored changed.
        for value, error, words in [
            (float("nan"), lb.InvalidArgumentError, "NaN"),
            ("\ud800", lb.InvalidArgumentError, "lone surrogate"),
            (2 ** 70, lb.InvalidArgumentError, "64 bits"),
            (-(2 ** 63) - 1, lb.InvalidArgumentError, "64 bits"),
            ("x" * (64 * 1024 * 1024), lb.TooLargeError, "bytes at most"),
        ]:
            with self.assertRaises(error) as e:
                c.query("SELECT ?1", (value,))
            self.assertIn(words, str(e.exception))
        loop = []
        loop.append(loop)
        with self.assertRaises(lb.InvalidArgumentError):
            c.query("SELECT ?1", (loop,))
        self.assertEqual(c.query("SELECT ?1 AS a, ?2 AS b, ?3 AS c", (float("inf"), 2 ** 63 - 1, "é\\ud800")),
                         [{"a": float("inf"), "b": 2 ** 63 - 1, "c": "é\\ud800"}])

    def test_an_interrupted_reader_leaves_the_others_replies_to_them(self):
        c = self.client
        self.assertEqual(c.call("echo", {"value": 1}), 1)

        class Alarm(Exception):
            pass

        def ring(*_):
            raise Alarm()

        old = signal.signal(signal.SIGALRM, ring)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                # This (main) thread reads for both (it asked first); the
                # alarm interrupts it mid-read.
                signal.setitimer(signal.ITIMER_REAL, 0.3)
                other = pool.submit(lambda: (time.sleep(0.1), c.call("wait", [0.6]))[1])
                with self.assertRaises(Alarm):
                    c.call("wait", [5])
                self.assertEqual(other.result(timeout=10), 0.6)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        self.assertEqual(c.call("echo", {"value": 2}), 2)

    def test_the_method_table_has_a_method_each(self):
        c = self.client
        names = {m["name"] for m in c.discover()["methods"]}
        self.assertIn("sql.query", names)
        source = ""
        for name in os.listdir(PACKAGE):
            if name.endswith(".py"):
                with open(os.path.join(PACKAGE, name)) as f:
                    source += f.read()
        self.assertEqual(sorted(n for n in names if '"%s"' % n not in source), [])
        c.execute("CREATE TABLE t(x)")
        c.execute_many("INSERT INTO t VALUES (?1)", [[1], [2]])
        self.assertEqual(c.get("SELECT x FROM t ORDER BY x"), {"x": 1})
        self.assertIsNone(c.get("SELECT x FROM t WHERE x > 5"))
        self.assertTrue(c.is_healthy())
        c.state_save("run-1", {"step": 1}, status="running")
        self.assertEqual([r["run_id"] for r in c.state_list(status="running")["runs"]], ["run-1"])
        self.assertEqual(c.state_delete("run-1"), {"deleted": True})
        c.memory_store("agent", "k1", {"v": 1})
        self.assertEqual(len(c.memory_list("agent", prefix="k")["entries"]), 1)
        self.assertEqual(c.memory_delete("agent", "k1"), {"deleted": True})
        c.cache_set("k", b"\x00")
        self.assertEqual(c.cache_get("k")["value"], b"\x00")
        self.assertEqual(c.cache_delete("k"), {"deleted": True})
        self.assertIn("hits", c.cache_stats())
        self.assertIn("wal_bytes", c.pool_stats()["pool_metrics"])
        self.assertTrue(c.bridge_health()["healthy"])
        self.assertTrue(c.check()["ok"])


def _until(condition, timeout=10.0):
    """Waits until ``condition()`` holds (failing after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("still not so after %s s" % timeout)
        time.sleep(0.005)


class StartFailureTest(unittest.TestCase):
    """A litebridge that cannot start fails the requests as not sent, naming
    why (they were answered "may or may not have run")."""

    def check(self, e):
        self.assertIsInstance(e, lb.ConnectionError)
        self.assertNotIsInstance(e, lb.OutcomeUnknownError)
        self.assertIn("did not start", str(e))
        self.assertIn("missing", str(e))
        self.assertTrue(e.recoverable)  # nothing ran

    def test_sync(self):
        with tempfile.TemporaryDirectory() as d:
            c = lb.Client.spawn(bin=BIN, db=os.path.join(d, "missing", "x.db"))
            try:
                for call in (lambda: c.query("SELECT 1"), lambda: c.execute("CREATE TABLE t(x)")):
                    with self.assertRaises(lb.ConnectionError) as e:
                        call()
                    self.check(e.exception)
            finally:
                c.close()

    def test_async(self):
        async def run(d):
            c = lb.AsyncClient.spawn(bin=BIN, db=os.path.join(d, "missing", "x.db"))
            try:
                got = await asyncio.gather(c.query("SELECT 1"), c.execute("CREATE TABLE t(x)"),
                                           return_exceptions=True)
            finally:
                await c.close()
            for e in got:
                self.check(e)

        with tempfile.TemporaryDirectory() as d:
            asyncio.run(run(d))

    def test_async_a_request_made_while_it_starts_waits_for_the_start(self):
        """A request made while a spawned litebridge is still starting is not
        written to it: one that then fails to start (a lock held elsewhere,
        past the busy timeout) fails both as not sent (the second was
        "may or may not have run": review 142)."""
        import sqlite3

        async def run(d):
            path = os.path.join(d, "locked.db")
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("CREATE TABLE t(x)")
            holder.execute("BEGIN EXCLUSIVE")
            try:
                c = lb.AsyncClient.spawn(bin=BIN, db=path, env={"LITEBRIDGE_DB_BUSY_TIMEOUT_MS": "1500"})
                try:
                    first = asyncio.ensure_future(c.execute("INSERT INTO t VALUES (1)"))
                    await asyncio.sleep(0.4)
                    second = await asyncio.gather(c.execute("INSERT INTO t VALUES (2)"), return_exceptions=True)
                    got = [await asyncio.gather(first, return_exceptions=True), second]
                finally:
                    await c.close()
            finally:
                holder.close()
            for [e] in got:
                self.assertIsInstance(e, lb.ConnectionError, e)
                self.assertNotIsInstance(e, lb.OutcomeUnknownError, e)
                self.assertIn("did not start", str(e))

        with tempfile.TemporaryDirectory() as d:
            asyncio.run(run(d))


class AsyncStartTest(unittest.TestCase):
    """The asyncio client around a start that hangs or fails (review 143)."""

    async def _hung_start(self, d, shutdown_grace):
        """A client whose litebridge never answers its start (a script that
        sleeps), after a first call given up on; and the script's pid file."""
        script = os.path.join(d, "hang.sh")
        pidfile = os.path.join(d, "pid")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho $$ > %s\nexec sleep 60\n" % pidfile)
        os.chmod(script, 0o755)
        c = lb.AsyncClient.spawn(bin=script, db=os.path.join(d, "x.db"), shutdown_grace=shutdown_grace)
        with self.assertRaises(asyncio.TimeoutError):
            await asyncio.wait_for(c.query("SELECT 1"), 0.5)
        return c, pidfile

    async def _assert_gone(self, pidfile):
        with open(pidfile) as f:
            pid = int(f.read())
        for _ in range(100):
            if not os.path.exists("/proc/%d" % pid):
                break
            await asyncio.sleep(0.05)
        self.assertFalse(os.path.exists("/proc/%d" % pid), "the child was left running")

    def test_close_during_a_start_that_hangs_stops_the_child(self):
        async def run(d):
            c, pidfile = await self._hung_start(d, 0.5)
            began = time.monotonic()
            await asyncio.wait_for(c.close(), 10)
            self.assertLess(time.monotonic() - began, 8)
            await self._assert_gone(pidfile)

        with tempfile.TemporaryDirectory() as d:
            asyncio.run(run(d))

    def test_a_close_cancelled_during_a_hung_start_is_cancelled_and_stops_the_child(self):
        async def run(d):
            c, pidfile = await self._hung_start(d, 5.0)
            closing = asyncio.ensure_future(c.close())
            await asyncio.sleep(0.3)
            closing.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await closing
            await self._assert_gone(pidfile)

        with tempfile.TemporaryDirectory() as d:
            asyncio.run(run(d))

    def test_events_end_when_the_start_fails(self):
        async def run(d):
            c = lb.AsyncClient.spawn(bin="/bin/false", db=os.path.join(d, "x.db"))
            try:
                stream = c.events()
                with self.assertRaises(lb.ConnectionError):
                    await asyncio.wait_for(stream.__anext__(), 5)
            finally:
                await c.close()

        with tempfile.TemporaryDirectory() as d:
            asyncio.run(run(d))


class AsyncTest(unittest.TestCase):
    def test_a_killed_litebridge_fails_a_pending_call_as_outcome_unknown(self):
        async def main():
            with tempfile.TemporaryDirectory() as d:
                async with lb.AsyncClient.spawn(bin=BIN, db=os.path.join(d, "a.db"), workers=WORKER,
                                                processes=1) as c:
                    self.assertEqual(await c.call("echo", {"value": 1}), 1)
                    child = c._transport.child
                    task = asyncio.ensure_future(c.call("wait", [10]))
                    # Its line written (the loop flushed it): litebridge may have read it.
                    while child.outbox or not child.pending:
                        await asyncio.sleep(0.005)
                    os.kill(child.proc.pid, signal.SIGKILL)
                    with self.assertRaises(lb.OutcomeUnknownError) as e:
                        await asyncio.wait_for(task, 10)
                    self.assertIsInstance(e.exception, lb.ConnectionError)
                    self.assertEqual(e.exception.kind, "outcome_unknown")
                    self.assertFalse(e.exception.recoverable)
                    self.assertIn("killed by signal 9 with the request in flight", str(e.exception))
                    self.assertEqual(await c.call("echo", {"value": 2}), 2)

        asyncio.run(main())

    def test_cancelling_a_task_cancels_the_call_in_its_worker(self):
        async def main():
            with tempfile.TemporaryDirectory() as d:
                async with lb.AsyncClient.spawn(bin=BIN, db=os.path.join(d, "a.db"), workers=WORKER,
                                                processes=1) as c:
                    self.assertEqual(await c.call("echo", {"value": 1}), 1)
                    task = asyncio.ensure_future(c.call("wait", [30]))
                    await asyncio.sleep(0.2)
                    started = time.monotonic()
                    task.cancel()
                    with self.assertRaises(asyncio.CancelledError):
                        await task
                    self.assertLess(time.monotonic() - started, 2)
                    results = await asyncio.gather(*(c.call("echo", {"value": i}) for i in range(500)))
                    self.assertEqual(results, list(range(500)))
                    rows = await c.query("SELECT 1 AS x")
                    self.assertEqual(rows, [{"x": 1}])

        asyncio.run(main())

    def test_events_with_async_for(self):
        async def main():
            with tempfile.TemporaryDirectory() as d:
                async with lb.AsyncClient.spawn(bin=BIN, db=os.path.join(d, "a.db"), workers=WORKER,
                                                processes=1) as c:
                    async with c.events() as events:
                        for _ in range(5):
                            with self.assertRaises(lb.WorkerError):
                                await c.call("fail", ["x"])
                        async for e in events:
                            if e["event"] == "circuit-breaker-state-change":
                                self.assertEqual(e["to"], "open")
                                break
                    self.assertEqual([e async for e in events], [])
                    self.assertTrue(await c.is_healthy())
                    with self.assertRaises(lb.InvalidArgumentError):
                        await c.query("SELECT ?1", ("\ud800",))
                    with self.assertRaises(lb.TooLargeError):
                        await c.query("SELECT ?1", ("x" * (64 * 1024 * 1024),))
                    self.assertEqual(await c.query("SELECT 1 AS x"), [{"x": 1}])

        asyncio.run(main())


class HttpTest(unittest.TestCase):
    def test_over_http_with_keys(self):
        with tempfile.TemporaryDirectory() as d:
            db = os.path.join(d, "h.db")

            def key(name, scope):
                out = subprocess.run([BIN, "keys", "create", "--db", db, "--scope", scope, "--name", name],
                                     capture_output=True, text=True, check=True).stdout
                return out.split()[-1]

            admin, reader = key("admin", "admin"), key("reader", "read")
            server = subprocess.Popen([BIN, "serve", "--db", db, "--listen", "127.0.0.1:0", "--workers", WORKER,
                                       "--processes", "1"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                url = "http://" + server.stdout.readline().split()[-1]
                c = lb.Client.connect(url, key=admin)
                c.execute("CREATE TABLE t(x)")
                c.execute("INSERT INTO t VALUES (?1)", (7,))
                self.assertEqual(c.query("SELECT x FROM t"), [{"x": 7}])
                with self.assertRaises(lb.UnauthorizedError):
                    lb.Client.connect(url, key="lb_wrong").query("SELECT 1")
                with self.assertRaises(lb.ForbiddenError):
                    lb.Client.connect(url, key=reader).execute("DELETE FROM t")
                with self.assertRaises(lb.UnsupportedError):
                    c.request("events.subscribe", {})
                with self.assertRaises(lb.UnauthorizedError):
                    next(lb.Client.connect(url, key="lb_wrong").events())
                # A stream whose key is revoked ends with the refusal of its reconnection.
                watcher = c.create_key("read", name="watcher")["secret"]
                stream = lb.Client.connect(url, key=watcher).events()
                for _ in range(5):
                    with self.assertRaises(lb.WorkerError):
                        c.call("fail", ["x"])
                seen = next(e for e in stream if e["event"] == "circuit-breaker-state-change")
                self.assertEqual(seen["to"], "open")
                self.assertEqual(c.revoke_key("watcher"), {"revoked": True})
                started = time.monotonic()
                with self.assertRaises(lb.UnauthorizedError):
                    list(stream)
                self.assertLess(time.monotonic() - started, 15)
                c.close()
            finally:
                server.terminate()
                server.wait(timeout=20)
                server.stdout.close()

    def test_a_low_quota_is_its_own_error(self):
        with tempfile.TemporaryDirectory() as d:
            db = os.path.join(d, "q.db")
            out = subprocess.run([BIN, "keys", "create", "--db", db, "--scope", "read", "--tier", "free",
                                  "--name", "free"], capture_output=True, text=True, check=True).stdout
            env = dict(os.environ, LITEBRIDGE_QUOTA_FREE_DAILY="2")
            server = subprocess.Popen([BIN, "serve", "--db", db, "--listen", "127.0.0.1:0"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            try:
                c = lb.Client.connect("http://" + server.stdout.readline().split()[-1], key=out.split()[-1])
                c.query("SELECT 1")
                c.query("SELECT 1")
                with self.assertRaises(lb.QuotaExceededError) as e:
                    c.query("SELECT 1")
                self.assertGreater(e.exception.retry_after, 0)
                c.close()
            finally:
                server.terminate()
                server.wait(timeout=20)
                server.stdout.close()


def _dead_port():
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _FakeServer:
    """A server of the test's own: reads one whole HTTP request per
    connection (head and body), then does ``answer(connection)``, each
    connection in a thread of its own. ``heads`` are the requests' heads
    (request line and headers), ``bodies`` their bodies."""

    def __init__(self, answer):
        self.answer = answer
        self.bodies = []
        self.heads = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        return
                    data += got
                head, _, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                length = int(length.group(1)) if length else 0
                while len(body) < length:
                    body += conn.recv(65536)
                self.heads.append(head.decode("latin-1"))
                self.bodies.append(body)
                self.answer(conn)
            except OSError:
                pass

    def close(self):
        self.sock.close()


def _reply(status, body, headers=()):
    """An HTTP answer, then the connection closed."""
    def answer(conn):
        lines = ["HTTP/1.1 %d Whatever" % status, "Content-Length: %d" % len(body), "Connection: close"]
        lines += ["%s: %s" % h for h in headers]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return answer


def _reset(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class OutcomeTest(unittest.TestCase):
    """Whether a failed call may have run: recoverable only when it certainly
    never reached litebridge."""

    def fails(self, answer, timeout=None):
        server = _FakeServer(answer)
        try:
            with self.assertRaises(lb.LitebridgeError) as e:
                lb.Client.connect(server.url, timeout=timeout).execute("INSERT INTO t VALUES (1)")
            return server, e.exception
        finally:
            server.close()

    def test_a_refused_connection_never_carried_the_request(self):
        with self.assertRaises(lb.ConnectionError) as e:
            lb.Client.connect("http://127.0.0.1:%d" % _dead_port()).execute("INSERT INTO t VALUES (1)")
        self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
        self.assertEqual(e.exception.kind, "unavailable")
        self.assertTrue(e.exception.recoverable)
        self.assertIn("ConnectionRefusedError", str(e.exception))

        async def main():
            c = lb.AsyncClient.connect("http://127.0.0.1:%d" % _dead_port())
            with self.assertRaises(lb.ConnectionError) as e:
                await c.execute("INSERT INTO t VALUES (1)")
            self.assertTrue(e.exception.recoverable)
            await c.close()

        asyncio.run(main())

    def test_a_connection_not_made_within_the_timeout_never_carried_the_request(self):
        # A listener whose queue is full: the kernel drops further SYNs, and
        # connecting times out before any byte of the request is sent.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            fillers = []
            try:
                for _ in range(4):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(listener.getsockname())
                    fillers.append(s)
                time.sleep(0.1)
                url = "http://127.0.0.1:%d" % listener.getsockname()[1]
                with self.assertRaises(lb.ConnectionError) as e:
                    lb.Client.connect(url, timeout=0.3).execute("INSERT INTO t VALUES (1)")
            finally:
                for s in fillers:
                    s.close()
        self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
        self.assertEqual(e.exception.kind, "unavailable")
        self.assertTrue(e.exception.recoverable)

    def test_a_tls_handshake_refused_sent_nothing_and_is_not_worth_retrying(self):
        # A server that does not speak TLS: the handshake fails while
        # connecting, so nothing of the request left, and trying again
        # cannot mend it.
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)

            def answer():
                conn, _ = listener.accept()
                with conn:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

            t = threading.Thread(target=answer, daemon=True)
            t.start()
            url = "https://127.0.0.1:%d" % listener.getsockname()[1]
            with self.assertRaises(lb.ConnectionError) as e:
                lb.Client.connect(url, timeout=5).execute("INSERT INTO t VALUES (1)")
            t.join(5)
        self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
        self.assertEqual(e.exception.kind, "unavailable")
        self.assertFalse(e.exception.recoverable)

    def test_a_request_sent_then_the_connection_failed_or_a_proxy_answered_may_have_run(self):
        for name, answer, timeout in [
            ("closed without an answer", lambda conn: None, None),
            ("reset without an answer", _reset, None),
            ("no answer within the timeout", lambda conn: time.sleep(1.0), 0.3),
            ("an answer cut short", lambda conn: conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\""), None),
            ("not HTTP", lambda conn: conn.sendall(b"garbage\r\n\r\n"), None),
            ("a proxy's 502", _reply(502, b"<html>502 Bad Gateway</html>", [("Content-Type", "text/html")]), None),
            ("a proxy's 504", _reply(504, b"upstream timed out"), None),
            ("a proxy's 503 after passing it on", _reply(503, b"upstream connect error or disconnect/reset before "
                                                      b"headers. reset reason: connection termination"), None),
            ("a proxy's 500 with JSON of its own", _reply(500, b'{"message": "Internal server error"}'), None),
            ("a 200 without JSON", _reply(200, b"OK"), None),
        ]:
            server, e = self.fails(answer, timeout)
            self.assertEqual(len(server.bodies), 1, "%s: the server read the request" % name)
            self.assertIsInstance(e, lb.OutcomeUnknownError, "%s: %r" % (name, e))
            self.assertIsInstance(e, lb.ConnectionError, name)
            self.assertEqual(e.kind, "outcome_unknown", name)
            self.assertFalse(e.recoverable, name)
            self.assertIn("may or may not have run", str(e), name)
            self.assertIn(server.url, str(e), name)

    def test_a_429_or_the_standbys_refusals_were_not_run(self):
        for answer, retry_after in [
            (_reply(429, b"<html>slow down</html>", [("Retry-After", "2")]), 2.0),
            (_reply(503, b'{"error":"the server is shutting down"}', [("Retry-After", "1"),
                                                                     ("litebridge-not-run", "1")]), 1.0),
        ]:
            _, e = self.fails(answer)
            self.assertIsInstance(e, lb.ConnectionError)
            self.assertNotIsInstance(e, lb.OutcomeUnknownError)
            self.assertEqual(e.kind, "unavailable")
            self.assertTrue(e.recoverable)
            self.assertEqual(e.retry_after, retry_after)
        # The standby's answer for a request the server had begun when it shut down: it may have run.
        _, e = self.fails(_reply(500, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32013,"message":"the request ended without an answer as the server shut down; it may or may not have run","data":{"kind":"outcome_unknown","recoverable":false}}}'))
        self.assertIsInstance(e, lb.OutcomeUnknownError)
        self.assertFalse(e.recoverable)

    def test_the_servers_outcome_unknown_is_its_own_class_recoverable_only_if_it_says_so(self):
        for error, recoverable in [
            ({"code": -32013, "message": "the COMMIT was sent but its answer was lost"}, False),
            ({"code": -32013, "message": "lost", "data": {"kind": "outcome_unknown", "recoverable": False}}, False),
            ({"code": -32013, "message": "lost", "data": {"kind": "outcome_unknown", "recoverable": True}}, True),
        ]:
            direct = lb.errors.from_wire(error)
            self.assertIsInstance(direct, lb.OutcomeUnknownError)
            self.assertEqual((direct.kind, direct.code, direct.recoverable), ("outcome_unknown", -32013, recoverable))
            # And from a reply on the wire.
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "error": error}).encode()
            _, e = self.fails(_reply(200, body, [("Content-Type", "application/json")]))
            self.assertIsInstance(e, lb.OutcomeUnknownError)
            self.assertEqual(str(e), error["message"])
            self.assertEqual(e.recoverable, recoverable)


class _RpcServer(_FakeServer):
    """A ``_FakeServer`` answering ``status`` with the JSON ``make(request)``."""

    def __init__(self, status, make, headers=()):
        self.status, self.make, self.extra = status, make, list(headers)
        super().__init__(self._answer)

    def _answer(self, conn):
        try:
            request = json.loads(self.bodies[-1])
        except ValueError:
            request = None
        body = self.make(request)
        body = body if isinstance(body, bytes) else body.encode()
        _reply(self.status, body, [("Content-Type", "application/json")] + self.extra)(conn)


def _hang(conn):
    """Never answers: waits until the client closes the connection."""
    conn.settimeout(30)
    try:
        conn.recv(1)
    except OSError:
        pass


def _sse(*events):
    """An event stream's answer: ``events`` (bytes) written, then the connection closed."""
    def answer(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for e in events:
            conn.sendall(e)
    return answer


_WRITE = "INSERT INTO t VALUES (1)"


class HostileTest(unittest.TestCase):
    """Over HTTP against servers that answer what litebridge never would,
    or never answer; keys and URLs that must not leak."""

    def test_interim_answers_before_the_reply_are_skipped(self):
        # A proxy or CDN may send 103 Early Hints before the answer: read
        # as the answer, it failed a call that had succeeded.
        body = b'{"jsonrpc":"2.0","result":{"rows_affected":1,"last_insert_id":1},"id":1}'

        def answer(conn):
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                         b"HTTP/1.1 102 Processing\r\n\r\n")
            _reply(200, body, [("Content-Type", "application/json")])(conn)

        server = _FakeServer(answer)
        try:
            got = lb.Client.connect(server.url).execute(_WRITE)
            self.assertEqual(got["rows_affected"], 1)
        finally:
            server.close()

        # Without end: refused once past the bound, as a failure that may have run.
        def endless(conn):
            try:
                for _ in range(100):
                    conn.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\n")
            except OSError:
                pass

        server = _FakeServer(endless)
        try:
            with self.assertRaises(lb.OutcomeUnknownError) as e:
                lb.Client.connect(server.url).execute(_WRITE)
            self.assertIn("interim", str(e.exception))
        finally:
            server.close()
    def server(self, answer):
        server = answer if isinstance(answer, _FakeServer) else _FakeServer(answer)
        self.addCleanup(server.close)
        return server

    def test_a_redirect_is_never_followed_and_the_request_was_not_run(self):
        thief = self.server(_RpcServer(200, lambda r: json.dumps(
            {"jsonrpc": "2.0", "id": (r or {}).get("id", 1), "result": {"changes": 1}})))
        for status in (301, 302, 303, 307, 308):
            front = self.server(_reply(status, b"", [("Location", thief.url + "/steal")]))
            c = lb.Client.connect(front.url, key="lb_SECRET_KEY", timeout=5)
            for f in (lambda: c.execute("INSERT INTO t VALUES (?1)", ["secret-value"]),
                      lambda: c.query("SELECT 1")):
                with self.assertRaises(lb.ConnectionError) as e:
                    f()
                self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError, status)
                self.assertEqual(e.exception.kind, "unavailable")
                self.assertFalse(e.exception.recoverable)
                self.assertIn("redirect", str(e.exception))
                self.assertIn("was not run", str(e.exception))
            # The event stream ends with the redirect, never following it.
            with self.assertRaises(lb.ConnectionError):
                c.events().get(timeout=5)
            c.close()
            self.assertEqual(thief.heads, [], status)

    def test_a_key_is_stripped_and_one_with_a_control_character_refused_unseen(self):
        server = self.server(_RpcServer(200, lambda r: json.dumps(
            {"jsonrpc": "2.0", "id": r["id"], "result": {"changes": 1}})))
        self.assertEqual(lb.Client.connect(server.url, key=" lb_SECRET\n", timeout=5).execute(_WRITE),
                         {"changes": 1})
        self.assertIn("\r\nAuthorization: Bearer lb_SECRET\r\n", server.heads[0])
        for key in ("lb_SE\nCRET", "lb_SE\rCRET", "lb_SE\x00CRET", "lb_S\u0100CRET"):
            with self.assertRaises(ValueError) as e:
                lb.Client.connect(server.url, key=key)
            self.assertIn("control character", str(e.exception))
            self.assertNotIn("CRET", str(e.exception))
        c = lb.Client.connect(server.url, key="lb_SECRET_KEY")
        self.assertNotIn("lb_SECRET_KEY", repr(c._transport))
        with self.assertRaises(ValueError) as e:
            lb.Client.connect("http://admin:hunter2@127.0.0.1:1")
        self.assertNotIn("hunter2", str(e.exception))

    def test_a_loopback_url_never_goes_through_the_environments_proxy(self):
        proxy = self.server(_RpcServer(200, lambda r: json.dumps(
            {"jsonrpc": "2.0", "id": 1, "result": {"changes": 1, "via": "proxy"}})))
        server = self.server(_RpcServer(200, lambda r: json.dumps(
            {"jsonrpc": "2.0", "id": r["id"], "result": {"changes": 1}})))
        # A fresh interpreter: the environment's proxies are read when the first opener is built.
        script = ("import sys; sys.path.insert(0, %r); import litebridge_client as lb; "
                  "print(lb.Client.connect(%r, key='lb_SECRET_KEY', timeout=5).execute('INSERT INTO t VALUES (1)'))"
                  % (os.path.dirname(PACKAGE), server.url))
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
        env.update(HTTP_PROXY=proxy.url, http_proxy=proxy.url)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(out.stdout.strip(), "{'changes': 1}", out.stderr)
        self.assertEqual(proxy.heads, [])
        self.assertEqual(len(server.heads), 1)

    def test_a_2xx_that_is_not_a_reply_to_this_request(self):
        cases = {
            "JSON of another kind": lambda r: '{"status":"ok"}',
            "an empty object": lambda r: "{}",
            "a reply to another id": lambda r: '{"jsonrpc":"2.0","id":999,"result":{"changes":1}}',
            "an empty batch": lambda r: "[]",
            "a string": lambda r: '"ok"',
            "no jsonrpc member": lambda r: json.dumps({"id": r["id"], "result": {"changes": 1}}),
            "neither result nor error": lambda r: json.dumps({"jsonrpc": "2.0", "id": r["id"]}),
            "both": lambda r: json.dumps({"jsonrpc": "2.0", "id": r["id"], "result": 1,
                                          "error": {"code": -32000, "message": "m"}}),
            "an empty error": lambda r: json.dumps({"jsonrpc": "2.0", "id": r["id"], "error": {}}),
            "a code that is not an integer": lambda r: json.dumps(
                {"jsonrpc": "2.0", "id": r["id"], "error": {"code": "boom", "message": "m"}}),
            "an error that is a list": lambda r: json.dumps({"jsonrpc": "2.0", "id": r["id"], "error": ["x"]}),
        }
        for name, make in cases.items():
            server = self.server(_RpcServer(200, make))
            c = lb.Client.connect(server.url, timeout=5)
            for f in (lambda: c.execute(_WRITE), lambda: c.call("charge", ["acct", 10])):
                with self.assertRaises(lb.OutcomeUnknownError, msg=name) as e:
                    f()
                self.assertIn("may or may not have run", str(e.exception))
            with self.assertRaises(lb.ConnectionError, msg=name) as e:
                c.query("SELECT 1")
            self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError, name)
            self.assertFalse(c.is_healthy(), name)
        # A 2xx other than 200 with a reply to this request is a reply.
        server = self.server(_RpcServer(202, lambda r: json.dumps(
            {"jsonrpc": "2.0", "id": r["id"], "result": {"changes": 2}})))
        self.assertEqual(lb.Client.connect(server.url, timeout=5).execute(_WRITE), {"changes": 2})
        server = self.server(_RpcServer(200, lambda r: '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,'
                                                       '"message":"Parse error: x"}}'))
        with self.assertRaises(lb.ProtocolError):
            lb.Client.connect(server.url, timeout=5).execute(_WRITE)

    def test_a_gateways_json_error_is_not_litebridges_the_write_may_have_run(self):
        for status, body in [
            (504, '{"error":{"code":504,"message":"upstream request timeout","status":"DEADLINE_EXCEEDED"}}'),
            (502, '{"error":{}}'),
            (504, '{"jsonrpc":"2.0","id":null,"error":{"code":504,"message":"upstream request timeout"}}'),
        ]:
            server = self.server(_RpcServer(status, lambda r, body=body: body))
            with self.assertRaises(lb.OutcomeUnknownError, msg=body) as e:
                lb.Client.connect(server.url, timeout=5).execute(_WRITE)
            self.assertIn("answered %d" % status, str(e.exception))
        server = self.server(_RpcServer(401, lambda r: '{"jsonrpc":"2.0","id":null,"error":{"code":-32006,"message":'
                                                       '"the API key is not valid","data":{"kind":"unauthorized",'
                                                       '"recoverable":false}}}'))
        with self.assertRaises(lb.UnauthorizedError):
            lb.Client.connect(server.url, timeout=5).execute(_WRITE)
        server = self.server(_RpcServer(413, lambda r: '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,'
                                                       '"message":"Invalid Request: the body is too large"}}'))
        with self.assertRaises(lb.ProtocolError):
            lb.Client.connect(server.url, timeout=5).execute(_WRITE)

    def test_a_server_that_never_answers_or_trickles_is_bounded_by_the_deadline(self):
        hang = self.server(_hang)
        c = lb.Client.connect(hang.url, deadline=0.3)
        started = time.monotonic()
        with self.assertRaises(lb.OutcomeUnknownError) as e:
            c.execute(_WRITE)
        self.assertIn("0.3 s", str(e.exception))
        self.assertLess(time.monotonic() - started, 3)
        with self.assertRaises(lb.TimeoutError) as e:  # a read: nothing ran
            c.query("SELECT 1")
        self.assertEqual(e.exception.kind, "timeout")
        self.assertLess(time.monotonic() - started, 6)

        def trickle(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                for _ in range(600):
                    conn.sendall(b"1\r\n \r\n")
                    time.sleep(0.05)
            except OSError:
                pass

        drip = self.server(trickle)
        started = time.monotonic()
        # A socket timeout (per read) never fires on a trickle; the deadline does.
        with self.assertRaises(lb.OutcomeUnknownError):
            lb.Client.connect(drip.url, timeout=5, deadline=0.4).call("charge", ["a", 1])
        self.assertLess(time.monotonic() - started, 3)
        # A call's own timeout sets its deadline: that and 5 s.
        started = time.monotonic()
        with self.assertRaises(lb.TimeoutError) as e:
            lb.Client.connect(hang.url).query("SELECT 1", timeout=0.1)
        self.assertGreaterEqual(time.monotonic() - started, 5)
        self.assertIn("5.1 s", str(e.exception))
        for bad in (True, float("nan"), float("inf"), 0, -1):
            with self.assertRaises(ValueError):
                lb.Client.connect(hang.url, deadline=bad)

    def test_a_cancelled_async_call_never_holds_the_interpreters_exit(self):
        hang = self.server(_hang)
        script = """
import asyncio, sys, time
sys.path.insert(0, %r)
import litebridge_client as lb
async def main():
    c = lb.AsyncClient.connect(%r)
    try:
        await asyncio.wait_for(c.query("SELECT 1"), 0.5)
    except asyncio.TimeoutError:
        print("cancelled", flush=True)
    await c.close()
asyncio.run(main())
""" % (os.path.dirname(PACKAGE), hang.url)
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.stdout.strip(), "cancelled", out.stderr)
        self.assertLess(time.monotonic() - started, 10)

    def test_answers_are_read_up_to_max_response_bytes_never_inflated(self):
        import gzip

        def long(r):
            return json.dumps({"jsonrpc": "2.0", "id": r["id"], "result": {
                "columns": ["x"], "rows": [["x" * 200_000]], "truncated": False}})

        def chunked(server):
            def answer(conn):
                body = long(json.loads(server.bodies[-1])).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            return answer

        with_length = self.server(_RpcServer(200, long))
        without = _FakeServer(None)
        without.answer = chunked(without)
        self.server(without)
        for name, server in (("with a Content-Length", with_length), ("chunked", without)):
            c = lb.Client.connect(server.url, timeout=5, max_response_bytes=100_000)
            with self.assertRaises(lb.TooLargeError, msg=name) as e:
                c.query("SELECT x")
            self.assertIn("max_response_bytes", str(e.exception))
            with self.assertRaises(lb.OutcomeUnknownError, msg=name):
                c.execute(_WRITE)
            self.assertEqual(len(lb.Client.connect(server.url, timeout=5).query("SELECT x")[0]["x"]), 200_000)
        zipped = self.server(_RpcServer(200, lambda r: gzip.compress(long(r).encode()),
                                        [("Content-Encoding", "gzip")]))
        with self.assertRaises(lb.OutcomeUnknownError):
            lb.Client.connect(zipped.url, timeout=5).execute(_WRITE)
        self.assertIn("\r\nAccept-Encoding: identity\r\n", zipped.heads[0])

    def test_events_a_line_or_event_past_1_mib_is_dropped_and_the_next_arrives(self):
        server = self.server(_sse(b'data: {"event":"started","seq":1,"pad":"', b"x" * (3 << 20), b'"}\n\n',
                                  b'data: {"event":"started","seq":2}\n\n'))
        with lb.Client.connect(server.url).events() as events:
            self.assertEqual(events.get(timeout=10)["seq"], 2)

    def test_events_lines_end_at_crlf_lf_or_a_lone_cr_and_data_lines_join_with_lf(self):
        server = self.server(_sse(b'id: a\rdata: {"event":"started",\r', b'\ndata:  "seq":1}\r\r',
                                  b'data: {"event":"started","seq":2,"text":"x\\ny"}\r\n\r', b'\n',
                                  b'data: {"event":"started",\rdata: "seq":3}\n\n'))
        with lb.Client.connect(server.url).events() as events:
            self.assertEqual([events.get(timeout=10)["seq"] for _ in range(3)], [1, 2, 3])
        # However the reads split them (TCP may join the writes above).
        from litebridge_client.transports import _EventLines
        lines = _EventLines()
        seen = [line for chunk in (b"a\r", b"\nb\r", b"c\n", b"\r", b"\n", b"d\r\n", b"x" * (2 << 20), b"\re\n")
                for line in lines.feed(chunk)]
        self.assertEqual(seen, [b"a", b"b", b"c", b"", b"d", None, b"e"])

    def test_events_a_chunked_stream_cut_short_keeps_its_last_id_and_a_bom_is_dropped(self):
        event = b'\xef\xbb\xbfid: 7\ndata: {"event":"started","seq":1}\n\n'

        def cut(conn):  # chunked, then closed without the last chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(event), event))
        answers = iter([cut] + [_sse(b'data: {"event":"started","seq":%d}\n\n' % n) for n in range(2, 50)])
        server = self.server(lambda conn: next(answers)(conn))
        with lb.Client.connect(server.url).events() as events:
            self.assertEqual([events.get(timeout=10)["seq"] for _ in range(2)], [1, 2])
        self.assertIn("last-event-id: 7\r\n", server.heads[1].lower())

    def test_events_an_id_a_header_cannot_carry_is_dropped_and_the_stream_goes_on(self):
        answers = iter([_sse(b'id: 7\x7fX-Injected: 1\ndata: {"event":"started","seq":1}\n\n')]
                       + [_sse(b'id: ok\ndata: {"event":"started","seq":%d}\n\n' % n) for n in range(2, 50)])
        server = self.server(lambda conn: next(answers)(conn))
        with lb.Client.connect(server.url).events() as events:
            self.assertEqual([events.get(timeout=10)["seq"] for _ in range(2)], [1, 2])
        self.assertNotIn("last-event-id", server.heads[1].lower())

    def test_events_retry_after_nan_waits_the_pause_and_a_failing_pump_ends_the_stream(self):
        server = self.server(_reply(429, b"slow down", [("Retry-After", "nan")]))
        with lb.Client.connect(server.url).events():
            time.sleep(2.5)
        self.assertIn(len(server.heads), (2, 3))  # at 0 s and 1 s (and 3 s), not once for ever
        with self.assertRaises(lb.ConnectionError):
            lb.Client.connect(server.url).execute(_WRITE)
        # Anything the pump did not expect ends the stream with an error, never a dead thread.
        ok = self.server(_sse(b'data: {"event":"started","seq":1}\n\n'))
        c = lb.Client.connect(ok.url)

        def broken(res, stream, last_id):
            raise RuntimeError("a bug")

        c._transport._read_events = broken
        with self.assertRaises(lb.ConnectionError) as e:
            c.events().get(timeout=10)
        self.assertIsInstance(e.exception.__cause__, RuntimeError)

    def test_from_wire_and_timeouts_of_any_shape(self):
        for code in ("boom", None, float("inf"), 1.5, True):
            e = lb.errors.from_wire({"code": code, "message": "m"})
            self.assertIsInstance(e, lb.LitebridgeError)
            self.assertEqual(e.code, 0)
        for error in (["not", "a", "dict"], "a string", None, {"code": -32000, "message": {"x": 1}}):
            self.assertIsInstance(lb.errors.from_wire(error), lb.LitebridgeError)
        over = {"code": -32002, "message": "m", "data": {"kind": "overloaded", "recoverable": True}}
        for ms, seconds in ((1e300, 300.0), (-5, 0.0), (250, 0.25), (float("nan"), None), (float("inf"), None)):
            e = lb.errors.from_wire(dict(over, data=dict(over["data"], retry_after_ms=ms)))
            self.assertEqual(e.retry_after, seconds, ms)
        c = lb.Client.connect("http://127.0.0.1:%d" % _dead_port())
        for bad in (True, float("nan"), float("inf"), "1", 0):
            with self.assertRaises(ValueError) as e:
                c.query("SELECT 1", timeout=bad)
            self.assertIn("timeout must be a positive number of seconds", str(e.exception))
        # Unreachable: False, not an exception.
        self.assertFalse(c.is_healthy())

    def test_every_spelling_of_this_machine_is_loopback_and_skips_the_proxy(self):
        from litebridge_client.transports import _is_loopback
        local = ("127.0.0.1", "127.1", "127.0.1", "0x7f000001", "0x7f.1", "017700000001", "2130706433", "0.0.0.0",
                 "0", "localhost", "LOCALHOST.", "a.localhost", "[::1]", "[::]", "[::ffff:127.0.0.1]",
                 "[::ffff:7f00:1]", "[::ffff:0.0.0.0]")
        for host in local:
            self.assertTrue(_is_loopback("http://%s:7070" % host), host)
        for host in ("10.0.0.1", "1.2.3.4", "0x0a000001", "167772161", "example.com", "localhost.example.com",
                     "[::ffff:10.0.0.1]", "[2001:db8::1]", "127.0.0.1.example.com"):
            self.assertFalse(_is_loopback("http://%s:7070" % host), host)
        # Through a real proxy setting: the key never reaches the proxy whichever spelling is used.
        proxy = self.server(_RpcServer(502, lambda r: "{}"))
        server = self.server(_RpcServer(200, lambda r: json.dumps(
            {"jsonrpc": "2.0", "id": r["id"], "result": {"changes": 1}})))
        port = server.url.rsplit(":", 1)[1]
        urls = ["http://%s:%s" % (h, port) for h in ("127.1", "0x7f000001", "2130706433", "0.0.0.0")]
        script = ("import sys; sys.path.insert(0, %r); import litebridge_client as lb\n"
                  "for u in %r: print(lb.Client.connect(u, key='lb_SECRET_KEY', timeout=5).execute('INSERT INTO t "
                  "VALUES (1)'))" % (os.path.dirname(PACKAGE), urls))
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
        env.update(HTTP_PROXY=proxy.url, http_proxy=proxy.url)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(out.stdout.split(), ["{'changes':", "1}"] * len(urls), out.stderr)
        self.assertEqual(proxy.heads, [])

    def test_json_nested_past_the_recursion_limit_is_an_unreadable_answer(self):
        deep = "[" * 100000 + "]" * 100000
        for status in (200, 502):
            server = self.server(_RpcServer(status, lambda r: deep))
            c = lb.Client.connect(server.url, timeout=5)
            with self.assertRaises(lb.OutcomeUnknownError):  # a write may have run
                c.execute(_WRITE)
            with self.assertRaises(lb.ConnectionError) as e:  # a read did not
                c.query("SELECT 1")
            self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
        # The event stream: an event that deep is dropped, the next one arrives.
        events = self.server(_sse(("data: %s\n\n" % deep).encode(), b'data: {"event": "next"}\n\n'))
        self.assertEqual(lb.Client.connect(events.url).events().get(timeout=10), {"event": "next"})
        # A refusal with a body that deep ends the stream with its status, not the client's failure.
        refused = self.server(_reply(401, deep.encode()))
        with self.assertRaises(lb.ConnectionError) as e:
            lb.Client.connect(refused.url).events().get(timeout=10)
        self.assertEqual(e.exception.kind, "unavailable")
        self.assertIn("401", str(e.exception))

    def test_a_url_that_does_not_parse_is_refused_and_never_shown(self):
        for url in ("http://admin:s3cret@localhost:99999", "http://admin:s3cret@[::1:7070", "http://admin:s3cret@",
                    "admin:s3cret@localhost:7070", "http://admin:s3cret/x@localhost:7070",
                    "http://admin:s3c#ret@localhost:7070", "http://[::1:7070", "http://localhost:99999",
                    # Read by urllib as a local file, FTP or the URL's own data (review 192).
                    "file:///etc/s3cret7070", "ftp://localhost:7070/s3c", "data:,s3c7070", "localhost:7070",
                    "http:///s3c7070",
                    # A password holding ?, # or / after digits: the URL reads as host admin (or
                    # localhost), and the key and SQL went there (review 208).
                    "http://localhost:7070?s3cret@127.0.0.1:7070", "http://admin:7070#s3cret@127.0.0.1:7070",
                    "http://admin:7070/s3cret@127.0.0.1:7070",
                    # Never a base URL: a query, a space or control character (every call was
                    # "may have run", nothing sent).
                    "http://127.0.0.1:7070/?s3c=1", "http://127.0.0.1:7070/s3c ret", "http://127.0.0.1:7070/s3c\x7f",
                    "http://127.0.0.1:7070/s3c\r\nX-Injected: 1",
                    # Read as another host than the text shows, or a password with no host after it
                    # that urllib's reason quoted (review 209).
                    "http://127.0.0.1:7070\\s3c.trusted.example:7070", "http://127\u30020\u30020\u30021:7070/s3c",
                    "http://admin:s3cr3t"):
            with self.assertRaises(ValueError) as e:
                lb.Client.connect(url, key="k")
            self.assertNotIn("s3c", str(e.exception), url)
            self.assertNotIn("7070", str(e.exception), url)
        for url in ("http://127.0.0.1:7070/", " http://localhost:7070/x\n", "http://[::1]:7070"):
            lb.Client.connect(url).close()

    def test_a_parameter_json_cannot_carry_is_the_callers_error(self):
        import datetime
        import decimal
        import uuid
        c = lb.Client.connect("http://127.0.0.1:%d" % _dead_port())
        for value in (datetime.date(2026, 1, 1), decimal.Decimal("1.5"), uuid.uuid4(), {1, 2}):
            with self.assertRaises(lb.InvalidArgumentError, msg=repr(value)) as e:
                c.query("SELECT ?1", (value,))
            self.assertIsInstance(e.exception, TypeError)  # as json raises it
            self.assertEqual(e.exception.kind, "invalid_argument")

    def test_a_query_result_of_another_shape_is_not_litebridges(self):
        for result in ({"columns": "x", "rows": []}, {"rows": [[1]]}, {"columns": ["x"], "rows": [1]}, [], 7):
            server = self.server(_RpcServer(200, lambda r, result=result: json.dumps(
                {"jsonrpc": "2.0", "id": r["id"], "result": result})))
            with self.assertRaises(lb.ConnectionError, msg=repr(result)) as e:
                lb.Client.connect(server.url, timeout=5).query("SELECT 1")
            self.assertIn("not a result of rows", str(e.exception))

    def test_a_connect_timeout_is_a_positive_number_of_seconds(self):
        for bad in (True, float("nan"), float("inf"), 0, -1, "5"):
            with self.assertRaises(ValueError, msg=repr(bad)) as e:
                lb.Client.connect("http://127.0.0.1:7070", timeout=bad)
            self.assertIn("timeout must be a positive number", str(e.exception))

    def test_calls_after_close_are_not_sent(self):
        server = self.server(_RpcServer(200, lambda r: json.dumps(
            {"jsonrpc": "2.0", "id": r["id"], "result": {"changes": 1}})))
        c = lb.Client.connect(server.url, timeout=5)
        c.execute(_WRITE)
        c.close()
        with self.assertRaises(lb.ConnectionError) as e:
            c.execute(_WRITE)
        self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
        self.assertFalse(e.exception.recoverable)
        self.assertIn("closed", str(e.exception))
        self.assertFalse(c.is_healthy())

        async def main():
            a = lb.AsyncClient.connect(server.url, timeout=5)
            await a.execute(_WRITE)
            await a.close()
            with self.assertRaises(lb.ConnectionError) as e:
                await a.execute(_WRITE)
            self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
            self.assertFalse(await a.is_healthy())

        asyncio.run(main())
        self.assertEqual(len(server.bodies), 2)

    def test_close_cuts_off_the_calls_in_flight(self):
        hang = self.server(_FakeServer(lambda conn: time.sleep(30)))
        c = lb.Client.connect(hang.url, deadline=30)
        results = {}

        def run(name, call):
            try:
                call()
            except lb.LitebridgeError as e:
                results[name] = e

        threads = [threading.Thread(target=run, args=("write", lambda: c.execute(_WRITE))),
                   threading.Thread(target=run, args=("read", lambda: c.query("SELECT 1")))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(hang.heads) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        c.close()
        for t in threads:
            t.join(10)
        self.assertLess(time.monotonic() - started, 5)
        self.assertIsInstance(results["write"], lb.OutcomeUnknownError)
        self.assertIsInstance(results["read"], lb.ConnectionError)
        self.assertNotIsInstance(results["read"], lb.OutcomeUnknownError)
        self.assertIn("closed", str(results["read"]))

    def test_a_request_past_the_servers_body_limit_is_refused_unsent(self):
        server = self.server(_RpcServer(200, lambda r: "{}"))
        with self.assertRaises(lb.TooLargeError) as e:
            lb.Client.connect(server.url, timeout=5).execute(_WRITE, ("x" * (17 << 20),))
        self.assertIn("not sent", str(e.exception))
        self.assertEqual(server.bodies, [])

    def test_events_that_are_not_objects_are_dropped(self):
        server = self.server(_sse(b"data: null\n\n", b"data: [1, 2]\n\n", b'data: "s"\n\n', b"data: 7\n\n",
                                  b'data: {"event": "next"}\n\n'))
        self.assertEqual(lb.Client.connect(server.url).events().get(timeout=10), {"event": "next"})

    def test_closing_an_event_stream_shuts_its_connection(self):
        def drip(conn):  # a server that never ends a line
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            for _ in range(600):
                time.sleep(0.1)
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
        server = self.server(_FakeServer(drip))
        c = lb.Client.connect(server.url)
        before = {t.ident for t in threading.enumerate()}
        streams = [c.events() for _ in range(3)]
        deadline = time.monotonic() + 10
        while len(server.heads) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(len(server.heads), 3)
        for stream in streams:
            stream.close()
        c.close()
        deadline = time.monotonic() + 5
        left = None
        while time.monotonic() < deadline:
            left = [t for t in threading.enumerate() if t.name == "litebridge-events" and t.ident not in before]
            if not left:
                break
            time.sleep(0.05)
        self.assertEqual(left, [])

    def test_an_async_call_waiting_for_a_thread_is_within_its_deadline_and_then_never_sent(self):
        def slow(conn):
            time.sleep(1)
            _RpcServer._answer(server, conn)

        server = _RpcServer(200, lambda r: json.dumps({"jsonrpc": "2.0", "id": r["id"], "result": {"changes": 1}}))
        server.answer = slow
        self.server(server)

        async def main():
            c = lb.AsyncClient.connect(server.url, deadline=0.4)
            # The client's 32 threads held 1 s (these calls' own timeouts give them 5.1 s) ...
            busy = [asyncio.ensure_future(c.execute(_WRITE, timeout=0.1)) for _ in range(32)]
            await asyncio.sleep(0.1)
            started = time.monotonic()
            # ... and one more, whose 0.4 s are up before a thread is free.
            with self.assertRaises(lb.TimeoutError) as e:
                await c.execute(_WRITE)
            waited = time.monotonic() - started
            await asyncio.gather(*busy, return_exceptions=True)  # (answered with another call's id: no matter)
            await c.close()
            return e.exception, waited

        error, waited = asyncio.run(main())
        self.assertNotIsInstance(error, lb.OutcomeUnknownError)
        self.assertTrue(error.recoverable)
        self.assertIn("was not sent", str(error))
        self.assertLess(waited, 1.5)
        self.assertEqual(len(server.bodies), 32)

    def test_a_slow_name_lookup_is_bounded_by_the_deadline(self):
        real = socket.getaddrinfo

        def slow(host, *args, **kwargs):
            if host == "slow-dns.invalid":
                time.sleep(3)
                raise socket.gaierror(socket.EAI_NONAME, "not found")
            return real(host, *args, **kwargs)

        socket.getaddrinfo = slow
        try:
            started = time.monotonic()
            with self.assertRaises(lb.ConnectionError) as e:
                lb.Client.connect("http://slow-dns.invalid:7070", deadline=0.5).execute(_WRITE)
        finally:
            socket.getaddrinfo = real
        self.assertLess(time.monotonic() - started, 2)
        self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
        self.assertTrue(e.exception.recoverable)
        self.assertIn("name lookup", str(e.exception))

    def _with_addresses(self, host, ports):
        """``socket.getaddrinfo`` answering ``host`` with loopback at each
        of ``ports`` in turn (as a name with several addresses is): undone
        by the test's cleanup."""
        real = socket.getaddrinfo

        def several(name, port, *args, **kwargs):
            if name == host:
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]
            return real(name, port, *args, **kwargs)

        socket.getaddrinfo = several
        self.addCleanup(setattr, socket, "getaddrinfo", real)

    def test_each_address_of_a_name_is_tried_in_turn(self):
        server = _RpcServer(200, lambda r: json.dumps({"jsonrpc": "2.0", "id": r["id"], "result": {"changes": 1}}))
        self.addCleanup(server.close)
        good = int(server.url.rsplit(":", 1)[1])
        self._with_addresses("several.invalid", [_dead_port(), _dead_port(), good])
        c = lb.Client.connect("http://several.invalid:7070", deadline=5)
        self.assertEqual(c.execute(_WRITE), {"changes": 1})
        self.assertEqual(len(server.bodies), 1)

    def test_every_address_refused_is_refused_not_a_timeout(self):
        self._with_addresses("refused.invalid", [_dead_port(), _dead_port()])
        started = time.monotonic()
        with self.assertRaises(lb.ConnectionError) as e:
            lb.Client.connect("http://refused.invalid:7070", deadline=5).execute(_WRITE)
        self.assertLess(time.monotonic() - started, 2)
        self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
        self.assertIn("refused", str(e.exception).lower())
        self.assertNotIn("deadline", str(e.exception))

    def test_addresses_left_when_the_deadline_passes_are_not_tried(self):
        # The first address takes the whole deadline (it never completes
        # the handshake: a listening socket whose backlog is full); the
        # second, which would answer, is never reached.
        server = _RpcServer(200, lambda r: json.dumps({"jsonrpc": "2.0", "id": r["id"], "result": {"changes": 1}}))
        self.addCleanup(server.close)
        full = socket.socket()
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        self.addCleanup(full.close)
        fillers = []
        for _ in range(8):  # fill the backlog (never accepted)
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(full.getsockname())
            fillers.append(f)
        for f in fillers:
            self.addCleanup(f.close)
        self._with_addresses("stuck.invalid", [full.getsockname()[1], int(server.url.rsplit(":", 1)[1])])
        started = time.monotonic()
        with self.assertRaises(lb.ConnectionError) as e:
            lb.Client.connect("http://stuck.invalid:7070", deadline=0.5).execute(_WRITE)
        self.assertLess(time.monotonic() - started, 2)
        self.assertNotIsInstance(e.exception, lb.OutcomeUnknownError)
        self.assertEqual(server.bodies, [], "an address was tried past the deadline")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


class KeyInQuotedAnswersTest(unittest.TestCase):
    def test_the_key_never_reaches_an_error_through_an_answer_quoting_the_request(self):
        # A proxy's or a debugging server's page may echo the request's
        # headers (review 244 found the key in the JavaScript client's
        # messages this way; this client quoted such answers too).
        key = "lb_SECRET_KEY_4f1e" + "a1b2c3d4e5f6g7h8i9j0k1l2m3n4"  # 46 characters, as litebridge's
        servers = []

        def echo_text(conn):
            _reply(200, servers[-1].heads[-1].encode())(conn)

        def echo_json(conn):
            body = json.dumps({"error": servers[-1].heads[-1]}).encode()
            _reply(503, body, [("Content-Type", "application/json")])(conn)

        def echo_in_encoding(conn):
            # Review 245: cut to 40 characters before it was blanked, a
            # prefix of the key was left.
            auth = re.search(r"(?i)authorization: ([^\r\n]*)", servers[-1].heads[-1]).group(1)
            _reply(200, b"{}", [("Content-Encoding", auth)])(conn)

        def many_keys(conn):
            # Review 245: keys blanked in the first 1,000 bytes pulled a
            # cut one into the excerpt.
            _reply(200, ("x" + key * 40).encode())(conn)

        self._key_never_shown(key, servers, (echo_text, echo_json, echo_in_encoding, many_keys))

    def _key_never_shown(self, key, servers, answers, events=()):
        """Each of ``answers`` served in turn: a write's and a read's error
        (and, for those in ``events``, the refusal of the event stream) never
        quote the key the requests carried."""
        for answer in answers:
            servers.append(_FakeServer(answer))
            try:
                c = lb.Client.connect(servers[-1].url, key=key)
                calls = [("execute", lambda: c.execute("INSERT INTO t VALUES (1)")),
                         ("query", lambda: c.query("SELECT 1"))]
                if answer in events:
                    calls.append(("events", lambda: next(c.events())))
                for what, call in calls:
                    with self.assertRaises(lb.LitebridgeError) as e:
                        call()
                    self.assertIn(key, servers[-1].heads[-1])
                    # Nor in its data (review 248).
                    for shown in (str(e.exception), repr(getattr(e.exception, "data", None))):
                        self.assertNotIn(key[:8], shown, (answer.__name__, what))
                c.close()
            finally:
                servers[-1].close()

    def test_the_key_never_reaches_an_error_through_an_error_of_litebridges_shape_or_an_events_refusal(self):
        key = "lb_SECRET_KEY_4f1e" + "a1b2c3d4e5f6g7h8i9j0k1l2m3n4"
        servers = []

        def own(rid):
            head = servers[-1].heads[-1]
            error = {"code": -32603, "message": "failed: " + head, "data": {"kind": "internal", "seen": [{"head": head}]}}
            return json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}).encode()

        def own_200(conn):
            _reply(200, own(json.loads(servers[-1].bodies[-1])["id"]), [("Content-Type", "application/json")])(conn)

        def own_401(conn):
            _reply(401, own(None), [("Content-Type", "application/json")])(conn)

        def said_401(conn):
            _reply(401, json.dumps({"error": servers[-1].heads[-1]}).encode(), [("Content-Type", "application/json")])(conn)

        # GET /events refused for good (401) ends the stream with the refusal.
        self._key_never_shown(key, servers, (own_200, own_401, said_401), events=(own_401, said_401))


class ShutdownTest(unittest.TestCase):
    def test_close_commits_and_leaves_no_process_behind(self):
        with tempfile.TemporaryDirectory() as d:
            db = os.path.join(d, "s.db")
            c = lb.Client.spawn(bin=BIN, db=db, workers=WORKER, processes=2)
            c.execute("CREATE TABLE k(x)")
            c.execute("INSERT INTO k VALUES (1)")
            pids = [c._transport.child.proc.pid] + [w["pid"] for w in c.stats()["workers"]]
            self.assertTrue(all(_alive(p) for p in pids))
            c.close()
            deadline = time.monotonic() + 5
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual([p for p in pids if _alive(p)], [])
            with self.assertRaises(lb.ConnectionError):
                c.query("SELECT 1")
            with lb.Client.spawn(bin=BIN, db=db) as again:
                self.assertEqual(again.query("SELECT x FROM k"), [{"x": 1}])

    def test_async_close_leaves_no_process_behind(self):
        async def main():
            with tempfile.TemporaryDirectory() as d:
                c = lb.AsyncClient.spawn(bin=BIN, db=os.path.join(d, "a.db"), workers=WORKER, processes=1)
                await c.execute("CREATE TABLE k(x)")
                pids = [c._transport.child.proc.pid] + [w["pid"] for w in (await c.stats())["workers"]]
                await c.close()
                deadline = time.monotonic() + 5
                while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                self.assertEqual([p for p in pids if _alive(p)], [])

        asyncio.run(main())


# A litebridge that answers its start, then writes a line without end (and
# one on stderr), as a broken child would (review 192).
_ENDLESS = r"""#!/usr/bin/env python3
import json, os, sys
first = json.loads(sys.stdin.readline())
sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": first["id"], "result": {}}) + "\n")
sys.stdout.flush()
sys.stdin.readline()
os.write(2, b"e" * (1 << 20))
chunk = b"x" * (1 << 16)
while True:
    os.write(1, chunk)
"""


class EndlessLineTest(unittest.TestCase):
    """A reply line past the stdio transports' limit stops the child, and
    its calls fail, where it was held whole until memory ran out."""

    def setUp(self):
        import litebridge_client.astdio as astdio
        import litebridge_client.stdio as stdio
        self.dir = tempfile.TemporaryDirectory()
        self.script = os.path.join(self.dir.name, "endless.py")
        with open(self.script, "w") as f:
            f.write(_ENDLESS)
        os.chmod(self.script, 0o755)
        self.saved = (stdio.MAX_REPLY_LINE, astdio._LINE_LIMIT)
        stdio.MAX_REPLY_LINE = astdio._LINE_LIMIT = 4 << 20

    def tearDown(self):
        import litebridge_client.astdio as astdio
        import litebridge_client.stdio as stdio
        stdio.MAX_REPLY_LINE, astdio._LINE_LIMIT = self.saved
        self.dir.cleanup()

    def _check(self, e):
        self.assertIsInstance(e, lb.OutcomeUnknownError)
        self.assertIn("longer than %d bytes" % (4 << 20), str(e))
        # stderr's line is kept in pieces: its last ones are in the message.
        self.assertIn("eeee", str(e))
        self.assertLess(len(str(e)), 200_000)

    def test_sync(self):
        c = lb.Client.spawn(bin=self.script, db=os.path.join(self.dir.name, "x.db"))
        try:
            with self.assertRaises(lb.OutcomeUnknownError) as e:
                c.query("SELECT 1")
            self._check(e.exception)
        finally:
            c.close()

    def test_async(self):
        async def run():
            c = lb.AsyncClient.spawn(bin=self.script, db=os.path.join(self.dir.name, "x.db"))
            try:
                with self.assertRaises(lb.OutcomeUnknownError) as e:
                    await asyncio.wait_for(c.query("SELECT 1"), 30)
                self._check(e.exception)
            finally:
                await c.close()

        asyncio.run(run())


# A litebridge that answers its start, then answers the next request with
# JSON that is not a JSON-RPC reply (review 192).
_NOT_A_REPLY = r"""#!/usr/bin/env python3
import json, sys
first = json.loads(sys.stdin.readline())
sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": first["id"], "result": {}}) + "\n")
sys.stdout.flush()
line = json.loads(sys.stdin.readline())
sys.stdout.write(json.dumps(%s) + "\n")
sys.stdout.flush()
sys.stdin.read()
"""


class NotAReplyTest(unittest.TestCase):
    """A reply of neither a result nor an error is not taken for a success."""

    ANSWERS = ('{"jsonrpc": "2.0", "id": line["id"], "error": {}}', '{"jsonrpc": "2.0", "id": line["id"]}')

    def _script(self, d, answer):
        script = os.path.join(d, "child.py")
        with open(script, "w") as f:
            f.write(_NOT_A_REPLY % answer)
        os.chmod(script, 0o755)
        return script

    def test_sync(self):
        for answer in self.ANSWERS:
            with tempfile.TemporaryDirectory() as d:
                with lb.Client.spawn(bin=self._script(d, answer), db=os.path.join(d, "x.db")) as c:
                    with self.assertRaises(lb.OutcomeUnknownError, msg=answer):
                        c.execute("INSERT INTO t VALUES (1)")

    def test_async(self):
        async def run(d, answer):
            c = lb.AsyncClient.spawn(bin=self._script(d, answer), db=os.path.join(d, "x.db"))
            try:
                with self.assertRaises(lb.OutcomeUnknownError, msg=answer):
                    await asyncio.wait_for(c.execute("INSERT INTO t VALUES (1)"), 30)
            finally:
                await c.close()

        for answer in self.ANSWERS:
            with tempfile.TemporaryDirectory() as d:
                asyncio.run(run(d, answer))


if __name__ == "__main__":
    unittest.main()
