"""The SDK's fast reply encoding writes exactly what json's own encoder
writes, and gives up to it for what it cannot encode."""

import json
import unittest

from litebridge_worker import worker


class FastEncodingTest(unittest.TestCase):
    def setUp(self):
        self.reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def test_the_same_bytes_as_json(self):
        if worker._FAST_ENCODE is None:
            self.skipTest("this Python has no C encoder")
        values = [
            0, -1, 2 ** 70, 1.5, float("nan"), float("inf"), -float("inf"), True, False, None,
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
        for v in [circular, {"x": object()}, {1j: 2}]:
            with self.assertRaises(Exception):
                worker._FAST_ENCODE(v)
            with self.assertRaises((TypeError, ValueError)):
                self.reference(v)


if __name__ == "__main__":
    unittest.main()
