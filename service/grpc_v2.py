"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), in the server process.

A grpc.aio server on SEQSERVE_GRPC_PORT shares the event loop, models, batchers, deadlines, limits
and error vocabulary with HTTP: ModelInfer and each request of a ModelStreamInfer stream call
service/v2_infer.py, as the v2 REST route does,
and metadata and configuration come from service/v2_model.py. Only the wire format differs: tensors
arrive as ``raw_input_contents`` (or typed ``contents``) and leave as ``raw_output_contents``.
Errors become gRPC status codes; API keys travel as ``authorization: Bearer <key>`` or
``x-api-key`` metadata; each call is counted in ``seqserve_grpc_requests_total{method,code}``.
With SEQSERVE_WORKERS > 1 every worker binds the port with SO_REUSEPORT and the kernel spreads
connections across them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any

import grpc
from google.protobuf import json_format
from starlette.datastructures import State

from service import __version__, metrics, v2_model, v2_stats
from service.access_log import CURRENT_REQUEST_ID, access_log, request_id_of
from service.auth import key_matches
from service.errors import SHARED_MEMORY_NOT_SERVED, InvalidInput, ModelNotFound, PayloadTooLarge, ServiceError
from service.grpc_protocol import model_config_pb2, service_pb2, service_pb2_grpc
from service.inputs import deadline_after
from service.registry import ServedModel
from service.repository import check_load_parameters
from service.settings import Settings
from service.v2_binary import decode_tensor, encode_tensor
from service.v2_infer import (
    InferResult,
    InputTensor,
    infer,
    param_timeout_s,
    refuse_shared_memory,
    requested_outputs,
    served,
)
from service.v2_stream import infer_stream, wants_stream

log = logging.getLogger("seqserve.grpc")

_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
          409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          422: grpc.StatusCode.INVALID_ARGUMENT,
          499: grpc.StatusCode.CANCELLED, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# methods a probe may call without a key (as the HTTP health routes)
