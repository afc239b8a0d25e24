"""service/app.py: how the app wires its parts together."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import COMMITTED_MODELS


def test_the_models_threads_give_way_to_requests_waiting_for_the_event_loop() -> None:
    app = create_app(Settings(model_repository=COMMITTED_MODELS, warmup=False))
    with TestClient(app):
        # what every model's threads call before a turn of work, and what a version loaded later gets
        assert app.state.registry.give_way == app.state.pass_budget.give_way


def test_redirects_are_relative_and_the_docs_carry_the_root_path() -> None:
    """Behind a proxy that serves seqserve under a prefix it strips (SEQSERVE_ROOT_PATH) and over
    TLS: a redirect's Location is relative, so it keeps the prefix and the client's scheme (an
    absolute one said http:// and left the prefix), and the API docs load the OpenAPI document
    through the prefix by relative links; its servers name the prefix for "Try it out"."""
    app = create_app(Settings(model_repository=COMMITTED_MODELS, warmup=False, root_path="/seqserve"))
    with TestClient(app, base_url="https://api.example.com", follow_redirects=False) as client:
        for path, location in (("/", "ui/"), ("/ui", "ui/"), ("/v1/models/", "../models"),
                               ("/v2/health/ready/", "../ready"), ("/v1/models/?x=1", "../models?x=1")):
            r = client.get(path, headers={"X-Forwarded-Proto": "https"})
            assert (r.status_code, r.headers["location"]) == (307, location), path
        r = client.post("/v1/sentiment/", json={"text": "A fine film."})  # 307 keeps the method and body
        assert (r.status_code, r.headers["location"]) == (307, "../sentiment")
        assert client.get("/nothing/").status_code == 404 and client.get("/v1/models").status_code == 200
        assert client.get("/openapi.json").json()["servers"] == [{"url": "/seqserve"}]
        docs = client.get("/docs").text  # relative links: under the prefix they stay in it
        assert "url: 'openapi.json'" in docs and '"static-offline-docs/swagger-ui-bundle.js"' in docs
        assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
        assert 'spec-url="openapi.json"' in client.get("/redoc").text
        for page in ("/docs", "/redoc"):  # "Try it out" sends keys: no other site frames the pages
            headers = client.get(page).headers
            assert headers["content-security-policy"] == "frame-ancestors 'none'"
            assert headers["x-frame-options"] == "DENY"
            assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
