"""uvicorn's httptools protocol, stamping each request's arrival into its ASGI scope.

A request's latency counts from when the server read its first bytes (``time.perf_counter()`` in
``scope["extensions"]["seqserve.arrival"]["at"]``), not from when the app starts on it. The two differ
under a burst: a request waits for its turn to be parsed (below), then in the loop's ready queue
for the requests parsed before it, and those waits are part of what the client sees. The access
log's ``latency_ms`` and ``seqserve_request_latency_seconds`` count from the stamp
(service/middleware.py).

It also counts each inference request as arriving for its model from here, and answers in its
own callbacks the requests refused on arrival while a model is full (service/early_refusal.py):
the app never runs for them. And it asks for a turn before it parses a request's first bytes, a
share of requests per event-loop pass (service/loop_budget.py). The refusing instance and the
budget come from the app's state (``app.state.early_refusal``, active while the app serves;
``app.state.pass_budget``).

And it answers the plainest POST /v1/sentiment requests itself, with the route's own steps
(service/direct_route.py, ``app.state.direct_sentiment``): everything else, and every request the
route would refuse, goes to the app through uvicorn's request cycle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import httptools
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.access_log import record_request, request_context, request_id_of
from service.admission import Admission
from service.json_response import dumps
from service.timers import IdleTimeout

if TYPE_CHECKING:  # at run time the refusing instance and the budget come from the app's state
    from service.direct_route import Answer, DirectSentiment
    from service.early_refusal import EarlyRefusal, Refusal
    from service.loop_budget import PassBudget

# the ASGI scope extension holding the stamp: {"at": time.perf_counter()}
ARRIVAL = "seqserve.arrival"
# a request's line and headers, at most (h11 takes 16 KiB, nginx 32 KiB by default): past it, 431
MAX_HEAD_BYTES = 64 * 1024
# the ASGI scope extension set when a request's body has not all arrived by its deadline, to the
# seconds it had: the request layers answer 408 (service/middleware.py), woken from their wait
LATE = "seqserve.late"
# the ASGI scope extension set when a request's body breaks HTTP/1.1's framing (a chunk size that
# is not hex, ...), to the parser's reason: the request layers answer 400 and the connection closes
MALFORMED = "seqserve.malformed"
# how the metrics and the access log label the answers the protocol gives by itself, before any
# route is known: bytes that are not an HTTP request, a head too big or too slow, no Host, h2c
PROTOCOL_ROUTE = "protocol"
# how long a connection closing with a client still sending reads and drops its bytes (_close)
LINGER_S = 2.0
log = logging.getLogger("seqserve")
_HEALTH = b"GET /v2/health/"
_UNREAD_BYTES = 65536  # what a shutdown reads of a request not yet read (the rest comes as usual)
# how long a shutdown waits for the first request of a connection that has sent none yet: one
# opened just before the signal sends it within moments (closed at once, as uvicorn closes an idle
# connection, a burst's slower clients had their requests reset: 91-160 of 160 on a loaded machine)
_FIRST_REQUEST_GRACE_S = 1.0
_CHUNKED = b"\r\ntransfer-encoding: chunked\r\n"  # as uvicorn writes it for a body of unknown length


def json_answer(status: bytes, body: bytes, default_headers: Sequence[tuple[bytes, bytes]],
                *headers: tuple[bytes, bytes], to_head: bool = False) -> bytes:
    """A whole HTTP/1.1 response with a JSON body, for the answers the protocol writes itself
    before any request cycle exists (refusals on arrival, a refused head): ``status`` as "503
    Service Unavailable", the server's default headers, then ``headers``; without the body for a
    HEAD request (``to_head``, RFC 9110 9.3.2), its length still said. A request refused once
    its head is whole gets a cycle of its own instead (``_refusing``), answered in its turn."""
    head = [b"HTTP/1.1 ", status, b"\r\n"]
    for name, value in (*default_headers, (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), *headers):
        head += [name, b": ", value, b"\r\n"]
    return b"".join([*head, b"\r\n", b"" if to_head else body])


def _refusing(status: int, error: dict[str, Any], log_requests: bool) -> ASGIApp:
    """An app that answers every request with ``status`` and ``error`` (the API's vocabulary),
    for the requests the protocol refuses before the app, recorded as the app records its
    answers: uvicorn adds "connection: close"."""
    body = dumps(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request_id = request_id_of(dict(scope["headers"]))
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": body})
        arrived = arrived_at(scope) or time.perf_counter()
        record_request(scope["method"], scope["path"], PROTOCOL_ROUTE, status, time.perf_counter() - arrived,
                       request_id, log_requests)

    return app


# a Host header's value (RFC 9112 3.2, RFC 3986 3.2.2): an IP literal, or a registered name or IPv4
# address; then an optional port. Empty is allowed (a target without an authority)
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z")


def _origin_form(url: bytes) -> bytes:
    """A request target in absolute-form ("http://host/path?query") or "*" in origin-form, as
    the routes and the refusal on arrival read it (RFC 9112 3.3): its path ("/" where it has
    none) and query. An absolute-form target passed the refusal on arrival. A target uvicorn
    cannot parse is left for its parse to refuse (400)."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return url
    return (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")


def arrived_at(scope: Mapping[str, Any]) -> float | None:
    """When the server read this request's first bytes (``time.perf_counter()``); None if not stamped
    (another server, a test client)."""
    arrival = scope.get("extensions", {}).get(ARRIVAL)
    return arrival["at"] if arrival else None


def _only_line_breaks(data: bytes) -> bool:
    """Bytes the parser skips before a request (RFC 9112 2.2): no request begins with them."""
    return data[:1] in (b"\r", b"\n") and not data.strip(b"\r\n")


class _Answered:
    """Stands in for uvicorn's request cycle while a refused request's body is read and dropped:
    its response is complete as far as the protocol's other callbacks are concerned."""

    response_complete = True

    class message_event:  # read as the cycle's asyncio.Event
        @staticmethod
        def set() -> None:
            pass


def _unchunked(data: bytes) -> bytes:
    """The payload in one of uvicorn's chunked writes: whole chunks (size in hex, CRLF, data, CRLF),
    the last one of size 0."""
    parts, at = [], 0
    while at < len(data):
        eol = data.index(b"\r\n", at)
        size = int(data[at:eol], 16)
        if size == 0:
            break
        parts.append(data[eol + 2:eol + 2 + size])
        at = eol + 4 + size
    return b"".join(parts)


class _HeadWithBody:
    """The connection's transport as one request's cycle sees it: the response's head (status
    line and headers, which uvicorn writes as soon as the app starts its response) goes out with
    the response's first body write, in one send. On loopback each send cost ~50 us of the event
    loop (py-spy), and a plain answer needs one instead of two (a streamed one its first event
    with its head). Not for HEAD, whose answer has no body write to wait for.

    For an HTTP/1.0 request it also takes uvicorn's chunked framing off a body of unknown length
    (a stream of events): RFC 9112 forbids Transfer-Encoding in an answer to HTTP/1.0, whose
    clients cannot read it. The body then ends where the connection closes, as uvicorn closes
    every HTTP/1.0 connection after its response."""

    def __init__(self, transport: asyncio.Transport, cycle: Any, close: Callable[[], None],
                 closed: Callable[[], bool]) -> None:
        self._transport = transport
        self._close = close  # the protocol's: it lingers while the client may still be sending
        self.is_closing = closed  # lingering too: uvicorn writes nothing more then (a 100 Continue)
        self._hold = cycle.scope["method"] != "HEAD"
        # held only until the head is taken: the cycle holds this object as its transport, and a
        # reference back made each answered request a reference cycle of ~13 objects (the cycle,
        # its event, scope, lambda...) that only the garbage collector freed (3 % of the loop's CPU)
        self._cycle: Any = cycle if self._hold else None
        self._head = b""
        self._http10 = cycle.scope["http_version"] == "1.0"
        self._unchunk = False

    def write(self, data: bytes) -> None:
        if self._unchunk:
            data = _unchunked(data)
        if self._head:
            data, self._head = self._head + data, b""
        elif self._hold and self._cycle.response_started:  # the first write of the response: its head
            self._hold, self._cycle = False, None
            self._head = bytes(data)
            if self._http10 and _CHUNKED in self._head:
                self._head, self._unchunk = self._head.replace(_CHUNKED, b"\r\n"), True
            return
        self._transport.write(data)

    def close(self) -> None:  # after a head without a body (a failing app): the head still goes out
        if self._head:
            self._transport.write(self._head)
            self._head = b""
        self._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _NoSocketObject:
    """The transport as uvicorn's ``connection_made`` reads the connection's two addresses: from
    what the loop noted when it accepted the connection (``sockname``, ``peername``; uvicorn
    falls back to them), not from a socket object made for the purpose. uvloop makes that object
    per connection with four system calls, ~5 us of the event loop: in a burst of fresh
    connections, one more cost per refusal. uvicorn's fallback takes only (host, port): an IPv6
    address's flow info and scope id are left out, as its socket path leaves them out."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return None
        info = self._transport.get_extra_info(name, default)
        if name in ("sockname", "peername") and isinstance(info, tuple) and len(info) > 2:
            return info[:2]  # (host, port, flowinfo, scope_id) of an IPv6 socket
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _NoEvent:
    """uvicorn's connection_lost wakes a cycle's readers; a direct answer has none."""

    @staticmethod
    def set() -> None:
        return None


class DirectCycle:
    """What the protocol holds as its request cycle while it answers a request directly
    (service/direct_route.py): uvicorn's connection_lost, shutdown and pipelining read and set
    these as they do a request cycle's."""

    __slots__ = ("disconnected", "keep_alive", "response_complete")
    message_event = _NoEvent

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive  # a shutdown sets it False: the connection closes after the answer
        self.disconnected = False
        self.response_complete = False


class _Pending:
    """A request the direct route may answer, while its body is read."""

    __slots__ = ("admission", "body")

    def __init__(self, admission: Admission | None) -> None:
        self.admission = admission  # the early refusal's, reserved if it goes to the app after all
        self.body: list[bytes] = []


class ArrivalStampingProtocol(HttpToolsProtocol):
    _refusal: Refusal | None = None
    _closing = False  # a graceful shutdown began while a refused request or held bytes were pending
    _budget: PassBudget | None = None
    _in_message = False  # the parser is inside a request (its first bytes parsed, not yet all)
    _waits = False  # in the pass budget's line, reading paused
    _held = b""  # bytes read while waiting for a turn
    _read_at = 0.0  # when the bytes being parsed were read
    _first = False  # no request's headers completed yet in the bytes being parsed (one read, or a turn)
    _requests = 0  # requests whose headers this connection has sent
    _superseded: list[Any] | None = None  # request cycles still open when a pipelined one was parsed after them
    # "refused": a request was refused before the app (no Host, bytes that broke the framing): the
    # connection reads nothing more
    _declined = ""
    # the head of a request that asked for an upgrade this server does not do (h2c), without the
    # upgrade: parsed again in its place, with its body (see _decline_upgrade)
    _without_upgrade: bytes | None = None
    _in_head = False  # the parser is inside a request's line and headers
    _head_bytes = 0  # read while the headers were still incomplete after a read
    _big_read = False  # the bytes being parsed are more than a head may be
    _head_timer: asyncio.TimerHandle | None = None  # armed when a read leaves the headers incomplete
    _head_timeout_s = 30.0
    _body_timer: asyncio.TimerHandle | None = None  # armed when a read leaves a body incomplete
    _log_requests = True
    _lingering = False  # answered and half-closed: what the client still sends is dropped (_close)
    _linger_timer: asyncio.TimerHandle | None = None
    # the answer to bytes that broke the framing behind requests still being answered: sent after them
    _malformed_after: tuple[int, str, dict[str, Any]] | None = None
    _direct: DirectSentiment | None = None  # the route answered here (service/direct_route.py)
    _pending: _Pending | None = None  # a request it may answer: its head parsed, its body being read

    def on_message_begin(self) -> None:
        # a refusal answered in the parser's callback armed the keep-alive timer; a next request in
        # the same read must stop it, as uvicorn's data_received does for one in a later read
        self._unset_keepalive_if_required()
        super().on_message_begin()
        self._in_message = self._in_head = True
        self._head_bytes = 0
        self.arrived = self._read_at
        self.scope.setdefault("extensions", {})[ARRIVAL] = {"at": self.arrived}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_NoSocketObject(transport))  # type: ignore[arg-type]
        # the real transport for the writes; uvicorn's flow control keeps the view, which passes
        # its pause and resume on (a second FlowControl cost an Event per connection)
        self.transport = transport
        state = getattr(self.config.app, "state", None)  # None: another app (a test's)
        # not with uvicorn's own concurrency limit, whose 503 app would never release a place
        door = getattr(state, "early_refusal", None) if self.limit_concurrency is None else None
        self._door: EarlyRefusal | None = door
        self._budget = getattr(state, "pass_budget", None)
        self._direct = getattr(state, "direct_sentiment", None)
        settings = getattr(state, "settings", None)
        # a request's headers must arrive within its deadline, which counts from its first bytes
        self._head_timeout_s = settings.request_timeout_s if settings is not None else 30.0
        self._log_requests = settings.access_log if settings is not None else True
        # uvicorn's keep-alive timer was a loop timer per request, stopped when it arrived and
        # started when it was answered; this one keeps one timer (service/timers.py)
        self._idle = IdleTimeout(self.loop, self.timeout_keep_alive_handler)
        # uvicorn arms the keep-alive timer only after a response: a connection that never sends
        # a request would be held open for ever. Its first request is due as a head is: within
        # the request deadline, when that is shorter than the keep-alive timeout
        self._idle.start(min(self.timeout_keep_alive, self._head_timeout_s))

    def data_received(self, data: bytes) -> None:
        if self._declined or self._lingering:  # never parsed: bytes after an error or a refusal, or
            return  # what a refused request still sends
        read_at = time.perf_counter()
        starts = self._budget is not None and not self._in_message and not self._waits \
            and (self.cycle is None or self.cycle.response_complete)
        # a health check skips the line: probes must not wait behind a burst (they read a flag)
        if starts and not data.startswith(_HEALTH) and not self._budget.admit(self):  # type: ignore[union-attr]
            # a request past this pass's share: held, the wait for its turn counted
            if not _only_line_breaks(data):
                self._unset_keepalive_if_required()
            self._waits, self._held, self._read_at = True, data, read_at
            self.flow.pause_reading()
            return
        if self._waits:  # more bytes after the held ones, read before reading paused
            self._held += data
            return
        self._read_at, self._first = read_at, True
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        self._big_read = len(data) > MAX_HEAD_BYTES  # a head over the limit may have come whole in it
        # uvicorn's data_received, but for an upgrade this server declines, and without its warning
        # line per bad request (each is answered in the API's vocabulary and in the access log: a
        # client must not be able to fill the log at WARNING level). The keep-alive timer stops for
        # a read of a request, not for the line breaks a parser skips before one (RFC 9112 2.2):
        # they held an idle connection open for ever, one CRLF at a time
        if self._in_message or not _only_line_breaks(data):
            self._unset_keepalive_if_required()
        pending: list[bytes | memoryview] = [data]
        while pending:  # a loop, not recursion: a read may hold a thousand pipelined upgrades
            chunk = pending.pop(0)
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserError:
                self.send_400_response("Invalid HTTP request received.")
                return
            except httptools.HttpParserUpgrade as upgrade:
                head, self._without_upgrade = self._without_upgrade, None
                if head is None:  # to a WebSocket, where a protocol for it is configured; else refused
                    if self._should_upgrade():
                        self.handle_websocket_upgrade()
                    return
                # the parser stopped after the head, its body taken for the other protocol: a fresh
                # parser reads the request again, without the upgrade, then its body and what follows
                self.parser = httptools.HttpRequestParser(self)
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own
                pending[:0] = [head, memoryview(chunk)[upgrade.args[0]:]]
        if not self._in_message or self._closed():
            return
        if not self._in_head:  # the body is incomplete after this read: it too must arrive in time
            if self._pending is not None:  # only a whole body is answered directly: the app waits for it
                self._the_ordinary_way()
            if self._body_timer is None and self.cycle is not None:
                left = self._head_timeout_s - (time.perf_counter() - self.arrived)
                self._body_timer = self.loop.call_later(max(left, 0.0), self._body_late, self.cycle)
            return
        # the headers are still incomplete after this read: a slow or endless head is bounded in
        # size and in time (uvicorn bounds neither), checked only then, so a whole head costs nothing
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head(431, "Request Header Fields Too Large",
                              f"the request line and headers are over {MAX_HEAD_BYTES} bytes", MAX_HEAD_BYTES)
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self._head_timeout_s, self._refuse_head, 408, "Request Timeout",
                f"the request's headers did not arrive within {self._head_timeout_s:g} s", self._head_timeout_s)

    def _body_late(self, cycle: Any) -> None:
        """The deadline passed with the body incomplete: the request layers, waiting for the rest,
        are woken to answer 408 (uvicorn would let them wait until the client leaves). A request
        answered before its body was read (a 413, a 415, a refusal) needs the rest of it no more:
        the connection closes (a client trickling bytes held it open for ever)."""
        self._body_timer = None
        if cycle is _Answered:  # refused on arrival, its 503 due once its body is in: the deadline says it
            self._refusal = None
            self._answer_and_close(408, "Request Timeout", {
                "error": f"the request's body did not arrive within {self._head_timeout_s:g} s of its first bytes",
                "code": "request_timeout", "field": "body", "limit": self._head_timeout_s})
        elif cycle.response_complete:
            self.transport.close()
        else:
            cycle.scope.setdefault("extensions", {})[LATE] = self._head_timeout_s
            cycle.message_event.set()

    def _refuse_head(self, status: int, reason: str, error: str, limit: float) -> None:
        """Answer ``status`` in the API's error vocabulary and close the connection; after the
        answers to the requests before it (they were closed without them)."""
        self._head_timer = None
        if self._closed():
            return
        answer = {"error": error, "code": "request_head_refused", "field": "headers", "limit": limit}
        if self.cycle is None or self.cycle.response_complete:
            self._answer_and_close(status, reason, answer)
        else:  # behind a request being answered (pipelined): after it, nothing more read
            self._declined = "refused"
            self._malformed_after = (status, reason, answer)

    def _answer_and_close(self, status: int, reason: str, error: dict[str, Any]) -> None:
        """Answer the request being parsed, which never reached the app, and close the connection;
        recorded with what was parsed of its line (the metrics and the access log)."""
        if self._closed():
            return
        request_id = request_id_of(dict(self.headers) if self._in_message else {})
        method = path = None
        if self._in_message and self.url:  # the parser got as far as the request's target
            method, path = self.parser.get_method().decode("latin-1"), self.url.decode("latin-1").partition("?")[0]
        self.transport.write(json_answer(f"{status} {reason}".encode(), dumps(error), self.server_state.default_headers,
                                         (b"x-request-id", request_id.encode()), (b"connection", b"close"),
                                         to_head=method == "HEAD"))
        self._close()
        started = self.arrived if self._in_message else self._read_at
        record_request(method, path, PROTOCOL_ROUTE, status, time.perf_counter() - started, request_id,
                       self._log_requests)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that break HTTP/1.1 (it calls this while it handles the
        parser's error, which says what broke): in the API's error vocabulary and recorded, where
        uvicorn wrote a text/plain page and dropped whatever requests were in flight. The parser
        cannot go on after an error, so the connection reads nothing more and closes once the
        requests before the bad bytes are answered. A request whose body broke the framing is
        answered by its own layers (MALFORMED)."""
        error = sys.exc_info()[1]
        if isinstance(error, httptools.HttpParserCallbackError):  # raised in a callback: whose fault?
            error = error.__context__
        if not isinstance(error, httptools.HttpParserError):  # a bug in a callback, not the client's bytes
            log.error("request parsing failed", exc_info=error)
            status, reason = 500, "Internal Server Error"
            answer: dict[str, Any] = {"error": "internal server error", "code": "internal_error"}
        elif isinstance(error, httptools.HttpParserInvalidURLError):  # the request target
            # RFC 9112 3: a target longer than the server parses is 414 (httptools stops at 64 KiB)
            status, reason = (414, "URI Too Long") if "too long" in str(error) else (400, "Bad Request")
            answer = {"error": f"malformed HTTP/1.1 request: {error}", "code": "malformed_request", "field": "url"}
        else:
            status, reason = 400, "Bad Request"
            answer = {"error": f"malformed HTTP/1.1 request: {error}", "code": "malformed_request",
                      "field": "body" if self._in_message and not self._in_head else "headers"}
        self._declined = "refused"
        self._refusal = None  # a refused request's body broke off: answered here instead
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and cycle is not _Answered and cycle.response_complete and self._in_message \
                and not self._in_head:
            # the body of a request answered before it was read (a 401, 413, 415): its client has its
            # one answer, and a second would be read as the answer to its next request
            self._close()
            return
        if cycle is None or cycle.response_complete:
            self._answer_and_close(status, reason, answer)
            return
        if status == 400 and self._in_message and not self._in_head:  # its own body: its layers answer
            cycle.keep_alive = False
            cast("dict[str, Any]", cycle.scope.setdefault("extensions", {}))[MALFORMED] = str(error)
            cycle.message_event.set()
        else:  # pipelined behind requests in flight: answered after them (on_response_complete)
            self._malformed_after = (status, reason, answer)

    def _unset_keepalive_if_required(self) -> None:  # uvicorn's name: a request's bytes arrived
        self._idle.stop()

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self._lingering or self.transport.is_closing():  # the requests behind it are not run
            return
        # uvicorn's, with the keep-alive timer started as IdleTimeout's
        self._idle.stop()
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request starts; else the connection is idle
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle.start(self.timeout_keep_alive)
        if self._malformed_after is not None and self.cycle is not None and self.cycle.response_complete:
            status, reason, answer = self._malformed_after
            self._malformed_after = None
            if self._closed():  # the last answer closed it (HTTP/1.0): nobody to tell
                return
            self._answer_and_close(status, reason, answer)

    def take_turn(self) -> bool:
        """The pass budget lets this connection's next request in (service/loop_budget.py)."""
        if not self._waits or self._closed():
            return False
        self._waits = False
        self.flow.resume_reading()
        held, self._held = self._held, b""
        self._first = True
        self._parse(held)  # stamped with when it was read (_read_at)
        return True

    def on_message_complete(self) -> None:
        if self._without_upgrade is not None:  # the parser ends a declined upgrade's head: read again
            return
        self._in_message = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        refusal, self._refusal = self._refusal, None
        if self._pending is not None and self._answered_directly():
            return
        if refusal is None:
            super().on_message_complete()
            cycle = self.cycle
            if cycle is not None and cycle.response_complete and cycle.keep_alive and not self.pipeline \
                    and not self._idle.started and not self._closed():
                # answered before its body was all read (a 413, a 415): the keep-alive timer started
                # with the answer, and each read of the body since stopped it
                self._idle.start(self.timeout_keep_alive)
            return
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive() \
            and not self._closing
        self.transport.write(refusal.answer(self.arrived, self.server_state.default_headers, keep_alive))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._declined == "refused":  # pipelined behind a refused request, in the same read: never run
            return
        if self.parser.should_upgrade() and not self._should_upgrade() and self.parser.get_method() != b"CONNECT":
            self._without_upgrade = self._decline_upgrade()
            return
        if self.url[:1] != b"/":  # absolute-form, as proxies send it (or "*"): uvicorn needs a path
            self.url = _origin_form(self.url)
        refusal = self._refusal_of_head()
        if refusal is None and self.parser.get_method() == b"CONNECT":  # always a switch for the parser
            # RFC 9110 15.6.2: a method the server does not implement (it is no proxy)
            refusal = _refusing(501, {"error": "CONNECT is not implemented: seqserve is no proxy",
                                      "code": "method_not_implemented", "field": "method"}, self._log_requests)
        if refusal is not None:
            # the app never sees it: answered in its turn, after the requests before it on the
            # connection, which then closes and reads nothing more
            self._declined = "refused"
            app, self.app = self.app, refusal
            try:
                self._new_cycle(None)
            finally:
                self.app = app
            return
        door = self._door if self._first else None
        # the first request of the bytes parsed at once: requests pipelined behind it go to the app,
        # one at a time, or a single read of a thousand refusals would take its pass back
        self._first = False
        admission = None
        # only on an idle connection (a request in flight answers first; the pipelined one waits
        # with reading paused), never for an upgrade, never while writes are backed up
        if door is not None and (self.cycle is None or self.cycle.response_complete) \
                and not self.parser.should_upgrade() and not self.flow.write_paused:
            found = door.look(self.parser.get_method(), self.url, self.headers)
            if isinstance(found, Admission):
                admission = found
            elif found is not None:
                self._refusal = found
                self.cycle = _Answered  # type: ignore[assignment]
                return
        if self._direct is not None and (self.cycle is None or self.cycle.response_complete) \
                and not self.pipeline and not self._closing and not self._declined \
                and self._direct.takes(self.parser.get_method(), self.url, self.parser.get_http_version(),
                                       self.headers):
            self._pending = _Pending(admission)
            return
        self._new_cycle(admission)

    def on_body(self, body: bytes) -> None:
        if self._pending is not None:
            self._pending.body.append(body)
            return
        super().on_body(body)

    def _the_ordinary_way(self) -> None:
        """The pending request goes to the app after all: its cycle starts as when its head was
        parsed, with the body read so far (the parser's own callbacks bring the rest)."""
        pending, self._pending = self._pending, None
        assert pending is not None
        self._new_cycle(pending.admission)
        if pending.body:
            super().on_body(b"".join(pending.body))

    def _answered_directly(self) -> bool:
        """The pending request, its body whole, answered here (True), or sent the ordinary way."""
        pending = self._pending
        assert pending is not None and self._direct is not None
        work = self._direct.start(b"".join(pending.body), self.arrived)
        if work is None:
            self._the_ordinary_way()
            return False
        self._pending = None
        self._requests += 1
        self.cycle = cycle = DirectCycle(keep_alive=self.parser.should_keep_alive() and not self._closing)  # type: ignore[assignment]
        request_id = request_id_of(dict(self.headers))
        task = self.loop.create_task(self._answer_directly(work, cycle, request_id, self.arrived),
                                     context=request_context(request_id))
        task.add_done_callback(self.tasks.discard)  # uvicorn waits for these at shutdown
        self.tasks.add(task)
        return True

    async def _answer_directly(self, work: Coroutine[Any, Any, Answer], cycle: DirectCycle, request_id: str,
                               arrived: float) -> None:
        """Write the answer as the app's request cycle would (its headers, "connection: close" where
        the connection ends after it; nothing to a client that left), then count and log it as the
        request middleware does, and let the connection go on."""
        answer = await work
        if not cycle.disconnected and not self._closed():
            ending = () if cycle.keep_alive else ((b"connection", b"close"),)
            self.transport.write(json_answer(answer.status_line, answer.body, self.server_state.default_headers,
                                             *answer.headers, (b"x-request-id", request_id.encode()), *ending))
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.transport.close()
        path = self._direct.path  # type: ignore[union-attr]
        record_request("POST", path, path, answer.status, time.perf_counter() - arrived, request_id, self._log_requests)
        self.on_response_complete()

    def _refusal_of_head(self) -> ASGIApp | None:
        """What answers a request whose head breaks a rule of RFC 9112 that the parser leaves to
        the server (None: nothing). The Host header: exactly one (3.2: a proxy and the app could
        each read a different one from two), well formed. The transfer coding: only chunked is
        implemented (6.1: 501 for another; a request must not be read by a framing it did not
        ask for), and HTTP/1.0 has none (its framing would be faulty). And a head over
        MAX_HEAD_BYTES that arrived in one read (431, as for one measured while it arrives)."""
        hosts: list[bytes] = []
        codings = b""
        for name, value in self.headers:
            if name == b"host":
                hosts.append(value)
            elif name == b"transfer-encoding":
                codings += b"," + value
        version = self.parser.get_http_version()
        http10 = version == "1.0"
        if http10:
            self.expect_100_continue = False  # RFC 9110 10.1.1: ignored from 1.0, which no 1xx may reach
        problem: tuple[int, dict[str, Any]] | None = None
        if version not in ("1.0", "1.1"):  # RFC 9110 15.6.6 (the parser takes 0.9 and 2.0 lines as 1.x)
            problem = 505, {"error": f"HTTP/{version} is not supported: send HTTP/1.1 (or HTTP/1.0)",
                            "code": "http_version_not_supported", "field": "version", "limit": ["1.0", "1.1"]}
        elif (self._big_read or self._head_bytes) \
                and len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > MAX_HEAD_BYTES:
            # it came in one big read, or its last read completed it (_parse measures it only while
            # it is incomplete)
            problem = 431, {"error": f"the request line and headers are over {MAX_HEAD_BYTES} bytes",
                            "code": "request_head_refused", "field": "headers", "limit": MAX_HEAD_BYTES}
        elif len(hosts) > 1 or (not hosts and not http10):
            problem = 400, {"error": "an HTTP/1.1 request needs exactly one Host header" if not hosts
                            else f"a request may have one Host header, this one has {len(hosts)}",
                            "code": "bad_host", "field": "Host", "limit": 1}
        elif hosts and not _HOST.match(hosts[0]):
            problem = 400, {"error": "the Host header is not a host name or address with an optional port",
                            "code": "bad_host", "field": "Host"}
        elif codings and http10:
            problem = 400, {"error": "HTTP/1.0 has no Transfer-Encoding: send the body with a Content-Length",
                            "code": "malformed_request", "field": "Transfer-Encoding"}
        elif codings and [c.strip().lower() for c in codings.split(b",") if c.strip()] != [b"chunked"]:
            problem = 501, {"error": "only the chunked transfer coding is implemented (compress the body with "
                            "Content-Encoding instead)", "code": "transfer_coding_not_implemented",
                            "field": "Transfer-Encoding", "limit": "chunked"}
        return _refusing(*problem, self._log_requests) if problem is not None else None

    def _new_cycle(self, admission: Admission | None) -> None:
        """uvicorn's request cycle for the request whose headers are parsed, started with the app
        or queued behind the one being answered."""
        before = self.cycle
        super().on_headers_complete()
        if before is not None and not before.response_complete and self.cycle is not before:
            # pipelined behind a request still being answered: uvicorn tells only the newest cycle
            # when the client leaves, so the older ones are kept here for connection_lost
            self._superseded = [c for c in self._superseded or () if not c.response_complete] + [before]
        if self.cycle is not before:
            self._requests += 1
        if self.cycle is not before and (self._declined or self._closing):
            # answered, then the connection closes (with its later bytes unread; or for a shutdown)
            self.cycle.keep_alive = False
        if self.cycle is not before:  # a new request cycle, its task started with the app
            self.cycle.transport = _HeadWithBody(  # type: ignore[assignment]
                self.transport, self.cycle, self._close, self._closed)
            if admission is not None:
                self._door.reserve(admission, cast("dict[str, Any]", self.scope))  # type: ignore[union-attr]

    def _decline_upgrade(self) -> bytes:
        """A request asks to switch to a protocol this server does not speak (HTTP/2 over cleartext,
        "Upgrade: h2c", as curl --http2 and Java's HttpClient send on every request by default).
        RFC 9110 7.8: a server may ignore Upgrade and answer in HTTP/1.1, and a client waits for a
        101 before it speaks the new protocol. The parser, though, takes every byte after the head
        for that protocol, the body included (a POST was refused with 400, so Java's default client
        could not call the API at all). The head without the upgrade (its Upgrade and
        HTTP2-Settings headers, its Connection tokens for them), for the parser to read again."""
        dropped = {b"upgrade", b"http2-settings"}
        lines = [b"%s %s HTTP/%s\r\n" % (self.parser.get_method(), self.url, self.parser.get_http_version().encode())]
        for name, value in self.headers:
            if name == b"connection":
                value = b", ".join(t.strip() for t in value.split(b",") if t.strip().lower() not in dropped)
                if not value:
                    continue
            elif name in dropped:
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        return b"".join(lines) + b"\r\n"

    def _closed(self) -> bool:
        """Closed or closing, or answered and lingering: nothing more is written."""
        return self._lingering or self.transport.is_closing()

    def _close(self) -> None:
        """Close the connection after an answer. While the client may still be sending (a request
        answered before its body was read, bytes after an error), closing with unread bytes makes
        the kernel reset the connection, and a client still sending loses the answer it has not
        read yet (Python's http.client, raw sockets; curl and httpx read while they send). So
        then the connection lingers (RFC 9112 9.6): its sending side closes, and what arrives is
        read and dropped until the client closes its side or LINGER_S pass, as nginx does."""
        transport = self.transport
        if self._closed():
            return
        if not (self._in_message or self._declined) or not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        transport.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, transport.close)

    def _cancel_timers(self) -> None:
        """The head's and the body's deadlines, and a lingering close's end."""
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None

    def _close_if_idle(self) -> None:
        """A shutdown's grace for a first request is over: closed unless one came."""
        if self.cycle is None and not self._held and not self._in_message and not self._closed():
            self.transport.close()

    def _unread(self) -> bytes:
        """What the client sent that the transport has not read yet (nothing for TLS, whose bytes
        only the transport can decrypt): read now, from a duplicate of the socket's descriptor."""
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.get_extra_info("sslcontext") is not None or self.transport.is_closing():
            return b""
        with socket.socket(fileno=os.dup(sock.fileno())) as duplicate:
            try:
                return duplicate.recv(_UNREAD_BYTES, socket.MSG_DONTWAIT)
            except OSError:  # nothing waiting (EAGAIN), or the client is gone
                return b""

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._idle.cancel()
        # the request being answered may be an older one than uvicorn's current cycle: marked
        # gone too, it stops writing to the closed transport (which raised, and logged a 500 for
        # a client that had left) and its work is dropped as for any client that leaves (499)
        for cycle in self._superseded or ():
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        unread = self._unread()
        if unread:  # sent before the signal, not yet read: uvicorn closed (reset) such a connection as idle
            self.data_received(unread)
        if not self._requests and self.cycle is None and not self._held and not self._closed():
            # opened before the signal, its first request not here yet: answered if it comes soon
            self._closing = True
            self.loop.call_later(_FIRST_REQUEST_GRACE_S, self._close_if_idle)
            return
        if self._held:  # read while waiting for its turn: answered, then the connection closes
            self._closing = True
            self.take_turn()
        # uvicorn closes a connection at once when its request cycle is complete, which the
        # placeholder cycle of a refusal says it is: a refusal still reading its body is answered
        # first, with "connection: close", as uvicorn lets an unfinished response finish
        if self._refusal is not None:
            self._closing = True
            return
        super().shutdown()
