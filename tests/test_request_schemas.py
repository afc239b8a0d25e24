"""service/request_schemas.py: the request schemas say what the handlers refuse, checked with a
standard JSON Schema validator (the end-to-end check is tests/test_api_fuzz.py)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from service.request_schemas import TranslationLimits, generate, v1_sentiment, v1_translate
from service.settings import Settings

SETTINGS = Settings(max_text_chars=50, max_texts_per_request=3)
LIMITS = TranslationLimits(None)  # the committed translator's: beam <= 10 (default 5), top-k 20, 200 out


def _valid(schema: dict[str, Any], body: object) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(body)


@pytest.mark.parametrize(("body", "valid"), [
    ({"text": "a film"}, True), ({"texts": ["a", "b", "c"]}, True), ({"text": "a", "texts": None}, True),
    ({"text": "a", "texts": ["b"]}, False), ({}, False), ({"text": None, "texts": None}, False),
    ({"texts": []}, False), ({"texts": ["a", "b", "c", "d"]}, False), ({"text": "x" * 51}, False),
    ({"text": " \t\u3000"}, False), ({"text": "\x1f"}, False),  # blank to str.strip, whatever the regex engine
    ({"text": "\ufeffa"}, True), ({"text": "a", "extra": 1}, False),
])
def test_sentiment_bodies(body: dict[str, Any], valid: bool) -> None:
    assert _valid(v1_sentiment(SETTINGS), body) is valid


@pytest.mark.parametrize(("body", "valid"), [
    ({"text": "a", "beam_size": 10, "num_hypotheses": 10}, True),
    ({"text": "a", "beam_size": 11}, False),
    ({"text": "a", "num_hypotheses": 5}, True), ({"text": "a", "num_hypotheses": 6}, False),  # default beam 5
    ({"text": "a", "beam_size": 2, "num_hypotheses": 3}, False),
    ({"text": "a", "sampling_topk": 20, "seed": 7}, True), ({"text": "a", "sampling_topk": 21}, False),
    ({"text": "a", "sampling_temperature": 0.5, "beam_size": 1}, True),
    ({"text": "a", "sampling_temperature": 0.5, "beam_size": 2}, False),
    ({"text": "a", "sampling_temperature": 0}, False),
    ({"text": "a", "sampling_topk": 3, "num_hypotheses": 2}, False),
    ({"text": "a", "seed": 7}, False), ({"text": "a", "seed": None}, True),
    ({"text": "a", "stream": True}, True), ({"texts": ["a"], "stream": True}, False),
    ({"text": "a", "max_length": 200, "length_penalty": 5}, True), ({"text": "a", "max_length": 201}, False),
    ({"text": "a", "source": "fr"}, False), ({"text": "a", "beam_size": 5.0}, True),
])
def test_translate_bodies(body: dict[str, Any], valid: bool) -> None:
    assert _valid(v1_translate(SETTINGS, LIMITS), body) is valid


@pytest.mark.parametrize(("body", "valid"), [
    ({"text_input": "a", "max_tokens": 9, "stream": True}, True),
    ({"text_input": "a", "parameters": {"max_tokens": 9, "beam_size": 2}}, True),
    ({"text_input": "a", "max_tokens": 9, "parameters": {"beam_size": 2}}, False),  # one place or the other
    ({"text_input": "a", "max_tokens": 9, "parameters": None}, True),
    ({"text_input": "a", "max_tokens": 9, "max_length": 9}, False),
    ({"text_input": "a", "parameters": {"max_tokens": 9, "max_length": 9}}, False),
    ({"text_input": "a", "parameters": {"sampling_topk": 2, "beam_size": 3}}, False),
    ({"text_input": "a", "seed": 1}, False), ({"text_input": "a", "seed": 1, "sampling_topk": 2}, True),
    ({"text_input": "a", "timeout": 0}, True), ({"text_input": "a", "timeout": -1}, False),
    ({"text_input": "a", "stream": None}, False),
    ({"text_input": "a", "temperature": 0.5}, False), ({"text_input": "a", "num_hypotheses": 2}, False),
])
def test_generate_bodies(body: dict[str, Any], valid: bool) -> None:
    assert _valid(generate(SETTINGS, LIMITS), body) is valid
