#!/usr/bin/env python3
"""Where a bench case's CPU goes, told apart from its baseline's.

`litebridge bench` runs a case and its baseline in alternating rounds of
about 0.75 s in one process, so a system-wide profile of a run holds both.
This splits one into windows, calls a window the case's when enough of its
samples carry a symbol only the case runs (`--marker`, by default the HTTP
server's and the JSON-RPC layer's), and the baseline's when none do, then
prints for each: the share of every process, the kernel's share by system
call, and, given the run's rates (`--case-rate`, `--base-rate`, from the
bench's JSON line), microseconds of CPU per operation.

Record and read (BENCHMARKS.md, "Where the time goes: the recipe"):

    perf record -F 499 -a -g -o /tmp/p.data -- \\
        target/release/litebridge bench --case pg-http-query-together \\
        --seconds 3 --postgres "$LB_TEST_PG" --json
    perf script -i /tmp/p.data -F comm,tid,time,ip,sym,dso > /tmp/p.txt
    python3 scripts/perf-rounds.py /tmp/p.txt --cpus 2 \\
        --case-rate 25913 --base-rate 80000

Standard library only, Python 3.9+.
"""

import argparse
import collections
import re
import sys

SYSCALL = re.compile(r"(__x64_sys_\w+|__do_sys_\w+|asm_exc_page_fault|asm_sysvec_\w+)")


def samples(path):
    """(process, time, frames leaf first) for each sample of `perf script`."""
    current = None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if current:
                    yield current
                current = None
            elif not line[0].isspace():
                fields = line.split()
                # comm may hold spaces: the time is the field ending in ':'.
                at = next(i for i, x in enumerate(fields) if x.endswith(":"))
                comm = " ".join(fields[: at - 1])
                current = (comm, float(fields[at].rstrip(":")), [])
            elif current:
                parts = line.strip().split(None, 1)
                if len(parts) > 1:
                    current[2].append(parts[1])
    if current:
        yield current


def syscall(frames):
    """The system call (or fault, interrupt) a kernel sample ran under."""
    for f in frames:
        m = SYSCALL.search(f)
        if m:
            return m.group(1)
    return "(scheduler, softirq, no system call)"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("script", help="the output of `perf script -F comm,tid,time,ip,sym,dso`")
    p.add_argument("--window", type=float, default=0.1, help="seconds per window (0.1)")
    p.add_argument(
        "--marker",
        default=r"hyper|axum|serde_json|litebridge::rpc",
        help="a regular expression for symbols only the case's rounds run",
    )
    p.add_argument("--min-marked", type=int, default=5, help="marked samples for a case window (5)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs the run had (2)")
    p.add_argument("--case-rate", type=float, help="the case's operations per second")
    p.add_argument("--base-rate", type=float, help="the baseline's operations per second")
    p.add_argument("--top", type=int, default=8, help="lines per list (8)")
    a = p.parse_args()

    marker = re.compile(a.marker)
    all_samples = list(samples(a.script))
    if not all_samples:
        sys.exit(f"{a.script}: no samples (is it `perf script` output?)")
    marked = collections.Counter()
    for _, t, frames in all_samples:
        if any(marker.search(f) for f in frames):
            marked[int(t / a.window)] += 1
    windows = sorted({int(t / a.window) for _, t, _ in all_samples})
    # The first and last windows hold the set-up and the tear-down.
    inner = windows[2:-2]
    rounds = {
        "case": {w for w in inner if marked[w] >= a.min_marked},
        "baseline": {w for w in inner if marked[w] == 0},
    }
    rates = {"case": a.case_rate, "baseline": a.base_rate}
    for name, chosen in rounds.items():
        picked = [s for s in all_samples if int(s[1] / a.window) in chosen]
        n = len(picked)
        print(f"== {name}: {len(chosen)} windows, {n} samples")
        if not n:
            continue
        # Microseconds of CPU per operation for a share of all samples,
        # when the windows kept every CPU busy or idle (idle is `swapper`).
        rate = rates[name]

        def cost(count):
            share = 100.0 * count / n
            if rate:
                return f"{share:5.1f}%  {share / 100 * a.cpus * 1e6 / rate:6.1f} us/op"
            return f"{share:5.1f}%"

        by_process = collections.Counter(s[0] for s in picked)
        for comm, count in by_process.most_common(a.top):
            kernel = [s for s in picked if s[0] == comm and s[2] and "[kernel" in s[2][0]]
            print(f"  {comm:<20} {cost(count)}   of which kernel {cost(len(kernel))}")
            calls = collections.Counter(syscall(s[2]) for s in kernel)
            for call, c in calls.most_common(4):
                print(f"      {call:<40} {cost(c)}")


if __name__ == "__main__":
    main()
