"""REST v1: POST /v1/sentiment, POST /v1/translate, GET /v1/models."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from service.engines import SentimentEngine
from service.inputs import (
    check_range,
    check_texts,
    check_tokens,
    deadline_for,
    each,
    item_field,
    unless_client_leaves,
)
from service.registry import ModelRegistry, ServedModel
from service.runners import SentimentRunner, TranslationRunner
from service.runners.translation import TranslationJob, TranslationOutput
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

M = TypeVar("M", bound=BaseModel)

router = APIRouter(prefix="/v1", tags=["v1"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (404, 413, 422, 503, 504)
}


def _state(request: Request) -> tuple[ModelRegistry, Settings]:
    return request.app.state.registry, request.app.state.settings


def sentiment_result(model: ServedModel, probs: np.ndarray) -> dict[str, Any]:
    labels = model.card.labels or []
    values = probs.tolist()  # plain floats: cheaper to compare and to render than numpy scalars
    best = max(range(len(values)), key=values.__getitem__)
    return {"label": labels[best], "score": values[best],
            "probabilities": dict(zip(labels, values, strict=True)),
            "model": model.name, "version": model.version}


async def classify_texts(model: ServedModel, texts: list[str], field: str, deadline: float) -> list[np.ndarray]:
    runner, engine = model.runner, model.engine
    assert isinstance(runner, SentimentRunner) and isinstance(engine, SentimentEngine)
    ids = [check_tokens(runner.tokenize(t), model.card.max_input_tokens, item_field(field, i), model.name)
           for i, t in enumerate(texts)]
    return await each([engine.classify(x, deadline) for x in ids])


def _json_body(schema: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the handler parses itself (see parse_body)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema.model_json_schema()}}}}


async def parse_body(request: Request, schema: type[M]) -> M:
    """Validate the raw body in one pass (pydantic's JSON parser), skipping FastAPI's body
    machinery on the hottest routes; errors go through the same 422 handler."""
    try:
        return schema.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) \
            from None


@router.post("/sentiment", response_model=SentimentResult | SentimentBatchResponse, responses=_ERRORS,
             summary="Classify the sentiment of one text or a list of texts",
             openapi_extra=_json_body(SentimentRequest))
async def sentiment(request: Request) -> JSONResponse:
    body = await parse_body(request, SentimentRequest)
    registry, settings = _state(request)
    model = registry.for_task("text-classification")
    field, texts = body.field_and_texts()
    check_texts(texts, settings, field)
    # No disconnect watcher here (unlike translation): a sentiment batch takes milliseconds, and a
    # watcher task per request costs more CPU than the rare abandoned classification it would save.
    probs = await classify_texts(model, texts, field, deadline_for(request, settings))
    results = [sentiment_result(model, p) for p in probs]
    # built as plain JSON: response_model documents the shape without re-validating every answer
    return JSONResponse(body.answer(results))


def translation_jobs(model: ServedModel, texts: list[str], field: str, beam_size: int | None,
                     max_length: int | None, keep_attention: bool) -> list[TranslationJob]:
    runner = model.runner
    assert isinstance(runner, TranslationRunner)
    check_range(beam_size, 1, runner.decoding.max_beam_size, "beam_size")
    check_range(max_length, 1, runner.max_output_tokens, "max_length")
    jobs = []
    for i, text in enumerate(texts):
        # the limit counts subwords before the </s> the model appends
        ids = runner.tokenize(text)
        check_tokens(ids[:-1], model.card.max_input_tokens, item_field(field, i), model.name)
        jobs.append(runner.job(ids, beam_size, max_length, keep_attention))
    return jobs


async def run_translations(request: Request, model: ServedModel, jobs: list[TranslationJob],
                           deadline: float) -> list[TranslationOutput]:
    """Decode the jobs (batched with other requests); a client that leaves is dropped from decoding."""
    engine = model.engine
    assert not isinstance(engine, SentimentEngine)
    return await unless_client_leaves(request, each([engine.translate(job, deadline) for job in jobs]))


def translation_result(model: ServedModel, job: TranslationJob, out: TranslationOutput) -> dict[str, Any]:
    runner = model.runner
    assert isinstance(runner, TranslationRunner)
    return {"translation": runner.detokenize(out.tokens),
            "source_tokens": runner.source_tokenizer.pieces(job.src_ids[:-1]),
            "target_tokens": runner.target_tokenizer.pieces(out.tokens),
            "score": float(out.score),
            "attention": None if out.attention is None else np.round(out.attention.astype(np.float64), 5).tolist(),
            "model": model.name, "version": model.version}


@router.post("/translate", response_model=TranslationResult | TranslateBatchResponse, responses=_ERRORS,
             summary="Translate one text or a list of texts (English → German)",
             openapi_extra=_json_body(TranslateRequest))
async def translate(request: Request) -> JSONResponse:
    body = await parse_body(request, TranslateRequest)
    registry, settings = _state(request)
    model = registry.translator(body.source, body.target)
    field, texts = body.field_and_texts()
    check_texts(texts, settings, field)
    jobs = translation_jobs(model, texts, field, body.beam_size, body.max_length, body.return_attention)
    outputs = await run_translations(request, model, jobs, deadline_for(request, settings))
    results = [translation_result(model, job, out) for job, out in zip(jobs, outputs, strict=True)]
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
    versions = sorted((m.version for m in registry.all() if m.name == model.name), key=int)
    return {"name": model.name, "version": model.version, "versions": versions, "task": card.task,
            "provider": model.provider, "labels": card.labels, "languages": card.languages,
            "limits": limits, "metrics": card.metrics}


@router.get("/models", response_model=ModelList, summary="Served models with their limits and measured quality")
async def models(request: Request) -> dict[str, Any]:
    registry, settings = _state(request)
    latest = {m.name: registry.get(m.name) for m in registry.all()}
    return {"models": [model_info(registry, m, settings) for m in latest.values()]}
