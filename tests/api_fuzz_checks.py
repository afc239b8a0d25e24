r"""Checks for the schemathesis run in tests/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS):
schemathesis's own, less what no OpenAPI document can promise.

- 422 for what JSON Schema cannot state: a text's subword count (it depends on the tokenizer), a
  text to score that holds no letter or digit in any script (regex engines disagree on which
  characters ``\w`` holds: ECMA-262's are ASCII only) and, on v2, that a tensor's ``data`` holds as
  many texts as its ``shape`` says (one value bounding another array's length);
- 504 ``deadline_exceeded`` when the request set its own deadline (``parameters.timeout``, or the
  ``X-Request-Timeout`` header) and the work took longer: the answer the request asked for, not a
  server fault.

Everything else about the response is checked as schemathesis checks it.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

UNSTATEABLE = ("subword tokens; model", "strings, as its shape says", "has no words: the model reads")


def _error(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _sets_a_timeout(case: Any) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    parameters = body.get("parameters")
    header = any(name.lower() == "x-request-timeout" for name in (case.headers or {}))
    return header or body.get("timeout") is not None or \
        (isinstance(parameters, dict) and parameters.get("timeout") is not None)


@schemathesis.check
def accepted_unless_unstateable(ctx: Any, response: Any, case: Any) -> bool | None:
    error = _error(response)
    if response.status_code == 422 and any(s in str(error.get("error", "")) for s in UNSTATEABLE):
        return None
    return positive_data_acceptance(ctx, response, case)


@schemathesis.check
def no_server_error_but_its_own_deadline(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code == 504 and _error(response).get("code") == "deadline_exceeded" and _sets_a_timeout(case):
        return None
    return not_a_server_error(ctx, response, case)
