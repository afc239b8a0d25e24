"""Locust users for seqserve (FastHttpUser: Locust's fast HTTP client).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --class-picker

A realistic mix by default: most traffic is single-text sentiment, then greedy and beam
translation, some batched sentiment, attention requests, Open Inference Protocol calls and
streamed translations (Server-Sent Events).
Select users with Locust's class picker or `locust ... SentimentUser TranslationUser`.
"""

from __future__ import annotations

import json
import random
import time
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


class StreamingUser(_SeqserveUser):
    """Streamed greedy translations (``"stream": true``, Server-Sent Events), two entries each:
    "first event", the time to the first event (the server sends the response's head with it, and
    Locust times a streamed request to its head), and "whole", the stream to its end, a failure
    unless it ends with a ``result`` event."""

    weight = 1

    @task
    def greedy(self) -> None:
        started = time.perf_counter()
        body = {"text": random.choice(TRANSLATION), "beam_size": 1, "stream": True}
        response = self.client.post("/v1/translate", data=json.dumps(body), headers=_JSON, stream=True,
                                    name="/v1/translate stream: first event")
        if response.status_code != 200:  # counted as a failure already, with its status
            return
        events = "".join(c if isinstance(c, str) else c.decode("utf-8", "replace") for c in response.iter_content(4096))
        ended = "event: result" in events
        self.environment.events.request.fire(
            request_type="POST", name="/v1/translate stream: whole",
            response_time=(time.perf_counter() - started) * 1000, response_length=len(events), context={},
            exception=None if ended else RuntimeError("the stream ended without a result event"
                                                      + (" (an error event)" if "event: error" in events else "")))
