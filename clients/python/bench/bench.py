"""The client's cost, measured: the same calls sent through ``Client`` (one at
a time) and ``AsyncClient`` (``--depth`` in flight), and through minimal
hand-written loops (spawn ``litebridge stdio``, write JSON lines, read the
replies: one at a time; and with asyncio, ``--depth`` tasks and a reader task
resolving futures by id), taking turns in the same run, against the same
binary. The pipelined ratio is against the asyncio loop (the client's
cost, not asyncio's); a synchronous loop keeping ``--depth`` in flight (write
one, read one) is shown beside it. Cases: ``sql.query`` of one row and
``bridge.call`` of a Python worker's ``echo``.

    python3 clients/python/bench/bench.py [--bin PATH] [--seconds 6] [--rounds 12] [--depth 64] [--json]

Each round starts new processes for both sides, which then take turns (the
order swapped every round): a block of one-at-a-time calls, then a block with
``--depth`` in flight; each side gets ``--seconds`` in all per mode.
Reported: sequential p50 over all blocks, pipelined calls per second. The
binary defaults to the release build.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.dirname(HERE))

import litebridge_client as lb  # noqa: E402


class HandWritten:
    """The loop a user would write without the client."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.next = 0

    def send(self, method, params):
        self.next += 1
        line = json.dumps({"jsonrpc": "2.0", "id": self.next, "method": method, "params": params}) + "\n"
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()

    def receive(self):
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(reply["error"]["message"])
        return reply["result"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()


CASES = {
    "query": (
        lambda i: ("sql.query", {"sql": "SELECT ?1 AS v", "params": [i]}),
        lambda r: r["rows"][0][0],
        lambda c, i: c.query("SELECT ?1 AS v", (i,)),
        lambda rows: rows[0]["v"],
    ),
    "call": (
        lambda i: ("bridge.call", {"method": "echo", "params": {"value": i}}),
        lambda r: r,
        lambda c, i: c.call("echo", {"value": i}),
        lambda r: r,
    ),
}


def raw_sequential(h, case, seconds, into):
    request, answer = CASES[case][0], CASES[case][1]
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        h.send(*request(i))
        v = answer(h.receive())
        into.append((time.perf_counter() - t0) * 1e6)
        assert v == i, (v, i)
        i += 1


def raw_pipelined(h, case, seconds, depth):
    request = CASES[case][0]
    for i in range(depth):
        h.send(*request(i))
    done, i = 0, depth
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        h.receive()
        done += 1
        h.send(*request(i))
        i += 1
    elapsed = time.perf_counter() - t0
    for _ in range(depth):
        h.receive()
    return done, elapsed


def raw_async_pipelined(bin, args, case, seconds, depth):
    """The asyncio loop a user would write without the client: a reader
    task resolving futures by id, ``depth`` tasks writing and awaiting."""
    request, answer = CASES[case][0], CASES[case][1]

    async def main():
        proc = await asyncio.create_subprocess_exec(
            bin, "stdio", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, limit=1 << 30)
        pending = {}
        ids = iter(range(1, 1 << 62))

        async def read():
            while True:
                line = await proc.stdout.readline()
                if not line:
                    return
                reply = json.loads(line)
                pending.pop(reply["id"]).set_result(reply["result"])

        async def send(i):
            rid = next(ids)
            fut = asyncio.get_running_loop().create_future()
            pending[rid] = fut
            method, params = request(i)
            proc.stdin.write((json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
                              + "\n").encode())
            return answer(await fut)

        reader = asyncio.ensure_future(read())
        for i in range(200):  # warm
            await send(i)
        done, elapsed = await lanes(send, seconds, depth)
        proc.stdin.close()
        await proc.wait()
        await reader
        return done, elapsed

    return asyncio.run(main())


async def lanes(send, seconds, depth):
    """``depth`` tasks each awaiting ``send(i)`` in turn for ``seconds``:
    calls made, and the seconds they took."""
    done = 0
    t0 = time.perf_counter()
    end = t0 + seconds

    async def lane(k):
        nonlocal done
        i = k
        while time.perf_counter() < end:
            await send(i)
            done += 1
            i += depth

    await asyncio.gather(*(lane(k) for k in range(depth)))
    return done, time.perf_counter() - t0


def client_sequential(c, case, seconds, into):
    call, answer = CASES[case][2], CASES[case][3]
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        v = answer(call(c, i))
        into.append((time.perf_counter() - t0) * 1e6)
        assert v == i, (v, i)
        i += 1


def client_pipelined(bin, args, case, seconds, depth):
    call = CASES[case][2]

    async def main():
        async with lb.AsyncClient.spawn(bin=bin, args=args) as c:
            for i in range(200):  # warm
                await call(c, i)
            return await lanes(lambda i: call(c, i), seconds, depth)

    return asyncio.run(main())


def p50(xs):
    return sorted(xs)[len(xs) // 2]


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(target, "release", "litebridge"))
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    worker = "%s %s" % (sys.executable, os.path.join(REPO, "examples", "worker.py"))
    results = {}
    with tempfile.TemporaryDirectory() as d:
        args = ["--db", os.path.join(d, "b.db"), "--workers", worker, "--processes", "1"]
        for case in CASES:
            block = a.seconds / a.rounds
            lat = {"raw": [], "client": []}
            rate = {"raw": [0, 0.0], "raw_window": [0, 0.0], "client": [0, 0.0]}
            for round_ in range(a.rounds):
                h = HandWritten([a.bin, "stdio"] + args)
                c = lb.Client.spawn(bin=a.bin, args=args)
                for i in range(200):  # warm
                    h.send(*CASES[case][0](i))
                    h.receive()
                    CASES[case][2](c, i)
                sides = [
                    ("raw", lambda: raw_sequential(h, case, block, lat["raw"]), [
                        ("raw_window", lambda: raw_pipelined(h, case, block, a.depth)),
                        ("raw", lambda: raw_async_pipelined(a.bin, args, case, block, a.depth))]),
                    ("client", lambda: client_sequential(c, case, block, lat["client"]), [
                        ("client", lambda: client_pipelined(a.bin, args, case, block, a.depth))]),
                ]
                for side, seq, pipes in (sides if round_ % 2 == 0 else sides[::-1]):
                    seq()
                    for name, pipe in pipes:
                        n, secs = pipe()
                        rate[name][0] += n
                        rate[name][1] += secs
                h.close()
                c.close()
            r = {
                "raw_p50_us": p50(lat["raw"]),
                "client_p50_us": p50(lat["client"]),
                "raw_calls_per_s": rate["raw"][0] / rate["raw"][1],
                "client_calls_per_s": rate["client"][0] / rate["client"][1],
                "raw_window_calls_per_s": rate["raw_window"][0] / rate["raw_window"][1],
            }
            r["p50_added_us"] = r["client_p50_us"] - r["raw_p50_us"]
            r["pipelined_ratio"] = r["client_calls_per_s"] / r["raw_calls_per_s"]
            results[case] = r
    if a.json:
        print(json.dumps(results, indent=2))
        return
    print("case    hand p50  client p50  added   | hand calls/s  client calls/s  ratio | sync window calls/s")
    for case, r in results.items():
        print("%-7s %7.1fus %8.1fus %6.1fus | %12.0f %15.0f  %.2f  | %12.0f" % (
            case, r["raw_p50_us"], r["client_p50_us"], r["p50_added_us"], r["raw_calls_per_s"],
            r["client_calls_per_s"], r["pipelined_ratio"], r["raw_window_calls_per_s"]))


if __name__ == "__main__":
    main()
