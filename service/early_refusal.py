"""Admission from arrival: an inference request holds a place from the moment the server parses
it, and while a model has no place left its requests get their 503 from the server's HTTP
protocol, without running the app.

Why: in a burst of a thousand translations against a full queue, each refusal through the app
costs ~0.4 ms of the event loop (a task, the middleware, the route, validation, tokenising,
admission, the answer), and they run one after another: the last refusal of the burst left the
server ~0.9 s after its request arrived, and timers and the decode threads' hand-overs waited as
long (loadtests/reliability.py, docs/benchmarks.md). And the queue looked free while hundreds of
parsed requests had not yet reached ``Admission.admit``. Here a POST to an inference route that
can reach exactly one model, parsed on an idle connection, counts as one text arriving for that
model (``Admission.arriving``) from when its task starts until the app starts on it
(``ArrivalReleaseMiddleware``, the app's outermost layer); a refusal is a few dictionary lookups and
one write in the protocol's own callback.

It refuses only what the app would refuse with the same answer: such a request when its model
has no place left (``Admission.full``): whatever the body says, it brings at least one text.
Everything else takes the usual path: requests with an ``Origin`` (the CORS middleware answers
browsers), a missing or wrong API key (401), a body over the limit or chunked (413 is decided on
the body), a Content-Type or Content-Encoding the API cannot read (415), ``Expect``, an upgrade, a request pipelined
behind another in the same read or behind one in flight, one sent while the connection's writes
are paused, a server not ready, v1 translate with several language pairs served (the body
chooses), generate on a model that does not translate. The body is not read: while a model is
full, a malformed request for it (or one with a malformed ``X-Request-Timeout``) gets this 503
rather than its 4xx. The answer is the app's: the same JSON body, Retry-After, request id,
access-log line and metrics (``record_request``), its latency counted from arrival.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service import v2_stats
from service.access_log import record_request, request_id_of
from service.admission import Admission
from service.auth import key_matches
from service.errors import ModelNotFound
from service.http_protocol import json_answer
from service.json_response import dumps
from service.middleware import Unreadable, body_format, declared_over_limit
from service.registry import ModelRegistry
from service.settings import Settings

# the task of the model each v1 route serves (service/routes_v1.py)
_V1_TASKS = {"/v1/sentiment": "text-classification", "/v1/translate": "translation"}
_GENERATE = ("generate", "generate_stream")
_V2_ROUTE = re.compile(r"^/v2/models/([^/]+)(/versions/([^/]+))?/(infer|generate|generate_stream)$")
# the ASGI scope extension holding the admission a request is counted as arriving for
RESERVED = "seqserve.arriving"


class RefusalBodies:
    """The 503's body and headers, made once per model and state (its waiting texts and arriving
    requests, which the message names) and reused: in a burst every refusal says the same few
    things, and making each anew (the error, its message, its JSON) was a sixth of a refusal's
    time on the event loop (docs/benchmarks.md, stop 40). Event loop only."""

    KEPT = 256  # states kept before starting afresh: a burst cycles through a handful

    def __init__(self) -> None:
        self._made: dict[tuple[Admission, int, int], tuple[list[tuple[bytes, bytes]], bytes]] = {}

    def of(self, admission: Admission) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers and body of ``admission``'s refusal now, counted as a rejection."""
        waiting, arriving = admission.waiting, admission.arriving
        key = (admission, waiting, arriving)
        made = self._made.get(key)
        if made is None:
            error = admission.refusal(waiting, None, arriving)  # counts it
            made = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()], dumps(error.body())
            if len(self._made) >= self.KEPT:
                self._made.clear()
            self._made[key] = made
        else:
            admission.count_refusal()
        return made


