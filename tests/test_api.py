"""Integration: the real server (uvicorn on 127.0.0.1, a free port) on the committed models."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

import httpx
import pytest

from loadtests.server import metric_value
from tests.conftest import Server


def test_sentiment_single_and_batch(committed_server: Server) -> None:
    one = httpx.post(f"{committed_server.url}/v1/sentiment", json={"text": "A gorgeous, witty, seductive movie."})
    assert one.status_code == 200
    body = one.json()
    assert body["label"] == "positive" and body["model"] == "sentiment" and body["version"] == "1"
    assert body["score"] == pytest.approx(body["probabilities"]["positive"])
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    texts = ["A dull, lifeless film.", "A gorgeous, witty, seductive movie.", "ok"]
    many = httpx.post(f"{committed_server.url}/v1/sentiment", json={"texts": texts}).json()["results"]
    assert [r["label"] for r in many][:2] == ["negative", "positive"]
    assert many[1]["probabilities"] == pytest.approx(body["probabilities"], abs=1e-6)


def test_translate_single_with_attention(committed_server: Server) -> None:
    r = httpx.post(f"{committed_server.url}/v1/translate",
                   json={"text": "A man is riding a bike.", "source": "en", "target": "de", "return_attention": True},
                   timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["translation"] and body["model"] == "translate-en-de"
    assert body["source_tokens"][-1] == "</s>"
    assert len(body["attention"]) == len(body["target_tokens"])
    assert all(len(row) == len(body["source_tokens"]) for row in body["attention"])
    # full rows: each is the step's attention distribution over the source, </s> included
    assert all(abs(sum(row) - 1.0) <= 1e-5 and min(row) >= 0.0 for row in body["attention"])


def test_attention_rows_sum_to_one_for_beams_and_batches(committed_server: Server) -> None:
    texts = ["Two dogs play in the snow.", "A LITTLE GIRL IS CLIMBING INTO A WOODEN PLAYHOUSE",
             "A man in a blue shirt is riding a bicycle while talking on his phone in the busy street."]
    for beam in (1, 5):
        r = httpx.post(f"{committed_server.url}/v1/translate",
                       json={"texts": texts, "beam_size": beam, "return_attention": True}, timeout=30)
        assert r.status_code == 200, r.text
        for result in r.json()["results"]:
            assert result["source_tokens"][-1] == "</s>"
            assert len(result["attention"]) == len(result["target_tokens"])
            for row in result["attention"]:
                assert len(row) == len(result["source_tokens"])
                assert sum(row) == pytest.approx(1.0, abs=1e-5)


def test_typographic_punctuation_translates_as_plain_punctuation(committed_server: Server) -> None:
    """Phones type "’" and "“”": the translator's English never had them (a translation with one
    fell apart into byte pieces); they read as their plain twins."""
    url = f"{committed_server.url}/v1/translate"
    typed = httpx.post(url, json={"texts": ["The dog’s ball is red.", "“A dog,” he said – twice."]}, timeout=30)
    plain = httpx.post(url, json={"texts": ["The dog's ball is red.", '"A dog," he said - twice.']}, timeout=30)
    assert typed.status_code == plain.status_code == 200, typed.text
    assert [r["translation"] for r in typed.json()["results"]] == [r["translation"] for r in plain.json()["results"]]
    assert not any("<0x" in t for r in typed.json()["results"] for t in r["source_tokens"])


def test_translation_is_the_same_alone_and_in_a_batch(committed_server: Server) -> None:
    url = f"{committed_server.url}/v1/translate"
    texts = ["Two dogs play in the snow.", "A woman sings.", "A group of people stand in front of an igloo."]
    alone = [httpx.post(url, json={"text": t, "beam_size": 3}, timeout=30).json() for t in texts]
    together = httpx.post(url, json={"texts": texts, "beam_size": 3}, timeout=30).json()["results"]
    assert [a["translation"] for a in alone] == [b["translation"] for b in together]


def test_null_for_a_field_with_a_default_is_the_default(committed_server: Server) -> None:
    """As for the nullable options: a Go struct of pointer fields without omitempty sends null for
    each field it leaves unset, and got 422 for source, target, return_attention and stream."""
    url = f"{committed_server.url}/v1/translate"
    given = httpx.post(url, json={"text": "A dog runs.", "source": None, "target": None, "return_attention": None,
                                  "stream": None, "beam_size": None}, timeout=30)
    plain = httpx.post(url, json={"text": "A dog runs."}, timeout=30)
    assert given.status_code == 200 and given.json() == plain.json()
    assert given.json()["attention"] is None and given.headers["content-type"] == "application/json"


@pytest.mark.parametrize(("route", "body", "status", "field"), [
    ("/v1/sentiment", {"text": ""}, 422, "text"),
    ("/v1/sentiment", {"text": "   "}, 422, "text"),
    ("/v1/sentiment", {"text": 5}, 422, "text"),
    ("/v1/sentiment", {"texts": []}, 422, "texts"),
    ("/v1/sentiment", {"texts": ["ok", ""]}, 422, "texts[1]"),
    ("/v1/sentiment", {"texts": ["x"] * 65}, 422, "texts"),
    ("/v1/sentiment", {"text": "x" * 2001}, 422, "text"),
    ("/v1/sentiment", {"text": "a", "texts": ["b"]}, 422, "body"),
    ("/v1/sentiment", {"txt": "a"}, 422, "txt"),
    ("/v1/translate", {"text": "hi", "target": "fr"}, 422, "source/target"),
    ("/v1/translate", {"text": "hi", "beam_size": 0}, 422, "beam_size"),
    ("/v1/translate", {"text": "hi", "beam_size": 11}, 422, "beam_size"),
    ("/v1/translate", {"text": "hi", "beam_size": "3"}, 422, "beam_size"),
    ("/v1/translate", {"text": "hi", "max_length": 0}, 422, "max_length"),
    ("/v1/translate", {"text": "hi", "max_length": 100000}, 422, "max_length"),
    ("/v1/translate", {"text": " ".join(["word"] * 400)}, 422, "text"),
    ("/v2/models/nope/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
     404, "model"),
    # the wrong model is said before the body's mistakes, as Triton says it
    ("/v2/models/nope/infer", {"inputs": []}, 404, "model"),
    ("/v2/models/sentiment/versions/9/infer", {"inputs": [{"name": "text"}]}, 404, "model"),
    ("/v2/models/sentiment/infer", {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x"]}]},
     422, "inputs.text.data"),
    ("/v2/models/sentiment/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
     422, "inputs.text.datatype"),
    ("/v2/models/sentiment/infer", {"inputs": []}, 422, "inputs"),
])
def test_bad_input_gets_a_clear_4xx(committed_server: Server, route: str, body: dict, status: int,  # type: ignore[type-arg]
                                    field: str) -> None:
    r = httpx.post(committed_server.url + route, json=body, timeout=30)
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["error"] and payload["field"] == field


def test_every_bad_text_of_a_request_is_named_at_once(committed_server: Server) -> None:
    """A client scoring a file repaired one bad text per round trip: only the first was named.
    Now ``details`` lists each (the first is the answer's error and field), v1 and v2 alike."""
    url = committed_server.url
    texts = ["ok", "", "fine", "a" * 2001, "  ", " ".join(["word"] * 400)]
    r = httpx.post(f"{url}/v1/sentiment", json={"texts": texts}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "texts[1]" and r.json()["limit"] == [1, 2000]
    assert [d["field"] for d in r.json()["details"]] == ["texts[1]", "texts[3]", "texts[4]"]
    assert r.json()["details"][1]["message"] == "texts[3] has 2001 characters; at most 2000 allowed"
    # the subword limit is checked once the characters are fine, each text over it named
    r = httpx.post(f"{url}/v1/sentiment", json={"texts": ["ok", texts[5], "fine", texts[5]]}, timeout=30)
    assert [d["field"] for d in r.json()["details"]] == ["texts[1]", "texts[3]"], r.text
    long = " ".join(["word"] * 200)  # over the translator's 128 subwords
    r = httpx.post(f"{url}/v1/translate", json={"texts": ["A dog.", f"A dog runs. It is {long}.", long]}, timeout=30)
    assert r.status_code == 422 and [d["field"] for d in r.json()["details"]] == ["texts[1]", "texts[2]"], r.text
    assert r.json()["details"][0]["message"].startswith("texts[1] (sentence 2) is ")
    v2 = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["", "ok", ""]}]}
    r = httpx.post(f"{url}/v2/models/sentiment/infer", json=v2, timeout=30)
    assert r.status_code == 422 and [d["field"] for d in r.json()["details"]] == ["inputs.text.data[0]",
                                                                                  "inputs.text.data[2]"], r.text
    ok = httpx.post(f"{url}/v1/sentiment", json={"texts": ["ok"]}, timeout=30).json()
    assert "details" not in ok
    # the message says how many more; details lists at most 20
    r = httpx.post(f"{url}/v1/sentiment", json={"texts": [""] * 30}, timeout=30)
    assert r.json()["error"] == "texts[0] is empty (and 29 more; details lists the first 20)" and \
        len(r.json()["details"]) == 20
    # a text of several sentences over the limit is one problem; texts before a request-wide refusal
    # (the attention maps' size) are named first
    two = f"A dog runs. It is {long}. A cat sleeps. It is {long}."
    r = httpx.post(f"{url}/v1/translate", json={"texts": [two, "A dog."]}, timeout=30)
    assert [d["field"] for d in r.json()["details"]] == ["texts[0]"], r.text
    r = httpx.post(f"{url}/v1/translate", json={"texts": [long, "Go. " * 150], "return_attention": True}, timeout=30)
    assert r.json()["field"] == "texts[0]", r.text


