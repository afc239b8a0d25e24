"""service/response_schemas.py: the v2 answers the OpenAPI document states are what the server sends
(real requests to a real server, each answer validated against its operation's documented schema)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import Server

TEXT = {"name": "text", "datatype": "BYTES"}


def _documented(doc: dict[str, Any], path: str, method: str, status: str = "200") -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    return schema


def _check(doc: dict[str, Any], path: str, method: str, answer: httpx.Response, status: str = "200") -> Any:
    assert str(answer.status_code) == status, answer.text
    body = answer.json()
    jsonschema.Draft202012Validator(_documented(doc, path, method, status)).validate(body)
    return body


def test_v2_answers_match_the_document(committed_server: Server) -> None:
    with httpx.Client(base_url=committed_server.url, timeout=30) as client:
        doc = client.get("/openapi.json").json()
        sentiment = "/v2/models/sentiment/infer"
        body = _check(doc, sentiment, "post", client.post(sentiment, json={
            "id": "r1", "inputs": [{**TEXT, "shape": [2, 1], "data": ["A gorgeous movie.", "Dull."]}]}))
        assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"] and body["id"] == "r1"
        translate = "/v2/models/translate-en-de/infer"
        one = {"inputs": [{**TEXT, "shape": [1], "data": ["A dog runs."]}]}
        body = _check(doc, translate, "post", client.post(translate, json={**one, "parameters": {"num_hypotheses": 2}}))
        assert body["outputs"][1]["name"] == "hypotheses"
        body = _check(doc, translate, "post", client.post(translate, json={**one, "parameters": {"sampling_topk": 5}}))
        assert isinstance(body["parameters"]["seed"], int)
        versioned = "/v2/models/translate-en-de/versions/{version}/infer"
        _check(doc, versioned, "post", client.post("/v2/models/translate-en-de/versions/1/infer", json=one))

        generate = "/v2/models/{name}/generate"
        url = "/v2/models/translate-en-de/generate"
        assert "seed" not in _check(doc, generate, "post", client.post(url, json={"text_input": "A cat sleeps."}))
        sampled = {"text_input": "A cat.", "parameters": {"sampling_topk": 3}}
        assert isinstance(_check(doc, generate, "post", client.post(url, json=sampled))["seed"], int)

        _check(doc, "/v2/health/live", "get", client.get("/v2/health/live"))
        _check(doc, "/v2/health/ready", "get", client.get("/v2/health/ready"))
        _check(doc, "/v2/models/{name}/ready", "get", client.get("/v2/models/sentiment/ready"))
        rows = _check(doc, "/v2/repository/index", "post", client.post("/v2/repository/index"))
        assert {(r["name"], r["state"]) for r in rows} >= {("sentiment", "READY"), ("translate-en-de", "READY")}

        # the metadata a v2 client reads first (they were untyped objects in the document)
        assert "statistics" in _check(doc, "/v2", "get", client.get("/v2"))["extensions"]
        for name in ("sentiment", "translate-en-de"):
            _check(doc, "/v2/models/{name}", "get", client.get(f"/v2/models/{name}"))
            _check(doc, "/v2/models/{name}/versions/{version}", "get", client.get(f"/v2/models/{name}/versions/1"))
            _check(doc, "/v2/models/{name}/config", "get", client.get(f"/v2/models/{name}/config"))
            _check(doc, "/v2/models/{name}/versions/{version}/config", "get",
                   client.get(f"/v2/models/{name}/versions/1/config"))
            _check(doc, "/v2/models/{name}/stats", "get", client.get(f"/v2/models/{name}/stats"))
            _check(doc, "/v2/models/{name}/versions/{version}/stats", "get",
                   client.get(f"/v2/models/{name}/versions/1/stats"))
        assert len(_check(doc, "/v2/models/stats", "get", client.get("/v2/models/stats"))["model_stats"]) >= 2


def test_the_document_declares_what_the_routes_read_and_answer(committed_server: Server) -> None:
    """The repository's optional bodies are declared (a generated client could not ask for the
    served versions only); generate_stream answers events only; a GET declares no 422."""
    with httpx.Client(base_url=committed_server.url, timeout=30) as client:
        doc = client.get("/openapi.json").json()
        index = doc["paths"]["/v2/repository/index"]["post"]["requestBody"]
        assert index["content"]["application/json"]["schema"]["properties"]["ready"]["type"] == "boolean"
        load = doc["paths"]["/v2/repository/models/{name}/load"]["post"]["requestBody"]
        assert load["content"]["application/json"]["schema"]["properties"]["parameters"]["maxProperties"] == 0
        answer = client.post("/v2/repository/index", json={"ready": "false"})  # a string counted as true
        assert answer.status_code == 422 and answer.json()["field"] == "ready", answer.text
        for path in ("/v2/models/{name}/generate_stream", "/v2/models/{name}/versions/{version}/generate_stream"):
            assert list(doc["paths"][path]["post"]["responses"]["200"]["content"]) == ["text/event-stream"]
        assert set(doc["paths"]["/v1/translate"]["post"]["responses"]["200"]["content"]) == \
            {"application/json", "text/event-stream"}
        for path, operations in doc["paths"].items():
            assert "422" not in operations.get("get", {}).get("responses", {}), path


def test_a_binary_output_is_documented_by_its_size(committed_server: Server) -> None:
    with httpx.Client(base_url=committed_server.url, timeout=30) as client:
        doc = client.get("/openapi.json").json()
        path = "/v2/models/translate-en-de/infer"
        answer = client.post(path, json={"inputs": [{**TEXT, "shape": [1], "data": ["A dog."]}],
                                          "outputs": [{"name": "translation", "parameters": {"binary_data": True}}]})
        assert answer.headers["content-type"] == "application/octet-stream"
        header = json.loads(answer.content[: int(answer.headers["inference-header-content-length"])])
        jsonschema.Draft202012Validator(_documented(doc, path, "post")).validate(header)
        assert "data" not in header["outputs"][0] and header["outputs"][0]["parameters"]["binary_data_size"] > 0


def test_the_schemas_refuse_answers_of_another_shape(committed_server: Server) -> None:
    doc = httpx.get(f"{committed_server.url}/openapi.json").json()
    infer = jsonschema.Draft202012Validator(_documented(doc, "/v2/models/sentiment/infer", "post"))
    good: dict[str, Any] = {"model_name": "sentiment", "model_version": "1",
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [1, 1], "data": ["positive"]}]}
    infer.validate(good)
    for bad in ({**good, "model_name": "translate-en-de"},  # another model's answer
                {**good, "outputs": [{**good["outputs"][0], "datatype": "FP32"}]},
                {**good, "outputs": [{**good["outputs"][0], "data": [0.5]}]},  # a label is a string
                {k: v for k, v in good.items() if k != "outputs"}):
        with pytest.raises(jsonschema.ValidationError):
            infer.validate(bad)
    ready = jsonschema.Draft202012Validator(_documented(doc, "/v2/health/ready", "get", "503"))
    ready.validate({"ready": False})
    with pytest.raises(jsonschema.ValidationError):
        ready.validate({"error": "not ready", "code": "not_ready"})
