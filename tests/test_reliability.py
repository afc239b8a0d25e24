"""Overload, deadlines, shutdown, hostile input, faults and access, against real servers."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from loadtests import reliability
from loadtests.server import metric_value
from tests.conftest import COMMITTED_MODELS, Server

LONG = "A man in a blue shirt and a woman in a red dress are walking their two dogs in the park. "


def test_overload_burst_gets_results_or_fast_503_and_health_stays_fast() -> None:
    report = reliability.overload(COMMITTED_MODELS, burst=240, queue_size=16, rounds=1)
    assert report.lost == 0 and report.connection_errors == 0
    assert set(report.statuses) <= {200, 503} and report.statuses[200] and report.statuses[503]
    assert report.health_failures == 0
    # the 50 ms target is checked by the reliability report; CI machines are shared and noisy
    assert report.health_p(99) < 0.5
    assert report.exit_code == 0


def test_a_translation_burst_against_a_small_queue_gets_200_or_a_fast_503_never_504() -> None:
    report = reliability.translation_burst(COMMITTED_MODELS, burst=200, queue_size=8)
    assert report.lost == 0
    assert set(report.statuses) <= {200, 503} and report.statuses[200] and report.statuses[503]
    assert len(report.server_refusal_ms) == report.statuses[503]
    # refusals are decided on arrival; the < 50 ms target is the reliability report's (CI is noisy)
    assert max(report.server_refusal_ms) < 2000
    assert 0 <= report.lag_probes_over_20ms <= report.lag_probes
    assert report.loop_cpu_s > 0  # read from /proc: the server's event loop parsed and answered them
    assert "probes over 20 ms" in "\n".join(report.lines())
    assert re.search(r"event loop CPU over the burst: \d+ ms, \d+ us a request", "\n".join(report.lines()))


@pytest.mark.parametrize("in_line", [False, True])
def test_the_bursts_floor_answers_every_request_with_its_server_side_time(in_line: bool) -> None:
    report = reliability.burst_floor(burst=100, in_line=in_line)
    assert report.statuses == {503: 100}
    assert len(report.server_ms) == len(report.client_s) == 100
    assert all(0 <= ms < 1000 * s for ms, s in zip(sorted(report.server_ms), sorted(report.client_s), strict=True))
    assert "floor" in report.lines()[0]
    assert ("with the server's pass budget" in report.lines()[0]) == in_line


def test_the_floor_in_line_takes_the_servers_pass_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtests import floor_app

    monkeypatch.setenv("SEQSERVE_REQUESTS_PER_LOOP_PASS", "7")
    started: list[object] = []
    monkeypatch.setattr(floor_app.uvicorn, "run", lambda app, **kwargs: started.append(app))
    floor_app.main(["--port", "1", "--in-line"])
    floor_app.main(["--port", "1"])
    assert isinstance(started[0], floor_app.InLine) and started[0].state.pass_budget.per_pass == 7
    assert started[1] is floor_app.app


def test_the_report_runs_the_scenarios_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    floor = reliability.burst_floor
    monkeypatch.setattr(reliability, "burst_floor", lambda in_line=False: floor(burst=50, in_line=in_line))
    out = tmp_path / "reliability.md"
    reliability.main(["--scenario", "floor", "--out", str(out)])
    report = out.read_text()
    assert "## floor" in report and "## overload" not in report and "## translation burst" not in report
    assert "## floor" in capsys.readouterr().out


def test_sigterm_drains_accepted_work_and_exits_zero() -> None:
    report = reliability.shutdown(COMMITTED_MODELS, requests=24, after_s=0.3)
    assert report.statuses[200] == 24 and report.lost == 0 and report.connection_errors == 0
    assert report.exit_code == 0


def test_deadline_header_gives_504_while_a_long_batch_runs(committed_server: Server) -> None:
    def dropped_as(reason: str) -> float:
        return metric_value(committed_server.url, "seqserve_dropped_total", model="translate-en-de", reason=reason)

    # work an earlier test's client left may still be in the decoder, to be counted as client_gone
    idle = time.monotonic() + 30
    while time.monotonic() < idle and metric_value(committed_server.url, "seqserve_in_flight",
                                                   model="translate-en-de") > 0:
        time.sleep(0.05)
    dropped = {reason: dropped_as(reason) for reason in ("deadline", "client_gone")}
    r = httpx.post(f"{committed_server.url}/v1/translate", json={"text": LONG * 2, "beam_size": 10},
                   headers={"X-Request-Timeout": "0.02"}, timeout=30)
    assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded"
    # the work it left is dropped as past its deadline, not as if its client had gone (it was counted so)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and dropped_as("deadline") == dropped["deadline"]:
        time.sleep(0.05)
    assert dropped_as("deadline") > dropped["deadline"] and dropped_as("client_gone") == dropped["client_gone"]
    r = httpx.post(f"{committed_server.url}/v1/translate", json={"text": "hi"},
                   headers={"X-Request-Timeout": "soon"}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "X-Request-Timeout"
    r = httpx.post(f"{committed_server.url}/v1/translate", json={"text": "hi"},
                   headers={"X-Request-Timeout": "0"}, timeout=30)
    assert r.status_code == 422 and "above 0" in r.json()["error"]  # 0 is no deadline anyone can meet
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [LONG * 2]}],
            "parameters": {"timeout": 20_000, "beam_size": 10}}  # microseconds, as Triton
    r = httpx.post(f"{committed_server.url}/v2/models/translate-en-de/infer", json=body, timeout=30)
    assert r.status_code == 504


HOSTILE_TEXTS = [
    "x" * 1999,  # one very long word
    "!!!???...,,,;;;",  # only punctuation
    "Hello Привет 你好 مرحبا שלום 😀",  # mixed scripts
    "null\x00byte",
    "\x01\x02\x03 control \x1b[31m chars",
    "\u202e reversed \u200b zero width",
    "😀" * 500,
    "🏳️‍🌈👨‍👩‍👧",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS, ids=range(len(HOSTILE_TEXTS)))
def test_hostile_texts_never_get_a_5xx(committed_server: Server, text: str) -> None:
    for route in ("/v1/sentiment", "/v1/translate"):
        r = httpx.post(committed_server.url + route, json={"text": text, **({"beam_size": 1} if "tr" in route else {})},
                       timeout=60)
        assert r.status_code in (200, 422), r.text
        if r.status_code == 422:
            assert r.json()["field"] == "text"


@pytest.mark.parametrize("raw", [
    b"\xff\xfe\xfd invalid utf-8",
    b'{"text": "\xff\xfe"}',
    b"[" * 100_000 + b"]" * 100_000,  # deeply nested
    b'{"text": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    b"",
    b"null",
    b'{"text": "ok", "text": 5}',
])
def test_hostile_bodies_get_a_4xx(committed_server: Server, raw: bytes) -> None:
    r = httpx.post(f"{committed_server.url}/v1/sentiment", content=raw, headers={"content-type": "application/json"},
                   timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]


def test_a_slow_client_does_not_block_others(committed_server: Server) -> None:
    body = b'{"text": "ok film"}'
    with socket.create_connection(("127.0.0.1", committed_server.port)) as slow:
        slow.sendall(b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:4])
        start = time.perf_counter()
        r = httpx.post(f"{committed_server.url}/v1/sentiment", json={"text": "fine"}, timeout=10)
        assert r.status_code == 200 and time.perf_counter() - start < 2
        slow.sendall(body[4:])
        slow.settimeout(10)
        assert b"200 OK" in slow.recv(4096)


def test_a_model_card_that_does_not_match_its_graph_stops_start_up(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(COMMITTED_MODELS, repo)
    card_file = repo / "translate-en-de" / "1" / "model.json"
    card = json.loads(card_file.read_text())
    card["graphs"]["decoder_step"]["inputs"][0]["name"] = "previous_token"
    card_file.write_text(json.dumps(card))
    server = Server(repo)
    assert server.proc.wait(timeout=60) != 0
    output = server.output()
    assert str(repo / "translate-en-de" / "1" / "decoder_step.onnx") in output and "previous_token" in output


def test_a_missing_model_file_stops_start_up(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(COMMITTED_MODELS, repo)
    (repo / "sentiment" / "1" / "sentiment.spm.model").unlink()
    server = Server(repo)
    assert server.proc.wait(timeout=60) != 0
    assert "sentiment.spm.model" in server.output()


def test_api_keys_guard_inference_but_not_health() -> None:
    server = Server(COMMITTED_MODELS, api_keys='["s3cret-key"]', warmup="false").wait_ready()
    try:
        url = server.url
        assert httpx.post(f"{url}/v1/sentiment", json={"text": "fine"}).status_code == 401
        assert httpx.post(f"{url}/v1/sentiment", json={"text": "fine"},
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{url}/v1/sentiment", json={"text": "fine"},
                          headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert httpx.post(f"{url}/v1/sentiment", json={"text": "fine"},
                          headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
    finally:
        server.stop()
    assert "s3cret-key" not in server.output()


def test_cors_is_off_by_default_and_configurable(committed_server: Server) -> None:
    preflight = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
    r = httpx.options(f"{committed_server.url}/v1/sentiment", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    server = Server(COMMITTED_MODELS, cors_origins='["http://example.com"]', warmup="false").wait_ready()
    try:
        r = httpx.options(f"{server.url}/v1/sentiment", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "http://example.com"
    finally:
        server.stop()


def _dropped(url: str, model: str) -> float:
    return metric_value(url, "seqserve_dropped_total", model=model, reason="client_gone")


def test_a_client_that_leaves_is_dropped_from_decoding(committed_server: Server) -> None:
    before = _dropped(committed_server.url, "translate-en-de")
    body = json.dumps({"text": LONG * 2, "beam_size": 10, "max_length": 200}).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", committed_server.port)) as gone:
            gone.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.01)  # read and decoding by then; a beam-10 translation of this takes ~80 ms
    deadline = time.monotonic() + 10
    while _dropped(committed_server.url, "translate-en-de") < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _dropped(committed_server.url, "translate-en-de") >= before + 1
    assert httpx.post(f"{committed_server.url}/v1/sentiment", json={"text": "still serving"}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/sentiment", "/v2/models/sentiment/infer"])
def test_a_client_that_leaves_a_request_of_long_texts_has_its_sentences_dropped(committed_server: Server,
                                                                                  path: str) -> None:
    # 40 reviews over the subword limit: 1,000 sentences, about half a second of both workers
    review = " ".join(["The first act drags, and the dialogue is often clumsy.",
                       "But the second half is a triumph of acting and music."] * 12)
    texts = [f"{review} Take {i}." for i in range(40)]
    payload = ({"texts": texts} if path.startswith("/v1") else
               {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [40], "data": texts}]})
    body = json.dumps(payload).encode()
    before = _dropped(committed_server.url, "sentiment")
    with socket.create_connection(("127.0.0.1", committed_server.port)) as gone:
        gone.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while _dropped(committed_server.url, "sentiment") < before + 100 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _dropped(committed_server.url, "sentiment") >= before + 100  # most of its sentences never ran
    # and none is left counted in flight (what a drain waits for, and autoscalers read)
    assert metric_value(committed_server.url, "seqserve_in_flight", model="sentiment") == 0
    assert httpx.post(f"{committed_server.url}/v1/sentiment", json={"text": "still serving"}).status_code == 200


def test_the_bulk_scenario_scores_long_reviews_while_short_requests_are_answered() -> None:
    report = reliability.bulk(COMMITTED_MODELS)
    assert report.bulk_status == 200 and report.bulk_sentences == 40 * 25  # each review by its sentences
    assert report.short_failed == 0 and report.short_s  # answered while the bulk request ran
    assert report.lines()[0].startswith("## bulk sentiment: one request of 40 long texts")
