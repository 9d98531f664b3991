"""What the SDK costs per call, with nothing but a pipe in the loop.

    python -m litebridge_worker.probe [--calls N] [--warmup N] [--depth D] [--cases ...]

Starts one worker per case and drives it over its stdin/stdout from this
process, the way litebridge does, with echo calls:

  raw          a bare ``for line in stdin`` loop (json.loads, json.dumps): the floor
  raw-async    the same work in a bare asyncio loop (``add_reader``, ``os.read``,
               ``os.write``): the floor of any worker that can run ``async def``
  async        the SDK, ``async def echo`` returning at once
  async-await  the SDK, ``async def echo`` that awaits ``asyncio.sleep(0)`` (a real suspension)
  sync         the SDK, ``def echo`` (the usual shape of an LLM handler: a thread per call)

With ``--depth 1`` (the default) calls go one at a time and the probe prints
the round trip's p50 and p99; with ``--depth D`` it keeps D calls in flight
and prints calls per second. Either way it prints the worker's CPU time per
call, measured over the timed calls only (after ``--warmup`` calls, from
``/proc/PID/stat``; where there is no /proc, the whole run including the
worker's start-up, and says so).

Pin it to cores to compare machines: ``taskset -c 1 python -m
litebridge_worker.probe`` runs the probe and its workers on one core.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

_RAW = """import json, sys
out = sys.stdout
for line in sys.stdin:
    msg = json.loads(line)
    out.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": msg["params"]["value"]}) + "\\n")
    out.flush()
"""

_RAW_ASYNC = """import asyncio, json, os

async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    os.set_blocking(0, False)
    buf = b""

    def readable():
        nonlocal buf
        data = os.read(0, 65536)
        if not data:
            loop.remove_reader(0)
            done.set_result(None)
            return
        *lines, buf = (buf + data).split(b"\\n")
        for line in lines:
            msg = json.loads(line)
            reply = {"jsonrpc": "2.0", "id": msg["id"], "result": msg["params"]["value"]}
            os.write(1, (json.dumps(reply) + "\\n").encode())

    loop.add_reader(0, readable)
    await done

asyncio.run(main())
"""

_SDK = """import asyncio, sys
sys.path.insert(0, %(sdk)r)
from litebridge_worker import Worker
w = Worker()
@w.method()
%(handler)s
w.run()
"""

_HANDLERS = {
    "async": "async def echo(value=None):\n    return value",
    "async-await": "async def echo(value=None):\n    await asyncio.sleep(0)\n    return value",
    "sync": "def echo(value=None):\n    return value",
}

CASES = ("raw", "raw-async", "async", "async-await", "sync")


def _source(case):
    if case == "raw":
        return _RAW
    if case == "raw-async":
        return _RAW_ASYNC
    sdk = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return _SDK % {"sdk": sdk, "handler": _HANDLERS[case]}


def _cpu_seconds(pid):
    """The process's user + system CPU time, or None without /proc."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # Fields 14 and 15 (utime, stime), counted after the command's ")".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Lines:
    def __init__(self, fd):
        self.fd = fd
        self.buf = b""

    def next(self):
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise RuntimeError("the worker closed its stdout")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line


def _request(i):
    return ('{"jsonrpc":"2.0","id":%d,"method":"echo","params":{"value":%d}}\n' % (i, i)).encode()


