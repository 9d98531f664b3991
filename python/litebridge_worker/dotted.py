"""Generic mode: call functions by dotted path, within allowed prefixes.

A name such as ``src.generator.llm_agent_interface.analyze_requirements`` is
served only when all of these hold:

- Every segment is a public identifier (no leading underscore) and the name is
  one of the allowed prefixes or lies beneath one. Otherwise it is refused
  before anything is imported.
- Its longest module prefix is a module found in the ``--root`` directory,
  looked up level by level without importing anything: the file of that module
  and of each package above it lies under the root once symlinks are resolved
  (``os.path.realpath``); a namespace package (no ``__init__.py``) is searched
  only in its directories under the root. A module of the same name elsewhere
  (the standard library, site-packages, a symlink out of the root) is refused,
  also when it is the one already imported.
- After the module come one or two segments. One: a function defined in that
  module, i.e. a plain ``def`` or ``async def`` found in the module's own
  ``__dict__`` whose ``__module__`` is the module's name. Two:
  ``Class.method``, where the class is found in the module's ``__dict__`` with
  the module's name as ``__module__``, and the method is found in the
  ``__dict__`` of the first class of its MRO that has the name; that class
  must be defined in a module under the root whose dotted name, with the
  class's and the method's, lies under an allowed prefix (a method inherited
  from a class outside the prefixes is refused), and the method must be a plain
  function, or a ``staticmethod`` or ``classmethod`` of one, whose
  ``__module__`` is that class's. Builtins, anything imported from another
  module, ``functools.partial`` objects, callable instances, classes called
  directly, modules and attributes of other objects are refused.

Only the module and the packages above it are imported (with whatever they
import themselves). The segments after the module are looked up in
``__dict__``s, never with ``getattr``, so no module ``__getattr__``, property
or instance attribute is run or reached. For a plain method the class is
instantiated once, with no arguments, when one of its methods is first served;
static and class methods need no instance, and a refused name instantiates
nothing. A refusal raises ``Refused`` naming the dotted path; the worker
answers it as method not found. A name once served is remembered, so it is
checked and imported once.
"""

import importlib
import importlib.machinery
import os
import sys
import threading
import types

from .worker import check_method_name


class Refused(Exception):
    """A dotted path that may not be called."""


def _public(segment):
    return segment.isidentifier() and not segment.startswith("_")


def normalise_prefixes(prefixes):
    """The prefixes without trailing dots, duplicates dropped, order kept.

    Raises ``ValueError`` for a prefix that is not a dotted path of public
    names (such a prefix could never match a name that is served), or that
    is longer than the 256 characters of a name litebridge routes.
    """
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    out = []
    for p in prefixes:
        if not isinstance(p, str):
            raise ValueError("prefix %r is not a string" % (p,))
        q = p.rstrip(".")
        if not q or not all(_public(s) for s in q.split(".")):
            raise ValueError("prefix %r is not a dotted path of public names" % p)
        check_method_name(q, "prefix")
        if q not in out:
            out.append(q)
    if not out:
        raise ValueError("at least one prefix is needed")
    return out


def allowed(name, prefixes):
    """Whether ``name`` is one of ``prefixes`` or lies beneath one of them."""
    for p in prefixes:
        p = p.rstrip(".")
        if name == p or name.startswith(p + "."):
            return True
    return False


def _finder(entry):
    """The path entry finder for a directory, as the import system makes it."""
    try:
        return sys.path_importer_cache[entry]
    except KeyError:
        pass
    finder = None
    for hook in sys.path_hooks:
        try:
            finder = hook(entry)
            break
        except ImportError:
            continue
    sys.path_importer_cache[entry] = finder
    return finder


def _find_spec(fullname, locations):
    """The spec of ``fullname`` in ``locations`` only, importing nothing.

    Like ``PathFinder``: a module or regular package wins; otherwise the
    namespace portions found make a spec without a loader.
    """
    portions = []
    for entry in locations:
        finder = _finder(entry)
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(fullname)
        if spec is None:
            continue
        if spec.loader is not None:
            return spec
        portions.extend(spec.submodule_search_locations or ())
    if portions:
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = portions
        return spec
    return None


