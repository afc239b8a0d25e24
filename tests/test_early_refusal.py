"""service/early_refusal.py: an inference request holds a place from its arrival, and a full
model's requests get the app's 503 without the app, but only those the app would refuse alike."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from service import metrics
from service.admission import Admission
from service.early_refusal import RESERVED, ArrivalReleaseMiddleware, EarlyRefusal, Refusal, release
from service.errors import ModelNotFound, Overloaded
from service.settings import Settings
from tests.conftest import COMMITTED_MODELS

POST = b"POST"
JSON = [(b"content-type", b"application/json"), (b"content-length", b"20")]


@dataclass
class _Model:
    name: str
    task: str
    limit: int = 2
    version: str = "1"
    card: Any = None
    engine: Any = None

    def __post_init__(self) -> None:
        self.card = SimpleNamespace(task=self.task)
        self.engine = SimpleNamespace(admission=Admission(self.name, self.limit, self.version))


@dataclass
class _Registry:
    models: list[_Model]
    generation: int = 0

    def all(self) -> list[_Model]:
        return self.models

    def latest(self) -> list[_Model]:
        return self.models

    def get(self, name: str, version: str | None = None) -> _Model:
        for m in self.models:
            if m.name == name and version in (None, m.version):
                return m
        raise ModelNotFound(f"unknown model {name}")


def _door(*models: _Model, **settings: Any) -> EarlyRefusal:
    models = models or (_Model("translator", "translation"), _Model("sentiment", "text-classification"))
    door = EarlyRefusal(Settings(warmup=False, **settings))
    door.open(_Registry(list(models)))  # type: ignore[arg-type]
    return door


def _fill(door: EarlyRefusal, name: str) -> Admission:
    admission: Admission = door.registry.get(name).engine.admission  # type: ignore[union-attr]
    admission.waiting = admission.limit
    return admission


def test_a_request_holds_a_place_from_its_arrival_until_the_app_starts_on_it() -> None:
    door = _door()
    admission = _fill(door, "translator")
    admission.waiting = 0
    scopes: list[dict[str, Any]] = [{}, {}]
    for scope in scopes:
        assert door.look(POST, b"/v1/translate", JSON) is admission
        door.reserve(admission, scope)
    assert admission.arriving == 2 and admission.full() and admission.waiting == 0
    # a third, parsed before the app has started on the first two, finds no place
    assert isinstance(door.look(POST, b"/v1/translate", JSON), Refusal)
    release(scopes[0])
    release(scopes[0])  # a second release gives nothing back twice
    assert admission.arriving == 1 and RESERVED not in scopes[0]["extensions"]
    assert door.look(POST, b"/v1/translate?x=1", JSON) is admission


async def test_a_request_stops_counting_as_arriving_when_the_app_starts_on_it() -> None:
    admission = Admission("m", limit=8)
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(admission.arriving)

    admission.arriving += 1
    await ArrivalReleaseMiddleware(app)({"type": "http", "extensions": {RESERVED: admission}}, None, None)
    assert seen == [0] and admission.arriving == 0


def test_a_refusal_says_what_holds_the_places_when_requests_still_arriving_do() -> None:
    door = _door()
    admission = _fill(door, "translator")
    admission.waiting, admission.arriving = 0, admission.limit  # parsed, not yet started by the app
    refusal = door.look(POST, b"/v1/translate", JSON)
    assert isinstance(refusal, Refusal)
    body = json.loads(refusal.answer(time.perf_counter(), [], keep_alive=True).split(b"\r\n\r\n", 1)[1])
    assert "model translator has 0 texts waiting and 2 requests arriving (limit 2)" in body["error"]


def test_a_full_models_request_gets_the_apps_503_at_once(access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    door = _door()
    _fill(door, "translator")
    assert isinstance(door.look(POST, b"/v1/sentiment", JSON), Admission)  # another model has room
    rejected = metrics.REJECTED.labels("translator", "1", "queue_full")._value.get()
    refusal = door.look(POST, b"/v1/translate", [*JSON, (b"x-request-id", b"abc-1")])
    assert isinstance(refusal, Refusal)
    raw = refusal.answer(time.perf_counter(), [(b"server", b"uvicorn")], keep_alive=True)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert lines[0] == "HTTP/1.1 503 Service Unavailable" and "connection" not in headers
    assert headers["retry-after"] == "1" and headers["x-request-id"] == "abc-1"
    assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
    error = json.loads(body)
    assert error["code"] == "overloaded" and "model translator has 2 texts waiting (limit 2)" in error["error"]
    # the bytes the app's JSONResponse would send for the same error
    from fastapi.responses import JSONResponse

    assert body == JSONResponse(Overloaded(error["error"]).body()).body
    assert metrics.REJECTED.labels("translator", "1", "queue_full")._value.get() == rejected + 1
    (entry,) = access_lines()
    assert entry["status"] == 503 and entry["route"] == "/v1/translate"
    closing = refusal.answer(time.perf_counter(), [], keep_alive=False)
    assert b"\r\nconnection: close\r\n" in closing


def test_refusals_made_again_say_the_state_of_the_moment_and_each_counts() -> None:
    """The door reuses the bytes of a refusal it has made for the same state (service/early_refusal.py
    RefusalBodies): a later state must not get an earlier message, nor a reused one go uncounted."""
    door = _door()
    admission = _fill(door, "translator")

    def refused() -> str:
        refusal = door.look(POST, b"/v1/translate", JSON)
        assert isinstance(refusal, Refusal)
        raw = refusal.answer(time.perf_counter(), [], keep_alive=True)
        return str(json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"])

    rejected = metrics.REJECTED.labels("translator", "1", "queue_full")._value.get()
    first, again = refused(), refused()
    assert first == again and "has 2 texts waiting (limit 2)" in first
    admission.arriving = 1
    assert "has 2 texts waiting and 1 requests arriving (limit 2)" in refused()
    admission.waiting, admission.arriving = 1, 1
    assert "has 1 texts waiting and 1 requests arriving (limit 2)" in refused()
    assert metrics.REJECTED.labels("translator", "1", "queue_full")._value.get() == rejected + 4


@pytest.mark.parametrize("path,route", [
    (b"/v2/models/translator/infer", "/v2/models/{name}/infer"),
    (b"/v2/models/translator/versions/1/infer", "/v2/models/{name}/versions/{version}/infer"),
    (b"/v2/models/translator/generate", "/v2/models/{name}/generate"),
    (b"/v2/models/translator/generate_stream", "/v2/models/{name}/generate_stream"),
    (b"/v2/models/sentiment/infer", "/v2/models/{name}/infer"),
])
def test_every_inference_route_of_a_full_model_is_refused_on_arrival(path: bytes, route: str) -> None:
    door = _door()
    _fill(door, "translator")
    _fill(door, "sentiment")
    refusal = door.look(POST, path, JSON)
    assert isinstance(refusal, Refusal) and refusal.route == route


def test_a_v2_infer_refused_on_arrival_is_a_failure_in_the_models_statistics() -> None:
    """Triton's statistics (which perf_analyzer reads) count a refused request as failed; refused
    here, it never reached the code that counts, and an overload showed as no failures at all."""
    from service import v2_stats

    door = _door()
    _fill(door, "translator")
    before = v2_stats._outcomes.get(("translator", "1"), v2_stats._Outcomes()).fail_count
    for path in (b"/v2/models/translator/infer", b"/v2/models/translator/versions/1/infer",
                 b"/v2/models/translator/generate", b"/v1/translate"):  # only infer is in Triton's statistics
        refusal = door.look(POST, path, JSON)
        assert isinstance(refusal, Refusal)
        refusal.answer(time.perf_counter(), [], keep_alive=True)
    assert v2_stats._outcomes[("translator", "1")].fail_count == before + 2


@pytest.mark.parametrize("method,path", [
    (b"GET", b"/v2/models/translator"),  # metadata: no model run
    (b"POST", b"/v2/models/nobody/infer"),  # the app's 404
    (b"POST", b"/v2/models/translator/versions/9/infer"),
    (b"POST", b"/v2/models/sentiment/generate"),  # the app's 4xx: it does not translate
    (b"POST", b"/v2/repository/models/translator/load"),
])
def test_other_routes_are_left_to_the_app(method: bytes, path: bytes) -> None:
    door = _door()
    _fill(door, "translator")
    _fill(door, "sentiment")
    assert door.look(method, path, JSON) is None


@pytest.mark.parametrize("headers,settings", [
    ([*JSON, (b"origin", b"http://page.example")], {}),  # browsers: the CORS middleware answers
    ([*JSON, (b"expect", b"100-continue")], {}),
    ([(b"content-type", b"text/plain"), (b"content-length", b"20")], {}),  # the app's 415
    ([(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")], {}),  # size unknown yet
    ([(b"content-type", b"application/json"), (b"content-length", b"2000000")], {}),  # the app's 413
    (JSON, {"api_keys": ["k1"]}),  # no key: the app's 401
    ([*JSON, (b"x-api-key", b"wrong")], {"api_keys": ["k1"]}),
])
def test_a_request_the_app_would_answer_otherwise_is_not_refused_here(
        headers: list[tuple[bytes, bytes]], settings: dict[str, Any]) -> None:
    door = _door(**settings)
    admission = _fill(door, "translator")
    assert door.look(POST, b"/v1/translate", headers) is admission  # it still counts while it waits


def test_a_keyed_request_with_its_key_is_refused() -> None:
    door = _door(api_keys=["k1"])
    _fill(door, "translator")
    assert isinstance(door.look(POST, b"/v1/translate", [*JSON, (b"authorization", b"Bearer k1")]), Refusal)


def test_v1_translate_with_several_language_pairs_is_left_to_the_app() -> None:
    door = _door(_Model("en-de", "translation"), _Model("en-fr", "translation"))
    _fill(door, "en-de")
    _fill(door, "en-fr")
    assert door.look(POST, b"/v1/translate", JSON) is None  # the body chooses the pair
    assert isinstance(door.look(POST, b"/v2/models/en-fr/infer", JSON), Refusal)


def test_the_routes_it_remembers_are_bounded_in_count_and_size() -> None:
    door = _door()
    long_query = b"/v1/translate?q=" + b"x" * 100_000
    assert isinstance(door.look(POST, long_query, JSON), Admission)  # still reached...
    assert long_query not in door._routes  # ...but not kept: a client could fill memory with such URLs
    for i in range(300):
        door.look(POST, b"/v1/translate?%d" % i, JSON)
    assert len(door._routes) == 256


def test_a_closed_door_neither_counts_nor_refuses() -> None:
    door = _door()
    _fill(door, "translator")
    door.close()  # the server is stopping: the app answers
    assert door.look(POST, b"/v1/translate", JSON) is None


def test_the_v1_routes_reach_the_served_models_by_their_cards_tasks() -> None:
    from service.registry import ModelRegistry

    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    registry = ModelRegistry.load(Settings(model_repository=COMMITTED_MODELS, warmup=False, precision="fp32"))
    door = EarlyRefusal(Settings(warmup=False))
    door.open(registry)
    sentiment = registry.for_task("text-classification").engine.admission
    translator = registry.for_task("translation").engine.admission
    assert door.look(POST, b"/v1/sentiment", JSON) is sentiment
    assert door.look(POST, b"/v1/translate", JSON) is translator
    assert door.look(POST, b"/v2/models/sentiment/generate", JSON) is None