def test_sentiment_of_a_text_of_no_words_is_refused_naming_it(committed_server: Server) -> None:
    """"😍😍😍" was scored 0.90 negative and "™" 0.82 negative: the model reads words, and the
    answer was its bias. Refused with the field named, on v1 and v2; a long text's sentences of no
    words are left out of its mean and the text is scored."""
    url = committed_server.url
    r = httpx.post(f"{url}/v1/sentiment", json={"text": "\U0001f60d\U0001f60d\U0001f60d"}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "text" and "has no words" in r.json()["error"], r.text
    r = httpx.post(f"{url}/v1/sentiment", json={"texts": ["great", "\u2122", "!!!"]}, timeout=30)
    assert r.status_code == 422 and [d["field"] for d in r.json()["details"]] == ["texts[1]", "texts[2]"], r.text
    v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["\U0001f44d"]}]}
    r = httpx.post(f"{url}/v2/models/sentiment/infer", json=v2, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "inputs.text.data[0]", r.text
    review = " ".join(["A gorgeous, witty, seductive movie. !!!"] * 40)  # over 256 subwords: by sentence
    r = httpx.post(f"{url}/v1/sentiment", json={"text": review}, timeout=30)
    assert r.status_code == 200 and r.json()["label"] == "positive", r.text
    one = "A gorgeous, witty, seductive movie with a great cast and a lovely story " * 10 + "that I loved."
    r = httpx.post(f"{url}/v1/sentiment", json={"text": "!!! " * 60 + one}, timeout=30)  # one sentence of words
    assert r.status_code == 200 and r.json()["label"] == "positive", r.text
    # over the limit, so scored by sentences, and words in none of them ("!!!" is none, the markers neither)
    r = httpx.post(f"{url}/v1/sentiment", json={"text": "!!!\n1. \U0001f44d\n2. \U0001f44e\n" * 90}, timeout=30)
    assert r.status_code == 422 and "has no words" in r.json()["error"], r.text


def test_malformed_json_wrong_type_and_size_limits(committed_server: Server) -> None:
    url = f"{committed_server.url}/v1/sentiment"
    r = httpx.post(url, content=b'{"text": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    r = httpx.post(url, content=b"text=hi", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type"
    big = b'{"text": "' + b"a" * (1 << 20) + b'"}'
    r = httpx.post(url, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["limit"] == 1 << 20
    r = httpx.post(url, content=iter([big[:1000], big[1000:]]), headers={"content-type": "application/json"})
    assert r.status_code == 413  # chunked, no Content-Length


def test_models_listing(committed_server: Server) -> None:
    models = {m["name"]: m for m in httpx.get(f"{committed_server.url}/v1/models").json()["models"]}
    assert set(models) == {"sentiment", "translate-en-de"}
    assert models["sentiment"]["labels"] == ["negative", "positive"]
    assert models["translate-en-de"]["languages"] == {"source": "en", "target": "de"}
    assert models["sentiment"]["provider"] == "CPUExecutionProvider"
    assert "sst2_test_accuracy" in models["sentiment"]["metrics"]
    assert models["translate-en-de"]["limits"]["max_beam_size"] >= 5
    # the card's own words on what each model is for
    assert "movie-review" in models["sentiment"]["description"]
    assert "image captions" in models["translate-en-de"]["description"]


def test_open_inference_protocol_round_trips(committed_server: Server) -> None:
    url = committed_server.url
    assert httpx.get(f"{url}/v2").json()["name"] == "seqserve"
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    for name in ("sentiment", "translate-en-de"):
        meta = httpx.get(f"{url}/v2/models/{name}").json()
        assert meta["name"] == name and meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1, 1]}
        assert httpx.get(f"{url}/v2/models/{name}/versions/1").json() == meta
        assert httpx.get(f"{url}/v2/models/{name}/ready").status_code == 200
        assert httpx.get(f"{url}/v2/models/{name}/versions/1/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404
    assert httpx.get(f"{url}/v2/models/sentiment/versions/9").status_code == 404
    body = {"id": "r1", "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES",
                                    "data": [["A gorgeous movie."], ["A dull film."]]}]}
    out = httpx.post(f"{url}/v2/models/sentiment/infer", json=body).json()
    assert out["id"] == "r1" and out["model_name"] == "sentiment" and out["model_version"] == "1"
    outputs = {o["name"]: o for o in out["outputs"]}
    assert outputs["label"]["data"] == ["positive", "negative"] and outputs["label"]["datatype"] == "BYTES"
    assert outputs["probabilities"]["shape"] == [2, 2] and outputs["probabilities"]["datatype"] == "FP32"
    v1 = httpx.post(f"{url}/v1/sentiment", json={"text": "A gorgeous movie."}).json()
    assert outputs["probabilities"]["data"][:2] == pytest.approx([v1["probabilities"]["negative"],
                                                                 v1["probabilities"]["positive"]], abs=1e-6)
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Two dogs play."]}],
            "parameters": {"beam_size": 2}}
    out = httpx.post(f"{url}/v2/models/translate-en-de/versions/1/infer", json=body, timeout=30).json()
    v1 = httpx.post(f"{url}/v1/translate", json={"text": "Two dogs play.", "beam_size": 2}, timeout=30).json()
    assert out["outputs"][0]["data"] == [v1["translation"]]


