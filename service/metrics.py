"""Prometheus metrics (prometheus-client), exposed at GET /metrics.

With several worker processes (SEQSERVE_WORKERS) prometheus-client's multiprocess mode keeps each
process's values in PROMETHEUS_MULTIPROC_DIR, and /metrics sums them: any worker answers for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from service import log_sink

# from 0.25 ms: a sentiment request's queue wait and batch run are often under 1 ms
_LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter("seqserve_requests_total", "HTTP requests by route and status", ["route", "status"])
REQUEST_LATENCY = Histogram("seqserve_request_latency_seconds", "HTTP request latency", ["route"],
                            buckets=_LATENCY_BUCKETS)
# gRPC calls get their own series: the HTTP ones keep their names and labels
GRPC_REQUESTS = Counter("seqserve_grpc_requests_total", "gRPC calls by method and status code (each request on "
                        "a ModelStreamInfer stream counts as one call)", ["method", "code"])
GRPC_LATENCY = Histogram("seqserve_grpc_request_latency_seconds", "gRPC call latency (a stream's: each request's)",
                         ["method"],
                         buckets=_LATENCY_BUCKETS)
QUEUE_DEPTH = Gauge("seqserve_queue_depth", "Texts waiting for a model (not yet in a batch or decoding)",
                    ["model", "version"], multiprocess_mode="livesum")
LOG_LINES_DROPPED = Counter("seqserve_log_lines_dropped_total", "Log lines dropped because the reader of stderr fell "
                            "behind by more than the log buffer, or was gone (service/log_sink.py)")
log_sink.stderr.on_dropped = LOG_LINES_DROPPED.inc
# what a concurrency autoscaler (KEDA, Knative) scales on: the queue above and the work in progress
IN_FLIGHT = Gauge("seqserve_in_flight", "Texts accepted by a model and not yet answered (waiting or being "
                  "computed; a translator's sentences)", ["model", "version"], multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("seqserve_queue_wait_seconds", "Time from enqueue to batch start", ["model", "version"],
                       buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram("seqserve_batch_size", "Texts per executed batch (a request brings one or more)",
                       ["model", "version"],
                       buckets=_BATCH_BUCKETS)
BATCH_RUN = Histogram("seqserve_batch_run_seconds", "Wall time of one batch (a decoder step, under the "
                      "iteration-level scheduler) on the model", ["model", "version"],
                      buckets=_LATENCY_BUCKETS)
PADDING_RATIO = Histogram("seqserve_padding_ratio", "Padded positions / all positions in a batch", ["model", "version"],
                          buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0))
TOKENS = Counter("seqserve_tokens_total", "Subword tokens processed", ["model", "version", "kind"])
DROPPED = Counter("seqserve_dropped_total", "Accepted texts dropped before or during compute (their client left, "
                  "or their deadline passed)", ["model", "version", "reason"])
WORKERS_SERVING = Gauge("seqserve_workers_serving", "Server processes accepting requests (summed over "
                        "SEQSERVE_WORKERS; 0 while draining)", multiprocess_mode="livesum")
REJECTED = Counter("seqserve_rejected_total", "Requests refused at the queue", ["model", "version", "reason"])
# What alerts compare against and look for (an SRE could not write "queue near full", "a model not
# taking work" or "workers restarting" from the series above)
QUEUE_LIMIT = Gauge("seqserve_queue_limit", "Texts (a translator's sentences) that may wait for a model before 503: "
                    "SEQSERVE_MAX_QUEUE_SIZE, summed over workers as seqserve_queue_depth is",
                    ["model", "version"], multiprocess_mode="livesum")
MODEL_INFO = Gauge("seqserve_model_info", "1 for each model version served (0 once unloaded), with its task, "
                   "provider and precision", ["model", "version", "task", "provider", "precision"],
                   multiprocess_mode="livemax")
MODEL_HEALTHY = Gauge("seqserve_model_healthy", "1 while a model version's threads take work; 0 once a failed "
                      "thread's replacement failed too (readiness turns 503), until a thread gets work done "
                      "(the lowest over workers)", ["model", "version"], multiprocess_mode="livemin")
WORKER_RESTARTS = Counter("seqserve_worker_restarts_total", "Worker processes (SEQSERVE_WORKERS > 1) the supervisor "
                          "replaced: one that ended (exited) or whose event loop stopped (hung)", ["reason"])
# A version's state, as opposed to its history: gone with the version (service/registry.py),
# where counters and histograms stay (what it did is still true). Kept, they showed an unloaded
# version healthy with 1,024 places in its queue.
_VERSION_STATE = (QUEUE_DEPTH, IN_FLIGHT, QUEUE_LIMIT, MODEL_HEALTHY)


def forget_version_state(model: str, version: str) -> None:
    """Drop a version's gauges once it is no longer served. Its engine, still draining, keeps the
    children it holds and sets them unseen; a reload of the version makes fresh ones. Not in
    multiprocess mode, whose files a removal does not reach (prometheus-client only warns); model
    control, the only way to retire a version, needs one process anyway."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    for gauge in _VERSION_STATE:
        with contextlib.suppress(KeyError):  # prometheus-client before 0.21 raises for a label set never set
            gauge.remove(model, version)


