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
    for path, operations in paths.items():
        for operation in operations.values():
            for code, response in operation["responses"].items():
                if not code.startswith("2") and not (code == "503" and path.endswith(("/ready", "/live"))):
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


def _booleans(node: Any, at: str = "") -> list[str]:
    """Where a schema is a bare boolean (JSON Schema allows it; openapi-python-client does not)."""
    if isinstance(node, dict):
        found = [f"{at}/{key}" for key, value in node.items() if isinstance(value, bool)
                 and key in ("not", "items", "additionalItems", "contains", "if", "then", "else")]
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                found += [f"{at}/properties/{name}" for name, schema in value.items() if isinstance(schema, bool)]
            found += _booleans(value, f"{at}/{key}")
        return found
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _booleans(v, f"{at}/{i}")]
    return []


def test_the_document_reads_in_stock_tools(committed_server: Server) -> None:
    """An API consumer's tools refused the document: openapi-python-client failed on the boolean
    schemas (``false``) and skipped /v1/sentiment for the oneOf beside its properties;
    openapi-spec-validator's command and YAML loaders refused the raw control characters (DEL, C1)
    of the text pattern. Generated clients could not set X-Request-Timeout, and carried FastAPI's
    unused 422 models."""
    import json
    import re

    raw = httpx.get(f"{committed_server.url}/openapi.json").text
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", raw)
    doc = json.loads(raw)
    assert _booleans(doc) == []
    sentiment = doc["paths"]["/v1/sentiment"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "oneOf" not in sentiment and sentiment["allOf"][0]["oneOf"]
    pattern = sentiment["properties"]["text"]["anyOf"][0]["pattern"]
    assert re.search(pattern, "a dog") and not re.search(pattern, "\u200b \x7f\x85")  # the same class, escaped
    for path in ("/v1/sentiment", "/v1/translate", "/v2/models/sentiment/infer",
                 "/v2/models/{name}/generate_stream"):
        names = [p["name"] for p in doc["paths"][path]["post"].get("parameters", [])]
        assert "X-Request-Timeout" in names, path
    assert "X-Request-Timeout" not in str(doc["paths"]["/v2/health/ready"])
    assert not {"HTTPValidationError", "ValidationError"} & set(doc["components"]["schemas"])