def test_request_id_is_echoed_or_generated(committed_server: Server) -> None:
    r = httpx.get(f"{committed_server.url}/v2/health/live", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.get(f"{committed_server.url}/v2/health/live")
    assert len(r.headers["x-request-id"]) == 32


def test_metrics_show_requests_and_batches(committed_server: Server) -> None:
    httpx.post(f"{committed_server.url}/v1/sentiment", json={"text": "fine"})
    text = httpx.get(f"{committed_server.url}/metrics").text
    for name in ("seqserve_requests_total", "seqserve_request_latency_seconds_bucket", "seqserve_queue_depth",
                 "seqserve_queue_wait_seconds", "seqserve_batch_size", "seqserve_batch_run_seconds",
                 "seqserve_padding_ratio", "seqserve_tokens_total"):
        assert name in text
    assert 'route="/v1/sentiment",status="200"' in text
    assert "\nseqserve_workers_serving 1.0\n" in text  # one process, serving
    # what alerts compare against (an SRE could not write "queue near full" or "model not taking work")
    url = committed_server.url
    assert metric_value(url, "seqserve_queue_limit", model="sentiment") == 1024
    assert metric_value(url, "seqserve_model_healthy", model="translate-en-de") == 1
    assert metric_value(url, "seqserve_in_flight", model="sentiment") == 0  # answered: none left in flight
    assert metric_value(url, "seqserve_model_info", model="sentiment", version="1", task="text-classification",
                        provider="CPUExecutionProvider", precision="fp32") == 1
    # Open Inference Protocol requests by model version, as Triton counts them
    before = metric_value(url, "seqserve_inference_requests_total", model="sentiment", outcome="success")
    from prometheus_client.parser import text_string_to_metric_families

    at_zero = [s.labels for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "seqserve_inference_requests_total" and s.labels["model"] == "translate-en-de"]
    assert {"model": "translate-en-de", "version": "1", "outcome": "failure"} in at_zero  # there from the start
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}
    assert httpx.post(f"{url}/v2/models/sentiment/infer", json={"inputs": [tensor]}).status_code == 200
    empty = {"inputs": [{**tensor, "data": [""]}]}
    assert httpx.post(f"{url}/v2/models/sentiment/infer", json=empty).status_code == 422
    assert metric_value(url, "seqserve_inference_requests_total", model="sentiment", outcome="success") == before + 1
    assert metric_value(url, "seqserve_inference_requests_total", model="sentiment", outcome="failure") >= 1
    assert metric_value(url, "seqserve_inference_request_duration_seconds_count", model="sentiment") >= before + 2


