"""Locust users for seqserve (FastHttpUser: Locust's fast HTTP client).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --class-picker

A realistic mix by default: most traffic is single-text sentiment, then greedy and beam
translation, some batched sentiment, attention requests and Open Inference Protocol calls.
Select users with Locust's class picker or `locust ... SentimentUser TranslationUser`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

from locust import FastHttpUser, between, task

from loadtests.inputs import sentiment_texts, translation_texts

_JSON = {"Content-Type": "application/json"}
SENTIMENT = sentiment_texts()
TRANSLATION = translation_texts()


class _SeqserveUser(FastHttpUser):
    abstract = True
    wait_time = between(0.0, 0.05)

    def _post(self, path: str, body: Mapping[str, object], name: str) -> None:
        # FastHttpUser counts any 4xx/5xx as a failure, with its status, by itself; no
        # catch_response block per request keeps the load generator's own CPU cost down
        self.client.post(path, data=json.dumps(body), headers=_JSON, name=name)


class SentimentUser(_SeqserveUser):
    weight = 4

    @task(8)
    def single(self) -> None:
        self._post("/v1/sentiment", {"text": random.choice(SENTIMENT)}, "/v1/sentiment [1]")

    @task(2)
    def batched(self) -> None:
        self._post("/v1/sentiment", {"texts": random.sample(SENTIMENT, 8)}, "/v1/sentiment [8]")


class SentimentSingleUser(_SeqserveUser):
    """Only single-text sentiment: the scenario of `make loadtest`, comparable with the raw limit."""

    weight = 2

    @task
    def single(self) -> None:
        self._post("/v1/sentiment", {"text": random.choice(SENTIMENT)}, "/v1/sentiment [1]")


class TranslationUser(_SeqserveUser):
    weight = 3

    @task(5)
    def greedy(self) -> None:
        self._post("/v1/translate", {"text": random.choice(TRANSLATION), "beam_size": 1}, "/v1/translate greedy")

    @task(4)
    def beam(self) -> None:
        self._post("/v1/translate", {"text": random.choice(TRANSLATION), "beam_size": 5}, "/v1/translate beam5")

    @task(1)
    def attention(self) -> None:
        self._post("/v1/translate", {"text": random.choice(TRANSLATION), "return_attention": True},
                   "/v1/translate attention")


class OpenInferenceUser(_SeqserveUser):
    weight = 1

    @task(2)
    def sentiment(self) -> None:
        text = random.choice(SENTIMENT)
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
        self._post("/v2/models/sentiment/infer", body, "/v2 sentiment infer")

    @task(1)
    def translate(self) -> None:
        text = random.choice(TRANSLATION)
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}],
                "parameters": {"beam_size": 1}}
        self._post("/v2/models/translate-en-de/infer", body, "/v2 translate infer")
