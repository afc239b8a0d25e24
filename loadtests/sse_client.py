"""A small Server-Sent Events reader over httpx, for the streaming tests and scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class SseEvent:
    event: str  # "message" when the server names none
    data: dict[str, Any]
    at: float  # time.perf_counter() when it was read


def parse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Events from the lines of a text/event-stream body (JSON data, as seqserve sends)."""
    name = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield SseEvent(name, json.loads("\n".join(data)), time.perf_counter())
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield SseEvent(name, json.loads("\n".join(data)), time.perf_counter())


@dataclass
class Streamed:
    status: int
    content_type: str
    started: float
    events: list[SseEvent] = field(default_factory=list)
    body: dict[str, Any] | None = None  # a JSON answer instead of a stream (an error before it began)

    @property
    def first_event_s(self) -> float:
        return self.events[0].at - self.started

    @property
    def total_s(self) -> float:
        return self.events[-1].at - self.started


def post_stream(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                timeout: float = 60.0) -> Streamed:
    """POST and read the whole stream (or the JSON error answered instead)."""
    started = time.perf_counter()
    with client.stream("POST", url, json=body, headers=headers, timeout=timeout) as response:
        out = Streamed(response.status_code, response.headers.get("content-type", ""), started)
        if out.content_type.startswith("text/event-stream"):
            out.events = list(parse(response.iter_lines()))
        else:
            out.body = json.loads(response.read())
    return out
