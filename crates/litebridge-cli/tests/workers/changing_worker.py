"""A worker whose methods are the names in the file LB_TEST_METHODS, read at
start: started again after the file changed, it offers other methods (the
test of MCP's tools/list_changed). `leave` ends the process; `typed` and
`spread` are an annotated handler and a `*args` one, `maybe` one annotated
with `Optional`, a string and `Annotated` holding a dict (which made the
SDK's description of its methods raise)."""

import os
import sys
from typing import Annotated, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "python"))

from litebridge_worker import Worker  # noqa: E402

worker = Worker()

with open(os.environ["LB_TEST_METHODS"]) as f:
    for name in f.read().split():
        worker.method(name=name)(lambda name=name: name)


@worker.method()
def typed(n: int, label: str = ""):
    return [n, label]


@worker.method()
def maybe(n: Optional[int], tags: "list[str]" = None, note: Annotated[str, {"doc": "a note"}] = ""):
    return [n, tags, note]


@worker.method()
def spread(*args):
    return list(args)


@worker.method(idempotent=False)
def leave():
    os._exit(3)


if __name__ == "__main__":
    worker.run()
