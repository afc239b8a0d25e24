"""A minimal keep-alive HTTP/1.1 JSON client on asyncio streams.

The benchmark machine has 2 cores shared by server and load generator, so the client must
cost as little CPU per request as possible: requests are pre-encoded bytes and responses are
read by Content-Length, with no per-request object churn. It speaks only what seqserve
answers: Content-Length bodies, and chunked ones (event streams) read to their end.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtests.steady import Window, is_steady

# the key every load tool presents (Authorization: Bearer) to a server run with SEQSERVE_API_KEYS;
# a tool variable (service/settings.py TOOL_VARIABLES): the server itself does not read it
API_KEY_VARIABLE = "SEQSERVE_CLIENT_API_KEY"


def auth_headers() -> dict[str, str]:
    """The API key header to send, from SEQSERVE_CLIENT_API_KEY; none when it is unset."""
    key = os.environ.get(API_KEY_VARIABLE, "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def encode_post(path: str, body: dict[str, Any], host: str = "127.0.0.1",
                headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 POST of ``body`` as JSON, with the API key (``auth_headers``) if one is set."""
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in {**auth_headers(), **(headers or {})}.items())
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{extra}\r\n")
    return head.encode() + payload


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
            if line.lower() == b"transfer-encoding: chunked":
                return status, await self._chunked()
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers from uvicorn: the closing blank line
                return b"".join(parts)
            parts.append((await self.reader.readexactly(size + 2))[:-2])

    def close(self) -> None:
        self.writer.close()


# uvicorn closes a keep-alive connection idle for 5 s by default (seqserve: SEQSERVE_KEEP_ALIVE_S,
# 75 s; a baseline checkout may keep uvicorn's); a pooled one kept longer would be reused just as
# the server drops it, and the request would fail with no answer
_MAX_IDLE_S = 4.0


class ConnectionPool:
    """Idle keep-alive connections for the open-loop client, most recently used first. One the
    server has closed (end of stream already seen) or that sat idle too long is never reused."""

    def __init__(self, host: str, port: int, max_idle_s: float = _MAX_IDLE_S) -> None:
        self.host, self.port, self.max_idle_s = host, port, max_idle_s
        self.idle: list[tuple[Connection, float]] = []
        self.opened = 0

    async def acquire(self) -> Connection:
        now = time.perf_counter()
        while self.idle:
            conn, since = self.idle.pop()
            if now - since < self.max_idle_s and not conn.reader.at_eof():
                return conn
            conn.close()
        self.opened += 1
        return await Connection.open(self.host, self.port)

    def release(self, conn: Connection) -> None:
        self.idle.append((conn, time.perf_counter()))

    def close(self) -> None:
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of 2xx answers
    statuses: dict[int, int] = field(default_factory=dict)
    items: int = 0  # texts answered (a request may carry several)
    tagged: list[tuple[int, float]] = field(default_factory=list)  # (request key, latency) when keyed

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @classmethod
    def merged(cls, parts: list[LoadResult]) -> LoadResult:
        """Several runs of one configuration, one after another, as one (e.g. interleaved rounds)."""
        return cls._add(cls(parts[0].concurrency, sum(p.seconds for p in parts)), parts)

    @classmethod
    def side_by_side(cls, parts: list[LoadResult]) -> LoadResult:
        """Parts of one run, measured over the same interval by several processes, as one."""
        return cls._add(cls(sum(p.concurrency for p in parts), max(p.seconds for p in parts)), parts)

    @staticmethod
    def _add(out: LoadResult, parts: list[LoadResult]) -> LoadResult:
        for part in parts:
            out.latencies += part.latencies
            out.tagged += part.tagged
            out.items += part.items
            for status, n in part.statuses.items():
                out.statuses[status] = out.statuses.get(status, 0) + n
        return out

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)


