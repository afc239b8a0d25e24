"""REST v1: POST /v1/sentiment, POST /v1/translate, GET /v1/models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import inference, routes_stream
from service.errors import InvalidInput
from service.inputs import check_texts, deadline_for, json_body, parse_body, unless_client_leaves
from service.json_response import JSONResponse
from service.registry import ModelRegistry, ServedModel
from service.schemas import (
    ErrorBody,
    ModelList,
    SentimentBatchResponse,
    SentimentRequest,
    SentimentResult,
    TranslateBatchResponse,
    TranslateRequest,
    TranslationResult,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["v1"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (404, 413, 422, 503, 504)
}


def _state(request: Request) -> tuple[ModelRegistry, Settings]:
    state = request.app.state
    return state.registry, state.settings


@router.post("/sentiment", response_model=SentimentResult | SentimentBatchResponse, responses=_ERRORS,
             summary="Classify the sentiment of one text or a list of texts",
             openapi_extra=json_body(SentimentRequest))
async def sentiment(request: Request) -> JSONResponse:
    body = await parse_body(request, SentimentRequest)
    registry, settings = _state(request)
    model, ids = inference.sentiment_job(registry, settings, body)
    # A disconnect watcher only for a request with texts scored by sentences (up to the whole
    # queue's worth): an ordinary one takes milliseconds, and a watcher task per request costs
    # more CPU than the rare abandoned classification it would save.
    work = inference.classify(model, ids, deadline_for(request, settings))
    probs = await (unless_client_leaves(request, work) if ids.split else work)
    # built as plain JSON: response_model documents the shape without re-validating every answer
    return JSONResponse(inference.sentiment_answer(model, body, ids, probs))


@router.post("/translate", response_model=TranslationResult | TranslateBatchResponse, responses=_ERRORS,
             summary="Translate one text or a list of texts (English → German)",
             openapi_extra=json_body(TranslateRequest))
async def translate(request: Request) -> Response:
    body = await parse_body(request, TranslateRequest)
    registry, settings = _state(request)
    model = registry.translator(body.source, body.target)
    field, texts = body.field_and_texts()
    check_texts(texts, settings, field)
    if body.stream and body.texts is not None:
        raise InvalidInput("a stream carries one translation: send 'text', not 'texts'", field="stream")
    options = inference.SearchOptions(body.num_hypotheses, body.length_penalty, body.sampling_topk,
                                      body.sampling_temperature, body.seed)
    jobs = inference.translation_jobs(model, texts, field, body.beam_size, body.max_length, body.return_attention,
                                      options)
    if body.stream:
        render = routes_stream.v1_renderer(model, jobs[0], inference.translation_result)
        return await routes_stream.start_stream(request, model, jobs[0], deadline_for(request, settings), render)
    # a client that leaves is dropped from decoding (it holds the decoder for many steps)
    outputs = await unless_client_leaves(request, inference.translate(model, jobs, deadline_for(request, settings)))
    results = [inference.translation_result(model, job, out) for job, out in zip(jobs, outputs, strict=True)]
    return JSONResponse(body.answer(results))


def model_info(registry: ModelRegistry, model: ServedModel, settings: Settings) -> dict[str, Any]:
    card = model.card
    limits: dict[str, int | float] = {"max_input_tokens": card.max_input_tokens,
                                      "max_text_chars": settings.max_text_chars,
                                      "max_texts_per_request": settings.max_texts_per_request,
                                      "max_batch_size": settings.max_batch_size,
                                      "max_queue_size": settings.max_queue_size,
                                      "request_timeout_s": settings.request_timeout_s}
    if card.decoding is not None and card.max_output_tokens is not None:
        limits.update(max_output_tokens=card.max_output_tokens, max_beam_size=card.decoding.max_beam_size,
                      default_beam_size=card.decoding.default_beam_size)
    versions = [m.version for m in registry.versions(model.name)]
    return {"name": model.name, "version": model.version, "versions": versions, "task": card.task,
            "description": card.description, "provider": model.provider, "precision": model.precision,
            "labels": card.labels, "languages": card.languages, "limits": limits, "metrics": model.metrics}


@router.get("/models", response_model=ModelList, summary="Served models with their limits and measured quality")
async def models(request: Request) -> dict[str, Any]:
    registry, settings = _state(request)
    return {"models": [model_info(registry, m, settings) for m in registry.latest()]}
