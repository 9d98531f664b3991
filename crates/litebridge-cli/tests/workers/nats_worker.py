"""The worker the NATS tests serve through `litebridge worker-host` (built on the SDK)."""

import os
import time

from litebridge_worker import Worker, cancelled

worker = Worker()


@worker.method()
def echo(value=None):
    return value


@worker.method()
def tag():
    """Which host served the call (the host's LB_HOST_TAG)."""
    return os.environ.get("LB_HOST_TAG", "?")


# Two names whose services endpoints would both be `pair-name` (review 191).
@worker.method(name="pair.name")
def pair_dot():
    return "pair.name"


@worker.method(name="pair-name")
def pair_dash():
    return "pair-name"


@worker.method()
def nap(ms):
    time.sleep(ms / 1000)
    return os.environ.get("LB_HOST_TAG", "?")


# A host with LB_NEW_VERSION set plays a newer version of the worker, on
# which `record_idem` is no longer idempotent.
@worker.method(idempotent="LB_NEW_VERSION" not in os.environ)
def record_idem(path, token, delay=0.0):
    time.sleep(delay)
    with open(path, "a") as f:
        f.write(token + "\n")
    return os.environ.get("LB_HOST_TAG", "?")


@worker.method(idempotent=False)
def record_once(path, token, delay=0.0):
    time.sleep(delay)
    with open(path, "a") as f:
        f.write(token + "\n")
    return os.environ.get("LB_HOST_TAG", "?")


@worker.method()
def crash_once(path):
    """Kills its worker the first time (an idempotent method the host must not retry on its own)."""
    first = not os.path.exists(path)
    with open(path, "a") as f:
        f.write("run\n")
    if first:
        os._exit(3)
    return "ran"


@worker.method(idempotent=False)
def die_together(path, calls):
    """Takes its worker down once `calls` calls (counted in `path`) run in it."""
    with open(path, "a") as f:
        f.write("in\n")
    end = time.monotonic() + 10
    while time.monotonic() < end:
        with open(path) as f:
            if len(f.readlines()) >= calls:
                break
        time.sleep(0.005)
    os._exit(3)


@worker.method()
def hang(marker, seconds=60):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cancelled():
            with open(marker, "w") as f:
                f.write("cancel seen")
            return "cancelled"
        time.sleep(0.005)
    return "finished"


@worker.method()
def big(n):
    return "x" * n


if __name__ == "__main__":
    worker.run()