def run_case(case, calls, warmup, depth):
    """Runs one case; returns a dict of its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "worker_%s.py" % case.replace("-", "_"))
        with open(path, "w") as f:
            f.write(_source(case))
        p = subprocess.Popen([sys.executable, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, bufsize=0)
        try:
            lines = _Lines(p.stdout.fileno())
            inp = p.stdin.fileno()
            if not case.startswith("raw"):
                while not lines.next().strip():  # a blank line, then $/ready
                    pass
            for i in range(warmup):
                os.write(inp, _request(i))
                lines.next()
            cpu0 = _cpu_seconds(p.pid)
            figures = (_sequential if depth == 1 else _pipelined)(inp, lines, warmup, calls, depth)
            cpu1 = _cpu_seconds(p.pid)
        finally:
            p.stdin.close()
            p.wait()
        if cpu0 is None or cpu1 is None:
            usage = os.times()
            figures["cpu_us"] = (usage.children_user + usage.children_system) / (calls + warmup) * 1e6
            figures["cpu_note"] = "whole run, start-up included"
        else:
            figures["cpu_us"] = (cpu1 - cpu0) / calls * 1e6
        figures["case"] = case
        return figures


def _sequential(inp, lines, first, calls, _depth):
    lat = []
    for i in range(first, first + calls):
        t = time.perf_counter()
        os.write(inp, _request(i))
        lines.next()
        lat.append(time.perf_counter() - t)
    lat.sort()
    return {"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6}


def _pipelined(inp, lines, first, calls, depth):
    sent = first
    end = first + calls
    started = time.perf_counter()
    batch = b"".join(_request(i) for i in range(sent, min(sent + depth, end)))
    sent += min(depth, calls)
    os.write(inp, batch)
    for _ in range(calls):
        lines.next()
        if sent < end:
            os.write(inp, _request(sent))
            sent += 1
    return {"calls_per_s": calls / (time.perf_counter() - started)}


def _times(a, b, what):
    """``a`` as a multiple of ``b``; a short run can measure no CPU at all
    (``/proc`` counts in clock ticks)."""
    if b > 0:
        return "%.2fx %s" % (a / b, what)
    return "?x %s (its CPU was too small to measure: more --calls)" % what


def _print(fig, base, floor):
    """One line per case; the SDK's cases are set against the bare loop and,
    when it ran, against the bare asyncio loop."""
    if "p50_us" in fig:
        line = "%-12s p50 %7.1f us  p99 %7.1f us  CPU/call %6.1f us" % (
            fig["case"], fig["p50_us"], fig["p99_us"], fig["cpu_us"])
        if base is not None and fig is not base:
            line += "   p50 bare%+6.1f us  CPU %s" % (
                fig["p50_us"] - base["p50_us"], _times(fig["cpu_us"], base["cpu_us"], "bare"))
        if floor is not None and fig is not floor and not fig["case"].startswith("raw"):
            line += ", %s" % _times(fig["cpu_us"], floor["cpu_us"], "asyncio")
    else:
        line = "%-12s %9.0f calls/s  CPU/call %6.1f us" % (fig["case"], fig["calls_per_s"], fig["cpu_us"])
        if base is not None and fig is not base:
            line += "   %.2f of bare" % (fig["calls_per_s"] / base["calls_per_s"])
    if "cpu_note" in fig:
        line += "  (CPU: %s)" % fig["cpu_note"]
    print(line, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m litebridge_worker.probe",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000, help="timed calls per case (default 20000)")
    ap.add_argument("--warmup", type=int, default=2000, help="untimed calls first (default 2000)")
    ap.add_argument("--depth", type=int, default=1, help="calls in flight (default 1: one at a time)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help="comma-separated, from: %s" % ", ".join(CASES))
    ap.add_argument("--json", action="store_true", help="one JSON object per case")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error("--cases: unknown case %s (expected some of %s)" % (", ".join(unknown), ", ".join(CASES)))
    if args.calls < 1 or args.warmup < 0 or not 1 <= args.depth <= 256:
        ap.error("--calls must be >= 1, --warmup >= 0 and --depth between 1 and 256")
    base = floor = None
    for case in cases:
        fig = run_case(case, args.calls, args.warmup, args.depth)
        if case == "raw":
            base = fig
        elif case == "raw-async":
            floor = fig
        if args.json:
            print(json.dumps(fig), flush=True)
        else:
            _print(fig, base, floor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
