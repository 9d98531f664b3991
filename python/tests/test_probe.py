"""The cost probe that ships with the SDK runs every case, in both modes,
and refuses arguments it cannot use with a message naming them."""

import json
import os
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def probe(*args):
    return subprocess.run(
        [sys.executable, "-m", "litebridge_worker.probe", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


class ProbeTest(unittest.TestCase):
    def test_one_at_a_time_every_case_reports_latency_and_cpu(self):
        r = probe("--calls", "200", "--warmup", "20", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        figures = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual([f["case"] for f in figures], ["raw", "raw-async", "async", "async-await", "sync"])
        for f in figures:
            self.assertGreater(f["p50_us"], 0)
            self.assertGreaterEqual(f["p99_us"], f["p50_us"])
            self.assertGreaterEqual(f["cpu_us"], 0)

    def test_pipelined_reports_calls_per_second_against_the_bare_loop(self):
        r = probe("--calls", "300", "--warmup", "10", "--depth", "8", "--cases", "raw,sync")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 2, r.stdout)
        self.assertIn("calls/s", lines[0])
        self.assertIn("of bare", lines[1])

    def test_sdk_cases_are_set_against_the_asyncio_floor_when_it_ran(self):
        r = probe("--calls", "200", "--warmup", "20", "--cases", "raw,raw-async,async")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 3, r.stdout)
        self.assertIn("x bare", lines[1])
        self.assertNotIn("asyncio", lines[1])
        self.assertIn("x asyncio", lines[2])  # "?x asyncio (...)" when too short to measure

    def test_bad_arguments_are_named(self):
        r = probe("--cases", "raw,fast")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--cases: unknown case fast", r.stderr)
        r = probe("--depth", "0")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--depth", r.stderr)


if __name__ == "__main__":
    unittest.main()
