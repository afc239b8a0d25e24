"""Checks shared by the v1 and v2 routes: JSON bodies, text limits, token limits, deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from service.errors import MAX_DETAILS, ClientGone, InvalidInput
from service.http_protocol import arrived_at
from service.settings import Settings
from service.tokenization import has_content

TIMEOUT_HEADER = b"x-request-timeout"
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def json_body(schema: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the handler parses itself (see parse_body)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema.model_json_schema()}}}}


async def parse_body(request: Request, schema: type[M]) -> M:
    """Validate the raw body in one pass, whatever its Content-Type says (none, or v2's
    application/octet-stream: RequestContextMiddleware has refused the rest with 415), skipping
    FastAPI's body machinery."""
    return validate_json(schema, await whole_body(request))


async def whole_body(request: Request) -> bytes:
    """The request's body, as ``request.body()`` reads it (ClientDisconnect if the client left
    first, kept for later readers), without Starlette's stream generator: RequestContextMiddleware
    has read it whole and replays it, mostly as one message, and the generator's machinery cost
    more of the event loop than the read."""
    if (body := getattr(request, "_body", None)) is not None:  # Starlette's cache: read before
        return cast(bytes, body)
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    request._body = body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return body


def validate_json(schema: type[M], raw: bytes) -> M:
    """``raw`` JSON as ``schema`` (pydantic's JSON parser); errors go through the same 422 handler
    as FastAPI's. A UTF-8 byte order mark first is skipped (RFC 8259 lets a parser ignore it, and
    Windows tools write one)."""
    try:
        return schema.model_validate_json(raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) \
            from None


def item_field(field: str, index: int) -> str:
    """How errors name one text: ``text`` (v1) or ``text_input`` (v2 generate) for a single-text
    field, ``texts[2]`` in a list."""
    return field if field in ("text", "text_input") else f"{field}[{index}]"


@dataclass(frozen=True)
class Problem:
    message: str
    field: str
    limit: Any = None


class Problems:
    """The bad texts of one request, all of them: a client scoring a file repairs every text in
    one round trip, not one per try. ``check`` raises the first as the answer's error, field and
    limit, with every one (up to ``MAX_DETAILS``) in its ``details``, as for a body that does not
    parse as the schema, and the message says how many more there are."""

    def __init__(self) -> None:
        self.found: list[Problem] = []

    def add(self, message: str, field: str, limit: Any = None) -> None:
        self.found.append(Problem(message, field, limit))

    def check(self) -> None:
        if not self.found:
            return
        first, more = self.found[0], len(self.found) - 1
        message = first.message
        if more:
            listed = "; details lists the first " + str(MAX_DETAILS) if len(self.found) > MAX_DETAILS else " in details"
            message += f" (and {more} more{listed})"
        details = [{"field": p.field, "message": p.message} for p in self.found[:MAX_DETAILS]]
        raise InvalidInput(message, field=first.field, limit=first.limit, details=details)


def check_texts(texts: list[str], settings: Settings, field: str) -> list[str]:
    """Refuse empty lists, too many texts, blank texts and texts over the character limit."""
    if not texts:
        raise InvalidInput(f"{field} must hold at least one text", field=field,
                           limit=[1, settings.max_texts_per_request])
    if len(texts) > settings.max_texts_per_request:
        raise InvalidInput(f"{field} holds {len(texts)} texts; at most {settings.max_texts_per_request} allowed",
                           field=field, limit=settings.max_texts_per_request)
    problems = Problems()
    for i, text in enumerate(texts):
        name = item_field(field, i)
        if not has_content(text):  # it would reach the model as no subwords at all; blank is the plainest case
            problem = "is empty" if not text.strip() else \
                "has no characters the model reads (only spaces, control or invisible ones)"
            problems.add(f"{name} {problem}", name, [1, settings.max_text_chars])
        elif len(text) > settings.max_text_chars:
            problems.add(f"{name} has {len(text)} characters; at most {settings.max_text_chars} allowed", name,
                         settings.max_text_chars)
        elif not text.isascii():
            try:  # a lone surrogate ("\ud800" escaped in JSON) is no text a tokenizer can take
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                problems.add(f"{name} is not valid Unicode text: {exc.reason} at position {exc.start}", name)
    problems.check()
    return texts


