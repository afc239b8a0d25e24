"""Server-Sent Events adapters for streamed translation, over service/streaming.py.

- REST v1: ``POST /v1/translate`` with ``"stream": true`` (routes_v1 hands the job over here):
  ``delta`` events (greedy), ``hypothesis`` events (beam search), then ``result`` (the
  non-streamed answer) or ``error``.
- Triton's generate extension: ``POST /v2/models/{name}[/versions/{v}]/generate`` (one JSON
  answer) and ``.../generate_stream`` (SSE, each event a ``$generate_response`` whose
  ``text_output`` pieces concatenate to the translation).

A request that fails before its first event (bad input, queue full, deadline) gets an ordinary
JSON error with its status; after that, an error is an event in the stream (status 200 sent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from service import inference
from service.access_log import CURRENT_REQUEST_ID
from service.errors import InferenceFailed, InvalidInput, NotReady
from service.event_stream import Chunks, EventStreamResponse
from service.inputs import check_texts, deadline_for, json_body, parse_body, unless_client_leaves
from service.json_response import JSONResponse
from service.registry import ServedModel
from service.runners import TranslationRunner
from service.runners.translation import TranslationJob
from service.streaming import Delta, Event, Failed, Final, Partial, TextPieces, delta_sse, sse
from service.v2_infer import param_float, param_int, param_timeout_s

Render = Callable[[Event], bytes]
log = logging.getLogger("seqserve.stream")


async def start_stream(request: Request, model: ServedModel, job: TranslationJob, deadline: float,
                       render: Render) -> EventStreamResponse:
    """Start decoding ``job`` and answer with its event stream, once its first event is there.

    Waiting for the first event lets a refusal (queue full, deadline) still be a JSON error with
    its status (and a client that leaves meanwhile gives its place back at once); later events
    are sent as the decode lane hands them over, all those ready at once in one write."""
    stream = inference.translate_stream(model, job, deadline)
    batches = stream.batches()
    try:
        first = await unless_client_leaves(request, anext(batches))
    except BaseException:
        await batches.aclose()
        raise
    if isinstance(first[0], Failed):
        await batches.aclose()
        raise first[0].error

    def chunk(events: list[Event]) -> tuple[bytes, bool]:
        last = events[-1]
        try:
            body = b"".join(map(render, events))
        except Exception:  # the status line is sent: the client is owed an error event
            log.exception("rendering a streamed translation failed on model %s (request %s)", model.name,
                          CURRENT_REQUEST_ID.get() or "unknown")
            last = Failed(InferenceFailed(f"inference failed on model {model.name}"))
            body = render(last)
        if isinstance(last, Failed):  # counted and logged with its error's status, not its status line's 200
            response.ended_with = last.error.status
        return body, not isinstance(last, Final | Failed)

    async def chunks() -> Chunks:
        try:
            yield chunk(first)
            async for events in batches:
                yield chunk(events)
        finally:  # the stream ended, or the client left: cancel what still runs
            await batches.aclose()

    # ``chunk`` above sets this response's ``ended_with``: the chunks run only once it is answering
    response = EventStreamResponse(chunks(), stream.stop, lambda error: render(Failed(error)))
    return response


# --- REST v1 -----------------------------------------------------------------------------------
def v1_renderer(model: ServedModel, job: TranslationJob,
                result: Callable[[ServedModel, TranslationJob, Any], dict[str, Any]]) -> Render:
    """v1 events: ``delta`` / ``hypothesis`` / ``result`` / ``error``; the first event also
    carries ``source_tokens`` (the attention's columns)."""
    runner = inference.translator(model)
    first = [True]

    def render(event: Event) -> bytes:
        data: dict[str, Any]
        if isinstance(event, Delta) and event.attention is None and not first[0]:
            return delta_sse(event.index, event.token, event.text)  # the common event, formatted fast
        if isinstance(event, Delta):
            name, data = "delta", {"index": event.index, "token": event.token, "text": event.text}
            if event.attention is not None:
                data["attention"] = event.attention
        elif isinstance(event, Partial):
            name, data = "hypothesis", {"step": event.step, "translation": event.text,
                                        "target_tokens": runner.target_tokenizer.pieces(event.tokens)}
        elif isinstance(event, Final):
            name, data = "result", result(model, job, event.output)
        else:
            name, data = "error", event.error.body()
        if first[0] and name in ("delta", "hypothesis"):
            data["source_tokens"] = inference.source_tokens(runner, job)
        first[0] = False
        return sse(data, event=name)

    return render


# --- Triton's generate extension -----------------------------------------------------------------
router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

# decoding parameters the generate routes take, in "parameters" or at the top level (as Triton
# passes extra properties on); "max_tokens" is what generate clients commonly send for the length
_INT_PARAMS = ("beam_size", "max_length", "max_tokens", "sampling_topk", "seed")
_NUMBER_PARAMS = ("length_penalty", "sampling_temperature", "timeout")
_OTHER_PARAMS = ("stream",)
_PARAMS = _INT_PARAMS + _NUMBER_PARAMS + _OTHER_PARAMS


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={
        "examples": [{"text_input": "A man is riding a bike.", "parameters": {"beam_size": 1}}]})
    text_input: StrictStr = Field(description="the text to translate")
    parameters: dict[str, Any] | None = None


