#!/usr/bin/env python3
"""Who wakes whom, and onto which CPU: wake-ups counted from `perf script`.

Record a run system-wide with the scheduler's tracepoints, then read it:

    perf record -a -e sched:sched_waking,sched:sched_wakeup,sched:sched_switch \\
        -o /tmp/wake.data -- target/release/litebridge bench --case bridge-nats-sequential
    perf script -i /tmp/wake.data | python3 scripts/perf-wakeups.py --during nats-server

Each wake-up is counted by (waker, wakee, where): `same` when the wakee
runs on the waker's CPU, `idle` when it is sent to another CPU that was
idle (on a virtual machine whose idle CPUs halt, the costly kind: tens of
microseconds each), `busy` when sent to another CPU that was running
something. The waker is the task that called for the wake-up
(`sched_waking`, on its own CPU), not the idle task that carried it out.

`--during COMM` counts only the half-seconds in which COMM was switched in
at least 500 times, as it was in the half-seconds either side (the NATS
rounds of a bench case, say); `--outside COMM` only those in which it was
not, 1 to 4 s before one in which it was (a case's local baseline rounds,
and some of its setup). The counted time is printed: divide by the calls
made in it for a figure per call. The waker is what ran on the CPU that
called for the wake-up (`sched_waking`): the task that called for it, or
whatever an interrupt interrupted. Threads are named by their command:
tokio's runtime threads are `tokio-rt-worker`, Python workers `python3`.
"""

import argparse
import collections
import re
import signal
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)$")
WAKEE = re.compile(r"comm=(.+?) pid=(\d+) prio=\d+ target_cpu=(\d+)")
NEXT = re.compile(r"next_comm=(.+?) next_pid=")
BUSY = 500  # switch-ins of COMM in a half-second for it to count as active


def name(comm):
    for prefix, short in (("tokio-rt-worker", "tokio"), ("python", "python"), ("swapper", "idle")):
        if comm.startswith(prefix):
            return short
    return comm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--during", metavar="COMM", help="only while COMM is busy")
    group.add_argument("--outside", metavar="COMM", help="only near, not while, COMM is busy")
    parser.add_argument("--top", type=int, default=20, help="rows to print (20)")
    args = parser.parse_args()

    events = []
    for line in sys.stdin:
        m = LINE.match(line)
        if m:
            comm, _pid, cpu, ts, event, rest = m.groups()
            events.append((float(ts), int(cpu), comm, event, rest))
    if not events:
        sys.exit("no sched tracepoints in the input: see the usage above")
    start = events[0][0]
    active = collections.Counter()
    watched = args.during or args.outside
    if watched:
        for ts, _cpu, _comm, event, rest in events:
            if event == "sched_switch" and f"next_comm={watched} " in rest:
                active[int((ts - start) * 2)] += 1

    def counted(ts):
        if not watched:
            return True
        half = int((ts - start) * 2)
        if args.during:
            return all(active[half + d] >= BUSY for d in (-1, 0, 1))
        near = any(active[half + d] >= BUSY for d in range(2, 9))
        return active[half] < BUSY // 10 and near

    running = {}  # CPU -> the command running on it
    waking = {}  # wakee pid -> (waker, waker's CPU)
    counts = collections.Counter()
    halves = set()
    for ts, cpu, comm, event, rest in events:
        if event == "sched_switch":
            m = NEXT.search(rest)
            if m:
                running[cpu] = m.group(1)
            continue
        m = WAKEE.search(rest)
        if not m:
            continue
        wakee, pid, target = m.group(1), m.group(2), int(m.group(3))
        if event == "sched_waking":
            waking[pid] = (comm, cpu)
            continue
        if event != "sched_wakeup":
            continue
        waker, from_cpu = waking.pop(pid, (comm, cpu))
        if not counted(ts):
            continue
        halves.add(int((ts - start) * 2))
        if target == from_cpu:
            where = "same"
        elif running.get(target, "").startswith("swapper"):
            where = "idle"
        else:
            where = "busy"
        counts[(name(waker), name(wakee), where)] += 1

    total = sum(counts.values())
    crossed = sum(n for (_, _, w), n in counts.items() if w == "idle")
    print(f"{total} wake-ups in {len(halves) / 2} s, {crossed} onto an idle CPU")
    for (waker, wakee, where), n in counts.most_common(args.top):
        print(f"{n:9d}  {waker:>16} -> {wakee:<16} {where}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
    main()