_EXEMPT = {"ServerLive", "ServerReady"}
# typed contents (when a client sends no raw_input_contents) by datatype
_CONTENTS = {"BYTES": "bytes_contents", "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents"}

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _parameters(params: Any) -> dict[str, Any]:
    """InferParameter map → plain values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def _inputs(request: Any) -> list[InputTensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs",
                           field="raw_input_contents", limit=len(request.inputs))
    tensors = []
    for i, t in enumerate(request.inputs):
        shape = list(t.shape)
        field = f"inputs.{t.name}"
        refuse_shared_memory(field, t.parameters)
        if raw:
            if t.HasField("contents"):  # which one would count is not for the client to guess (Triton refuses it too)
                raise InvalidInput(f"input {t.name!r} has both contents and raw_input_contents: send one",
                                   field=f"{field}.contents")
            data = decode_tensor(t.datatype, shape, raw[i], field)
        else:
            expected = _CONTENTS.get(t.datatype, "bytes_contents")
            data = list(getattr(t.contents, expected))
            given = [f.name for f, values in t.contents.ListFields() if f.name != expected and values]
            if not data and given:  # "must be 1 strings, got 0" would not say where the values went
                raise InvalidInput(f"input {t.name!r} is {t.datatype}: its values go in contents.{expected}, "
                                   f"not contents.{given[0]}", field=f"{field}.contents")
        tensors.append(InputTensor(t.name, t.datatype, shape, data))
    return tensors


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Each method: the call, its error as a status code, a metric and a log line (API keys: ApiKeyCheck)."""

    def __init__(self, state: State, settings: Settings) -> None:
        self.state = state
        self.settings = settings
        self.closing = asyncio.Event()  # the server is shutting down: streams end once answered

    # --- plumbing shared by every method -------------------------------------------------------
    def _cancelled(self) -> grpc.StatusCode:
        """Whose cancellation: the client's (CANCELLED), or the server's, which cancels the calls
        still open when its drain's deadline passes (the client is told UNAVAILABLE, and so are the
        metrics and the access log; counted for the shutdown's log line, service/drain.py)."""
        drain = getattr(self.state, "drain", None)
        if drain is None or not drain.passed():  # a client may leave during the drain, too
            return grpc.StatusCode.CANCELLED
        drain.grpc_cut_off += 1
        return grpc.StatusCode.UNAVAILABLE

    @property
    def _ready(self) -> bool:
        return bool(getattr(self.state, "ready", False))

    # --- health and metadata -------------------------------------------------------------------
    async def _server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        registry = getattr(self.state, "registry", None)
        return service_pb2.ServerLiveResponse(live=registry is None or registry.alive())

    async def _server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self._ready and self.state.registry.healthy())

    async def _server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerMetadataResponse(name="seqserve", version=__version__,
                                                  extensions=v2_model.extensions(self.settings))

    async def _model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # an unknown model or version is not ready, as Triton answers (and tritonclient's
        # is_model_ready gets False over HTTP too, where seqserve's 404 says why)
        try:
            model = self.state.registry.get(request.name, request.version or None)
        except ModelNotFound:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self._ready and model.engine.healthy)

    async def _model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = v2_model.metadata(self.state.registry, request.name, request.version or None)
        meta.pop("parameters")  # not a field of ModelMetadataResponse
        return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse())

    async def _model_config(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        config = v2_model.config(self.state.registry, self.settings, request.name, request.version or None)
        return service_pb2.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    async def _model_statistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        stats = v2_stats.statistics(self.state.registry, request.name or None, request.version or None)
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    # --- model repository (service/repository.py) -----------------------------------------------
    async def _repository_index(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        rows = self.state.model_control.index(ready_only=request.ready)
        return json_format.ParseDict({"models": rows}, service_pb2.RepositoryIndexResponse())

    async def _repository_load(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        check_load_parameters(dict(request.parameters))
        await self.state.model_control.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    async def _repository_unload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.state.model_control.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # --- inference ------------------------------------------------------------------------------
    async def _model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self._served(request)
        with v2_stats.counted(model.name, model.version):  # its inputs' refusals count as failures too
            args = self._infer_args(model, request, _parameters(request.parameters), context.time_remaining())
            return _response(await infer(*args), request.id)

    def _served(self, request: Any) -> ServedModel:
        return served(self.state.registry, self._ready, request.model_name, request.model_version or None)

    def _infer_args(self, model: ServedModel, request: Any, params: dict[str, Any], remaining: float | None
                    ) -> tuple[Any, ...]:
        """What v2 inference (service/v2_infer.py, service/v2_stream.py) takes for one
        ModelInferRequest to ``model`` and its ``params``: its deadline within ``remaining`` seconds
        of the call's (None: no deadline) and its own ``timeout`` parameter. Raises ServiceError."""

        def deadline(params: dict[str, Any]) -> float:
            until = deadline_after(self.settings, (param_timeout_s(params), "parameters.timeout"))
            return until if remaining is None else min(until, time.monotonic() + max(remaining, 0.0))

        if request.ByteSize() > self.settings.max_body_bytes:  # as HTTP's 413 (the transport takes more)
            raise PayloadTooLarge(f"request message over {self.settings.max_body_bytes} bytes", field="body",
                                  limit=self.settings.max_body_bytes)
        requested = requested_outputs([(o.name, o.parameters) for o in request.outputs])
        return self.settings, model, _inputs(request), requested, params, deadline

    async def _results(self, request: Any, params: dict[str, Any], remaining: float | None
                       ) -> AsyncIterator[InferResult]:
        """A stream's answers to one request: one result, or a translation's pieces as they are
        decoded when the request asks for ``stream``."""
        model = self._served(request)
        # counted up to its last answer's being ready, not while it waits for its turn in the stream
        with v2_stats.counted(model.name, model.version) as counting:
            args = self._infer_args(model, request, params, remaining)
            if wants_stream(params):
                async for result in infer_stream(*args):
                    if result.last:
                        counting.done()
                    yield result
            else:
                result = await infer(*args)
                counting.done()
                yield result

    async def model_stream_infer(self, requests: AsyncIterator[Any],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """ModelStreamInfer, as tritonclient's ``start_stream``/``async_stream_infer`` and
        perf_analyzer ``--streaming`` use it: requests on one bidirectional stream, worked on
        concurrently (the batcher and the decoder batch them as any others) and answered in the
        order they came, as Triton answers them: a stock client turns a failed request's answer
        into an error without its id, so the order is how it knows which one failed. A failed
        request is answered in the stream (``error_message``), and the stream goes on. A
        translation asked with ``stream`` is answered in pieces as it is decoded
        (service/v2_stream.py), as Triton's decoupled models answer; its pieces go out as they
        come. Each response says whether it is its request's last (``triton_final_response``).
        Each request is counted and logged as a call of its own. At shutdown the stream ends once
        what it holds is answered: a client keeps its stream open for as long as it runs."""
        # the stream's id (each request logs its own)
        context.set_trailing_metadata(((_REQUEST_ID, _request_id(context)),))
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[Any] = asyncio.Queue()
        working: set[asyncio.Task[None]] = set()
        previous: asyncio.Future[None] | None = None  # the last request's turn: its first answer is out

        def release(turn: asyncio.Future[None], after: asyncio.Future[None] | None) -> None:
            """The next request may go once this one's first answer is out and the one before it may
            go: the chain keeps the order whatever each one's own answers do."""
            if turn.done():
                return
            if after is None or after.done():
                turn.set_result(None)
            else:
                after.add_done_callback(lambda _: None if turn.done() else turn.set_result(None))

        async def answer(request: Any, params: dict[str, Any], after: asyncio.Future[None] | None,
                         turn: asyncio.Future[None]) -> None:
            """``after``: the turn of the request sent before this one. Every request's first answer
            (a one-answer request's only one, a refusal, a streamed one's first piece) goes out
            after it, and the requests after a streamed one wait for its first answer; a streamed
            one's later pieces go out as they come. So first answers keep the order of the
            requests, which tells a stock client which request failed."""
            started, code, pieces = time.perf_counter(), grpc.StatusCode.OK, 0
            request_id = _request_id(context, request)
            CURRENT_REQUEST_ID.set(request_id)  # this request's task's own
            try:
                async for result in self._results(request, params, context.time_remaining()):
                    response = _response(result, request.id)
                    response.parameters[_FINAL].bool_param = result.last
                    if after is not None and not pieces:
                        await asyncio.shield(after)  # (cancelling this one must not cancel that one's turn)
                    answers.put_nowait(service_pb2.ModelStreamInferResponse(infer_response=response))
                    pieces += 1
                    release(turn, after)
            except asyncio.CancelledError:  # the client left the stream, or the drain's deadline passed
                code = self._cancelled()
                raise
            except Exception as exc:
                code, message, _ = _failure("ModelStreamInfer", exc)
                out = service_pb2.ModelStreamInferResponse(error_message=_clip(message))
                # which request failed, for a client that reads the raw response
                out.infer_response.id, out.infer_response.model_name = request.id, request.model_name
                out.infer_response.model_version = request.model_version
                out.infer_response.parameters[_FINAL].bool_param = True
                if after is not None and not pieces:
                    await asyncio.shield(after)
                answers.put_nowait(out)
            finally:
                _record("ModelStreamInfer", code, time.perf_counter() - started, self.settings, context, request,
                        request_id)
                release(turn, after)  # the next one may go, whatever became of this one
                room.release()

        # requests held at once: past it the stream is not read, and gRPC's flow control holds the
        # client back (each held request keeps its message, up to 4 x MAX_BODY_BYTES)
        room = asyncio.Semaphore(_STREAM_IN_FLIGHT)

        async def read() -> None:
            nonlocal previous
            while True:
                await room.acquire()
                request = await anext(requests, None)
                if request is None:
                    return
                params = _parameters(request.parameters)
                turn = loop.create_future()
                task = asyncio.ensure_future(answer(request, params, previous, turn))
                previous = turn
                working.add(task)
                task.add_done_callback(working.discard)

        async def until_done(first: asyncio.Future[Any], end: object) -> None:
            """After ``first`` (the client's last request, or the server's shutdown), what is in
            flight is answered, then the stream ends (``end`` says why)."""
            try:
                await asyncio.wait([first])  # its failure, if any, is the handler's to raise
                while working:
                    await asyncio.wait(set(working))
            finally:
                answers.put_nowait(end)

        reader = asyncio.ensure_future(read())
        closing = asyncio.ensure_future(self.closing.wait())
        ends = [asyncio.ensure_future(until_done(reader, None)), asyncio.ensure_future(until_done(closing, _CLOSED))]
        try:
            while (out := await answers.get()) not in (None, _CLOSED):
                yield out
            if out is _CLOSED:  # an error, not a quiet end: a request sent meanwhile was not read
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: every request "
                                    "read from this stream was answered; send the others again elsewhere")
            reader.result()  # a read that failed fails the call
        finally:  # the client left or cancelled: its requests' work is dropped as for any that leaves
            for task in [reader, closing, *ends, *working]:
                task.cancel()


_DEADLINE_SLACK_S = 0.25
_STREAM_IN_FLIGHT = 64  # requests of one stream held at once (read, not yet answered)
_CLOSED = object()  # a stream's end at the server's shutdown


def _response(result: InferResult, request_id: str) -> Any:
    """A v2 result as a ModelInferResponse: tensors as raw_output_contents."""
    response = service_pb2.ModelInferResponse(model_name=result.model_name, model_version=result.model_version,
                                              id=request_id)
    for key, value in result.parameters.items():
        if isinstance(value, str):
            response.parameters[key].string_param = value
        else:
            response.parameters[key].int64_param = value
    for out in result.outputs:
        response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        response.raw_output_contents.append(encode_tensor(out.datatype, out.data))
    return response


def _clip(text: str, limit: int = 1024) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# on each stream response: whether it is its request's last (what a client written for Triton's
# decoupled models, with enable_empty_final_response, waits for)
_FINAL = "triton_final_response"
_REQUEST_ID = "x-request-id"
_UNAUTHENTICATED = "missing or invalid API key (metadata authorization: Bearer <key>, or x-api-key)"
_UNAUTHORIZED_BODY = {"error": _UNAUTHENTICATED, "code": "unauthorized", "field": "authorization"}


def _failure(name: str, exc: Exception) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    """A failed call's (or stream request's) status code, message and HTTP error body. A fault that
    is not the client's (a bug) is logged: it must not leave the client without an answer."""
    if isinstance(exc, ServiceError):
        return _CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message, exc.body()
    log.exception("%s failed", name)
    return grpc.StatusCode.INTERNAL, "internal error", {"error": "internal error", "code": "internal_error"}


# the HTTP status a gRPC code stands for, as _CODES maps them (the access log's "status" is an
# integer for every protocol: a log index types a field by its first value)
_HTTP_STATUS = {**{code: status for status, code in _CODES.items()}, grpc.StatusCode.OK: 200,
                grpc.StatusCode.UNIMPLEMENTED: 501}


def _request_id(context: grpc.aio.ServicerContext, request: Any = None) -> str:
    """The call's request id, chosen as HTTP's (service/access_log.py): x-request-id metadata,
    traceparent, the request's own ``id`` (as a Triton client sets it), else a new one."""
    metadata = {key.encode(): value.encode("utf-8", "replace") for key, value in context.invocation_metadata() or ()
                if key in (_REQUEST_ID, "traceparent") and isinstance(value, str)}
    return request_id_of(metadata, (getattr(request, "id", "") or "").encode("utf-8", "replace"))


def _record(name: str, code: grpc.StatusCode, elapsed: float, settings: Settings,
            context: grpc.aio.ServicerContext, request: Any = None, request_id: str | None = None,
            **more: str) -> None:
    """One call (or one request of a stream) in the metrics and the access log (``more``: fields
    of its log line beyond the usual ones)."""
    metrics.GRPC_REQUESTS.labels(name, code.name).inc()
    metrics.GRPC_LATENCY.labels(name).observe(elapsed)
    if settings.access_log:
        access_log.write({"request_id": request_id or _request_id(context, request), "protocol": "grpc",
                          "method": name,
                          "status": _HTTP_STATUS.get(code, 500), "grpc_status": code.name,
                          "latency_ms": round(elapsed * 1000, 2), **more})


def _wrap(name: str, handler: Handler) -> Handler:
    @wraps(handler)
    async def call(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        # told to the client, as HTTP's X-Request-ID is: the id to quote, the server's own where it sent none
        request_id = _request_id(context, request)
        CURRENT_REQUEST_ID.set(request_id)  # the call's task's own
        context.set_trailing_metadata(((_REQUEST_ID, request_id),))
        code = grpc.StatusCode.OK
        message = ""
        body: dict[str, Any] = {}
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            code = grpc.StatusCode.UNIMPLEMENTED
            raise
        except asyncio.CancelledError:  # the client cancelled or its deadline passed: grpc cancels the handler
            remaining = context.time_remaining()
            # a client whose deadline passes cancels the call itself, by its own clock: the server,
            # which started the same timeout when the call reached it (later, on a busy machine),
            # sees the cancellation before its own deadline (the full test suite saw CANCELLED).
            # One that close to the deadline is counted as the deadline
            code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= _DEADLINE_SLACK_S \
                else self._cancelled()
            raise
        except Exception as exc:
            code, message, body = _failure(name, exc)
        finally:
            _record(name, code, time.perf_counter() - started, self.settings, context, request, request_id)
        # the HTTP error body (code, field, limit) travels as trailing metadata. Messages may echo
        # the client's input (a model name, a shape): cut to a size that always fits the client's
        # metadata limit, or the client would see RESOURCE_EXHAUSTED instead of this status
        body = {key: _clip(value) if isinstance(value, str) else value for key, value in body.items()}
        await context.abort(code, _clip(message),
                            trailing_metadata=(("seqserve-error", json.dumps(body)), (_REQUEST_ID, request_id)))

    return call


_SERVICE = "/inference.GRPCInferenceService/"
_METHOD_NAMES = frozenset(n for n in dir(service_pb2_grpc.GRPCInferenceServiceServicer) if n[0].isupper())


_METHODS = {"ServerLive": InferenceServicer._server_live, "ServerReady": InferenceServicer._server_ready,
            "ServerMetadata": InferenceServicer._server_metadata, "ModelReady": InferenceServicer._model_ready,
            "ModelMetadata": InferenceServicer._model_metadata, "ModelConfig": InferenceServicer._model_config,
            "ModelStatistics": InferenceServicer._model_statistics, "ModelInfer": InferenceServicer._model_infer,
            "RepositoryIndex": InferenceServicer._repository_index,
            "RepositoryModelLoad": InferenceServicer._repository_load,
            "RepositoryModelUnload": InferenceServicer._repository_unload}


def _not_served(name: str) -> Callable[[InferenceServicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """A method of the protocol seqserve does not serve: UNIMPLEMENTED, saying what to do instead
    where there is something (perf_analyzer's and tritonclient's shared-memory modes)."""
    why = f"{SHARED_MEMORY_NOT_SERVED} (contents or raw_input_contents)" if "SharedMemory" in name \
        else "not implemented by seqserve"

    async def method(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name}: {why}")

    return method


for _name in _METHOD_NAMES:
    setattr(InferenceServicer, _name, _wrap(_name, _METHODS.get(_name) or _not_served(_name)))
InferenceServicer.ModelStreamInfer = InferenceServicer.model_stream_infer


def _method_of(path: str) -> tuple[str, dict[str, str]]:
    """A call's metrics label and extra log fields: a method of this service by its name; any other
    path "unknown" (a client cannot grow the label set), its path in the log line."""
    name = path[len(_SERVICE):] if path.startswith(_SERVICE) else ""
    return (name, {}) if name in _METHOD_NAMES else ("unknown", {"path": path[:200]})


def _refusal(path: str, code: grpc.StatusCode, message: str, settings: Settings,
             body: dict[str, Any] | None = None) -> grpc.RpcMethodHandler:
    """A handler that answers ``code`` at once, counted and logged as any call, with its request id
    (and ``body``, the HTTP error body) as trailing metadata, whatever the call's arity: a stream of
    both sides whose messages are never read (a unary handler gets its message read in full first)."""
    name, more = _method_of(path)

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        request_id = _request_id(context)
        _record(name, code, 0.0, settings, context, request_id=request_id, **more)
        body_trailer = () if body is None else (("seqserve-error", json.dumps(body)),)
        await context.abort(code, message, trailing_metadata=(*body_trailer, (_REQUEST_ID, request_id)))

    return grpc.stream_stream_rpc_method_handler(refuse)


class UnknownMethods(grpc.GenericRpcHandler):
    """A method this server does not have (another service's, such as Triton's older
    ``nvidia.inferenceserver.GRPCInferenceService``, or a typo): UNIMPLEMENTED, as gRPC answers
    it, but counted (method "unknown") and logged with the path it asked for; gRPC's own answer
    left no trace. It takes every path, so it must be the last generic handler added."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = details.method[:200]
        return _refusal(path, grpc.StatusCode.UNIMPLEMENTED,
                        f"unknown method {path}: this server serves inference.GRPCInferenceService", self.settings)


class ApiKeyCheck(grpc.aio.ServerInterceptor):
    """SEQSERVE_API_KEYS on gRPC: a call's key is checked on its metadata, before its message is
    read, as HTTP checks the head before the body. A caller without a key costs no read or parse
    of its message (a ModelInfer message may be 4 x MAX_BODY_BYTES) and is answered
    UNAUTHENTICATED with the error body and its request id as trailing metadata, counted and logged
    as any call. Only the service's health methods are exempt, as HTTP's health routes are."""

    def __init__(self, keys: list[bytes], settings: Settings) -> None:
        self.keys, self.settings = keys, settings

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        metadata = {key.lower(): _as_bytes(value) for key, value in details.invocation_metadata or ()}
        if _method_of(details.method)[0] in _EXEMPT or \
                key_matches(metadata.get("x-api-key"), metadata.get("authorization"), self.keys):
            return await continuation(details)
        return _refusal(details.method, grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED, self.settings,
                        _UNAUTHORIZED_BODY)


class GrpcServer:
    """The gRPC front end as the app's lifespan runs it."""

    def __init__(self, server: grpc.aio.Server, servicer: InferenceServicer) -> None:
        self.server, self.servicer = server, servicer

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls at once; streams end once their requests are answered, and every call
        still open after ``grace_s`` is cancelled."""
        self.servicer.closing.set()
        await self.server.stop(grace_s)


async def start(state: State, settings: Settings) -> GrpcServer | None:
    """Serve gRPC on settings.grpc_port (None when it is 0). Raises RuntimeError if the port is taken."""
    if not settings.grpc_port:
        return None
    # a request over MAX_BODY_BYTES is refused with an answer of its own (RESOURCE_EXHAUSTED, or an
    # error in its stream, which goes on); only one over 4 times that ends its call at the transport
    options = [("grpc.max_receive_message_length", 4 * settings.max_body_bytes),
               # several workers share the port; one process should hear that it is taken
               ("grpc.so_reuseport", 1 if settings.workers > 1 else 0)]
    keys = [key.encode() for key in settings.api_keys if key]
    server = grpc.aio.server(options=options, interceptors=[ApiKeyCheck(keys, settings)] if keys else None)
    servicer = InferenceServicer(state, settings)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((UnknownMethods(settings),))  # last: it takes any path
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as exc:
        raise RuntimeError(f"cannot serve gRPC on {host}:{settings.grpc_port}: the port is taken, or {host} is "
                           f"not an address of this machine (SEQSERVE_GRPC_PORT, SEQSERVE_HOST): {exc}") from exc
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s:%d", host, settings.grpc_port)
    return GrpcServer(server, servicer)
