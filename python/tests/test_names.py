"""A worker registers and announces only names litebridge routes: a name
starting with "$", longer than 256 characters, or holding a control or
invisible character is refused where it is registered, with a ValueError
naming the method and the rule."""

import functools
import unittest

from litebridge_worker import Worker
from litebridge_worker.dotted import DottedResolver, normalise_prefixes


def _span(first, last):
    return [chr(c) for c in range(first, last + 1)]


# Every character litebridge refuses in a name: unprintable() in
# crates/litebridge-cli/src/printable.rs, which is char::is_control() (C0,
# DEL, C1) and the list after it, entry by entry.
REFUSED_CHARS = (_span(0x00, 0x1F) + ["\x7f"] + _span(0x80, 0x9F)
                 + ["\u00ad", "\u061c", "\u115f", "\u1160", "\u180e"]
                 + _span(0x200B, 0x200F) + _span(0x2028, 0x202E) + _span(0x2060, 0x2069)
                 + ["\u3164", "\ufeff", "\uffa0"] + _span(0xFFF9, 0xFFFB) + _span(0xE0000, 0xE007F))

# Their neighbours, which litebridge routes.
TAKEN_CHARS = ["\x20", "\x7e", "\xa0", "\u00ac", "\u00ae", "\u061b", "\u061d", "\u115e", "\u1161",
               "\u180d", "\u180f", "\u200a", "\u2010", "\u2027", "\u202f", "\u205f", "\u206a",
               "\u3163", "\u3165", "\ufefe", "\uff9f", "\uffa1", "\ufff8", "\ufffc",
               "\U000dffff", "\U000e0080"]


def handler():
    return 1


class MethodNameTest(unittest.TestCase):
    def refused(self, name, *words):
        for register in [lambda w: w.method(name=name)(handler), lambda w: w.add(handler, name=name)]:
            w = Worker()
            with self.assertRaises(ValueError) as caught:
                register(w)
            self.assertEqual(w._methods, {})
            for word in words:
                self.assertIn(word, str(caught.exception), repr(name))

    def test_names_litebridge_never_routes_are_refused(self):
        self.refused("$tool", "'$tool'", "'$'")
        self.refused("$/cancelRequest", "'$'")
        self.refused("x" * 257, "257 characters", "256")
        self.refused("", "empty")
        self.refused("tab\tname", "'tab\\tname'", "U+0009")
        for c in REFUSED_CHARS:
            self.refused("a" + c + "b", "U+%04X" % ord(c))
        self.refused("lone\udc80surrogate", "U+DC80")

    def test_the_function_name_is_checked_too(self):
        def f():
            pass
        f.__name__ = "$f"
        with self.assertRaises(ValueError):
            Worker().method()(f)
        with self.assertRaises(ValueError):
            Worker().add(f)
        with self.assertRaises(TypeError):
            Worker().add(functools.partial(handler))  # no __name__: it needs name=
        with self.assertRaises(TypeError):
            Worker().method(name=42)

    def test_names_litebridge_routes_are_taken(self):
        w = Worker()
        for name in ["x" * 256, "a.b.c", "análise", "字", "with space", "dollar$inside", "emoji🙂", "a/b"]:
            w.add(handler, name=name)
        self.assertEqual(len(w._methods), 8)
        for c in TAKEN_CHARS:
            w.add(handler, name="a" + c + "b")
        self.assertEqual(len(w._methods), 8 + len(TAKEN_CHARS))
        self.assertEqual([m.describe()["name"] for m in w._methods.values()][0], "x" * 256)


class PrefixTest(unittest.TestCase):
    def test_generic_mode_prefixes_litebridge_could_route_nothing_under_are_refused(self):
        with self.assertRaises(ValueError) as caught:
            normalise_prefixes(["a" * 257])
        self.assertIn("256", str(caught.exception))
        with self.assertRaises(ValueError):
            DottedResolver(".", ["pkg." + "b" * 253])
        self.assertEqual(normalise_prefixes(["a" * 256]), ["a" * 256])

    def test_a_resolvers_announced_prefixes_are_checked(self):
        class Resolver:
            def __init__(self, prefixes):
                self.prefixes = prefixes

            def __call__(self, name):
                return None

        w = Worker()
        for bad in [["$x"], ["ok", "tab\there"], ["y" * 300]]:
            with self.assertRaises(ValueError, msg=repr(bad)):
                w.set_resolver(Resolver(bad))
        w.set_resolver(Resolver(["app.api."]))
        self.assertEqual(w._prefixes, ["app.api"])


if __name__ == "__main__":
    unittest.main()
