"""Generic mode: call any function by its dotted path, within allowed prefixes.

``src.generator.llm_agent_interface.analyze_requirements`` imports the longest
importable module prefix under ``--root`` and walks the rest as attributes; a
class on the way is instantiated once (no arguments) so ``module.Class.method``
works. A name outside the allowed prefixes, or with a segment that is not a
public identifier, is refused before anything is imported.
"""

import importlib
import inspect
import sys
import threading


class Refused(Exception):
    """A dotted path that may not be called."""


def allowed(name, prefixes):
    """Whether ``name`` is one of ``prefixes`` or lies beneath one of them."""
    for p in prefixes:
        p = p.rstrip(".")
        if name == p or name.startswith(p + "."):
            return True
    return False


def make_resolver(root, prefixes):
    """A resolver for ``Worker.set_resolver`` serving dotted paths under ``root``."""
    if root not in sys.path:
        sys.path.insert(0, root)
    instances = {}
    lock = threading.Lock()

    def resolve(name):
        parts = name.split(".")
        if len(parts) < 2 or not all(p.isidentifier() and not p.startswith("_") for p in parts):
            raise Refused("%r is not a dotted path of public names" % name)
        if not allowed(name, prefixes):
            raise Refused("%r is outside the allowed prefixes %s" % (name, ", ".join(prefixes)))
        for i in range(len(parts) - 1, 0, -1):
            module_name = ".".join(parts[:i])
            try:
                obj = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                # Only "this prefix is not a module" means: try a shorter one.
                if e.name is not None and module_name.startswith(e.name):
                    continue
                raise
            for attr in parts[i:]:
                if inspect.isclass(obj):
                    with lock:
                        if obj not in instances:
                            instances[obj] = obj()
                        obj = instances[obj]
                obj = getattr(obj, attr, None)
                if obj is None:
                    return None
            return obj if callable(obj) else None
        return None

    return resolve
