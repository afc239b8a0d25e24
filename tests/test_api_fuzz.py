"""Property-based fuzzing from the OpenAPI schema (schemathesis): no 5xx, no hang, and every status
answered is one the document lists for that operation (service/openapi_doc.py)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.conftest import Server


def test_no_5xx_for_anything_the_schema_allows_or_nearly_allows(committed_server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{committed_server.url}/openapi.json")
    checked = []
    operations = [r.ok() for r in schema.get_all_operations()]
    for operation, mode in [(op, mode) for op in operations for mode in GenerationMode]:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=committed_server.url, timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")
            case.validate_response(response, checks=[status_code_conformance])

        try:
            run()
        except Unsatisfiable:  # nothing to get wrong (no parameters, no body) in negative mode
            continue
        checked.append(f"{operation.method.upper()} {operation.path} ({mode.value})")
    assert len(checked) >= 15, checked
