"""Generic mode (``python3 -m litebridge_worker --root DIR --allow PREFIX...``)
serves only functions and ``Class.method``s defined in modules under the root:
one test per way of reaching something else, each against a real worker."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from tests.test_worker import HERE, PYTHON_DIR, Peer

FIXTURES = os.path.join(HERE, "fixtures")
METHOD_NOT_FOUND = -32601


def generic_worker(root, *prefixes, env=None):
    return Peer([sys.executable, "-m", "litebridge_worker", "--root", root, "--allow"] + list(prefixes),
                env=env)


class GenericWorkerCase(unittest.TestCase):
    """One worker over the fixtures for the whole class, ``--allow pkg.tools``.

    ``SECRET_TRACE`` names a file that anything which must not happen writes
    to: importing ``secret``, instantiating ``Tracked``, running a property or
    the module's ``__getattr__``, and the shell commands the attacks send.
    """

    prefixes = ("pkg.tools",)

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.trace = os.path.join(cls.tmp, "trace")
        cls.peer = generic_worker(FIXTURES, *cls.prefixes, env={"SECRET_TRACE": cls.trace})

    @classmethod
    def tearDownClass(cls):
        cls.peer.close()
        shutil.rmtree(cls.tmp)

    def traced(self):
        if not os.path.exists(self.trace):
            return ""
        with open(self.trace) as f:
            return f.read()

    def assertRefused(self, name, params=None):
        """The call is answered "method not found" with a message naming it,
        and nothing traced happened."""
        reply = self.peer.roundtrip(name, params)
        self.assertNotIn("result", reply, name)
        err = reply["error"]
        self.assertEqual(err["code"], METHOD_NOT_FOUND, (name, err))
        self.assertIn(name, err["message"])
        self.assertEqual(self.traced(), "", name)
        return err

    def shell_params(self):
        return ["echo pwned >> %s" % self.trace]


class GenericModeAttackTest(GenericWorkerCase):
    def test_os_system_through_an_imported_module_is_refused(self):
        self.assertRefused("pkg.tools.os.system", self.shell_params())
        self.assertRefused("pkg.tools.os.popen", self.shell_params())
        self.assertRefused("pkg.tools.os.path.join", ["a", "b"])
        self.assertRefused("pkg.tools.os", self.shell_params())
        self.assertRefused("pkg.tools.asyncio.run", [None])

    def test_builtins_reached_through_the_module_are_refused(self):
        self.assertRefused("pkg.tools.print", ["x"])
        self.assertRefused("pkg.tools.open", [self.trace, "w"])
        self.assertRefused("pkg.tools.eval", ["1 + 1"])
        # Builtins bound to names in the module are refused just the same.
        self.assertRefused("pkg.tools.evaluate", ["__import__('os').system('true')"])
        self.assertRefused("pkg.tools.opener", [self.trace, "w"])
        self.assertRefused("pkg.tools.run_shell", self.shell_params())
        self.assertFalse(os.path.exists(self.trace))

    def test_function_imported_from_another_module_is_refused(self):
        err = self.assertRefused("pkg.tools.join", ["a", "b"])
        self.assertIn("not a function defined in module pkg.tools", err["message"])
        # Even from another module under the root: it is served under its own name.
        self.assertRefused("pkg.tools.helper")
        self.assertRefused("pkg.tools.Agent.joiner", ["a", "b"])

    def test_class_attribute_that_is_another_module_or_object_is_refused(self):
        self.assertRefused("pkg.tools.Agent.helper_module.system", self.shell_params())
        self.assertRefused("pkg.tools.Agent.helper_module", self.shell_params())
        self.assertRefused("pkg.tools.Agent.system", self.shell_params())
        self.assertRefused("pkg.tools.Agent.analyze_requirements.__globals__")
        # A property is not run to find out what it holds.
        self.assertRefused("pkg.tools.Agent.status")
        # Nothing is instantiated for a refused name.
        self.assertRefused("pkg.tools.Tracked.helper_module.system", self.shell_params())
        self.assertRefused("pkg.tools.Tracked.helper_module", self.shell_params())
        self.assertRefused("pkg.tools.Tracked.missing")

    def test_class_imported_from_elsewhere_is_refused(self):
        self.assertRefused("pkg.tools.Popen.kill")
        self.assertRefused("pkg.tools.Popen", [["sh", "-c", self.shell_params()[0]]])
        self.assertRefused("pkg.tools.Base.describe")
        # A class defined here, but the method comes from subprocess.
        err = self.assertRefused("pkg.tools.LocalPopen.communicate")
        self.assertIn("not under --root", err["message"])

    def test_partials_callable_instances_and_classes_are_refused(self):
        self.assertRefused("pkg.tools.partial_add", [1])
        self.assertRefused("pkg.tools.shell", self.shell_params())
        self.assertRefused("pkg.tools.Agent")  # would call the class with the params
        self.assertRefused("pkg.tools.IMPORTED")

    def test_module_getattr_is_never_called(self):
        self.assertRefused("pkg.tools.anything", self.shell_params())
        self.assertRefused("pkg.tools.missing")

    def test_dunder_and_private_names_are_refused(self):
        for name in ["pkg.tools.__builtins__", "pkg.tools.__getattr__", "pkg.tools._trace",
                     "pkg.tools._Shell.__call__", "pkg.tools.__dict__", "pkg.tools.Agent.__init__",
                     "pkg.tools.Agent.__class__", "pkg.tools.Agent._hidden", "pkg.tools.Agent.__subclasses__",
                     "pkg._private", "pkg.tools.", "pkg..tools.add", "pkg.tools.add "]:
            self.assertRefused(name, self.shell_params())

    def test_names_outside_the_prefixes_are_refused_before_import(self):
        for name in ["secret.run", "os.system", "builtins.eval", "pkg.base.helper", "pkg.toolsx.add"]:
            err = self.assertRefused(name, self.shell_params())
            self.assertIn("outside the allowed prefixes", err["message"])

    def test_refusals_are_method_not_found_errors(self):
        err = self.assertRefused("pkg.tools.os.system", self.shell_params())
        self.assertEqual(err["data"]["type"], "Refused")
        self.assertEqual(err["data"]["kind"], "worker_error")
        self.assertEqual(self.peer.roundtrip("pkg.tools.add", [1, 2])["result"], 3, "the worker goes on")


class GenericModeServesTest(GenericWorkerCase):
    prefixes = ("pkg.tools.", "pkg.tools")

    def test_ready_announces_dynamic_and_the_prefixes(self):
        params = self.peer.ready["params"]
        self.assertTrue(params["dynamic"])
        self.assertEqual(params["prefixes"], ["pkg.tools"])

    def test_function_defined_in_the_module(self):
        self.assertEqual(self.peer.roundtrip("pkg.tools.add", [2, 3])["result"], 5)
        self.assertEqual(self.peer.roundtrip("pkg.tools.add", {"a": "x", "b": "y"})["result"], "xy")
        self.assertEqual(self.peer.roundtrip("pkg.tools.add", [1])["error"]["code"], -32602)

    def test_async_def_function(self):
        self.assertEqual(self.peer.roundtrip("pkg.tools.add_later", [2, 3])["result"], 5)

    def test_class_method_on_one_instance(self):
        r1 = self.peer.roundtrip("pkg.tools.Agent.analyze_requirements",
                                 {"description": "portfolio risk", "domain": "finance"})["result"]
        r2 = self.peer.roundtrip("pkg.tools.Agent.analyze_requirements", ["x"])["result"]
        self.assertEqual(r1["domain"], "finance")
        self.assertEqual(r1["length"], 14)
        self.assertEqual(r2["calls"], r1["calls"] + 1, "the instance is reused")
        self.assertEqual(self.peer.roundtrip("pkg.tools.Agent.analyze_later", ["abc"])["result"], {"length": 3})

    def test_staticmethod_and_classmethod(self):
        self.assertEqual(self.peer.roundtrip("pkg.tools.Agent.version")["result"], "1.0")
        self.assertEqual(self.peer.roundtrip("pkg.tools.Agent.kind")["result"], "Agent")

    def test_static_methods_need_no_instance(self):
        self.assertEqual(self.peer.roundtrip("pkg.tools.NeedsArguments.static")["result"], "no instance needed")
        err = self.peer.roundtrip("pkg.tools.NeedsArguments.method")["error"]
        self.assertEqual(err["code"], METHOD_NOT_FOUND)
        self.assertIn("pkg.tools.NeedsArguments.method", err["message"])
        self.assertIn("with no arguments failed", err["message"])

    def test_method_inherited_from_a_class_outside_the_prefixes_is_refused(self):
        # Base lives in pkg.base: under the root, but not under --allow pkg.tools.
        reply = self.peer.roundtrip("pkg.tools.Agent.describe")
        self.assertNotIn("result", reply)
        self.assertIn("outside the allowed prefixes", reply["error"]["message"])

    def test_method_inherited_from_a_class_under_the_prefix(self):
        self.assertEqual(self.peer.roundtrip("pkg.tools.Child.shared")["result"], "shared by Child")

    def test_instance_attribute_cannot_shadow_the_method(self):
        params = self.shell_params()
        self.assertEqual(self.peer.roundtrip("pkg.tools.Shadowed.greet", params)["result"],
                         "hello " + params[0])
        self.assertNotIn("pwned", self.traced())

    def test_class_is_instantiated_once_and_only_for_a_method_served(self):
        self.assertRefused("pkg.tools.Tracked.helper_module")
        self.assertRefused("pkg.tools.Tracked.missing")
        ids = [self.peer.call("pkg.tools.Tracked.work") for _ in range(5)]
        replies = [self.peer.read() for _ in ids]
        self.assertEqual([r["result"] for r in replies], ["worked"] * 5)
        self.assertEqual(self.traced().count("Tracked instantiated"), 1)


class OutsideTheRootTest(unittest.TestCase):
    """Modules that are not files under the root: same-named stdlib modules,
    symlinks out of the root."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.root = os.path.join(self.tmp, "root")
        self.outside = os.path.join(self.tmp, "outside")
        self.trace = os.path.join(self.tmp, "trace")
        os.makedirs(self.root)
        os.makedirs(os.path.join(self.outside, "realpkg"))
        evil = ('import os\nopen(os.environ["SECRET_TRACE"], "a").write("imported %s\\n" % __name__)\n'
                'def run():\n    return "ran from outside the root"\n')
        self.write(self.outside, "evil.py", evil)
        self.write(self.outside, "realpkg/__init__.py", evil)
        self.write(self.outside, "realpkg/mod.py", evil)
        self.write(self.root, "inside/__init__.py", "")
        self.write(self.root, "inside/real.py", "def run():\n    return 'inside'\n")
        self.peers = []

    def tearDown(self):
        for peer in self.peers:
            peer.close()
        shutil.rmtree(self.tmp)

    def write(self, directory, relpath, text):
        path = os.path.join(directory, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def worker(self, root, *prefixes):
        peer = generic_worker(root, *prefixes, env={"SECRET_TRACE": self.trace})
        self.peers.append(peer)
        return peer

    def assertRefused(self, peer, name, fragment):
        err = peer.roundtrip(name, [])["error"]
        self.assertEqual(err["code"], METHOD_NOT_FOUND, err)
        self.assertIn(name, err["message"])
        self.assertIn(fragment, err["message"])
        self.assertFalse(os.path.exists(self.trace), "a module outside the root was imported")

    def test_same_named_stdlib_module_without_a_file_under_root_is_refused(self):
        peer = self.worker(FIXTURES, "json", "csv", "os")
        self.assertRefused(peer, "json.dumps", "not a module under --root")
        self.assertRefused(peer, "csv.reader", "not a module under --root")
        self.assertRefused(peer, "os.system", "not a module under --root")
        self.assertRefused(peer, "os.path.join", "not a module under --root")
        self.assertEqual(peer.ready["params"]["prefixes"], ["json", "csv", "os"])

    def test_same_named_module_under_root_is_ours_or_refused(self):
        self.write(self.root, "csv.py", "def reader(text):\n    return 'our csv: ' + text\n")
        self.write(self.root, "json.py", "def dumps(obj):\n    return 'our json'\n")
        peer = self.worker(self.root, "json", "csv")
        # csv is not imported yet: ours, first on sys.path, is served.
        self.assertEqual(peer.roundtrip("csv.reader", ["x"])["result"], "our csv: x")
        # The worker itself imported the stdlib json: that one is refused.
        self.assertRefused(peer, "json.dumps", "not under --root")

    def test_symlinked_module_file_pointing_outside_root_is_refused(self):
        os.symlink(os.path.join(self.outside, "evil.py"), os.path.join(self.root, "linked.py"))
        os.symlink(os.path.join(self.outside, "realpkg"), os.path.join(self.root, "linkpkg"))
        os.symlink(os.path.join(self.root, "inside", "real.py"), os.path.join(self.root, "alias.py"))
        peer = self.worker(self.root, "linked", "linkpkg", "alias")
        self.assertRefused(peer, "linked.run", "not a file under --root")
        self.assertRefused(peer, "linkpkg.run", "not a file under --root")
        self.assertRefused(peer, "linkpkg.mod.run", "not a file under --root")
        # A symlink that stays inside the root is fine.
        self.assertEqual(peer.roundtrip("alias.run")["result"], "inside")

    def test_symlinked_root_itself_is_allowed(self):
        link = os.path.join(self.tmp, "rootlink")
        os.symlink(self.root, link)
        peer = self.worker(link, "inside")
        self.assertEqual(peer.roundtrip("inside.real.run")["result"], "inside")

    def test_namespace_package_under_root(self):
        self.write(self.root, "ns/sub/mod.py", "def run():\n    return 'namespace'\n")
        peer = self.worker(self.root, "ns")
        self.assertEqual(peer.roundtrip("ns.sub.mod.run")["result"], "namespace")
        self.assertRefused(peer, "ns.sub.run", "not a function defined in module ns.sub")

    def test_shape_refusals_import_nothing(self):
        peer = self.worker(FIXTURES, "secret")
        self.assertRefused(peer, "secret.run.x.y", "only a function or Class.method")
        self.assertRefused(peer, "secret", "not a dotted path")


class ResolverAnnouncementTest(unittest.TestCase):
    def run_worker(self, setup):
        code = ("from litebridge_worker import Worker\n"
                "worker = Worker()\n" + setup + "worker.run()\n")
        peer = Peer([sys.executable, "-c", code])
        self.addCleanup(peer.close)
        return peer

    def test_plain_callable_resolver_announces_no_prefixes(self):
        peer = self.run_worker("worker.set_resolver(lambda name: (lambda: name))\n")
        self.assertTrue(peer.ready["params"]["dynamic"])
        self.assertNotIn("prefixes", peer.ready["params"])
        self.assertEqual(peer.roundtrip("any.name")["result"], "any.name")

    def test_no_resolver_announces_nothing_dynamic(self):
        peer = self.run_worker("")
        self.assertFalse(peer.ready["params"]["dynamic"])
        self.assertNotIn("prefixes", peer.ready["params"])

    def test_resolver_carrying_prefixes_announces_them(self):
        peer = self.run_worker(
            "class R:\n"
            "    prefixes = ('a.b.', 'c')\n"
            "    def __call__(self, name):\n"
            "        return None\n"
            "worker.set_resolver(R())\n")
        self.assertEqual(peer.ready["params"]["prefixes"], ["a.b", "c"])
        self.assertEqual(peer.roundtrip("a.b.x")["error"]["code"], METHOD_NOT_FOUND)

    def test_bad_prefixes_are_refused_at_start(self):
        for bad in ["", ".", "pkg._private", "pkg tools", "pkg..tools"]:
            proc = subprocess.run(
                [sys.executable, "-m", "litebridge_worker", "--root", FIXTURES, "--allow", bad],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=dict(os.environ, PYTHONPATH=PYTHON_DIR), timeout=30,
            )
            self.assertEqual(proc.returncode, 2, bad)
            self.assertIn(b"--allow", proc.stderr)
            self.assertEqual(proc.stdout, b"", bad)


class ResolverUnitTest(unittest.TestCase):
    """The resolver in this process: what it returns, not just what it refuses."""

    def test_resolver_carries_normalised_prefixes(self):
        from litebridge_worker.dotted import DottedResolver, Refused, make_resolver
        saved = list(sys.path)
        self.addCleanup(sys.path.__setitem__, slice(None), saved)
        r = make_resolver(FIXTURES, ["pkg.tools.", "pkg.tools", "pkg.base"])
        self.assertIsInstance(r, DottedResolver)
        self.assertEqual(r.prefixes, ("pkg.tools", "pkg.base"))
        with self.assertRaises(Refused):
            r("secret.run")
        self.assertNotIn("secret", sys.modules)
        for bad in [[], [""], ["a._b"], ["a b"]]:
            with self.assertRaises(ValueError):
                make_resolver(FIXTURES, bad)


if __name__ == "__main__":
    unittest.main()
