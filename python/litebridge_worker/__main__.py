"""``python3 -m litebridge_worker --root DIR --allow PREFIX...``

Serves, by dotted path, the functions and ``Class.method``s defined in the
modules whose files lie in DIR, restricted to names under the allowed
prefixes (``dotted`` says exactly what is served and what is refused).
``$/ready`` announces the prefixes, without trailing dots. Calls in this mode
are not retried after a crash (not idempotent).
"""

import argparse
import os
import sys

from .dotted import make_resolver, normalise_prefixes
from .worker import Worker


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m litebridge_worker",
        description="Serve Python functions by dotted path to litebridge over stdin/stdout.",
    )
    parser.add_argument("--root", required=True, help="directory the served modules must lie in (symlinks resolved)")
    parser.add_argument("--allow", nargs="+", required=True, metavar="PREFIX",
                        help="dotted prefixes that may be called, e.g. src.generator")
    parser.add_argument("--threads", type=int, default=32, help="threads for synchronous handlers")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        parser.error("--root %s is not a directory" % args.root)
    try:
        normalise_prefixes(args.allow)
    except ValueError as e:
        parser.error("--allow: %s" % e)
    worker = Worker(max_threads=args.threads)
    worker.set_resolver(make_resolver(root, args.allow))
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
