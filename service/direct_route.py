"""POST /v1/sentiment answered in the server's HTTP protocol, for the plainest requests.

On a small CPU the classifier's INT8 model costs ~0.4 ms of a core a sentence, and everything
around it was half as much again. Of that, uvicorn's request cycle (its scope, task, receive and
send messages), the app's middleware layers and FastAPI's request and response objects cost ~40
us of the event loop a request beyond what the route itself does: at 64 clients on a 2-core VM
the loop took 137 against 179 us a request without them, and the server answered 1.12x the
requests (docs/benchmarks.md, stop 49: `python -m loadtests.cpu_share --versus
direct_routes=false`). The request a client sends nearly always needs none of what those layers
decide, so for it the protocol (service/http_protocol.py) calls the same route steps
(``inference.sentiment_job``, ``classify``, ``sentiment_answer``) itself, and writes the answer
with the same headers, access-log line and metrics.

It takes a request only when nothing in it is for those layers to decide (``takes``): HTTP/1.1,
the exact path, a body of a declared length within SEQSERVE_MAX_BODY_BYTES that arrives in the
read that completes its head, Content-Type exactly application/json, none of the headers that
ask for more (Content-Encoding, Transfer-Encoding, Expect, Origin, X-Request-Timeout, Upgrade),
no API keys configured, nothing else in flight on its connection. And only when it will be
classified: a body that does not validate, a text the route refuses, a full queue, a text long
enough to be scored by its sentences all go the ordinary way, the head and body handed to
uvicorn's request cycle as just parsed, so every error is the app's own.
SEQSERVE_DIRECT_ROUTES=false turns it off.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError

from service import inference
from service.access_log import CURRENT_REQUEST_ID
from service.errors import ServiceError, internal_error
from service.inputs import deadline_after, from_arrival, validate_json
from service.json_response import dumps
from service.schemas import SentimentRequest

if TYPE_CHECKING:
    from service.drain import Drain
    from service.registry import ServedModel
    from service.settings import Settings

log = logging.getLogger("seqserve")

PATH = "/v1/sentiment"
_PATH = PATH.encode()
# headers that ask the request layers for something (decoding, a charset, a timeout, CORS, 100
# Continue, chunked framing, an upgrade): such a request goes the ordinary way
_FOR_THE_LAYERS = frozenset({b"content-encoding", b"transfer-encoding", b"expect", b"origin",
                             b"x-request-timeout", b"upgrade"})

Headers = Sequence[tuple[bytes, bytes]]
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}".encode() for status in http.HTTPStatus}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def status_line(self) -> bytes:
        """As "200 OK" (uvicorn's reason phrases: Python's)."""
        return _STATUS_LINES.get(self.status) or str(self.status).encode()


class DirectSentiment:
    """The direct answer to POST /v1/sentiment (the module's docstring): ``takes`` on the head,
    ``start`` on the whole body, which returns the coroutine that answers it."""

    path = PATH  # what the access log and the metrics name it by: the route's template

    def __init__(self, state: Any, settings: Settings, drain: Drain | None = None) -> None:
        self.state = state  # the app's: its registry (set at start-up) and whether it is ready
        self.settings = settings
        self.drain = drain

    def takes(self, method: bytes, url: bytes, http_version: str, headers: Headers) -> bool:
        """Whether the request whose head this is may be answered directly, its body permitting."""
        if url != _PATH or method != b"POST" or http_version != "1.1" or not self.state.ready:
            return False
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                if value != b"application/json":
                    return False
            elif name in _FOR_THE_LAYERS:
                return False
        return length is not None and length.isdigit() and int(length) <= self.settings.max_body_bytes

    def start(self, body: bytes, arrived: float) -> Coroutine[Any, Any, Answer] | None:
        """The request's texts queued for the model, and the coroutine that answers them; None
        where the app answers it instead (an error, or texts scored by their sentences)."""
        try:
            request = validate_json(SentimentRequest, body)
            model, pieces = inference.sentiment_job(self.state.registry, self.settings, request)
        except (ServiceError, RequestValidationError):
            return None  # refused: the app says why, in its own words
        except Exception:  # a fault (a bug): the app meets it too, and answers its 500
            log.exception("the direct route could not start on POST %s; the app answers it", PATH)
            return None
        if pieces.split:  # the route watches for its client leaving while its sentences are scored
            return None
        deadline = from_arrival(deadline_after(self.settings), arrived)
        return self._answer(model, request, pieces, inference.classify(model, pieces, deadline))

    async def _answer(self, model: ServedModel, request: SentimentRequest, pieces: inference.SentimentPieces,
                      work: Coroutine[Any, Any, Any]) -> Answer:
        """What the app would answer once the texts are classified (or failed: a deadline, an
        overloaded or failed model, a shutdown's deadline, a fault)."""
        try:
            return Answer(200, dumps(inference.sentiment_answer(model, request, pieces, await work)))
        except ServiceError as exc:
            return _error(exc)
        except asyncio.CancelledError:
            if self.drain is None or not self.drain.passed():
                raise
            return _error(self.drain.cut_off())
        except Exception:
            request_id = CURRENT_REQUEST_ID.get()
            log.exception("unhandled error on POST %s (request %s)", PATH, request_id)
            return Answer(500, dumps(internal_error(request_id)))


def _error(exc: ServiceError) -> Answer:
    return Answer(exc.status, dumps(exc.body()),
                  tuple((name.lower().encode(), value.encode()) for name, value in exc.headers.items()))
