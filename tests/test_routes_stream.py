"""Streamed translation over Server-Sent Events (service/routes_stream.py), against a real server:
REST v1 with "stream": true and Triton's generate extension."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from loadtests.server import metric_value
from loadtests.sse_client import post_stream
from tests.conftest import COMMITTED_MODELS, Server

TRANSLATOR = "translate-en-de"
SENTENCES = ["A man in a red shirt is riding a bike 😀.", "Two young children are playing in the sand near the water.",
             "A dog runs."]
# this input keeps beam 10 decoding to its 200-step limit (~1.5 s on a 2-core machine)
ENDLESS = " ".join(["red blue green yellow"] * 7)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        yield c


def _plain(client: httpx.Client, url: str, text: str, beam_size: int, **more: int) -> dict:
    r = client.post(f"{url}/v1/translate", json={"text": text, "beam_size": beam_size, "return_attention": True,
                                                 **more})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("text", SENTENCES)
def test_greedy_stream_sends_one_delta_per_token_and_the_same_result(committed_server: Server,
                                                                     client: httpx.Client, text: str) -> None:
    url = committed_server.url
    s = post_stream(client, f"{url}/v1/translate",
                    {"text": text, "stream": True, "beam_size": 1, "return_attention": True})
    assert s.status == 200 and s.content_type.startswith("text/event-stream")
    names = [e.event for e in s.events]
    assert names[-1] == "result" and set(names[:-1]) == {"delta"}
    deltas, result = [e.data for e in s.events[:-1]], s.events[-1].data
    plain = _plain(client, url, text, 1)
    assert result == plain
    assert "".join(d["text"] for d in deltas) == result["translation"]
    assert [d["token"] for d in deltas] == result["target_tokens"] and [d["index"] for d in deltas] == list(
        range(len(deltas)))
    assert [d["attention"] for d in deltas] == result["attention"]
    assert deltas[0]["source_tokens"] == result["source_tokens"]
    assert all("source_tokens" not in d for d in deltas[1:])


def test_greedy_stream_without_attention_sends_none(committed_server: Server, client: httpx.Client) -> None:
    s = post_stream(client, f"{committed_server.url}/v1/translate", {"text": SENTENCES[1], "stream": True,
                                                                     "beam_size": 1})
    assert all("attention" not in e.data for e in s.events[:-1]) and s.events[-1].data["attention"] is None


def test_beam_stream_sends_the_best_live_beam_then_the_result(committed_server: Server, client: httpx.Client) -> None:
    url = committed_server.url
    # long enough for several of the stream's hand-overs (at most one per SEQSERVE_STREAM_INTERVAL_MS,
    # 50 ms): beam 10 to the 200-step limit took ~240 ms here (fp32), where beam 5 to 150 steps
    # took 107-118 ms and sometimes gave only two hand-overs before the result
    body = {"text": ENDLESS, "stream": True, "beam_size": 10, "max_length": 200, "return_attention": True}
    s = post_stream(client, f"{url}/v1/translate", body)
    names = [e.event for e in s.events]
    assert names[-1] == "result" and set(names[:-1]) == {"hypothesis"} and len(names) > 3
    hypotheses = [e.data for e in s.events[:-1]]
    assert [h["step"] for h in hypotheses] == sorted({h["step"] for h in hypotheses})
    assert all(a["target_tokens"] != b["target_tokens"] for a, b in itertools.pairwise(hypotheses))
    assert s.events[-1].data == _plain(client, url, ENDLESS, 10, max_length=200)


def test_refusals_before_the_stream_are_json_errors(committed_server: Server, client: httpx.Client) -> None:
    url = f"{committed_server.url}/v1/translate"
    s = post_stream(client, url, {"texts": ["a", "b"], "stream": True})
    assert s.status == 422 and s.body is not None and s.body["field"] == "stream"
    s = post_stream(client, url, {"text": "a dog", "stream": True, "beam_size": 11})
    assert s.status == 422 and s.body is not None and s.body["field"] == "beam_size"
    s = post_stream(client, url, {"text": ENDLESS, "stream": True, "beam_size": 10},
                    headers={"X-Request-Timeout": "0.0001"})
    assert s.status == 504 and s.body is not None and s.body["code"] == "deadline_exceeded"


def test_an_error_after_the_stream_started_is_an_error_event(committed_server: Server, client: httpx.Client) -> None:
    s = post_stream(client, f"{committed_server.url}/v1/translate",
                    {"text": ENDLESS, "stream": True, "beam_size": 10, "max_length": 200},
                    # the first event comes within ~20 ms; 200 beam-10 steps take >= 0.35 s on 2 cores
                    # (0.6 s let a quiet machine finish first)
                    headers={"X-Request-Timeout": "0.2"})
    assert s.status == 200
    assert s.events[0].event == "hypothesis"
    assert s.events[-1].event == "error" and s.events[-1].data["code"] == "deadline_exceeded"


def _dropped(url: str) -> float:
    return metric_value(url, "seqserve_dropped_total", model=TRANSLATOR, reason="client_gone")


def test_a_client_that_leaves_a_stream_is_dropped_at_the_next_step(committed_server: Server) -> None:
    before = _dropped(committed_server.url)
    body = json.dumps({"text": ENDLESS, "stream": True, "beam_size": 10, "max_length": 200}).encode()
    with socket.create_connection(("127.0.0.1", committed_server.port)) as conn:
        conn.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        seen = b""
        while b"event: hypothesis" not in seen:  # decoding has started
            seen += conn.recv(4096)
        left = time.monotonic()
    deadline = left + 10
    while _dropped(committed_server.url) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _dropped(committed_server.url) >= before + 1
    # dropped long before its ~200 steps would have ended on their own
    assert time.monotonic() - left < 1.0


def test_a_stream_its_client_leaves_is_logged_499_one_ending_in_an_error_its_status_a_finished_one_200() -> None:
    """Its status line said 200, but nobody read the whole answer: logged and counted as a request
    whose client left before its answer, so that an operator finds abandoned streams one by one.
    One that ended with an error event is logged and counted with the error's status (an alert on
    5xx sees it)."""
    server = Server(COMMITTED_MODELS, warmup="false", access_log="true").wait_ready()
    try:
        body = json.dumps({"text": ENDLESS, "stream": True, "beam_size": 10, "max_length": 200}).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as conn:
            conn.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"X-Request-ID: left-1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            seen = b""
            while b"event: hypothesis" not in seen:  # the stream has started
                seen += conn.recv(4096)
        finished = httpx.post(f"{server.url}/v1/translate", json={"text": "A dog runs.", "stream": True},
                              headers={"X-Request-ID": "read-2"}, timeout=30)
        assert finished.status_code == 200 and "event: result" in finished.text
        late = httpx.post(f"{server.url}/v1/translate", timeout=30,
                          json={"text": ENDLESS, "stream": True, "beam_size": 10, "max_length": 200},
                          headers={"X-Request-ID": "late-3", "X-Request-Timeout": "0.2"})
        assert late.status_code == 200 and "event: error" in late.text and "deadline_exceeded" in late.text
        end = time.monotonic() + 10
        # each line is written once its answer is done: the finished one's may follow its last byte
        ids = ('"left-1"', '"read-2"', '"late-3"')
        while not all(i in server.output() for i in ids) and time.monotonic() < end:
            time.sleep(0.05)
        lines = {e["request_id"]: e for e in (json.loads(line) for line in server.output().splitlines()
                                              if line.startswith('{"time"') and '"request_id"' in line)}
        assert lines["left-1"]["status"] == 499 and lines["read-2"]["status"] == 200
        assert lines["late-3"]["status"] == 504
        for status in ("499", "504"):
            assert metric_value(server.url, "seqserve_requests_total", route="/v1/translate", status=status) == 1
    finally:
        server.stop()


def test_stream_metrics(committed_server: Server, client: httpx.Client) -> None:
    post_stream(client, f"{committed_server.url}/v1/translate", {"text": SENTENCES[2], "stream": True})
    url = committed_server.url
    assert metric_value(url, "seqserve_stream_time_to_first_event_seconds_count", model=TRANSLATOR) >= 1
    assert metric_value(url, "seqserve_stream_tokens_per_second_count", model=TRANSLATOR) >= 1


# --- Triton's generate extension -----------------------------------------------------------------
def test_generate_answers_like_v1(committed_server: Server, client: httpx.Client) -> None:
    url = committed_server.url
    for path in (f"/v2/models/{TRANSLATOR}/generate", f"/v2/models/{TRANSLATOR}/versions/1/generate"):
        r = client.post(f"{url}{path}", json={"text_input": SENTENCES[1], "parameters": {"beam_size": 5}})
        assert r.status_code == 200
        v1 = _plain(client, url, SENTENCES[1], 5)
        assert r.json() == {"model_name": TRANSLATOR, "model_version": "1", "text_output": v1["translation"],
                            "finish_reason": v1["finish_reason"]}


def test_generate_reads_a_body_without_content_type_as_json(committed_server: Server, client: httpx.Client) -> None:
    # as v1 and v2 infer do (an Open Inference Protocol client may send application/octet-stream)
    url, body = committed_server.url, json.dumps({"text_input": SENTENCES[1]}).encode()
    for headers in ({}, {"content-type": "application/octet-stream"}):
        for action in ("generate", "generate_stream"):
            r = httpx.post(f"{url}/v2/models/{TRANSLATOR}/{action}", content=body, headers=headers, timeout=30)
            assert r.status_code == 200, (headers, action, r.text)
    assert r.text.startswith("data: ")


@pytest.mark.parametrize("beam_size", [1, 5])
def test_generate_stream_text_outputs_concatenate_to_the_translation(committed_server: Server,
                                                                      client: httpx.Client, beam_size: int) -> None:
    url = committed_server.url
    s = post_stream(client, f"{url}/v2/models/{TRANSLATOR}/generate_stream",
                    {"text_input": SENTENCES[0], "max_tokens": 60, "beam_size": beam_size})
    assert s.status == 200 and all(e.event == "message" for e in s.events)
    assert all(e.data["model_name"] == TRANSLATOR and e.data["model_version"] == "1" for e in s.events)
    plain = client.post(f"{url}/v1/translate", json={"text": SENTENCES[0], "beam_size": beam_size,
                                                     "max_length": 60}).json()
    assert "".join(e.data["text_output"] for e in s.events) == plain["translation"]
    assert s.events[-1].data.get("finished") is True
    # greedy: an event per token; beam search: its first step's best beam at least (later ones at
    # most every STREAM_INTERVAL_MS), then the whole translation
    assert len(s.events) > 2 if beam_size == 1 else len(s.events) >= 2
    if beam_size > 1:
        assert all(e.data["text_output"] == "" and "hypothesis" in e.data for e in s.events[:-1])


def test_generate_refuses_bad_parameters_and_models_that_do_not_generate(committed_server: Server,
                                                                          client: httpx.Client) -> None:
    url = committed_server.url
    # each error names the parameter as the request gave it: at the top level or under "parameters"
    cases = [({"text_input": "a dog", "temperature": 0.5}, "temperature"),
             ({"text_input": "a dog", "parameters": {"beam_size": "5"}}, "parameters.beam_size"),
             ({"text_input": "a dog", "beam_size": "5"}, "beam_size"),
             ({"text_input": "a dog", "parameters": {"beam_size": 50}}, "parameters.beam_size"),
             ({"text_input": "a dog", "max_tokens": 0}, "max_tokens"),
             ({"text_input": "a dog", "parameters": {"max_tokens": 999}}, "parameters.max_tokens"),
             ({"text_input": "a dog", "parameters": {"max_length": 0}}, "parameters.max_length"),
             # in one place: which would win is not for the client to guess
             ({"text_input": "a dog", "max_tokens": 9, "parameters": {"beam_size": 1}}, "max_tokens"),
             ({"text_input": "a dog", "max_tokens": 9, "max_length": 9}, "max_tokens"),
             ({"text_input": "a dog", "sampling_topk": 5, "beam_size": 3}, "beam_size"),
             ({"text_input": ""}, "text_input"),
             ({"text": "a dog"}, "text_input")]
    for body, field in cases:
        for path in ("generate", "generate_stream"):
            r = client.post(f"{url}/v2/models/{TRANSLATOR}/{path}", json=body)
            assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    r = client.post(f"{url}/v2/models/sentiment/generate_stream", json={"text_input": "a dog"})
    assert r.status_code == 422 and r.json()["field"] == "model"
    assert client.post(f"{url}/v2/models/nope/generate", json={"text_input": "a dog"}).status_code == 404
