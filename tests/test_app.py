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
