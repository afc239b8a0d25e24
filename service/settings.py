"""Service settings, read from SEQSERVE_* environment variables (pydantic-settings).

Every field is documented, with its trade-off, in the README's settings table.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.affinity import PinMode
from service.version_policy import VersionPolicy

_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s*]+")  # no "*" inside: compared literally


class Settings(BaseSettings):
    # no inf or nan in any number: an infinite queue delay or timeout breaks the threads' waits
    model_config = SettingsConfigDict(env_prefix="SEQSERVE_", env_file=None, extra="ignore", allow_inf_nan=False)

    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 inside a container")
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535, description="Open Inference Protocol gRPC port; 0 = no gRPC")
    model_repository: Path = Field(Path("models"), description="folder of <name>/<version>/model.json")
    version_policy: dict[str, VersionPolicy] = Field(
        default_factory=dict, description='versions served per model: {"sentiment": {"latest": 1}} or '
        '{"sentiment": {"specific": ["1", "3"]}}; a model not named serves all its versions')
    model_control: bool = Field(False, description="allow loading and unloading models at run time "
                                "(POST /v2/repository/...); with WORKERS > 1 such calls are refused")
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="ONNX Runtime execution providers: auto (CUDA when it starts, else CPU), cpu, "
        "or cuda (refuses to start without it)")
    cuda_device_id: int = Field(0, ge=0, description="the GPU the CUDA provider runs on")
    cuda_mem_limit_mb: int = Field(0, ge=0, le=1 << 24,  # 16 TiB: its bytes still fit ONNX Runtime's size_t
                                   description="cap on the CUDA provider's memory arena; 0 = none")
    cuda_arena: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        "kNextPowerOfTwo", description="how the CUDA arena grows: in powers of two (fewer allocations) or "
        "by what is asked (less memory held)")
    cuda_tf32: bool = Field(False, description="TF32 tensor cores for fp32 matrix products (faster, outside "
                            "the parity tolerance)")
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="graphs to run: auto = int8 on the CPU provider where the derived INT8 graphs exist "
        "(else fp32, with a warning), fp32 on CUDA; int8 = refuse to start without them")
    ort_intra_op_threads: int = Field(
        1, ge=0, le=256, description="threads per ONNX Runtime session; 0 = one per core. 1 is fastest for the small "
        "per-step graphs of these models on a small CPU that also serves HTTP")
    instances: int | None = Field(
        None, ge=1, le=16, description="batches a model runs at once (worker threads; a translator's decode "
        "lanes); unset or auto: 2. On the CPU a classifier's workers after the first run the batches the first "
        "leaves them from its windows")
    instance_nice: int = Field(
        10, ge=0, le=19, description="on the CPU, how much lower the OS priority (nice, Linux) of a classifier's "
        "worker threads after its first is than the event loop's: they take the CPU the loop leaves instead of "
        "competing with it; 0 = the same")
    pin_model_threads: PinMode = Field(
        "auto", description="pin a model's threads (workers, decode lanes) one to each CPU the process may use "
        "(Linux), so that none idles while two of them queue on another: auto = with one server process and at "
        "least as many threads as CPUs (2 instances on 2 cores); on = always; off = leave them to the scheduler")
    direct_routes: bool = Field(
        True, description="answer the plainest POST /v1/sentiment requests in the server's HTTP protocol, past the "
        "request layers (the same answers, headers, log lines and metrics; service/direct_route.py); false = "
        "every request through the app")
    workers: int = Field(1, ge=1, le=64, description="server processes on the port, each with its own models; "
                         "one Python process tops out at a few thousand small requests/s")
    worker_heartbeat_timeout_s: float = Field(
        15.0, ge=0, le=3600, description="with workers > 1, a worker whose event loop has not run for this long "
        "(stopped, deadlocked) is killed and replaced; 0 = never")

    max_batch_size: int = Field(64, ge=1, description="requests per batch")
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000, description="how long a batch waits for company")
    max_batch_tokens: int = Field(8192, ge=1, description="padded tokens per batch (batch x longest)")
    max_queue_size: int = Field(1024, ge=1, description="texts waiting per model before 503")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="deadline from arrival to answer (504 after)")
    drain_timeout_s: float = Field(30.0, ge=0, le=3600, description="on shutdown, time allowed to finish accepted work")
    keep_alive_s: int = Field(75, ge=1, le=3600,
                              description="an idle keep-alive connection closes after this; longer than a proxy's or "
                                          "load balancer's own (nginx upstreams, AWS ALB: 60 s), so they close first")

    max_text_chars: int = Field(2000, ge=1, description="characters per text")
    max_texts_per_request: int = Field(64, ge=1, description="texts in one request's 'texts' list (at most "
                                       "max_queue_size: a request must fit the queue whole)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="request body size limit (413 above)")

    decode_join_every: int = Field(4, ge=1, le=64, description="steps new translations may wait to join together")
    requests_per_loop_pass: int = Field(64, ge=0, description=(
        "requests the server parses in one pass of the event loop; more wait their turn (0 = no limit)"))
    stream_interval_ms: float = Field(50.0, ge=0, le=1000, description=(
        "a streamed translation's events are handed over at most this often (each decoder step keeps its own "
        "event; steps in between arrive together); 0 = after every step"))
    translation_scheduler: Literal["iteration", "request"] = Field(
        "iteration", description="iteration-level decode scheduling, or whole-request batching")
    api_keys: list[str] = Field(default_factory=list, description="if set, requests need one of these keys")
    auth_exempt_paths: list[str] = Field(
        default_factory=lambda: ["/v2/health/live", "/v2/health/ready", "/metrics"],
        description="paths answered without an API key (prefix match)")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty = CORS off")
    root_path: str = Field("", pattern=r"^(/[^/?#\s]+)*$",
                           description="the path prefix a reverse proxy serves seqserve under and strips "
                                       "(/seqserve): the OpenAPI document's servers name it")

    fastapi_telemetry: bool = Field(False, description="FastAPI's built-in OpenTelemetry (newer FastAPI only)")
    warmup: bool = Field(True, description="run each model on typical shapes before reporting ready")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="the service's own log (any case)")
    log_format: Literal["text", "json"] = Field(
        "text", description="the service's own log (uvicorn's included): text lines, or JSON lines as the access log's")
    access_log: bool = Field(True, description="one JSON log line per request")

    @field_validator("host", "model_repository", mode="before")
    @classmethod
    def _not_blank(cls, value: object) -> object:
        # set but empty (a template's ${HOST} with HOST unset): "" bound every interface, IPv6 too,
        # and a repository of "" was the working folder
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty: leave it unset for the default, or give a value")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        # a browser's Origin is scheme://host[:port], lower case, nothing after: an entry pasted with
        # a path or a trailing slash matched no browser, and the preflight failed with no word at start
        for origin in origins:
            if origin != "*" and _ORIGIN.fullmatch(origin) is None:
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port] as a browser sends it, no path "
                                 "or trailing slash, no wildcard in the host (e.g. https://app.example.com), or *")
        return [origin.lower() for origin in origins]

    @field_validator("instances", mode="before")
    @classmethod
    def _auto_instances(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() == "auto" else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys")
    @classmethod
    def _no_blank_key(cls, keys: list[str]) -> list[str]:
        # a blank key would turn the key check on in name (the OpenAPI document declares 401)
        # while matching nothing a client can send as a header value: refuse it, not ignore it
        if any(not key.strip() for key in keys):
            raise ValueError("an API key must not be empty or blank")
        return keys

    @field_validator("auth_exempt_paths")
    @classmethod
    def _paths_not_everything(cls, paths: list[str]) -> list[str]:
        # exempt by prefix: "" or "/" would exempt every path
        for path in paths:
            if not path.startswith("/") or path == "/":
                raise ValueError(f"{path!r}: each exempt path starts with / and names more than the root")
        return paths

    @field_validator("worker_heartbeat_timeout_s")
    @classmethod
    def _longer_than_a_beat(cls, timeout_s: float) -> float:
        # a worker's loop beats once a second and the supervisor looks five times a second: a shorter
        # timeout took every healthy worker for hung and restarted them all, for ever
        if 0 < timeout_s < 3:
            raise ValueError(f"{timeout_s:g} s is shorter than 3 heartbeats (one a second): 0 (off) or at least 3")
        return timeout_s

    @field_validator("grpc_port")
    @classmethod
    def _own_port(cls, grpc_port: int, info: ValidationInfo) -> int:
        if grpc_port and grpc_port == info.data.get("port"):
            raise ValueError(f"it is SEQSERVE_PORT too ({grpc_port}): HTTP and gRPC need a port each "
                             "(SEQSERVE_GRPC_PORT=0 turns gRPC off)")
        return grpc_port

    @model_validator(mode="after")
    def _texts_fit_the_queue(self) -> Settings:
        # a request is admitted whole or not at all (service/admission.py): one with more texts than
        # the queue holds could never be, and would be told to retry (503) for ever. The smaller
        # limit is the one served: a 422 naming it, and the same figure in /v1/models and OpenAPI.
        self.max_texts_per_request = min(self.max_texts_per_request, self.max_queue_size)
        return self


# SEQSERVE_* variables that seqserve's other tools read (loadtests/, the test suite), not the server
TOOL_VARIABLES = frozenset({"SEQSERVE_DATA_DIR", "SEQSERVE_TEST_MODELS", "SEQSERVE_CHROMIUM", "SEQSERVE_UI_SCREENSHOT",
                            "SEQSERVE_CLIENT_API_KEY"})


# names people guess for a setting, which difflib does not find close enough (SEQSERVE_MODEL_DIR was
# "did you mean SEQSERVE_MODEL_CONTROL?", and the server then served the repository's own models)
_GUESSED = {**{f"SEQSERVE_{guess}": "SEQSERVE_MODEL_REPOSITORY"
               for guess in ("MODEL_DIR", "MODELS_DIR", "MODEL_PATH", "MODELS_PATH", "MODEL_REPO", "MODELS",
                             "MODEL_STORE")},
            **{f"SEQSERVE_{guess}": "SEQSERVE_REQUEST_TIMEOUT_S" for guess in ("TIMEOUT", "TIMEOUT_S")},
            "SEQSERVE_API_KEY": "SEQSERVE_API_KEYS"}
# what an operator who sets one of these expects (certificates: TLS) seqserve does not do
_NO_TLS = ("SSL", "TLS", "CERT", "HTTPS", "KEYFILE")
# set instead of SEQSERVE_API_KEYS, a key the operator meant to require: the server would run open
NOT_KEYS = "SEQSERVE_API_KEY"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each SEQSERVE_* variable in ``environ`` that is no setting, with the nearest
    setting's name where one is close: pydantic-settings ignores them, so a typo such as
    SEQSERVE_MAX_QUEUESIZE, or a guessed SEQSERVE_SSL_CERTFILE, would otherwise change nothing
    without a word."""
    known = {f"SEQSERVE_{name.upper()}" for name in Settings.model_fields}
    lines = []
    for name in sorted(environ):
        if name.upper().startswith("SEQSERVE_") and name.upper() not in known | TOOL_VARIABLES:
            if any(word in name.upper() for word in _NO_TLS):
                lines.append(f"{name} is not a setting and is ignored: seqserve has no TLS and serves plain HTTP "
                             "and gRPC; terminate TLS in front of it (README, Behind a reverse proxy)")
                continue
            near = ([_GUESSED[name.upper()]] if name.upper() in _GUESSED
                    else difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.8))
            lines.append(f"{name} is not a setting and is ignored" + (f" (did you mean {near[0]}?)" if near else "")
                         + "; the settings are listed in the README")
    return lines