async def closed_loop(host: str, port: int, next_request: Callable[[int], tuple[bytes, int]], concurrency: int,
                      duration_s: float, warmup_s: float = 1.0, max_requests: int = 1_000_000,
                      record: dict[int, bytes] | None = None,
                      record_key: Callable[[int], int] | None = None, start_at: float | None = None) -> LoadResult:
    """``concurrency`` clients, each sending its next request as soon as the last is answered.

    Throughput counts the answers that complete inside the measured interval (after the
    warm-up, before the end), whenever they were sent, so slow requests are not under-counted;
    latencies are those of the same answers. ``next_request(i)`` returns the encoded request
    and how many texts it carries. With ``record_key``, latencies are also tagged with the key,
    and 2xx bodies are kept in ``record``. ``start_at`` (time.perf_counter, one clock for all
    processes) lines up the intervals of several processes that load one server together.
    """
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    result = LoadResult(concurrency, duration_s)
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    counter = iter(range(max_requests))

    async def client() -> None:
        conn = await Connection.open(host, port)
        try:
            # one timer per client, not one per request: the generator shares the CPU it measures
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + (stop_at - time.perf_counter())):
                for i in counter:
                    request, items = next_request(i)
                    sent = time.perf_counter()
                    if sent >= stop_at:
                        return
                    status, body = await conn.send(request)
                    done = time.perf_counter()
                    if measure_from <= done <= stop_at:
                        result.statuses[status] = result.statuses.get(status, 0) + 1
                        if 200 <= status < 300:
                            result.latencies.append(done - sent)
                            result.items += items
                            if record_key is not None:
                                key = record_key(i)
                                result.tagged.append((key, done - sent))
                                if record is not None:
                                    record[key] = body
        except TimeoutError:
            pass  # a request still running at the end of the interval is not counted
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return result


async def open_loop(host: str, port: int, next_request: Callable[[int], tuple[bytes, int]], rate: float,
                    window_s: float, max_windows: int, warmup_s: float = 1.0,
                    max_connections: int = 1024) -> tuple[list[Window], bool]:
    """Requests arrive as a Poisson process at ``rate``/s whatever the answers do (open loop).

    Latency is measured from each request's scheduled arrival, so time spent queueing in the
    server *or* waiting for a free client connection is counted (no coordinated omission).
    Runs until three windows agree (loadtests/steady.py) or ``max_windows``.
    """
    import random

    rng = random.Random(0)
    pool = ConnectionPool(host, port)
    windows: list[Window] = []
    current = Window(window_s, 0)
    loop_start = time.perf_counter()
    measure_from = loop_start + warmup_s
    in_flight: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        request, _ = next_request(i)
        conn: Connection | None = None
        try:  # a refused connection is counted as status 0 too, not lost with its task
            conn = await pool.acquire()
            status, _ = await conn.send(request)
        except (OSError, asyncio.IncompleteReadError):
            status = 0
            if conn is not None:
                conn.close()
        else:
            pool.release(conn)
        done = time.perf_counter()
        if scheduled >= measure_from:
            bucket = current
            bucket.statuses[status] += 1
            if 200 <= status < 300:
                bucket.requests += 1
                bucket.latencies_ms[round((done - scheduled) * 1000)] += 1

    i = 0
    next_at = loop_start
    window_end = measure_from + window_s
    steady = False
    while len(windows) < max_windows and not steady:
        now = time.perf_counter()
        if now >= window_end:
            windows.append(current)
            current = Window(window_s, 0)
            window_end += window_s
            steady = is_steady(windows)
            continue
        if now < next_at:
            await asyncio.sleep(min(next_at - now, window_end - now))
            continue
        if len(in_flight) < max_connections:
            task = asyncio.create_task(one(i, next_at))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        else:
            current.statuses[-1] += 1  # the client itself was saturated: reported, never hidden
        i += 1
        next_at += rng.expovariate(rate)
    for task in list(in_flight):
        task.cancel()
    pool.close()
    return windows, steady
