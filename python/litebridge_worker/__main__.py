"""``python3 -m litebridge_worker --root DIR --allow PREFIX...``

Serves any function under DIR by its dotted path, restricted to the allowed
prefixes. Calls in this mode are not retried after a crash (not idempotent).
"""

import argparse
import os
import sys

from .dotted import make_resolver
from .worker import Worker


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m litebridge_worker",
        description="Serve Python functions by dotted path to litebridge over stdin/stdout.",
    )
    parser.add_argument("--root", required=True, help="directory the dotted paths are imported from")
    parser.add_argument("--allow", nargs="+", required=True, metavar="PREFIX",
                        help="dotted prefixes that may be called, e.g. src.generator")
    parser.add_argument("--threads", type=int, default=32, help="threads for synchronous handlers")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        parser.error("--root %s is not a directory" % args.root)
    worker = Worker(max_threads=args.threads)
    worker.set_resolver(make_resolver(root, args.allow))
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
