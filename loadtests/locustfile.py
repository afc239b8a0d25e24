"""Locust users for seqserve (FastHttpUser: Locust's fast HTTP client).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --class-picker

A realistic mix by default: most traffic is single-text sentiment, then greedy and beam
translation, some batched sentiment, attention requests, Open Inference Protocol calls and
streamed translations (Server-Sent Events); `GrpcInferenceUser` calls the same models over the
Open Inference Protocol's gRPC service.
Select users with Locust's class picker or `locust ... SentimentUser TranslationUser`.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.parse
from collections.abc import Mapping
from functools import cache
from typing import Any

from locust import FastHttpUser, User, between, task

from loadtests.http_client import auth_headers
from loadtests.inputs import sentiment_texts, translation_texts

_JSON = {"Content-Type": "application/json", **auth_headers()}  # the key: SEQSERVE_CLIENT_API_KEY
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
            response_time=(time.perf_counter() - started) * 1000, response_length=len(events),
            context={"status": _stream_status(events)},
            exception=None if ended else RuntimeError("the stream ended without a result event"
                                                      + (" (an error event)" if "event: error" in events else "")))


def _stream_status(events: str) -> int:
    """What a whole stream counts as in the summaries (its status line said 200 either way): 200
    when it ended with its result, the status of the error event it ended with, 0 when it was cut
    off (no answer). It counted as 0, "a connection that failed", for every stream."""
    if "event: result" in events:
        return 200
    _, found, after = events.rpartition("event: error\ndata: ")
    if not found:
        return 0
    try:
        code = json.loads(after.split("\n", 1)[0]).get("code")
    except ValueError:
        return 500
    return _STATUS_OF_CODE.get(code, 500)


# the status of each error code a stream may end with (service/errors.py)
_STATUS_OF_CODE = {"deadline_exceeded": 504, "not_ready": 503, "overloaded": 503, "inference_failed": 500}


def grpc_target(host: str) -> str:
    """The gRPC address for Locust's ``--host``: ``host:port`` as given, or for an ``http://`` URL (the
    HTTP users' host, when both kinds run together) its host name and ``SEQSERVE_GRPC_PORT`` (default
    8001, the server's)."""
    if "://" not in host:
        return host
    name = urllib.parse.urlsplit(host).hostname or "127.0.0.1"
    return f"{f'[{name}]' if ':' in name else name}:{os.environ.get('SEQSERVE_GRPC_PORT', '8001')}"


# the HTTP status each gRPC code seqserve answers stands for (service/grpc_v2.py maps them the
# other way), so that the runner's summaries count both kinds of user alike; written out here,
# because the load generator (its image too) does not carry the server's package
_HTTP_OF = {"OK": 200, "INVALID_ARGUMENT": 422, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 413, "UNAUTHENTICATED": 401,
            "FAILED_PRECONDITION": 409, "CANCELLED": 499, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
            "UNIMPLEMENTED": 501}


# the API key as gRPC metadata (the server reads it as it reads the HTTP header)
_GRPC_KEY = tuple((name.lower(), value) for name, value in auth_headers().items())


@cache
def _grpc() -> Any:
    """grpc and the Open Inference Protocol's stubs, imported when a gRPC user first starts (an
    HTTP-only run needs neither), with gRPC put under gevent once, before the process's first
    channel, so that its calls yield to Locust's other users instead of blocking its loop."""
    import grpc
    import grpc.experimental.gevent

    from service.grpc_protocol import service_pb2, service_pb2_grpc

    grpc.experimental.gevent.init_gevent()
    return grpc, service_pb2, service_pb2_grpc


class GrpcInferenceUser(User):
    """Open Inference Protocol over gRPC: ModelInfer for both models (one text, raw BYTES contents,
    as tritonclient sends them), one channel per user. Each call is a Locust request of type "grpc";
    its status in `python -m loadtests` summaries is the HTTP status its gRPC code stands for."""

    weight = 1
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        grpc, _, stubs = _grpc()
        self.channel = grpc.insecure_channel(grpc_target(self.host or "http://127.0.0.1:8000"))
        self.stub = stubs.GRPCInferenceServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _infer(self, model: str, text: str, name: str, **parameters: int) -> None:
        grpc, messages, _ = _grpc()
        raw = text.encode()  # a BYTES tensor of one element: its length (4 bytes, little-endian), then it
        request = messages.ModelInferRequest(
            model_name=model, inputs=[messages.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES",
                                                                                 shape=[1])],
            raw_input_contents=[len(raw).to_bytes(4, "little") + raw])
        for key, value in parameters.items():
            request.parameters[key].int64_param = value
        started, code, size = time.perf_counter(), "OK", 0
        error: Exception | None = None
        try:
            size = self.stub.ModelInfer(request, timeout=60, metadata=_GRPC_KEY).ByteSize()
        except grpc.RpcError as exc:
            error, code = exc, exc.code().name
        # UNAVAILABLE is also the client's own "could not connect": no answer (0), not a full queue (503)
        unanswered = code == "UNAVAILABLE" and "connect" in (getattr(error, "details", lambda: "")() or "").lower()
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=size, exception=error, context={"status": 0 if unanswered else _HTTP_OF.get(code, 500)})

    @task(2)
    def sentiment(self) -> None:
        self._infer("sentiment", random.choice(SENTIMENT), "grpc sentiment infer")

    @task(1)
    def translate(self) -> None:
        self._infer("translate-en-de", random.choice(TRANSLATION), "grpc translate infer", beam_size=1)
