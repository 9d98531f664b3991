"""An ``async def`` call's Task takes its first step as it is made (on
3.9-3.11 by standing in for ``loop.call_soon`` on the loop while the Task is
made). Whatever else schedules a callback meanwhile (a finalizer the garbage
collector runs then, another thread) has it run, the Task's step runs, and a
``call_soon`` the program put on the loop stays there."""

import asyncio
import gc
import sys
import threading
import unittest

from litebridge_worker.worker import _eager_task


class EagerTaskTest(unittest.TestCase):
    def setUp(self):
        self.loop = asyncio.new_event_loop()
        self.ran = []

    def tearDown(self):
        self.loop.close()

    def handler(self):
        async def handler():
            self.ran.append("first step")
            return "done"
        return handler()

    def make_task(self, while_made):
        """``_eager_task`` run from a callback of the loop (as the worker
        runs it), with ``while_made`` run inside the window, as the Task is
        made (from ``loop.get_debug()``, which making a Future calls); then
        the loop runs until the callbacks scheduled meanwhile have run."""
        loop = self.loop
        made = loop.create_future()
        in_window = []

        def get_debug():
            if not in_window:  # once: scheduling a callback asks too
                in_window.append(vars(loop).get("call_soon"))
                while_made()
            return False

        def on_loop():
            loop.get_debug = get_debug
            try:
                task = _eager_task(loop, self.handler())
            except BaseException as e:
                made.set_exception(e)
                return
            finally:
                del loop.get_debug
            made.set_result(task)

        loop.call_soon(on_loop)
        task = loop.run_until_complete(made)
        loop.run_until_complete(asyncio.sleep(0.01))
        self.assertEqual(task.result(), "done")
        return in_window

    def test_a_finalizer_that_schedules_a_callback_while_the_task_is_made(self):
        loop, ran = self.loop, self.ran

        class Unclosed:  # as an unclosed StreamWriter closes its transport
            def __del__(self):
                loop.call_soon(ran.append, "finalizer's callback")

        def collect():
            gc.collect()

        leak = Unclosed()
        leak.cycle = leak
        del leak
        in_window = self.make_task(collect)
        self.assertEqual(sorted(ran), ["finalizer's callback", "first step"])
        self.assertEqual(len(in_window), 1)

    def test_another_threads_call_soon_while_the_task_is_made(self):
        loop, ran = self.loop, self.ran

        def other_thread():
            t = threading.Thread(target=loop.call_soon, args=(ran.append, "other thread's callback"))
            t.start()
            t.join()

        in_window = self.make_task(other_thread)
        self.assertEqual(sorted(ran), ["first step", "other thread's callback"])
        self.assertEqual(len(in_window), 1)
        if sys.version_info < (3, 12):  # the stand-in was there when it ran
            self.assertIsNotNone(in_window[0])

    def test_a_call_soon_the_program_put_on_the_loop_stays_and_sees_the_others(self):
        loop, ran = self.loop, self.ran
        seen = []
        original = loop.call_soon

        def counting(callback, *args, **kwargs):
            seen.append(callback)
            return original(callback, *args, **kwargs)

        loop.call_soon = counting
        self.make_task(lambda: loop.call_soon(ran.append, "scheduled meanwhile"))
        self.assertIs(vars(loop).get("call_soon"), counting)
        self.assertEqual(sorted(ran), ["first step", "scheduled meanwhile"])
        self.assertIn(ran.append, seen)


if __name__ == "__main__":
    unittest.main()
