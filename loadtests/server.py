"""A real `python -m service` process on 127.0.0.1 and a free port, for benchmarks and tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def metric_value(url: str, sample: str, **labels: str) -> float:
    """One sample of the server's /metrics (``seqserve_requests_total``, route=..., status=...);
    0 when it is not there yet."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """Starts at once; ``wait_ready`` blocks until /v2/health/ready answers 200 and records how
    long start-up took. ``settings`` become SEQSERVE_* variables (``max_queue_size="16"``).
    With ``capture_output`` its log is kept for ``output()`` (tests read refusal messages)."""

    def __init__(self, models: Path, *, capture_output: bool = False, settings: Mapping[str, str] | None = None,
                 **more_settings: str) -> None:
        settings = {**(settings or {}), **more_settings}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SEQSERVE_MODEL_REPOSITORY": str(models), "SEQSERVE_PORT": str(self.port),
               "SEQSERVE_HOST": "127.0.0.1", "SEQSERVE_ACCESS_LOG": "false",
               **{f"SEQSERVE_{k.upper()}": v for k, v in settings.items()}}
        out = subprocess.PIPE if capture_output else subprocess.DEVNULL
        self.started = time.perf_counter()
        self.ready_after_s = float("nan")
        self.workers = int(env.get("SEQSERVE_WORKERS") or 1)
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, text=True)

    def workers_serving(self) -> int:
        """How many worker processes accept requests (from /metrics, summed over workers)."""
        return int(metric_value(self.url, "seqserve_workers_serving"))

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        """Until every worker serves: with SEQSERVE_WORKERS > 1 the first one ready answers
        /v2/health/ready while the others may still be loading their models."""
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if (httpx.get(f"{self.url}/v2/health/ready", timeout=0.5).status_code == 200
                        and (self.workers == 1 or self.workers_serving() >= self.workers)):
                    self.ready_after_s = time.perf_counter() - self.started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise TimeoutError("server did not become ready")

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout else ""

    def stop(self) -> int:
        """SIGTERM (graceful drain), then the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
