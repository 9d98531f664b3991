"""The thread pool of synchronous handlers, under the faults a handler or the
machine can cause: no descriptor left for a thread's pipe, a pipe broken by
a handler, a handler that forks."""

import os
import threading
import time
import unittest
from unittest import mock

from litebridge_worker.worker import _Pool


class PoolFaultsTest(unittest.TestCase):
    def run_jobs(self, pool, n, job=None):
        """Submits `n` jobs in one go, flushes, and waits for them."""
        done = []
        lock = threading.Lock()

        def record(i):
            if job is not None:
                job(i)
            with lock:
                done.append(i)

        for i in range(n):
            pool.submit(record, i)
        pool.flush()
        deadline = time.monotonic() + 10
        while len(done) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return sorted(done)

    def test_every_job_runs_when_no_descriptor_is_left_for_a_pipe(self):
        pool = _Pool(2, "t")
        real_pipe = os.pipe
        with mock.patch("os.pipe", side_effect=OSError(24, "Too many open files")):
            self.assertEqual(self.run_jobs(pool, 5), list(range(5)))
        # Once descriptors are back, threads wait on pipes again.
        self.assertIs(os.pipe, real_pipe)
        self.assertEqual(self.run_jobs(pool, 5), list(range(5)))
        pool.shutdown()

    def test_a_thread_that_cannot_be_woken_is_replaced(self):
        pool = _Pool(1, "t")
        self.assertEqual(self.run_jobs(pool, 1), [0])  # one thread, now idle
        time.sleep(0.05)
        real_write = os.write

        def broken(fd, data):
            if data == b"\0":
                raise OSError(9, "Bad file descriptor")
            return real_write(fd, data)

        with mock.patch("os.write", side_effect=broken):
            with self.assertLogs("litebridge_worker", "WARNING"):
                self.assertEqual(self.run_jobs(pool, 3), [0, 1, 2])
        pool.shutdown()

    @unittest.skipUnless(hasattr(os, "fork"), "needs fork")
    def test_a_handler_that_forks_does_not_take_the_pools_wake_ups(self):
        pool = _Pool(1, "t")
        children = []

        def forks_once(i):
            if not children:
                pid = os.fork()
                if pid == 0:
                    return  # the child returns to the pool's loop, as sloppy code would
                children.append(pid)

        try:
            self.assertEqual(self.run_jobs(pool, 1, forks_once), [0])
            time.sleep(0.1)
            # Later jobs go through the parent's idle thread, woken by its pipe.
            for _ in range(3):
                self.assertEqual(self.run_jobs(pool, 5, forks_once), list(range(5)))
        finally:
            for pid in children:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
            pool.shutdown()


if __name__ == "__main__":
    unittest.main()