class DottedResolver:
    """A resolver for ``Worker.set_resolver`` serving dotted paths under ``root``.

    ``prefixes`` (normalised, a tuple of strings) is announced by the worker in
    ``$/ready``. Calling the resolver with a name returns the callable to run
    or raises ``Refused``.
    """

    def __init__(self, root, prefixes):
        self.prefixes = tuple(normalise_prefixes(prefixes))
        self._entry = os.path.abspath(root)
        self._root = os.path.realpath(root)
        self._root_slash = self._root.rstrip(os.sep) + os.sep
        if self._entry not in sys.path:
            sys.path.insert(0, self._entry)
        self._lock = threading.Lock()
        self._instances = {}
        self._resolved = {}

    def resolved(self, name):
        """The callable ``name`` resolved to already, or None: never imports."""
        return self._resolved.get(name)

    def __call__(self, name):
        func = self._resolved.get(name)
        if func is not None:
            return func
        parts = name.split(".")
        if len(parts) < 2 or not all(_public(p) for p in parts):
            raise Refused("%r is not a dotted path of public names" % name)
        if not allowed(name, self.prefixes):
            raise Refused("%r is outside the allowed prefixes %s" % (name, ", ".join(self.prefixes)))
        depth = self._module_depth(name, parts)
        module_name = ".".join(parts[:depth])
        rest = parts[depth:]
        if depth == 0:
            raise Refused("%r: %s is not a module under --root" % (name, parts[0]))
        if not rest:
            raise Refused("%r is a module, not a function" % name)
        if len(rest) > 2:
            raise Refused("%r: only a function or Class.method defined in module %s can be called"
                          % (name, module_name))
        for i in range(1, depth + 1):
            # Already imported from elsewhere: importing would not load ours.
            loaded = sys.modules.get(".".join(parts[:i]))
            if loaded is not None and not self._module_under_root(loaded):
                raise Refused("%r: the module %s already imported is not under --root"
                              % (name, ".".join(parts[:i])))
        module = importlib.import_module(module_name)
        if not isinstance(module, types.ModuleType) or not self._module_under_root(module):
            raise Refused("%r: the module %s imported is not under --root" % (name, module_name))
        func = self._member(name, module, rest)
        return self._resolved.setdefault(name, func)

    # ----- where modules are --------------------------------------------

    def _under_root(self, path):
        real = os.path.realpath(path)
        return real == self._root or real.startswith(self._root_slash)

    def _module_under_root(self, module):
        """A module's file lies under the root (a namespace package: one of
        its portions does)."""
        file = getattr(module, "__file__", None)
        if file:
            return isinstance(file, str) and self._under_root(file)
        path = getattr(module, "__path__", None)
        if path is None:
            return False  # built in or frozen without a file
        try:
            return any(isinstance(p, str) and self._under_root(p) for p in list(path))
        except TypeError:
            return False

    def _module_depth(self, name, parts):
        """How many leading segments of ``parts`` name a module found in the
        root, checked level by level without importing anything."""
        locations = [self._entry]
        depth = 0
        for i in range(1, len(parts) + 1):
            if not locations:
                break
            fullname = ".".join(parts[:i])
            spec = _find_spec(fullname, locations)
            if spec is None:
                break
            if spec.loader is not None:
                if not spec.has_location or not self._under_root(spec.origin):
                    raise Refused("%r: module %s is not a file under --root (%s)"
                                  % (name, fullname, spec.origin))
                locations = spec.submodule_search_locations
                if locations is not None:
                    locations = list(locations)
                    if not all(self._under_root(p) for p in locations):
                        raise Refused("%r: package %s is not under --root" % (name, fullname))
            else:
                portions = list(spec.submodule_search_locations)
                locations = [p for p in portions if self._under_root(p)]
                if not locations:
                    raise Refused("%r: package %s is not under --root" % (name, fullname))
            depth = i
        return depth

    def _class_under_root(self, cls):
        module = sys.modules.get(getattr(cls, "__module__", None))
        return isinstance(module, types.ModuleType) and self._module_under_root(module)

    # ----- what may be called -------------------------------------------

    def _member(self, name, module, rest):
        namespace = vars(module)
        obj = namespace.get(rest[0])
        if len(rest) == 1:
            if type(obj) is types.FunctionType and obj.__module__ == module.__name__:
                return obj
            raise Refused("%r is not a function defined in module %s" % (name, module.__name__))
        cls = obj
        if not isinstance(cls, type) or cls.__module__ != module.__name__:
            raise Refused("%r: %s is not a class defined in module %s"
                          % (name, rest[0], module.__name__))
        method = rest[1]
        for owner in cls.__mro__:
            if method in vars(owner):
                attr = vars(owner)[method]
                break
        else:
            raise Refused("%r: class %s has no method %s" % (name, rest[0], method))
        if not self._class_under_root(owner):
            raise Refused("%r: %s is inherited from %s.%s, which is not under --root"
                          % (name, method, owner.__module__, owner.__qualname__))
        defined_as = "%s.%s.%s" % (owner.__module__, owner.__qualname__, method)
        if not allowed(defined_as, self.prefixes):
            raise Refused("%r: %s is inherited from %s, outside the allowed prefixes %s"
                          % (name, method, defined_as, ", ".join(self.prefixes)))
        kind = type(attr)
        func = attr.__func__ if kind in (staticmethod, classmethod) else attr
        if type(func) is not types.FunctionType or func.__module__ != owner.__module__:
            raise Refused("%r is not a method defined in class %s" % (name, owner.__qualname__))
        if kind is staticmethod:
            return func
        if kind is classmethod:
            return types.MethodType(func, cls)
        return types.MethodType(func, self._instance(name, cls))

    def _instance(self, name, cls):
        """The one instance of ``cls``, made on first use (no arguments)."""
        with self._lock:
            try:
                return self._instances[cls]
            except KeyError:
                pass
            try:
                instance = cls()
            except Exception as e:
                raise Refused("%r: %s.%s() with no arguments failed: %s: %s"
                              % (name, cls.__module__, cls.__qualname__, type(e).__name__, e)) from e
            self._instances[cls] = instance
            return instance


def make_resolver(root, prefixes):
    """A ``DottedResolver`` for ``Worker.set_resolver`` serving dotted paths under ``root``."""
    return DottedResolver(root, prefixes)
