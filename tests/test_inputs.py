"""service/inputs.py: the body and header reads of the inference routes."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from service.inputs import header, whole_body


def _request(*messages: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    queued = list(messages)

    async def receive() -> dict[str, Any]:
        return queued.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/v1/sentiment", "headers": headers or []}, receive)


async def test_the_body_is_read_whole_and_kept_for_starlettes_own_reader() -> None:
    request = _request({"type": "http.request", "body": b'{"te', "more_body": True},
                       {"type": "http.request", "body": b'xt": "a"}', "more_body": False})
    assert await whole_body(request) == b'{"text": "a"}'
    assert await whole_body(request) == b'{"text": "a"}'  # nothing left to receive: kept
    assert await request.body() == b'{"text": "a"}'
    single = _request({"type": "http.request", "body": b"{}"})
    assert await whole_body(single) == b"{}"
    empty = _request({"type": "http.request"})
    assert await whole_body(empty) == b""


async def test_a_client_that_leaves_before_its_body_is_read_raises_as_starlette_does() -> None:
    request = _request({"type": "http.request", "body": b'{"te', "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnect):
        await whole_body(request)


def test_a_header_is_read_as_starlette_reads_it() -> None:
    headers = [(b"host", b"a"), (b"x-request-timeout", b"2.5"), (b"x-request-timeout", b"9"),
               (b"x-caf\xe9", b"caf\xe9")]
    request = _request(headers=headers)
    for name in (b"x-request-timeout", b"x-caf\xe9", b"host", b"absent"):
        assert header(request.scope, name) == request.headers.get(name.decode("latin-1"))
