"""A real `python -m service` process on 127.0.0.1 and a free port, for benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtests.http_client import auth_headers

ROOT = Path(__file__).resolve().parent.parent


# set by ServerProcess itself, whatever the environment says
OWN_SETTINGS = ("SEQSERVE_MODEL_REPOSITORY", "SEQSERVE_PORT", "SEQSERVE_HOST", "SEQSERVE_ACCESS_LOG",
                "SEQSERVE_GRPC_PORT")
# What a benchmark adds to its servers' settings so that they run as `make serve` runs them: the
# access log on (ServerProcess turns it off unless told; its lines go to /dev/null unless captured).
# Its lines are part of the serving cost that issue 15 defines ("default settings, access log on").
AS_DEPLOYED = {"access_log": "true"}


def served_models(url: str) -> dict[str, dict[str, Any]]:
    """What the server at ``url`` serves (GET /v1/models), by model name: each one's precision,
    provider and limits (with the load tools' API key, SEQSERVE_CLIENT_API_KEY, where one is set)."""
    answer = httpx.get(f"{url}/v1/models", headers=auth_headers(), timeout=10).json()
    return {m["name"]: m for m in answer["models"]}


def metric_value(url: str, sample: str, **labels: str) -> float:
    """A sample of the server's /metrics (``seqserve_requests_total``, route=..., status=...),
    summed over the labels not given (``model=...`` alone: every version of it); 0 when it is not
    there yet."""
    return metric_values(url, (sample,), **labels)[0]


def metric_values(url: str, samples: Sequence[str], **labels: str) -> list[float]:
    """Several samples, each as ``metric_value`` reads it, from one read of /metrics."""
    totals = dict.fromkeys(samples, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.name in totals and all(s.labels.get(k) == v for k, v in labels.items()):
                totals[s.name] += float(s.value)
    return list(totals.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """Starts at once; ``wait_ready`` blocks until /v2/health/ready answers 200 and records how
    long start-up took. ``settings`` become SEQSERVE_* variables (``max_queue_size="16"``).
    ``checkout``: run that checkout's service with its own .venv instead of this one's.
    With ``capture_output`` its log goes to a file, read by ``output()`` (tests read refusal
    messages) and ``wait_for_output`` while the server runs. A file, not a pipe: a pipe's reader
    here competes with the load generator for this process's GIL, the pipe fills in a burst, and
    the server's event loop then blocks writing its access log (measured: a 400 ms stall)."""

    def __init__(self, models: Path, *, capture_output: bool = False, settings: Mapping[str, str] | None = None,
                 checkout: Path | None = None, log_fd: int | None = None, **more_settings: str) -> None:
        settings = {**(settings or {}), **more_settings}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = int(settings.get("grpc_port", free_port()))  # 0 = no gRPC
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        own = dict(zip(OWN_SETTINGS, (str(models), str(self.port), "127.0.0.1", "false", str(self.grpc_port)),
                       strict=True))
        # a server of its own takes no API keys but those given here: an operator's exported
        # SEQSERVE_API_KEYS would have every tool's requests refused 401
        inherited = {k: v for k, v in os.environ.items() if k.upper() != "SEQSERVE_API_KEYS"}
        env = {**inherited, **own, **{f"SEQSERVE_{k.upper()}": v for k, v in settings.items()}}
        self._settings = " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k.startswith("SEQSERVE_"))
        self._log_file: Path | None = None
        if capture_output:
            descriptor, name = tempfile.mkstemp(prefix="seqserve-log-", suffix=".txt")
            os.close(descriptor)
            self._log_file = Path(name)
        self.started = time.perf_counter()
        self.ready_after_s = float("nan")
        self.workers = int(env.get("SEQSERVE_WORKERS") or 1)
        # another checkout (a baseline to compare against) runs its own code with its own .venv
        python = str(checkout / ".venv" / "bin" / "python") if checkout else sys.executable
        if self._log_file:
            weakref.finalize(self, self._log_file.unlink, missing_ok=True)
        with open(self._log_file or os.devnull, "ab") as out:  # the child keeps its own descriptor
            # ``log_fd``: its log to that descriptor instead (a pipe nobody reads, in a test)
            self.proc = subprocess.Popen([python, "-m", "service"], cwd=checkout or ROOT, env=env,
                                         stdout=out if log_fd is None else log_fd, stderr=subprocess.STDOUT)

    def output(self) -> str:
        """The log so far (empty without ``capture_output``)."""
        return self._log_file.read_text(errors="replace") if self._log_file else ""

    def wait_for_output(self, text: str, count: int = 1, timeout: float = 30.0) -> bool:
        """Until ``text`` has appeared ``count`` times in the log (needs ``capture_output``)."""
        end = time.perf_counter() + timeout
        while self.output().count(text) < count:
            if time.perf_counter() > end or self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return True

    def workers_serving(self) -> int:
        """How many worker processes accept requests (from /metrics, summed over workers)."""
        return int(metric_value(self.url, "seqserve_workers_serving"))

    def wait_ready(self, timeout: float = 120.0) -> ServerProcess:
        """Until every worker serves: with SEQSERVE_WORKERS > 1 the first one ready answers
        /v2/health/ready while the others may still be loading their models."""
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                # its log goes to /dev/null unless captured (what a benchmark measures): say how to see it
                why = self.output() if self._log_file else (
                    f"its log was not kept; `{self._settings} python -m service` shows why")
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{why}")
            try:
                if (httpx.get(f"{self.url}/v2/health/ready", timeout=0.5).status_code == 200
                        and (self.workers == 1 or self.workers_serving() >= self.workers)):
                    self.ready_after_s = time.perf_counter() - self.started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise TimeoutError("server did not become ready")

    @classmethod
    def ready(cls, models: Path, **kwargs: Any) -> ServerProcess:
        """A server started (``ServerProcess(models, **kwargs)``) and ready; where it is not (it
        exited, or timed out), stopped before the error goes on: nobody else holds it to stop."""
        server = cls(models, **kwargs)
        try:
            return server.wait_ready()
        except BaseException:
            server.stop()
            raise

    def stop(self) -> int:
        """SIGTERM (graceful drain), then the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@contextlib.contextmanager
def server_rounds(starts: Mapping[str, Callable[[], ServerProcess]], rounds: int,
                  fresh: bool = True) -> Iterator[Iterator[tuple[list[str], dict[str, ServerProcess], bool]]]:
    """The servers of a comparison, round by round: each round's order (the sides as given in even
    rounds, reversed in odd ones), its servers by side, and whether they are new this round. The
    servers are started in the round's order, one after the other (each ``starts[side]()`` returns
    once its server is ready): a classifier times its model runs at warm-up to decide how it cuts
    batches, and started together each timed them with the other's warm-up on the cores (B then
    batched 3.4-5.7 texts where A batched 8.7, in two runs of the same code). ``fresh``: a new
    server of each side every round: a server process keeps a speed of its own for its life on the
    2-core VM, and two of the same code differed by 3-5% over ten rounds (docs/benchmarks.md, stop
    52); else the first round's for all. Every server is stopped when its round's pair is replaced
    and when the rounds end, however they end."""
    sides = list(starts)
    servers: dict[str, ServerProcess] = {}

    def each_round() -> Iterator[tuple[list[str], dict[str, ServerProcess], bool]]:
        for r in range(rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            new = fresh or not servers
            if new:
                _stop_all(servers)
                for side in order:
                    servers[side] = starts[side]()
            yield order, servers, new

    try:
        yield each_round()
    finally:
        _stop_all(servers)


def _stop_all(servers: dict[str, ServerProcess]) -> None:
    while servers:
        servers.popitem()[1].stop()
