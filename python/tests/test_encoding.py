"""The SDK's fast reply encoding writes exactly what json's own encoder
writes, and gives up to it for what it cannot encode; its fast reading of a
request's line answers exactly what json.loads answers, errors included."""

import json
import unittest

from litebridge_worker import worker


class FastEncodingTest(unittest.TestCase):
    def setUp(self):
        self.reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                          allow_nan=False).encode

    def test_the_same_bytes_as_json(self):
        if worker._FAST_ENCODE is None:
            self.skipTest("this Python has no C encoder")
        values = [
            0, -1, 2 ** 70, 1.5, 1e300, True, False, None,
            "plain", "é\n\t\"\\", "\ud800 lone surrogate", "\u2028", [], {}, (1, 2),
            {"a": [1, {"b": None}], "é": "x", "n": 1e300}, [[[[]]]],
        ]
        for v in values:
            self.assertEqual(worker._FAST_ENCODE(v), self.reference(v), repr(v))
        self.assertEqual(worker._encode_str("é\n\ud800"), self.reference("é\n\ud800"))

    def test_what_it_cannot_encode_raises_for_the_fallback(self):
        if worker._FAST_ENCODE is None:
            self.skipTest("this Python has no C encoder")
        circular = []
        circular.append(circular)
        # NaN and Infinity too: no JSON reader litebridge has takes them.
        for v in [circular, {"x": object()}, {1j: 2}, float("nan"), [float("inf")],
                  {"x": -float("inf")}]:
            with self.assertRaises(Exception):
                worker._FAST_ENCODE(v)
            with self.assertRaises((TypeError, ValueError)):
                self.reference(v)


class InexactResultTest(unittest.TestCase):
    """_unsendable finds what litebridge would not read as it was sent, and
    the reply's cheap look at the text never lets one through."""

    def test_what_is_found_and_where(self):
        u = worker._unsendable
        self.assertIsNone(u({"a": [1, 2 ** 64 - 1, -2 ** 63, "x" * 30, 1.5, None, True]}))
        self.assertIsNone(u({1: "a", 2.5: "b", None: "c", True: "d", "x": "e"}))
        self.assertIn("result['a'][1]", u({"a": [0, 2 ** 64]}))
        self.assertIn("result[0]['k']", u([{"k": -2 ** 63 - 1}]))
        self.assertIn("keys 1 and '1'", u([{1: 0, "1": 0}]))
        self.assertIn("keys False and 'false'", u({False: 0, "false": 0}))

        class Key(str):
            __hash__ = str.__hash__

            def __eq__(self, other):
                return other is self

        self.assertIn("the same key", u({"k": 1, Key("k"): 2}))

        # A list or tuple subclass is read as json's encoders read it:
        # through its own __iter__.
        class Listed(list):
            def __iter__(self):
                return iter([2 ** 70])

        class Paired(tuple):
            def __iter__(self):
                return iter([{1: 0, "1": 0}])

        self.assertIn("result[0] an integer of 71 bits", u(Listed([0])))
        self.assertIn("keys 1 and '1'", u({"a": Paired((0,))}))

    def test_a_result_nested_deeper_than_the_recursion_limit_is_walked(self):
        v = 2 ** 65
        for _ in range(5000):
            v = [v]
        self.assertIn("integer of 66 bits", worker._unsendable(v))

    def test_every_problem_is_seen_by_the_cheap_look_at_the_text(self):
        # The reply's filter, as _reply applies it, on each shape a problem
        # can take: it must send every one of them to _unsendable.
        def suspect(result):
            body = json.dumps(result, separators=(",", ":"), ensure_ascii=False)
            line = ('{"jsonrpc":"2.0","id":1,"result":%s}\n' % body).encode()
            return len(body) > 12 and worker._may_be_unsendable(line)

        problems = [2 ** 64, -2 ** 63 - 1, [2 ** 64], {"a": 2 ** 64}, {"a": -(10 ** 19)}, (1, 10 ** 40),
                    {1: 0, "1": 0}, {"1": 0, 1: 0}, {-1: 0, "-1": 0}, {1.5: 0, "1.5": 0}, {1e16: 0, "1e+16": 0},
                    {-1.5e-07: 0, "-1.5e-07": 0}, {"item1": 0, 10: 0, "10": 0}, {"a\\": {7: 0, "7": 0}},
                    {True: 0, "true": 0}, {False: 0, "false": 0}, {None: 0, "null": 0}]
        for p in problems:
            self.assertIsNotNone(worker._unsendable(p), repr(p))
            self.assertTrue(suspect(p), repr(p))
        # The usual results do not pay for a walk.
        for ok in [{"domain": "finance", "words": 3}, [1, 2.5, None, True, "x"], {"a": {"b": [1e300, -5]}},
                   {"items": [{"id": 12, "score": 0.5, "tags": ["a1", "b2"]}], "total": 123456789012345678},
                   12, 2 ** 50,
                   # Keys that end in a digit but are no number's text.
                   {"item1": 1, "sha256": "ab", "v2": {"e0": [1], "x-1": 2, "1a0": 3}},
                   [{"gpt4": 0.5, "p99": 12}] * 3]:
            self.assertFalse(suspect(ok), repr(ok))


class FastDecodingTest(unittest.TestCase):
    def outcome(self, loads, text):
        try:
            return ("value", loads(text))
        except Exception as e:  # the same class and message as json.loads
            return ("error", type(e), str(e))

    def test_the_same_answer_and_errors_as_json_loads(self):
        # json.loads but for the constants JSON does not have (review 241).
        def strict(text):
            return json.loads(text, parse_constant=worker._refuse_constant)

        lines = [
            '{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":[1,2.5,null,true]}}',
            ' {"a":1}', '{"a":1} ', '{"a":1}\r', '\t[1]\n', '{"a":1}{"b":2}', '{"a":1}x',
            "", "  ", "nul", "{", "[1,2", "1", '"x"', '{"a":NaN}', "[Infinity,-Infinity]",
            '"\\ud800"', '{"\\u00e9":"\\u2028"}', '{"a":1,"a":2}', '{"a":"\x01"}',
            "[" * 50 + "]" * 50, "9" * 5000,
            '{"a":1}\n', '{"a":1}\n\n', '{"a":1} \n', '{"a":1}\nx', '1\n', '"x"\n', "\n",
        ]
        for line in lines:
            self.assertEqual(self.outcome(worker._LOADS, line), self.outcome(strict, line),
                             repr(line))
        for line in ['{"a":NaN}', "[Infinity,-Infinity]", "[1,-Infinity]"]:
            self.assertEqual(self.outcome(worker._LOADS, line)[0], "error", repr(line))

    def test_a_line_read_alone_is_parsed_once(self):
        # A call read alone keeps its newline; it went to json.loads after
        # the scanner, and was parsed twice.
        loads = json.loads
        try:
            json.loads = None  # any use of it fails
            value = worker._LOADS('{"jsonrpc":"2.0","id":7,"method":"m"}\n')
        finally:
            json.loads = loads
        self.assertEqual(value, {"jsonrpc": "2.0", "id": 7, "method": "m"})

    def test_deep_nesting_fails_as_json_loads_fails(self):
        line = "[" * 100000 + "]" * 100000
        self.assertEqual(self.outcome(worker._LOADS, line)[:2], self.outcome(json.loads, line)[:2])


if __name__ == "__main__":
    unittest.main()
