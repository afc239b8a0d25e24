"""The outer request layers against real servers: chunked bodies, CORS before keys, the JSON 500,
the access log."""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from collections.abc import Iterator

import httpx
import pytest

from loadtests.server import metric_value
from tests.conftest import COMMITTED_MODELS, Server

ORIGIN = "http://ui.example"


def _chunked(body: dict) -> Iterator[bytes]:  # type: ignore[type-arg]
    """A body with no Content-Length: httpx sends it with Transfer-Encoding: chunked."""
    raw = json.dumps(body).encode()
    yield raw[:7]
    yield raw[7:]


@pytest.mark.parametrize(("path", "body", "expect"), [
    ("/v1/sentiment", {"text": "A fine film."}, "label"),
    ("/v1/translate", {"text": "A man is riding a bike.", "beam_size": 5}, "translation"),
    ("/v1/translate", {"texts": ["A dog runs.", "Two cats sleep."]}, "results"),
    ("/v2/models/sentiment/infer",
     {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Great."]}]}, "outputs"),
    ("/v2/models/translate-en-de/infer",
     {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["A dog runs."]}]}, "outputs"),
])
def test_a_chunked_body_is_read_in_full_and_answered(committed_server: Server, path: str, body: dict,  # type: ignore[type-arg]
                                                     expect: str) -> None:
    with httpx.Client(timeout=60) as client:
        r = client.post(f"{committed_server.url}{path}", content=_chunked(body),
                        headers={"Content-Type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 200, r.text
    assert expect in r.json()


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b"CHUNKED"])
def test_a_chunked_body_over_the_limit_is_refused_however_the_coding_is_spelled(committed_server: Server,
                                                                                coding: bytes) -> None:
    """Transfer codings are case-insensitive (RFC 9112): the parser reads "Chunked" as chunked, so
    the size limit must as well, or a body of any size gets through."""
    payload = b'{"text": "' + b"a" * (17 << 16) + b'"}'  # 1.1 MiB, over the 1 MiB default
    chunks = [payload[i:i + (1 << 16)] for i in range(0, len(payload), 1 << 16)]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = (b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: " + coding + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", committed_server.port), timeout=30) as sock:
        sock.sendall(head + wire)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_a_compressed_body_is_decoded_and_other_codings_are_refused(committed_server: Server) -> None:
    """gzip and deflate bodies (tritonclient's request_compression_algorithm) are read as their plain
    JSON, chunked or not; another coding is a 415 naming the ones taken (RFC 7694)."""
    body = json.dumps({"text": "A fine film."}).encode()
    url = f"{committed_server.url}/v1/sentiment"
    plain = httpx.post(url, content=body).json()
    for coding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                         ("x-gzip", gzip.compress(body))):
        r = httpx.post(url, content=data, headers={"Content-Encoding": coding})
        assert r.status_code == 200 and r.json() == plain, (coding, r.text)
    r = httpx.post(url, content=_chunked_bytes(gzip.compress(body)), headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json() == plain
    for path in ("/v1/sentiment", "/v2/models/translate-en-de/generate"):
        r = httpx.post(f"{committed_server.url}{path}", content=body, headers={"Content-Encoding": "br"})
        assert r.status_code == 415 and r.json()["field"] == "Content-Encoding", r.text
        assert r.headers["accept-encoding"] == "gzip, deflate"
    r = httpx.post(url, content=gzip.compress(body)[:-9], headers={"Content-Encoding": "gzip"})  # cut short
    assert r.status_code == 422 and r.json()["field"] == "Content-Encoding", r.text
    bomb = gzip.compress(b'{"text": "' + b" " * (3 << 20) + b'"}')  # 3 KiB that decode to 3 MiB
    r = httpx.post(url, content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and r.json()["limit"] == 1 << 20, r.text


def test_a_route_not_served_is_a_404_whatever_its_body(committed_server: Server) -> None:
    """A POST to a path no route serves (perf_analyzer's shared-memory mode posts octet-stream to
    /v2/systemsharedmemory/...) is a 404, and a method a path does not take a 405: not a 415 about
    a body no route would read."""
    for path, status in (("/v2/systemsharedmemory/region/r/register", 404), ("/v1/nothing", 404),
                         ("/v2/models/sentiment", 405)):
        r = httpx.post(f"{committed_server.url}{path}", content=b"\x00\x01",
                       headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == status and r.headers["content-type"].startswith("application/json"), (path, r.text)
    r = httpx.post(f"{committed_server.url}/v1/sentiment", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415, r.text


def _chunked_bytes(data: bytes) -> Iterator[bytes]:
    yield data[:5]
    yield data[5:]


def test_a_refusal_of_an_announced_body_closes_the_connection(committed_server: Server) -> None:
    """Expect: 100-continue, then a 415 or 413 before any body: the client may never send it, so the
    connection closes rather than read its next request as this one's body."""
    head = (b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 2048\r\n"
            b"Expect: 100-continue\r\n\r\n")
    for content_type in (b"text/plain", b"application/json"):  # 415; a 2 KiB declared body is fine
        with socket.create_connection(("127.0.0.1", committed_server.port), timeout=30) as sock:
            sock.sendall(head % content_type)
            answer = sock.recv(65536)
            if content_type == b"application/json":
                assert answer.startswith(b"HTTP/1.1 100 ")  # asked for the body: no refusal here
                continue
            assert answer.startswith(b"HTTP/1.1 415 ") and b"connection: close" in answer.lower(), answer


def test_a_body_that_stops_arriving_is_refused_at_the_deadline() -> None:
    """A client that sends its headers and part of its body held its request until it left: the
    body must arrive within REQUEST_TIMEOUT_S of the request's first bytes (408, then close)."""
    server = Server(COMMITTED_MODELS, request_timeout_s="1", warmup="false").wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"text\": \"A dog")
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"field":"body"' in answer, answer
        assert b"connection: close" in answer.lower() and time.monotonic() - started < 5
        assert httpx.post(f"{server.url}/v1/sentiment", json={"text": "fine"}).status_code == 200
    finally:
        server.stop()


def test_head_is_answered_wherever_get_is(committed_server: Server) -> None:
    url = committed_server.url
    for path in ("/v2/health/ready", "/v2/health/live", "/v1/models", "/v2/models/sentiment", "/metrics", "/ui/"):
        get, head = httpx.get(f"{url}{path}"), httpx.head(f"{url}{path}")
        assert head.status_code == get.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
    head = httpx.head(f"{url}/v1/sentiment")
    assert head.status_code == 405 and head.headers["allow"] == "POST"
    post = httpx.post(f"{url}/v2/health/ready")  # Allow names HEAD too (RFC 9110 10.2.1)
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
    assert post.json() == {"error": "Method Not Allowed", "code": "method_not_allowed", "field": "method",
                           "limit": "GET, HEAD"}


def test_answers_given_before_routing_are_labelled_with_their_route(committed_server: Server) -> None:
    url = committed_server.url

    def count(route: str, status: str) -> float:
        return metric_value(url, "seqserve_requests_total", route=route, status=status)

    plain = {"Content-Type": "text/plain"}
    cases = [("/v2/models/{name}/infer", "415",
              lambda: httpx.post(f"{url}/v2/models/sentiment/infer", content=b"x", headers=plain)),
             ("/docs", "200", lambda: httpx.get(f"{url}/docs")),
             # a mount (the docs' own scripts), whose routing changes the scope's root_path
             ("/static-offline-docs", "200", lambda: httpx.get(f"{url}/static-offline-docs/swagger-ui.css")),
             ("/v1/sentiment", "405", lambda: httpx.get(f"{url}/v1/sentiment")),
             ("unmatched", "404", lambda: httpx.get(f"{url}/no/such/route"))]
    for route, status, call in cases:
        before = count(route, status)
        assert str(call().status_code) == status
        assert count(route, status) == before + 1, route


@pytest.fixture(scope="module")
def keyed_cors_server() -> Iterator[Server]:
    server = Server(COMMITTED_MODELS, api_keys='["k-123"]', cors_origins=f'["{ORIGIN}"]', warmup="false",
                    max_body_bytes="2048").wait_ready()
    yield server
    server.stop()


def test_a_browser_preflight_is_answered_before_the_key_check(keyed_cors_server: Server) -> None:
    r = httpx.options(f"{keyed_cors_server.url}/v1/translate",
                      headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                               "Access-Control-Request-Headers": "content-type,x-api-key"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
    # answered outside the request layers, yet with its id and counted (a fuzzer found neither)
    refused = httpx.options(f"{keyed_cors_server.url}/v1/translate",
                            headers={"Origin": "http://other.example", "Access-Control-Request-Method": "POST",
                                     "X-Request-ID": "pre-2"})
    assert refused.status_code == 400 and refused.headers["x-request-id"] == "pre-2" and r.headers["x-request-id"]
    for status in ("200", "400"):
        assert metric_value(keyed_cors_server.url, "seqserve_requests_total", route="cors_preflight",
                            status=status) >= 1


@pytest.mark.parametrize(("headers", "content", "status"), [
    ({"Content-Type": "application/json"}, b'{"text": "fine"}', 401),  # no key
    ({"Content-Type": "text/plain", "X-API-Key": "k-123"}, b"fine", 415),
    ({"Content-Type": "application/json", "X-API-Key": "k-123"}, b'{"text": "' + b"a" * 4000 + b'"}', 413),
    ({"Content-Type": "application/json", "X-API-Key": "k-123"}, b'{"text": "fine"}', 200),
])
def test_every_answer_a_browser_reads_carries_cors_headers(keyed_cors_server: Server, headers: dict,  # type: ignore[type-arg]
                                                           content: bytes, status: int) -> None:
    r = httpx.post(f"{keyed_cors_server.url}/v1/sentiment", content=content, headers={"Origin": ORIGIN, **headers})
    assert r.status_code == status
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.json()["code"] if status != 200 else r.json()["label"]


def test_a_request_without_a_key_is_refused_on_its_head_before_any_body_is_read(keyed_cors_server: Server) -> None:
    """The body was read (and gunzipped) before the key check: a keyless client could hold a
    buffer per connection until the request timeout, or make the server decompress for it."""
    with socket.create_connection(("127.0.0.1", keyed_cors_server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/sentiment HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2000\r\n\r\n")  # and no body, ever
        sent = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401 ") and time.monotonic() - sent < 5, answer  # not a 408 at 30 s
        assert b"x-request-id: " in answer and b'"code":"unauthorized"' in answer
        assert b"\r\nserver: " not in answer.lower()  # no "uvicorn" for a scanner to go on
    bomb = gzip.compress(b" " * 1_000_000)  # a 413 from the decoder for a client with a key
    r = httpx.post(f"{keyed_cors_server.url}/v1/sentiment", content=bomb,
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{keyed_cors_server.url}/v1/sentiment", content=b"fine", headers={"Content-Type": "text/plain"})
    assert r.status_code == 401  # not a 415 that tells a stranger what the route takes


def test_a_bug_is_a_json_500_in_the_error_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from service import inference
    from service.app import create_app
    from service.settings import Settings

    def broken(*args: object) -> dict:  # type: ignore[type-arg]
        raise RuntimeError("planted bug")

    monkeypatch.setattr(inference, "sentiment_result", broken)
    app = create_app(Settings(model_repository=COMMITTED_MODELS, warmup=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/sentiment", json={"text": "fine"}, headers={"X-Request-ID": "bug-1"})
        assert client.post("/v2/health/ready").status_code in (200, 405)  # the app keeps serving
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "internal server error (request bug-1)", "code": "internal_error"}


def test_the_access_log_is_one_json_object_per_line() -> None:
    server = Server(COMMITTED_MODELS, access_log="true", warmup="false").wait_ready()
    try:
        httpx.post(f"{server.url}/v1/sentiment", json={"text": "fine"}, headers={"X-Request-ID": "log-1"})
        assert server.wait_for_output('"request_id":"log-1"')
        # an OpenTelemetry client sends traceparent, not X-Request-ID: its line names the trace
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        r = httpx.post(f"{server.url}/v1/sentiment", json={"text": "fine"}, headers={"traceparent": trace})
        assert r.headers["x-request-id"] == trace and server.wait_for_output(f'"request_id":"{trace}"')
        r = httpx.get(f"{server.url}/v2/health/ready", headers={"traceparent": trace, "X-Request-ID": "mine"})
        assert r.headers["x-request-id"] == "mine"  # an explicit id wins
        r = httpx.get(f"{server.url}/v2/health/ready", headers={"traceparent": "garbage"})
        assert r.headers["x-request-id"] != "garbage"  # not a W3C traceparent: a new id
    finally:
        server.stop()
    line = next(x for x in server.output().splitlines() if '"log-1"' in x)
    entry = json.loads(line)
    assert entry["status"] == 200 and entry["route"] == "/v1/sentiment" and entry["logger"] == "seqserve.access"
    assert entry["time"].endswith("Z") and entry["latency_ms"] > 0


def test_a_client_that_leaves_before_its_body_is_read_is_logged_as_gone_not_as_a_server_error() -> None:
    paths = ["/v1/sentiment", "/v2/models/sentiment/infer", "/v2/models/translate-en-de/generate",
             "/v2/repository/models/sentiment/load"]
    server = Server(COMMITTED_MODELS, access_log="true", warmup="false").wait_ready()
    try:
        for i, path in enumerate(paths):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"X-Request-ID: gone-{i}\r\nContent-Length: 1000\r\n\r\n{{\"te".encode())
            assert server.wait_for_output(f'"request_id":"gone-{i}"'), path
    finally:
        server.stop()
    log = server.output()
    assert "unhandled error" not in log and "Traceback" not in log
    statuses = {json.loads(line)["path"]: json.loads(line)["status"]
                for line in log.splitlines() if '"request_id":"gone-' in line}
    assert statuses == dict.fromkeys(paths, 499)


def test_a_body_in_a_declared_charset_is_read_in_it(committed_server: Server) -> None:
    """A client that declares ISO-8859-1 (Java's StringEntity) and sends Latin-1 gets the answer for
    the same text sent as UTF-8; an unknown charset is a 415 naming Content-Type."""
    url = f"{committed_server.url}/v1/translate"
    text = {"text": "The café is open."}
    plain = httpx.post(url, json=text, timeout=60).json()
    for charset in ("ISO-8859-1", "windows-1252", "utf-16"):
        r = httpx.post(url, content=json.dumps(text, ensure_ascii=False).encode(charset),
                       headers={"Content-Type": f"application/json; charset={charset}"}, timeout=60)
        assert r.status_code == 200 and r.json() == plain, (charset, r.text)
    r = httpx.post(url, content=b'{"text": "x"}', headers={"Content-Type": "application/json; charset=klingon"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type", r.text
    r = httpx.post(url, content=b'{"text": "x"}', headers={"Content-Type": "application/json; charset=utf-16"})
    assert r.status_code == 422 and r.json()["limit"] == "utf-16", r.text
    # re-encoded, a body may not grow past the limit (1 byte of cp1252 can be 3 of UTF-8)
    r = httpx.post(url, content=b'{"text": "' + b"\x80" * 700_000 + b'"}',
                   headers={"Content-Type": "application/json; charset=windows-1252"})
    assert r.status_code == 413 and r.json()["limit"] == 1 << 20, r.text
    # binary tensors are not text: a charset declared beside them leaves their bytes as they are
    v2 = f"{committed_server.url}/v2/models/sentiment/infer"
    header = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 + 6}}]}).encode()
    tensor = (6).to_bytes(4, "little") + "Café!".encode()
    r = httpx.post(v2, content=header + tensor, headers={"Content-Type": "application/octet-stream; charset=latin-1",
                                                          "Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text


def test_a_content_length_is_read_without_the_whitespace_around_it() -> None:
    """RFC 9110 5.5: "22 " is 22 (the parser reads it so); a false 413 refused the request."""
    from service.middleware import declared_over_limit

    assert declared_over_limit({b"content-length": b"22 "}, 1024) is False
    assert declared_over_limit({b"content-length": b"\t22"}, 1024) is False
    assert declared_over_limit({b"content-length": b"2048"}, 1024) is True
    assert declared_over_limit({b"content-length": b"2 2"}, 1024) is True  # malformed counts as over


def test_an_upgrade_is_ignored_and_the_request_answered_in_http_1_1(committed_server: Server) -> None:
    """No route speaks WebSocket or HTTP/2: uvicorn's handshake answered a bare 403 with an empty
    body, and a POST with "Upgrade: h2c" (Java's HttpClient, by default) was refused with 400. The
    upgrade is ignored (RFC 9110 7.8) and the request answered, its body read."""
    for upgrade in (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                    b"HTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABk\r\n"):
        body = b'{"text": "A fine film."}'
        head = (b"POST /v1/sentiment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + upgrade
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        with socket.create_connection(("127.0.0.1", committed_server.port), timeout=10) as sock:
            sock.sendall(head)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"label":"positive"' in answer, answer
    assert "Unsupported upgrade request" not in committed_server.output()
