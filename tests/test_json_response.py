"""service/json_response.py: the API's JSON, compact UTF-8, with no NaN that clients cannot parse."""

from __future__ import annotations

import json
import math

from service.json_response import JSONResponse, dumps


def test_answers_are_compact_utf8_json_that_the_standard_library_reads_back() -> None:
    answer = {"label": "positive", "score": 0.9876543, "text": "Ein Hund läuft.", "ids": [1, 2], "nested": {"a": None}}
    body = dumps(answer)
    assert json.loads(body) == answer
    assert b" " not in body.replace(b"Ein Hund l", b"").replace("äuft.".encode(), b"")  # compact
    assert "läuft".encode() in body  # UTF-8, not \\u escapes
    assert JSONResponse(answer).body == body


def test_a_nan_or_an_infinity_is_null_never_invalid_json() -> None:
    body = dumps({"score": math.nan, "logits": [math.inf, -math.inf, 1.5]})
    assert json.loads(body) == {"score": None, "logits": [None, None, 1.5]}
