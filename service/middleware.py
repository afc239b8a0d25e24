"""Pure-ASGI middleware (cheaper per request than Starlette's BaseHTTPMiddleware).

- request id: X-Request-ID honoured (if sane) or generated, and echoed on the response;
- API keys (service/auth.py), checked on the request's head before its body is read;
- body limit: bodies over the limit get 413 before the app sees them;
- one structured JSON log line per request, and request count/latency metrics by route, the
  latency counted from the request's arrival (see service/http_protocol.py);
- a fault nobody else answered (a bug) is logged with its traceback and answered with a JSON 500
  in the API's error vocabulary, never a text/plain page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.access_log import CURRENT_REQUEST_ID, AnswerWithId, record_request, request_id_of
from service.auth import UNAUTHORIZED, ApiKeys
from service.charsets import UnsupportedCharset, declared_charset, to_utf8
from service.content_coding import ACCEPTED, DecodedTooLarge, UnsupportedCoding, content_coding, decode
from service.errors import internal_error
from service.event_stream import ENDED_WITH, LAST_EVENT
from service.http_protocol import LATE, MALFORMED, arrived_at
from service.json_response import JSONResponse, dumps

if TYPE_CHECKING:
    from service.drain import Drain

log = logging.getLogger("seqserve")


def _json_response(status: int, body: dict[str, Any], request_id: str) -> tuple[Message, Message]:
    payload = dumps(body)
    start: Message = {"type": "http.response.start", "status": status,
                      "headers": [(b"content-type", b"application/json"),
                                  (b"content-length", str(len(payload)).encode()),
                                  (b"x-request-id", request_id.encode())]}
    return start, {"type": "http.response.body", "body": payload}


_CLOSING = ("request_timeout", "malformed_request")  # refusals after which the connection cannot go on


async def _refuse(send: Send, request_id: str, headers: dict[bytes, bytes], status: int, error: dict[str, Any],
                  *extra: tuple[bytes, bytes]) -> int:
    """Answer before the app runs, the body unread or in part; the status. The connection closes
    after a body that came too late or broke the framing (408, 400), and after one whose client
    announced its body with Expect: 100-continue: it may never send it, and its next request would
    be read as this one's body."""
    start, body = _json_response(status, error, request_id)
    start["headers"].extend(extra)
    if error.get("code") in _CLOSING or headers.get(b"expect", b"").lower() == b"100-continue":
        start["headers"].append((b"connection", b"close"))
    await send(start)
    await send(body)
    return status


def is_json(content_type: bytes | None, path: str = "") -> bool:
    """No Content-Type is read as JSON; a declared one must be JSON, except that the v2 routes also
    take application/octet-stream (what Open Inference Protocol clients send with binary tensors)."""
    if content_type is None:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json") or \
        (media == b"application/octet-stream" and path.startswith("/v2/"))