_BODY = json_body(GenerateRequest)  # the document's schema (service/request_schemas.py) replaces it


def _parameters(body: GenerateRequest) -> tuple[dict[str, Any], str]:
    """The request's parameters, checked, and where it gave them ("" for the top level, else
    "parameters."), which its errors name."""
    top, nested = body.model_extra or {}, body.parameters
    if top and nested is not None:
        raise InvalidInput("give the parameters at the top level or in 'parameters', not both",
                           field=next(iter(top)))
    params, where = (top, "") if nested is None else (nested, "parameters.")
    for key, value in params.items():
        if key not in _PARAMS:
            raise InvalidInput(f"unknown parameter {key!r}; this model takes {', '.join(_PARAMS)}",
                               field=f"{where}{key}")
        if key in _INT_PARAMS:  # checked and normalised (an integral 5.0 becomes 5)
            params[key] = param_int(params, key, where)
        if key in _NUMBER_PARAMS:
            params[key] = param_float(params, key, where)
        if key == "stream" and not isinstance(value, bool):
            raise InvalidInput(f"{where}stream must be true or false", field=f"{where}stream")
    if "max_tokens" in params and "max_length" in params:
        raise InvalidInput("give max_length or max_tokens, not both", field=f"{where}max_tokens")
    return params, where


async def _generate_job(request: Request, name: str, version: str | None,
                        body: GenerateRequest) -> tuple[ServedModel, TranslationJob, float]:
    if not getattr(request.app.state, "ready", False):
        raise NotReady("server is not ready")
    settings = request.app.state.settings
    model = request.app.state.registry.get(name, version)
    inference.translator(model)
    params, where = _parameters(body)
    check_texts([body.text_input], settings, "text_input")
    max_length = params.get("max_length", params.get("max_tokens"))
    options = inference.SearchOptions(None, params.get("length_penalty"), params.get("sampling_topk"),
                                      params.get("sampling_temperature"), params.get("seed"))
    length = "max_tokens" if "max_tokens" in params else "max_length"

    def named(option: str) -> str:  # as the request named it, for the errors
        return where + (length if option == "max_length" else option)

    job = inference.translation_jobs(model, [body.text_input], "text_input", params.get("beam_size"), max_length,
                                     False, options, named)[0]
    return model, job, deadline_for(request, settings, param_timeout_s(params, where))


def _generate_response(model: ServedModel, text: str, **extra: Any) -> dict[str, Any]:
    return {"model_name": model.name, "model_version": model.version, "text_output": text, **extra}


def _generate_renderer(model: ServedModel, runner: TranslationRunner, job: TranslationJob) -> Render:
    """Each event a $generate_response: greedy ``text_output`` deltas; beam search sends its best
    hypothesis so far in ``hypothesis`` with an empty ``text_output``, and the whole translation
    in the last event, so that the ``text_output`` pieces always concatenate to the translation.
    Errors are Triton's error object, ``{"error": ...}``."""
    pieces = TextPieces(runner.detokenize)

    def render(event: Event) -> bytes:
        if isinstance(event, Failed):
            return sse(event.error.body())
        text, hypothesis = pieces.piece(event)
        if isinstance(event, Final):
            return sse(_generate_response(model, text, finished=True, finish_reason=event.output.finish_reason,
                                          **inference.seed_of(job)))
        return sse(_generate_response(model, text, **({} if hypothesis is None else {"hypothesis": hypothesis})))

    return render


async def _generate(request: Request, name: str, version: str | None, body: GenerateRequest) -> JSONResponse:
    model, job, deadline = await _generate_job(request, name, version, body)
    output = (await unless_client_leaves(request, inference.translate(model, [job], deadline)))[0]
    return JSONResponse(_generate_response(model, output.text(inference.translator(model).detokenize),
                                           finish_reason=output.finish_reason, **inference.seed_of(job)))


async def _generate_stream(request: Request, name: str, version: str | None,
                           body: GenerateRequest) -> EventStreamResponse:
    model, job, deadline = await _generate_job(request, name, version, body)
    render = _generate_renderer(model, inference.translator(model), job)
    return await start_stream(request, model, job, deadline, render)


@router.post("/models/{name}/generate", summary="Generate extension: one translation", openapi_extra=_BODY)
async def generate(request: Request, name: str) -> JSONResponse:
    return await _generate(request, name, None, await parse_body(request, GenerateRequest))


@router.post("/models/{name}/versions/{version}/generate", summary="Generate extension (one version)",
             openapi_extra=_BODY)
async def generate_version(request: Request, name: str, version: str) -> JSONResponse:
    return await _generate(request, name, version, await parse_body(request, GenerateRequest))


@router.post("/models/{name}/generate_stream", summary="Generate extension: the translation as Server-Sent Events",
             openapi_extra=_BODY)
async def generate_stream(request: Request, name: str) -> EventStreamResponse:
    return await _generate_stream(request, name, None, await parse_body(request, GenerateRequest))


@router.post("/models/{name}/versions/{version}/generate_stream",
             summary="Generate extension: Server-Sent Events (one version)", openapi_extra=_BODY)
async def generate_stream_version(request: Request, name: str, version: str) -> EventStreamResponse:
    return await _generate_stream(request, name, version, await parse_body(request, GenerateRequest))
