"""service/drain.py: one deadline for HTTP, gRPC and the models, and what it cuts off is answered."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from typing import Any

import httpx
import numpy as np
import tritonclient.grpc as tg

from service.drain import Drain
from tests.conftest import COMMITTED_MODELS, Server


class _Slow:
    """A gRPC server or a registry that takes ``seconds`` to stop or drain."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def stop(self, grace_s: float) -> None:
        await asyncio.sleep(self.seconds)

    async def drain(self, timeout_s: float) -> bool:
        await asyncio.sleep(self.seconds)
        return True


async def test_grpc_and_the_models_drain_together_and_once() -> None:
    drain = Drain(5.0)
    drain.grpc, drain.registry = _Slow(0.2), _Slow(0.2)  # type: ignore[assignment]
    started = time.perf_counter()
    first = drain.start()
    assert drain.start() is first and await first is True
    assert time.perf_counter() - started < 0.35  # together, not one after the other
    assert drain.summary(True) == "all accepted work finished"
    drain.http_cut_off, drain.grpc_cut_off = 2, 1
    assert "2 HTTP request(s) still in flight answered 503, 1 gRPC call(s) UNAVAILABLE" in drain.summary(True)


async def test_a_lifespan_without_a_registry_drains_nothing() -> None:
    assert await Drain(1.0).start() is True


def test_what_is_in_flight_when_the_drain_deadline_passes_is_answered_and_the_shutdown_says_so() -> None:
    """Before: the HTTP request got uvicorn's text/plain 500 with a traceback in the log, the gRPC
    call was counted as the client's CANCELLED, the log said "all accepted work finished", and gRPC
    and the models began draining only after the HTTP wait, so a shutdown took twice the timeout."""
    server = Server(COMMITTED_MODELS, warmup="false", drain_timeout_s="1", access_log="true").wait_ready()
    texts = ["Two dogs play in the snow while a man with a red hat and a blue coat watches them from a "
             "wooden bench near the old stone bridge ."] * 64
    got: dict[str, Any] = {}

    def http() -> None:
        got["http"] = httpx.post(f"{server.url}/v1/translate", json={"texts": texts, "beam_size": 10},
                                 headers={"X-Request-ID": "cut-1"}, timeout=60)

    def grpc() -> None:
        client = tg.InferenceServerClient(url=server.grpc_url)
        tensor = tg.InferInput("text", [64, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
        try:
            client.infer("translate-en-de", [tensor], parameters={"beam_size": 10})
            got["grpc"] = "OK"
        except tg.InferenceServerException as exc:
            got["grpc"] = exc.status()

    threads = [threading.Thread(target=http), threading.Thread(target=grpc)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both in the decoder
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(60)
    assert server.proc.wait(30) == 0
    took = time.monotonic() - sent
    answer = got["http"]
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/json", answer.text
    assert answer.json()["code"] == "not_ready" and answer.headers["x-request-id"] == "cut-1"
    assert "drain timeout, 1 s, passed" in answer.json()["error"] and answer.headers["retry-after"] == "1"
    assert got["grpc"] == "StatusCode.UNAVAILABLE"
    log = server.output()
    assert "1 HTTP request(s) still in flight answered 503, 1 gRPC call(s) UNAVAILABLE" in log, log[-2000:]
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"status": 503, "grpc_status": "UNAVAILABLE", "method": "ModelInfer"}.items() <= next(
        e for e in lines if e.get("protocol") == "grpc" and e["method"] == "ModelInfer").items()
    assert any(e.get("request_id") == "cut-1" and e["status"] == 503 for e in lines)
    assert took < 1 + 1 + 4, took  # the deadline, uvicorn's second, the exit: not twice the timeout
