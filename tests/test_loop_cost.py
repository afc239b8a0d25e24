"""loadtests/loop_cost.py: the whole sentiment route in process, and what it leaves for the
garbage collector."""

from __future__ import annotations

import re

import pytest

from loadtests import loop_cost


def test_every_request_is_answered_and_freed_without_the_garbage_collector(capsys: pytest.CaptureFixture[str]) -> None:
    # a reference cycle anywhere in the app's layers, the batcher or the route would leave garbage
    # here (uvicorn's side of a request, below the app, is tests/test_http_protocol.py's)
    loop_cost.main(["--model", "instant", "--clients", "8", "--requests", "400", "--rounds", "2", "--garbage"])
    out = capsys.readouterr().out
    assert "statuses {200: 800}" in out, out
    median = r"median: [\d.]+ req/s, event loop \d+ us, process \d+ us a request, garbage 0\.0 objects"
    assert re.search(median, out), out


def test_the_real_model_answers_too(capsys: pytest.CaptureFixture[str]) -> None:
    loop_cost.main(["--clients", "4", "--requests", "100", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "statuses {200: 100}" in out and "real model" in out, out


def test_layers_say_what_each_layer_of_the_app_costs(capsys: pytest.CaptureFixture[str]) -> None:
    loop_cost.main(["--model", "instant", "--clients", "4", "--requests", "100", "--rounds", "1", "--layers"])
    out = capsys.readouterr().out
    assert re.search(r"statuses \{200: \d+\}\n", out), out  # every answer a 200, whatever layer it entered at
    # every layer from the app down to the inference routes' direct path, each entered once
    for name in ("(app)", "(RequestContextMiddleware)", "(HotRouteMiddleware)", "(app, access log off)"):
        assert name in out, out
    assert re.search(r"\| RequestContextMiddleware \| \d+ us \| -?\d+ us \|", out), out
    assert re.search(r"the access log's line: -?\d+ us a request", out), out


def test_via_the_protocol_the_direct_route_answers_and_frees_every_request(capsys: pytest.CaptureFixture[str]) -> None:
    # the requests' bytes through the server's protocol: parsed, answered by the direct route
    # (service/direct_route.py), written; nothing left for the garbage collector either
    from service.metrics import REQUESTS

    before = REQUESTS.labels("/v1/sentiment", "200")._value.get()
    loop_cost.main(["--model", "instant", "--via", "protocol", "--clients", "8", "--requests", "400", "--rounds", "2",
                    "--garbage"])
    out = capsys.readouterr().out
    assert "in process via protocol" in out and "statuses {200: 800}" in out, out
    assert re.search(r"median: [\d.]+ req/s, event loop \d+ us, process \d+ us a request, garbage 0\.0 objects", out)
    assert REQUESTS.labels("/v1/sentiment", "200")._value.get() - before >= 800  # counted as answered


def test_layers_are_the_apps_own_not_the_protocols() -> None:
    with pytest.raises(SystemExit):
        loop_cost.main(["--via", "protocol", "--layers"])


def test_a_sleeping_model_paces_the_requests_without_the_models_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    loop_cost.main(["--model", "instant", "--sleep-us", "2000", "--via", "protocol", "--clients", "4",
                    "--requests", "40", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "instant model sleeping 2000 us a text" in out and "statuses {200: 40}" in out, out
    rps = float(re.search(r"median: +([\d.]+) req/s", out)[1])  # type: ignore[index]
    # two model threads, each asleep 2 ms a text: at most 1,000 a second (answered at once: thousands)
    assert 0 < rps < 2000, out