class Unreadable(Exception):
    """A request body the API cannot read: ``problem`` is its 415 body."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(problem["error"])
        self.problem = problem


def body_format(headers: dict[bytes, bytes], path: str) -> tuple[str | None, str | None]:
    """How the body is to be read: (its Content-Encoding, "gzip" or "deflate" or None; its
    charset when not UTF-8, else None). Raises Unreadable for a Content-Type that is not JSON
    (``is_json``) or declares a charset that is not a known text encoding (service/charsets.py),
    or a Content-Encoding other than gzip or deflate (service/content_coding.py; RFC 7694 asks for
    415 naming what is accepted). A charset applies to JSON text only, never to binary tensors
    (application/octet-stream, or JSON followed by raw bytes, Inference-Header-Content-Length),
    whose bytes re-encoding would change."""
    content_type = headers.get(b"content-type")
    if content_type == b"application/json" and b"content-encoding" not in headers:
        return None, None  # what nearly every request declares: each check below would pass
    if not is_json(content_type, path):
        raise Unreadable({"error": "Content-Type must be application/json", "code": "unsupported_media_type",
                          "field": "Content-Type", "limit": "application/json"})
    try:
        charset = declared_charset(content_type)
    except UnsupportedCharset as exc:
        raise Unreadable({"error": str(exc), "code": "unsupported_media_type", "field": "Content-Type",
                          "limit": "application/json; charset=utf-8"}) from None
    if charset is not None and (b"inference-header-content-length" in headers
                                or (content_type or b"").lower().startswith(b"application/octet-stream")):
        charset = None
    try:
        return content_coding(headers), charset
    except UnsupportedCoding as exc:
        raise Unreadable({"error": str(exc), "code": "unsupported_media_type", "field": "Content-Encoding",
                          "limit": ACCEPTED}) from None


def declared_over_limit(headers: dict[bytes, bytes], limit: int) -> bool | None:
    """Whether the body's declared Content-Length is over ``limit`` (a malformed one counts as
    over); None when no length is declared (chunked, or no body)."""
    declared = headers.get(b"content-length")
    if declared is None:
        return None
    declared = declared.strip(b" \t")  # RFC 9110 5.5: whitespace around a value is not part of it
    return not declared.isdigit() or int(declared) > limit


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, log_requests: bool = True,
                 routes: Sequence[BaseRoute] = (), drain: Drain | None = None, api_keys: ApiKeys | None = None) -> None:
        self.app = app
        self.api_keys = api_keys
        self.drain = drain  # the server's graceful shutdown: what it cuts off is answered here
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests
        self.routes = routes  # the app's, to label what was answered before routing (413, 415)

    def _route(self, scope: Scope, root_path: str) -> tuple[BaseRoute | None, bool]:
        """The route a request is for, and whether its method matches too: the one routing chose,
        else the first whose path and method match, else the first whose path alone matches (a
        405), else None (a 404). ``root_path`` is the scope's before routing, which a mount changes."""
        route = scope.get("route")
        if route is not None:
            return route, True
        partial = None
        probe = {**scope, "root_path": root_path}
        for candidate in self.routes:
            match, _ = candidate.matches(probe)
            if match is Match.FULL:
                return candidate, True
            if match is Match.PARTIAL and partial is None:  # the path, another method (405)
                partial = candidate
        return partial, False

    def _template(self, scope: Scope, root_path: str) -> str:
        """The route template that labels a request in the metrics and the access log (a 413 or
        415 is answered here, before routing; Starlette's own routes, /docs, do not say; a mount,
        the docs' static files, by its path), else "unmatched" (a 404)."""
        route, _ = self._route(scope, root_path)
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # from the request's arrival (its bytes read by the server) where stamped: a busy event loop's
        # wait before the app runs is part of its latency
        started = arrived_at(scope) or time.perf_counter()
        method, root_path = scope["method"], scope.get("root_path", "")
        if method == "HEAD":
            # HEAD wherever GET is answered (RFC 9110; load balancers probe health with it): the app
            # answers a GET, and the server, whose own scope still says HEAD, sends no body
            scope = {**scope, "method": "GET"}
        headers = dict(scope["headers"])
        request_id = request_id_of(headers)
        CURRENT_REQUEST_ID.set(request_id)  # this request's task's own: no reset needed
        answer = AnswerWithId(send, request_id)

        try:
            if self.api_keys is not None and self.api_keys.refuses(scope, headers):  # on the head alone: no body read
                answer.status = await _refuse(send, request_id, headers, 401, UNAUTHORIZED,
                                                        (b"www-authenticate", b"Bearer"))
                return
            with_body = method in ("POST", "PUT", "PATCH")
            try:
                coding, charset = body_format(headers, scope["path"]) if with_body else (None, None)
            except Unreadable as exc:
                if self.routes and not self._route(scope, root_path)[1]:
                    # no route takes this method at this path: its 404 or 405 says more than what
                    # the body is (perf_analyzer's shared-memory mode posts octet-stream to a route
                    # not served)
                    await self.app(scope, receive, answer.send)
                    return
                accepts = [(b"accept-encoding", ACCEPTED.encode())] if exc.problem["field"] == "Content-Encoding" \
                    else []
                answer.status = await _refuse(send, request_id, headers, 415, exc.problem, *accepts)
                return
            refused, scope, receive = await self._body(scope, headers, receive, with_body, coding, charset)
            if refused is not None:
                answer.status = await _refuse(send, request_id, headers, *refused)
                return
            await self.app(scope, receive, answer.send)
        except asyncio.CancelledError:
            if self.drain is None or not self.drain.passed():
                raise
            # uvicorn cancels what is still in flight when the drain's deadline passes: answered
            # (its text/plain 500 and a traceback told the client and the operator of a bug)
            error = self.drain.cut_off()
            if answer.started:  # a stream: it ends with its error event, not as if it were finished
                answer.status = 503  # counted and logged as what it ended with (its status line said 200)
                last_event = (scope.get("extensions") or {}).get(LAST_EVENT)
                await send({"type": "http.response.body", "body": last_event(error) if last_event else b"",
                            "more_body": False})
            else:  # as the app answers a ServiceError (Retry-After), with the request id
                await JSONResponse(error.body(), status_code=error.status, headers=error.headers)(
                    scope, receive, answer.send)
        except Exception:
            answer.status = 500
            log.exception("unhandled error on %s %s (request %s)", method, scope["path"], request_id)
            if not answer.started:
                start, body = _json_response(500, internal_error(request_id), request_id)
                await send(start)
                await send(body)
        finally:
            status = answer.status
            if answer.started:  # a stream that ended with an error, or that its client left (service/event_stream.py)
                status = (scope.get("extensions") or {}).get(ENDED_WITH, status)
            record_request(method, scope["path"], self._template(scope, root_path), status,
                           time.perf_counter() - started, request_id, self.log_requests)

    async def _body(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, with_body: bool,
                    coding: str | None, charset: str | None
                    ) -> tuple[tuple[int, dict[str, Any]] | None, Scope, Receive]:
        """The request as the app will read it, or the answer refusing its body: 413 over the limit
        (declared, or counted as a chunked body arrives), 408 when it does not arrive in time, 422
        for compressed data that does not decode, or text that is not in its declared charset. A
        body is read in full here (a chunked one's size is known only then), a compressed one
        decoded and one in another charset re-encoded as UTF-8 (the app gets plain UTF-8, with its
        length), and replayed to the app."""
        refused, buffered = await self._read_whole(headers, receive, with_body, scope.get("extensions") or {})
        if refused is not None:
            return refused, scope, receive
        if buffered is None:
            return None, scope, receive
        if (coding or charset) and all(m["type"] == "http.request" for m in buffered):  # not if the client left
            body = b"".join(m.get("body", b"") for m in buffered)
            try:
                body = decode(body, coding, self.max_body_bytes) if coding else body
            except DecodedTooLarge:
                return self._too_large(), scope, receive
            except ValueError as exc:
                return (422, {"error": str(exc), "code": "invalid_input", "field": "Content-Encoding"}), scope, receive
            try:
                body = to_utf8(body, charset) if charset else body
            except ValueError as exc:
                return (422, {"error": str(exc), "code": "invalid_input", "field": "body", "limit": charset}), \
                    scope, receive
            if len(body) > self.max_body_bytes:  # UTF-8 can take 3 bytes where a charset took 1
                return self._too_large(), scope, receive
            buffered = [{"type": "http.request", "body": body, "more_body": False}]
            rewritten = (b"content-encoding", b"content-length", *((b"content-type",) if charset else ()))
            plain = [(k, v) for k, v in scope["headers"] if k not in rewritten]
            scope = {**scope, "headers": [*plain, (b"content-length", str(len(body)).encode()),
                                          *(((b"content-type", b"application/json"),) if charset else ())]}
        # the body read, then the connection itself again: the app must see a disconnect only when
        # the client really leaves
        read_on = receive

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await read_on()

        return None, scope, replay

    def _too_large(self) -> tuple[int, dict[str, Any]]:
        return 413, {"error": f"request body over {self.max_body_bytes} bytes", "code": "payload_too_large",
                     "field": "body", "limit": self.max_body_bytes}

    async def _read_whole(
        self, headers: dict[bytes, bytes], receive: Receive, with_body: bool, extensions: dict[str, Any]
    ) -> tuple[tuple[int, dict[str, Any]] | None, list[Message] | None]:
        """(the refusal, or None; the messages read). A declared length is checked without
        reading. A request that may carry a body (POST, PUT, PATCH, or one sent chunked) is read in
        full, up to the limit and by its deadline: a client that stops mid-body would otherwise hold
        its request until it leaves (408, and the connection closes). The protocol wakes this read
        when the deadline passes (LATE) or the body breaks HTTP's framing (MALFORMED, 400), and says
        which in the scope's ``extensions`` (service/http_protocol.py)."""
        over = declared_over_limit(headers, self.max_body_bytes)
        if over:
            return self._too_large(), None
        chunked = over is None and b"chunked" in headers.get(b"transfer-encoding", b"").lower()  # any case
        if not chunked and not with_body:
            return None, None
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return self._too_large(), None
            if message["type"] != "http.request" or not message.get("more_body", False):
                return None, messages
            broken = extensions.get(MALFORMED)
            if broken is not None:
                return (400, {"error": f"malformed HTTP/1.1 request: {broken}", "code": "malformed_request",
                              "field": "body"}), None
            waited_s = extensions.get(LATE)
            if waited_s is not None:
                return (408, {"error": f"the request's body did not arrive within {waited_s:g} s of its first "
                                       "bytes", "code": "request_timeout", "field": "body", "limit": waited_s}), None
