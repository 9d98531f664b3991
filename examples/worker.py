"""An example litebridge worker: run it with
``litebridge serve --workers "python3 examples/worker.py"``."""

import asyncio
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from litebridge_worker import Worker, WorkerError, cancelled  # noqa: E402

worker = Worker()
log = logging.getLogger("example")


@worker.method()
def echo(value=None):
    """Returns its argument."""
    return value


@worker.method(cache_ttl_s=60)
def analyze(description, domain="general"):
    """A stand-in for real work: counts words per domain."""
    print("analyzing", len(description), "characters")  # goes to the log, not the protocol
    log.info("analyzing for %s", domain)  # carries the request id
    return {"domain": domain, "words": len(description.split())}


@worker.method(idempotent=False)
def charge(account, amount):
    """Not idempotent: litebridge never retries it after a crash."""
    if amount <= 0:
        raise WorkerError("amount must be positive", "ValueError")
    return {"account": account, "charged": amount}


@worker.method()
async def wait(seconds):
    """Sleeps asynchronously; cancellation interrupts it."""
    await asyncio.sleep(seconds)
    return seconds


@worker.method()
def spin(seconds):
    """Busy for a while in a thread, stopping early if cancelled."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cancelled():
            return "cancelled"
        time.sleep(0.005)
    return "done"


@worker.method()
def fail(message="boom"):
    """Raises, to show how errors travel."""
    raise ValueError(message)


if __name__ == "__main__":
    worker.run()