async def test_200_concurrent_mixed_requests_are_all_answered_correctly(committed_server: Server) -> None:
    url = committed_server.url
    sentences = ["A gorgeous, witty, seductive movie.", "A dull, lifeless film.", "Two dogs play in the snow.",
                 "A woman is singing on a stage.", "It's not bad at all!"]
    async with httpx.AsyncClient(timeout=60) as client:
        expected_s = {s: (await client.post(f"{url}/v1/sentiment", json={"text": s})).json() for s in sentences}
        expected_t = {s: (await client.post(f"{url}/v1/translate", json={"text": s, "beam_size": 1})).json()
                      for s in sentences}
        rng = random.Random(7)
        calls = [(rng.choice(["s", "t"]), rng.choice(sentences)) for _ in range(200)]

        async def call(kind: str, text: str) -> tuple[str, str, dict]:  # type: ignore[type-arg]
            if kind == "s":
                r = await client.post(f"{url}/v1/sentiment", json={"text": text})
            else:
                r = await client.post(f"{url}/v1/translate", json={"text": text, "beam_size": 1})
            assert r.status_code == 200, r.text
            return kind, text, r.json()

        results = await asyncio.gather(*(call(k, t) for k, t in calls))
    for kind, text, body in results:
        if kind == "s":
            assert body["probabilities"] == pytest.approx(expected_s[text]["probabilities"], abs=1e-6)
        else:
            assert body["translation"] == expected_t[text]["translation"]


