"""service/openapi_doc.py: the OpenAPI document lists each operation's error statuses with the one
error body, and every reference in it resolves."""

from __future__ import annotations

from typing import Any

import httpx

from service.app import create_app
from service.settings import Settings
from tests.conftest import Server


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_error_statuses_and_references(committed_server: Server) -> None:
    doc = httpx.get(f"{committed_server.url}/openapi.json").json()
    paths = doc["paths"]
    assert set(paths["/v1/sentiment"]["post"]["responses"]) == {"200", "404", "413", "415", "422", "499", "500",
                                                                 "503", "504"}
    assert set(paths["/v2/health/live"]["get"]["responses"]) == {"200", "500", "503"}  # a model broken for a minute
    assert set(paths["/v2/health/ready"]["get"]["responses"]) == {"200", "500", "503"}
    assert {"404", "409"} <= set(paths["/v2/repository/models/{name}/load"]["post"]["responses"])
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for operations in paths.values():
        for operation in operations.values():
            for code, response in operation["responses"].items():
                if not code.startswith("2"):
                    assert response["content"] == error, (code, response)
    components = doc["components"]["schemas"]
    assert {"InferInput", "InferOutputRequest"} <= set(components)
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref


def test_keys_add_401_outside_the_exempt_paths() -> None:
    doc = create_app(Settings(api_keys=["k"])).openapi()
    assert "401" in doc["paths"]["/v1/translate"]["post"]["responses"]
    assert "401" not in doc["paths"]["/v2/health/ready"]["get"]["responses"]
    # Swagger UI's Authorize takes the key for "Try it out" (it had no way to send one)
    assert doc["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert doc["paths"]["/v1/translate"]["post"]["security"] == [{"apiKey": []}, {"bearer": []}]
    assert "security" not in doc["paths"]["/v2/health/ready"]["get"]
    assert "securitySchemes" not in create_app(Settings()).openapi()["components"]


def test_an_undecodable_body_is_a_documented_422(committed_server: Server) -> None:
    # FastAPI answers 400 to bytes that are not UTF-8 on the routes whose body it parses
    r = httpx.post(f"{committed_server.url}/v2/models/translate-en-de/generate", content=b"\xff\xfe",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_input", r.text
