"""Model statistics in Triton's schema (the ``statistics`` extension), which perf_analyzer reads.

Request outcomes (success/fail counts and time) are counted here for the Open Inference Protocol
requests, REST and gRPC, per model version. What the engines do (texts run, executions, queue
and compute time) comes from the Prometheus metrics they already keep, labelled by model and
version: those figures cover every request to that version, v1 included. With SEQSERVE_WORKERS > 1
each worker answers for itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY

from service import metrics
from service.registry import ModelRegistry


@dataclass
class _Outcomes:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    last_inference_ms: int = 0


_outcomes: dict[tuple[str, str], _Outcomes] = {}
_series: dict[tuple[str, str, bool], tuple[Any, Any]] = {}


def record(name: str, version: str, ok: bool, seconds: float) -> None:
    # the labelled series looked up once per (model, version, outcome), not per request
    series = _series.get((name, version, ok))
    if series is None:
        series = _series[(name, version, ok)] = (
            metrics.INFERENCE_REQUESTS.labels(name, version, "success" if ok else "failure"),
            metrics.INFERENCE_LATENCY.labels(name, version))
    series[0].inc()
    series[1].observe(seconds)
    counts = _outcomes.setdefault((name, version), _Outcomes())
    if ok:
        counts.success_count += 1
        counts.success_ns += int(seconds * 1e9)
    else:
        counts.fail_count += 1
        counts.fail_ns += int(seconds * 1e9)
    counts.last_inference_ms = int(time.time() * 1000)


class Counting:
    """One request being counted (``counted``); ``done`` marks it answered at that moment."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.answered: float | None = None

    def done(self) -> None:
        self.answered = time.perf_counter()


@contextmanager
def counted(name: str, version: str) -> Iterator[Counting]:
    """Counts one request to a model version as it leaves the block: a success, or a failure if it
    raised (a refusal of its inputs included: adapters enter it once they know the version, before
    they read the request), with its time from entering. A block that yields its answers (a gRPC
    stream's) calls ``done`` when the last one is ready: its time then excludes the wait for its
    turn in the stream, and the client leaving after that is no failure."""
    counting = Counting()
    ok = False
    try:
        yield counting
        ok = True
    finally:
        ok = ok or counting.answered is not None
        record(name, version, ok, (counting.answered or time.perf_counter()) - counting.started)


def _sample(metric: str, model: tuple[str, str]) -> float:
    return REGISTRY.get_sample_value(metric, {"model": model[0], "version": model[1]}) or 0.0


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": int(seconds * 1e9)}


def _engine(model: tuple[str, str]) -> dict[str, Any]:
    """Figures from the engines' metrics: the batcher's queue wait and batch runs, or the decoder's
    wait for its first step and its steps (each engine records only its own)."""
    queue_count = _sample("seqserve_queue_wait_seconds_count", model) + \
        _sample("seqserve_decode_time_to_first_step_seconds_count", model)
    queue_s = _sample("seqserve_queue_wait_seconds_sum", model) + \
        _sample("seqserve_decode_time_to_first_step_seconds_sum", model)
    return {"inference_count": int(_sample("seqserve_batch_size_sum", model)
                                   + _sample("seqserve_decode_time_to_first_step_seconds_count", model)),
            "execution_count": int(_sample("seqserve_batch_size_count", model)
                                   + _sample("seqserve_decode_running_rows_count", model)),
            "queue": _duration(queue_count, queue_s),
            "compute_infer": _duration(_sample("seqserve_batch_run_seconds_count", model),
                                       _sample("seqserve_batch_run_seconds_sum", model))}


def statistics(registry: ModelRegistry, name: str | None, version: str | None) -> dict[str, Any]:
    """``{"model_stats": [...]}`` for one version, every version of a model, or every model."""
    if name is None:
        models = registry.all()
    elif version is None:
        registry.get(name)  # 404 for an unknown model
        models = registry.versions(name)
    else:
        models = [registry.get(name, version)]
    stats = []
    zero = _duration(0, 0)
    for model in sorted(models, key=lambda m: (m.name, int(m.version))):
        counts = _outcomes.get((model.name, model.version), _Outcomes())
        engine = _engine((model.name, model.version))
        # perf_analyzer requires the three compute phases to have one count; seqserve times the
        # model run as a whole, so input and output preparation count with it and take no time
        phases = {"count": engine["compute_infer"]["count"], "ns": 0}
        stats.append({
            "name": model.name, "version": model.version, "last_inference": counts.last_inference_ms,
            "inference_count": engine["inference_count"], "execution_count": engine["execution_count"],
            "inference_stats": {"success": _duration(counts.success_count, counts.success_ns / 1e9),
                                "fail": _duration(counts.fail_count, counts.fail_ns / 1e9),
                                "queue": engine["queue"], "compute_input": phases,
                                "compute_infer": engine["compute_infer"], "compute_output": phases,
                                "cache_hit": zero, "cache_miss": zero},
            "batch_stats": [], "memory_usage": []})
    return {"model_stats": stats}
