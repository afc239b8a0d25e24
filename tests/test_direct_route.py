"""service/direct_route.py: the plainest POST /v1/sentiment requests answered in the server's
protocol, as the app would answer them; everything else, and every refusal, by the app."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import pytest

from service.direct_route import Answer, DirectSentiment
from service.settings import Settings
from tests.conftest import Server
from tests.test_http_protocol import _protocol, _Transport, _until, read_body

BODY = b'{"text": "a gorgeous, witty film"}'
HEAD = b"POST /v1/sentiment HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"


def _request(body: bytes = BODY, extra: bytes = b"", head: bytes = HEAD) -> bytes:
    return head + extra + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class _Route(DirectSentiment):
    """The real ``takes``; ``start`` answers at once (or refuses: None), noting the bodies."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__(SimpleNamespace(ready=True), Settings(warmup=False))
        self.refuse = refuse
        self.bodies: list[bytes] = []

    def start(self, body: bytes, arrived: float) -> Coroutine[Any, Any, Answer] | None:
        self.bodies.append(body)
        if self.refuse:
            return None

        async def answer() -> Answer:
            return Answer(200, b'{"label":"positive"}')

        return answer()


def _app_and_route(route: _Route, ran: list[bytes]) -> Any:
    """An app that notes the bodies it reads, with ``route`` in its state."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(await read_body(receive))
        await send({"type": "http.response.start", "status": 422, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"code":"invalid_input"}'})

    app.state = SimpleNamespace(early_refusal=None, pass_budget=None, direct_sentiment=route)  # type: ignore[attr-defined]
    return app


async def test_a_plain_request_is_answered_in_the_protocol_with_the_apps_headers_log_line_and_metrics(
        access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    from service import metrics

    def answered() -> float:
        return metrics.REQUESTS.labels(route="/v1/sentiment", status="200")._value.get()

    before = answered()
    route, ran, transport = _Route(), [], _Transport()
    protocol = _protocol(_app_and_route(route, ran), transport)
    protocol.data_received(_request(extra=b"X-Request-ID: given-id-1\r\n"))
    await _until(lambda: transport.written)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and body == b'{"label":"positive"}'
    assert b"x-request-id: given-id-1" in lines and b"content-length: %d" % len(body) in lines
    assert b"content-type: application/json" in lines  # and the server's date (test_the_server_answers...)
    assert route.bodies == [BODY] and ran == []  # the app never ran
    assert not transport.closed and protocol.cycle.response_complete
    (entry,) = access_lines()
    assert {k: entry[k] for k in ("request_id", "method", "path", "route", "status")} == {
        "request_id": "given-id-1", "method": "POST", "path": "/v1/sentiment", "route": "/v1/sentiment", "status": 200}
    assert entry["latency_ms"] >= 0
    assert answered() == before + 1
    # the connection goes on: its next request too
    transport.written = b""
    protocol.data_received(_request())
    await _until(lambda: transport.written)
    assert transport.written.startswith(b"HTTP/1.1 200 OK") and len(route.bodies) == 2


@pytest.mark.parametrize("request_bytes", [
    # a header for the request layers
    *(_request(extra=extra) for extra in (b"Content-Encoding: gzip\r\n", b"Origin: https://example.com\r\n",
                                          b"Expect: 100-continue\r\n", b"X-Request-Timeout: 5\r\n")),
    # a head not of the plainest kind, or another route
    *(_request(head=HEAD.replace(old, new)) for old, new in (
        (b"HTTP/1.1", b"HTTP/1.0"), (b"/v1/sentiment", b"/v1/sentiment?x=1"),
        (b"application/json", b"application/json; charset=utf-8"), (b"POST /v1/sentiment", b"POST /v1/translate"))),
])
async def test_a_request_that_is_not_the_plainest_goes_to_the_app(request_bytes: bytes) -> None:
    route, ran, transport = _Route(), [], _Transport()
    protocol = _protocol(_app_and_route(route, ran), transport)
    protocol.data_received(request_bytes)
    await _until(lambda: ran)
    assert ran == [BODY] and route.bodies == []


async def test_a_refused_request_goes_to_the_app_with_its_body_whole() -> None:
    route, ran, transport = _Route(refuse=True), [], _Transport()
    protocol = _protocol(_app_and_route(route, ran), transport)
    protocol.data_received(_request(b'{"text": ""}'))
    await _until(lambda: transport.written)
    assert route.bodies == [b'{"text": ""}'] and ran == [b'{"text": ""}']
    assert transport.written.startswith(b"HTTP/1.1 422 ")


async def test_a_body_that_arrives_in_later_reads_goes_to_the_app() -> None:
    route, ran, transport = _Route(), [], _Transport()
    protocol = _protocol(_app_and_route(route, ran), transport)
    request = _request()
    protocol.data_received(request[:-10])
    protocol.data_received(request[-10:])
    await _until(lambda: ran)
    assert ran == [BODY] and route.bodies == []


async def test_a_request_pipelined_behind_a_direct_one_is_answered_after_it() -> None:
    route, ran, transport = _Route(), [], _Transport()
    protocol = _protocol(_app_and_route(route, ran), transport)
    protocol.data_received(_request() + _request(extra=b"Origin: https://example.com\r\n"))
    await _until(lambda: transport.written.count(b"HTTP/1.1 ") == 2)
    assert transport.written.index(b"HTTP/1.1 200 OK") < transport.written.index(b"HTTP/1.1 422 ")
    assert route.bodies == [BODY] and ran == [BODY]


async def test_connection_close_is_answered_with_it_and_the_connection_closes() -> None:
    route, ran, transport = _Route(), [], _Transport()
    protocol = _protocol(_app_and_route(route, ran), transport)
    protocol.data_received(_request(extra=b"Connection: close\r\n"))
    await _until(lambda: transport.closed)
    assert b"\r\nconnection: close\r\n" in transport.written and route.bodies == [BODY]


async def test_a_client_that_leaves_gets_nothing_written_and_the_request_is_still_counted(
        access_lines: Callable[[], list[dict[str, Any]]]) -> None:
    gate = asyncio.Event()

    class Slow(_Route):
        def start(self, body: bytes, arrived: float) -> Coroutine[Any, Any, Answer] | None:
            async def answer() -> Answer:
                await gate.wait()
                return Answer(200, b"{}")

            return answer()

    route, ran, transport = Slow(), [], _Transport()
    protocol = _protocol(_app_and_route(route, ran), transport)
    protocol.data_received(_request())
    await asyncio.sleep(0.01)
    protocol.connection_lost(None)
    transport.closed = True
    gate.set()
    await _until(lambda: access_lines())
    assert transport.written == b"" and [e["status"] for e in access_lines()] == [200]


def test_takes_only_the_plainest_heads() -> None:
    route = DirectSentiment(SimpleNamespace(ready=True), Settings(warmup=False, max_body_bytes=1024))
    plain = [(b"host", b"a"), (b"content-type", b"application/json"), (b"content-length", b"20")]
    assert route.takes(b"POST", b"/v1/sentiment", "1.1", plain)
    assert route.takes(b"POST", b"/v1/sentiment", "1.1", [*plain, (b"x-request-id", b"abc")])
    assert not route.takes(b"POST", b"/v1/sentiment", "1.1", [(b"host", b"a"), (b"content-length", b"1025")])
    assert not route.takes(b"POST", b"/v1/sentiment", "1.1", [(b"host", b"a"), (b"content-length", b"+20")])
    assert not route.takes(b"POST", b"/v1/sentiment", "1.1", plain[:2])  # no declared length: chunked
    assert not route.takes(b"GET", b"/v1/sentiment", "1.1", plain)
    assert not route.takes(b"POST", b"/v1/sentiment/", "1.1", plain)
    assert not DirectSentiment(SimpleNamespace(ready=False), Settings(warmup=False)).takes(
        b"POST", b"/v1/sentiment", "1.1", plain)


def _answers(raw: bytes) -> list[tuple[int, dict[bytes, bytes], dict[str, Any]]]:
    """The whole answers in ``raw``: status, headers, JSON body."""
    out = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        if len(rest) < length:
            break
        out.append((int(lines[0].split()[1]), headers, json.loads(rest[:length])))
        raw = rest[length:]
    return out


def _raw(port: int, data: bytes, answers: int = 1) -> bytes:
    """What the server answers to ``data``, sent at once on one connection, once it has sent
    ``answers`` whole answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        got = b""
        while len(_answers(got)) < answers:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


