"""The worker the pool tests drive (built on the SDK)."""

import os
import subprocess
import sys
import time

from litebridge_worker import Worker, WorkerError, cancelled

worker = Worker()


@worker.method()
def echo(value=None):
    return value


@worker.method()
def pid():
    return os.getpid()


@worker.method()
def close_stdin():
    """Closes the descriptor the worker reads its calls from, as a library a
    handler calls may close one it does not own (fd 0 itself reads
    /dev/null): the worker lives on, but can take no more calls."""
    os.close(worker._in)
    return os.getpid()


@worker.method()
def record_idem(path, token, delay=0.0):
    time.sleep(delay)
    with open(path, "a") as f:
        f.write(token + "\n")
    return token


@worker.method(idempotent=False)
def record_once(path, token, delay=0.0):
    time.sleep(delay)
    with open(path, "a") as f:
        f.write(token + "\n")
    return token


@worker.method()
def hang(marker, seconds=60):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cancelled():
            open(marker, "w").write("cancel seen")
            return "cancelled"
        time.sleep(0.01)
    return "finished"


@worker.method()
def stubborn(seconds=60):
    time.sleep(seconds)
    return "finished"


@worker.method()
def noisy():
    print("this goes to stderr, not the protocol")
    os.write(worker._out, b"this line is garbage on the protocol\n")
    return "still fine"


@worker.method()
def big(n):
    return "x" * n


@worker.method()
def always_fails():
    raise RuntimeError("broken on purpose")


@worker.method()
def refuses(amount):
    if amount <= 0:
        raise WorkerError("amount must be positive", "ValueError")
    if amount == 13:
        raise RuntimeError("the service behind it is down")
    return amount


@worker.method()
async def block_loop(seconds=60):
    time.sleep(seconds)  # blocks the event loop: $/ping goes unanswered
    return "unblocked"


@worker.method()
def crash_me(path):
    with open(path, "a") as f:
        f.write("attempt\n")
    os._exit(1)


@worker.method(idempotent=False)
def start_child(path, then_die=False, keep_stdout=False):
    """Starts a subprocess that would sleep a minute, writes its pid to `path`.

    With `keep_stdout`, the subprocess inherits the worker's stdout (as
    `subprocess` and `os.system` do by default) and holds it open."""
    child = subprocess.Popen(
        ["sleep", "60"],
        stdin=subprocess.DEVNULL,
        stdout=None if keep_stdout else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with open(path, "w") as f:
        f.write(str(child.pid))
    if then_die:
        os._exit(1)
    return child.pid


@worker.method(idempotent=False)
def die_leaving_stderr(path):
    """Starts a subprocess in a session of its own that holds the worker's
    stderr open for half a minute, writes its pid to `path`, and dies."""
    child = subprocess.Popen(
        ["sleep", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    with open(path, "w") as f:
        f.write(str(child.pid))
    os._exit(1)


@worker.method()
def flood_stderr(lines):
    """Writes `lines` lines to stderr as fast as it can."""
    chunk = b"".join(b"flooded line %d\n" % i for i in range(lines))
    os.write(2, chunk)
    return lines


@worker.method()
def crash_after(path, seconds):
    with open(path, "a") as f:
        f.write("attempt\n")
    time.sleep(seconds)
    os._exit(1)


@worker.method()
def slow_fail(path):
    with open(path, "a") as f:
        f.write("failed\n")
    time.sleep(0.2)
    raise ValueError("always")


@worker.method(cache_ttl_s=60)
def slow_square(path, x):
    with open(path, "a") as f:
        f.write("computed\n")
    time.sleep(0.2)
    return x * x


if __name__ == "__main__":
    print("test worker starting", file=sys.stderr)
    worker.run()