@dataclass(slots=True)
class Refusal:
    """A request refused at the door, answered once its body has been read (``answer``)."""

    method: str
    path: str
    route: str  # the route's template, as the metrics label it
    admission: Admission
    request_id: str
    log_requests: bool
    inferred: tuple[str, str] | None  # (model, version) of a v2 infer route, whose statistics count it
    bodies: RefusalBodies

    def answer(self, arrived: float, default_headers: Sequence[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
        """The whole HTTP/1.1 response, recorded as the app records its answers."""
        error_headers, body = self.bodies.of(self.admission)
        headers = [*error_headers, (b"x-request-id", self.request_id.encode())]
        if not keep_alive:
            headers.append((b"connection", b"close"))
        answer = json_answer(b"503 Service Unavailable", body, default_headers, *headers)
        seconds = time.perf_counter() - arrived
        record_request(self.method, self.path, self.route, 503, seconds, self.request_id, self.log_requests)
        if self.inferred is not None:  # a failed request in Triton's statistics, as the app would count it
            v2_stats.record(*self.inferred, False, seconds)
        return answer


def release(scope: Mapping[str, Any]) -> None:
    """The app starts on this request: it no longer counts as arriving (a second call does nothing)."""
    reserved: Admission | None = scope.get("extensions", {}).pop(RESERVED, None)
    if reserved is not None:
        reserved.arriving -= 1


class ArrivalReleaseMiddleware:
    """The app's outermost layer: from here a request no longer counts as arriving for its model;
    admission counts the texts it brings."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            release(scope)
        await self.app(scope, receive, send)


class EarlyRefusal:
    """Made with the app, active while it serves (``open`` with the registry, ``close``); the
    server's protocol takes it from ``app.state.early_refusal`` once per connection."""

    def __init__(self, settings: Settings) -> None:
        self.registry: ModelRegistry | None = None
        self.keys = [k.encode() for k in settings.api_keys if k]
        self.exempt = tuple(settings.auth_exempt_paths)
        self.max_body_bytes = settings.max_body_bytes
        self.log_requests = settings.access_log
        # by request target, for one generation of the registry: (path, route template, the
        # admission, the v2 infer model), or None for a URL that is no inference route of exactly
        # one served model
        self._routes: dict[bytes, _Reachable | None] = {}
        self._generation = -1
        self._bodies = RefusalBodies()

    def open(self, registry: ModelRegistry) -> None:
        # what was built for another registry is forgotten at the next look, as for a new generation
        self.registry, self._generation = registry, -1

    def close(self) -> None:
        self.registry = None

    def look(self, method: bytes, url: bytes, headers: Sequence[tuple[bytes, bytes]]) -> Refusal | Admission | None:
        """A request's headers are parsed, nothing else is in flight on its connection: its
        refusal if its model is full and the app would refuse it alike, else the admission it
        will count against while it waits for the app (``reserve``), None if it is no inference
        request of exactly one served model."""
        registry = self.registry
        if method != b"POST" or registry is None:
            return None
        if registry.generation != self._generation:
            self._routes, self._generation, self._bodies = {}, registry.generation, RefusalBodies()
        try:
            found = self._routes[url]
        except KeyError:
            found = _reachable(registry, url)
            # URLs are the client's to choose: bound what they fill, in count and in size (a query
            # string of megabytes would otherwise stay held)
            if len(self._routes) < 256 and len(url) <= 256:
                self._routes[url] = found
        if found is None:
            return None
        path, route, admission, inferred = found
        if admission.full():
            named = dict(headers)
            if self._refusable(path, named):
                return Refusal(method.decode(), path, route, admission, request_id_of(named),
                               self.log_requests, inferred, self._bodies)
        return admission

    @staticmethod
    def reserve(admission: Admission, scope: MutableMapping[str, Any]) -> None:
        """The request's task has started with the app: it arrives for ``admission`` until the
        app starts on it (``release``)."""
        admission.arriving += 1
        scope.setdefault("extensions", {})[RESERVED] = admission

    def _refusable(self, path: str, headers: dict[bytes, bytes]) -> bool:
        """Whether the app would refuse this request with the same 503 (the module's rules)."""
        if b"origin" in headers or b"expect" in headers:
            return False
        try:
            body_format(headers, path)
        except Unreadable:  # the app answers 415
            return False
        if declared_over_limit(headers, self.max_body_bytes) is not False:
            return False  # chunked (its size is known once read), malformed, or over the limit
        return not self.keys or path.startswith(self.exempt) or key_matches(
            headers.get(b"x-api-key"), headers.get(b"authorization"), self.keys)


_Reachable = tuple[str, str, Admission, tuple[str, str] | None]


def _reachable(registry: ModelRegistry, url: bytes) -> _Reachable | None:
    """(path, route template, its model's admission, its (name, version) on a v2 infer route)
    when ``url`` is an inference route that can reach exactly one served model, whatever the
    body says; else None (v1 translate with several language pairs: the body chooses; generate
    on a model that does not translate: the app's 4xx)."""
    path = urllib.parse.unquote(url.split(b"?", 1)[0].decode("latin-1"))
    task = _V1_TASKS.get(path)
    if task is not None:
        reachable = [m for m in registry.latest() if m.card.task == task]
        route = path
    else:
        match = _V2_ROUTE.match(path)
        if match is None:
            return None
        name, versioned, version, action = match.groups()
        try:
            reachable = [registry.get(name, version)]
        except ModelNotFound:
            return None
        if action in _GENERATE and reachable[0].card.task != "translation":
            return None
        route = "/v2/models/{name}" + ("/versions/{version}" if versioned else "") + f"/{action}"
    if len(reachable) != 1:
        return None
    model = reachable[0]
    inferred = (model.name, model.version) if task is None and action == "infer" else None
    return path, route, model.engine.admission, inferred