def integral(value: object) -> object:
    """JSON Schema's "integer" includes 5.0, so a client generated from the OpenAPI document may send
    it: taken as 5. Strings and booleans stay refused by the integer checks after this."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def check_tokens(ids: list[int], limit: int, field: str, model: str, problems: Problems | None = None,
                 part: str = "") -> bool:
    """Whether ``ids``, one sentence, are within ``limit``; if not, the problem is added to
    ``problems`` (``part``: which sentence of the field the ids are, " (sentence 2)" or " (one
    sentence)", for the message). The limit is a sentence's: a longer text is split into them."""
    if len(ids) <= limit:
        return True
    if problems is not None:
        problems.add(f"{field}{part} is {len(ids)} subword tokens; model {model} takes at most {limit} a sentence",
                     field, limit)
    return False


def check_range(value: int | None, low: int, high: int, field: str) -> None:
    if value is not None and not low <= value <= high:
        raise InvalidInput(f"{field} must be between {low} and {high}; got {value}", field=field,
                           limit=[low, high])


MAX_TIMEOUT_S = 3600
MAX_TIMEOUT_US = MAX_TIMEOUT_S * 1_000_000


def timeout_us(value: float | None, field: str) -> float | None:
    """The Open Inference Protocol's ``timeout`` parameter in seconds (None when not given). It
    counts microseconds, as Triton defines it and as tritonclient's ``infer(..., timeout=)`` sends
    it; the X-Request-Timeout header counts seconds. 0 is no timeout of the request's own (Triton's
    default, which some client wrappers always send): the server's deadline holds."""
    if value is None or value == 0:
        return None
    if not 0 < value <= MAX_TIMEOUT_US:  # NaN fails too; a number of hundreds of digits arrives as inf
        raise InvalidInput(f"{field} must be a number of microseconds from 0 (none) to {MAX_TIMEOUT_US:,}; "
                           f"got {value}", field=field, limit=[0, MAX_TIMEOUT_US])
    return max(value / 1e6, 1e-9)  # a subnormal number of microseconds would round to no time at all


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """A request header's first value (``name`` in lower case, as ASGI gives names), as
    ``request.headers.get`` reads it, without building Starlette's Headers for one look-up."""
    for key, value in scope["headers"]:
        if key == name:
            return cast(bytes, value).decode("latin-1")
    return None


def deadline_for(request: Request, settings: Settings, requested_s: float | None = None) -> float:
    """Absolute monotonic deadline: the server's timeout, shortened by X-Request-Timeout or v2
    timeout, counted from the request's arrival where the server stamped it (time spent waiting
    on a busy event loop before the route ran counts against it)."""
    deadline = deadline_after(settings, (header(request.scope, TIMEOUT_HEADER), "X-Request-Timeout"),
                              (requested_s, "parameters.timeout"))
    return from_arrival(deadline, arrived_at(request.scope))


def from_arrival(deadline: float, arrived: float | None) -> float:
    """``deadline`` (time.monotonic(), counted from now) counted from the request's arrival stamp
    instead (time.perf_counter(); None: not stamped, from now)."""
    return deadline if arrived is None else deadline - max(0.0, time.perf_counter() - arrived)


def deadline_after(settings: Settings, *timeouts: tuple[str | float | None, str]) -> float:
    """The server's timeout shortened by each (seconds, field that gave them) the client set
    (None = not set), whatever the transport."""
    timeout = settings.request_timeout_s
    for value, field in timeouts:
        if value is None:
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):  # numbers too large for a float arrive as inf (param_float)
            raise InvalidInput(f"{field} must be a number of seconds", field=field,
                               limit=[0, MAX_TIMEOUT_S]) from None
        if not 0 < seconds <= MAX_TIMEOUT_S or seconds != seconds:
            raise InvalidInput(f"{field} must be above 0 and at most {MAX_TIMEOUT_S} seconds", field=field,
                               limit=[0, MAX_TIMEOUT_S])
        timeout = min(timeout, seconds)
    return time.monotonic() + timeout


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it so the batcher or decoder drops
    the request before (or during) compute instead of working for nobody."""
    handler = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:  # after the body, the only message left to receive is the disconnect
            if (await request.receive())["type"] == "http.disconnect":
                gone = True
                if handler is not None:
                    handler.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            raise ClientGone("client closed the connection before the answer") from None
        raise
    finally:
        watcher.cancel()