async def test_queue_full_gives_503_and_deadline_gives_504(tmp_path: Path) -> None:
    from tests.conftest import COMMITTED_MODELS

    server = Server(COMMITTED_MODELS, max_queue_size="2", translation_scheduler="request", max_batch_size="1",
                    warmup="false").wait_ready()
    try:
        # one long sentence: a text's sentences are jobs of their own, each taking a place in the queue
        long_text = ", and ".join(["a man in a blue shirt and a woman in a red dress are walking their dogs"] * 3) + "."
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [client.post(f"{server.url}/v1/translate", json={"text": long_text, "beam_size": 10})
                     for _ in range(30)]
            responses = await asyncio.gather(*tasks)
        statuses = [r.status_code for r in responses]
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] and refused.json()["code"] == "overloaded"
        assert " sentences waiting" in refused.json()["error"]  # a translator's places hold sentences, not texts
        r = httpx.post(f"{server.url}/v1/translate", json={"text": long_text, "beam_size": 10},
                       headers={"X-Request-Timeout": "0.001"}, timeout=30)
        assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded"
        # more texts than the queue holds could never be admitted: a 422 naming the limit, not "retry"
        tensor = {"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]}
        for path, body in (("/v1/sentiment", {"texts": ["a", "b", "c"]}),
                           ("/v2/models/sentiment/infer", {"inputs": [tensor]})):
            r = httpx.post(f"{server.url}{path}", json=body, timeout=30)
            assert r.status_code == 422 and r.json()["limit"] == 2 and "retry-after" not in r.headers, r.text
        models = httpx.get(f"{server.url}/v1/models").json()["models"]
        assert {m["limits"]["max_texts_per_request"] for m in models} == {2}
    finally:
        assert server.stop() == 0


def test_a_corrupt_model_file_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    from tests.conftest import COMMITTED_MODELS

    repo = tmp_path / "models"
    shutil.copytree(COMMITTED_MODELS, repo)
    graph = repo / "sentiment" / "1" / "sentiment.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    server = Server(repo)
    code = server.proc.wait(timeout=60)
    output = server.output()
    assert code != 0
    assert str(graph) in output


def test_text_that_is_no_text_is_refused_naming_the_field(committed_server: Server) -> None:
    url = committed_server.url
    for path, field in (("/v1/translate", "text"), ("/v2/models/translate-en-de/generate", "text_input"),
                        ("/v2/models/translate-en-de/generate_stream", "text_input")):
        # JSON may escape a lone surrogate, which is no text: the body's parser refuses it
        r = httpx.post(f"{url}{path}", content=b'{"%s": "a \\ud800 b"}' % field.encode(),
                       headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["field"] == "body" and "JSON" in r.json()["error"], (path, r.text)
        assert "lone surrogate" in r.json()["error"], r.text  # not "unexpected end of hex escape"
        # bytes that are not UTF-8, with no charset declared: named as such, the charset its limit
        r = httpx.post(f"{url}{path}", content=b'{"%s": "caf\xe9"}' % field.encode(),
                       headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["limit"] == "utf-8", r.text
        assert r.json()["error"].startswith("the body is not valid utf-8"), r.text
    for path, body, field in (("/v1/sentiment", {"text": "\u200b"}, "text"),
                              ("/v1/sentiment", {"texts": ["fine", "\u0000\u200b"]}, "texts[1]"),
                              ("/v1/translate", {"text": "\ufeff\u2060"}, "text"),
                              ("/v1/translate", {"text": "\u3164\u115f\ufe0f"}, "text")):  # fillers, a selector
        r = httpx.post(f"{url}{path}", json=body)  # nothing left once control characters are dropped
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
        assert r.json()["limit"] == [1, 2000]  # the bounds a text's length must keep, the broken one first
    r = httpx.post(f"{url}/v1/sentiment", json={"texts": []})
    assert r.status_code == 422 and r.json()["field"] == "texts" and r.json()["limit"] == [1, 64], r.text


def test_a_number_parameter_of_hundreds_of_digits_is_refused_naming_it(committed_server: Server) -> None:
    huge = "1" + "0" * 400  # exact in JSON; no float holds it
    text = '{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["A dog runs."]}'
    for path, body, field in (
            ("/v2/models/sentiment/infer", f'{{"inputs": [{text}], "parameters": {{"timeout": {huge}}}}}',
             "parameters.timeout"),
            ("/v2/models/translate-en-de/infer", f'{{"inputs": [{text}], "parameters": {{"length_penalty": {huge}}}}}',
             "length_penalty"),
            ("/v2/models/translate-en-de/generate", f'{{"text_input": "A dog.", "sampling_temperature": {huge}}}',
             "sampling_temperature")):
        r = httpx.post(f"{committed_server.url}{path}", content=body.encode(),
                       headers={"content-type": "application/json"})
        assert r.status_code == 422 and field in r.json()["field"], (path, r.text)
