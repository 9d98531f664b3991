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


class FastDecodingTest(unittest.TestCase):
    def outcome(self, loads, text):
        try:
            return ("value", loads(text))
        except Exception as e:  # the same class and message as json.loads
            return ("error", type(e), str(e))

    def test_the_same_answer_and_errors_as_json_loads(self):
        lines = [
            '{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":[1,2.5,null,true]}}',
            ' {"a":1}', '{"a":1} ', '{"a":1}\r', '\t[1]\n', '{"a":1}{"b":2}', '{"a":1}x',
            "", "  ", "nul", "{", "[1,2", "1", '"x"', '{"a":NaN}', "[Infinity,-Infinity]",
            '"\\ud800"', '{"\\u00e9":"\\u2028"}', '{"a":1,"a":2}', '{"a":"\x01"}',
            "[" * 50 + "]" * 50, "9" * 5000,
        ]
        for line in lines:
            self.assertEqual(self.outcome(worker._LOADS, line), self.outcome(json.loads, line),
                             repr(line))

    def test_deep_nesting_fails_as_json_loads_fails(self):
        line = "[" * 100000 + "]" * 100000
        self.assertEqual(self.outcome(worker._LOADS, line)[:2], self.outcome(json.loads, line)[:2])


if __name__ == "__main__":
    unittest.main()