@pytest.mark.parametrize("texts", [["a gorgeous, witty film"], ["dull and lifeless .", "It's GREAT!!! 😀"]])
def test_the_server_answers_directly_what_the_app_answers(committed_server: Server, texts: list[str]) -> None:
    body = json.dumps({"text": texts[0]} if len(texts) == 1 else {"texts": texts}).encode()
    direct = _raw(committed_server.port, _request(body))
    # the same request with a header the request layers act on (a timeout as long as the server's)
    via_app = _raw(committed_server.port, _request(body, b"X-Request-Timeout: 30\r\n"))
    ((status, headers, answer),) = _answers(direct)
    ((app_status, app_headers, app_answer),) = _answers(via_app)
    assert (status, answer) == (app_status, app_answer) == (200, answer)
    assert headers.keys() == app_headers.keys()


def test_refusals_are_the_apps_own(committed_server: Server) -> None:
    raw = _raw(committed_server.port, _request(b'{"text": ""}') + _request(b'{"text": 5}')
               + _request(b'{"texts": []}') + _request(b"not json") + _request(), answers=5)
    answers = _answers(raw)
    assert [status for status, _, _ in answers] == [422, 422, 422, 422, 200]
    assert [answer.get("field") for _, _, answer in answers[:4]] == ["text", "text", "texts", "body"]


@pytest.mark.parametrize(("settings", "direct"), [({}, True), ({"direct_routes": False}, False),
                                                  ({"api_keys": ["k"]}, False)])
def test_the_app_answers_directly_unless_turned_off_or_keys_are_checked(settings: dict[str, Any], direct: bool) -> None:
    from service.app import create_app

    app = create_app(Settings(warmup=False, **settings))
    assert isinstance(app.state.direct_sentiment, DirectSentiment) is direct
