"""service/cors.py: a refused CORS preflight is the API's JSON error, naming the header at fault."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import COMMITTED_MODELS

ORIGIN = "http://page.example"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(model_repository=COMMITTED_MODELS, warmup=False, cors_origins=[ORIGIN]))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(("headers", "field", "limit"), [
    ({"Origin": "http://other.example", "Access-Control-Request-Method": "POST"}, "Origin", "no list"),
    ({"Origin": ORIGIN, "Access-Control-Request-Method": "DELETE"}, "Access-Control-Request-Method", ["GET", "POST"]),
    ({"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-custom"},
     "Access-Control-Request-Headers", None),
])
def test_a_refused_preflight_names_the_header_and_what_is_allowed(client: TestClient, headers: dict[str, str],
                                                                  field: str, limit: list[str] | str | None) -> None:
    r = client.options("/v1/sentiment", headers=headers)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["code"] == "cors_preflight_refused" and body["field"] == field
    if limit == "no list":  # the allowed origins are the operator's, not told to whoever asks
        assert "limit" not in body and ORIGIN not in r.text
    else:
        assert body["limit"] == limit if limit is not None else "x-api-key" in body["limit"]
    assert "GET, POST" in r.headers["access-control-allow-methods"]  # Starlette's CORS headers stay


def test_an_allowed_preflight_is_answered_as_before(client: TestClient) -> None:
    r = client.options("/v1/sentiment", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