def summary(settings: Settings) -> str:
    """The settings an operator checks took effect, in one start-up line (the limits, keys, CORS,
    workers and gRPC were said nowhere; a key typed into the wrong variable showed only in a 401)."""
    grpc = f"gRPC port {settings.grpc_port}" if settings.grpc_port else "gRPC off"
    keys = f"API keys on ({len(settings.api_keys)})" if settings.api_keys else "API keys off"
    cors = f"CORS {', '.join(settings.cors_origins)}" if settings.cors_origins else "CORS off"
    instances = f"{settings.instances} instance(s) a model" if settings.instances else "instances auto"
    return (f"settings: {settings.host}:{settings.port}, {grpc}; {settings.workers} worker(s), "
            f"{instances}; providers {settings.providers}, "
            f"precision {settings.precision}; "
            f"batches of up to {settings.max_batch_size} texts and {settings.max_batch_tokens} tokens, "
            f"{settings.max_queue_delay_ms:g} ms wait; queue {settings.max_queue_size} texts a model, "
            f"{settings.max_texts_per_request} a request; {settings.max_text_chars} characters a text, "
            f"{settings.max_body_bytes} bytes a body; request timeout {settings.request_timeout_s:g} s; "
            f"{keys}; {cors}; "
            f"model control {'on' if settings.model_control else 'off'}; translation scheduler "
            f"{settings.translation_scheduler}; access log {'on' if settings.access_log else 'off'}")


def kubernetes_hint(value: object) -> str:
    """For an invalid setting's message: a value such as tcp://10.0.0.1:80 is what Kubernetes gives
    every pod for a Service named seqserve (SEQSERVE_PORT, its docker-links-style service
    environment), not a value anybody set."""
    if isinstance(value, str) and value.startswith(("tcp://", "udp://")):
        return (" (Kubernetes sets this for a Service named seqserve: set enableServiceLinks: false in the "
                "pod spec, as docker/k8s/ does)")
    return ""