# Open Inference Protocol requests per model version (REST and gRPC), as Triton's
# nv_inference_request_success/failure and nv_inference_request_duration_us: the routes' series
# above cannot tell one model's /v2/models/{name}/infer from another's
INFERENCE_REQUESTS = Counter("seqserve_inference_requests_total", "Open Inference Protocol inference requests "
                             "(REST and gRPC) by model version and outcome (success, failure)",
                             ["model", "version", "outcome"])
INFERENCE_LATENCY = Histogram("seqserve_inference_request_duration_seconds", "Open Inference Protocol inference "
                              "request time by model version (REST and gRPC)", ["model", "version"],
                              buckets=_LATENCY_BUCKETS)
# the model's own CPU, beside the process's: what is left is the cost of serving (make bench splits them)
MODEL_CPU = Counter("seqserve_model_cpu_seconds_total", "CPU time of the threads calling ONNX Runtime, inside "
                    "its runs (all of ONNX Runtime's with ORT_INTRA_OP_THREADS=1)", ["model", "version"])
# what a burst of arrivals costs the work in progress (service/loop_budget.py, give_way)
GAVE_WAY = Counter("seqserve_gave_way_seconds_total", "Time the model's threads waited, before a turn of work, "
                   "for requests waiting to be parsed by the event loop", ["model", "version"])

# Iteration-level decoding (translation)
DECODE_ROWS = Histogram("seqserve_decode_running_rows", "Decoder rows (beams) per step", ["model", "version"],
                        buckets=_BATCH_BUCKETS)
DECODE_STEPS = Histogram("seqserve_decode_steps_per_request", "Decoder steps a request took", ["model", "version"],
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
TIME_TO_FIRST_STEP = Histogram("seqserve_decode_time_to_first_step_seconds", "Arrival to first decoder step",
                               ["model", "version"], buckets=_LATENCY_BUCKETS)

# Streamed translations (SSE)
STREAM_FIRST_EVENT = Histogram("seqserve_stream_time_to_first_event_seconds",
                               "Start of a streamed translation to its first event", ["model", "version"],
                               buckets=_LATENCY_BUCKETS)
STREAM_TOKENS_PER_SECOND = Histogram("seqserve_stream_tokens_per_second",
                                     "Output tokens / duration of each streamed translation", ["model", "version"],
                                     buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))


# How late the event loop runs a timer: what every request waits on top of its own work when the
# loop is busy (parsing, tokenising, answers) or starved of the GIL by model threads.
EVENT_LOOP_LAG = Histogram("seqserve_event_loop_lag_seconds", "Delay of a 50 ms timer on the event loop",
                           buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0))
EVENT_LOOP_PROBE_S = 0.05


async def watch_event_loop_lag() -> None:
    """Run for the server's life: sleep 50 ms, record how much later than asked it woke."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + EVENT_LOOP_PROBE_S
        await asyncio.sleep(EVENT_LOOP_PROBE_S)
        EVENT_LOOP_LAG.observe(max(loop.time() - asked, 0.0))


_request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}


def request_done(route: str, status: int, seconds: float) -> None:
    """Count one HTTP request; the labelled children are looked up once per (route, status),
    not on every request (``labels()`` builds and hashes the label tuple each time)."""
    children = _request_children.get((route, status))
    if children is None:
        children = (REQUESTS.labels(route, str(status)), REQUEST_LATENCY.labels(route))
        _request_children[(route, status)] = children
    children[0].inc()
    children[1].observe(seconds)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
