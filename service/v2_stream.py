"""A translation streamed as it is decoded, in the Open Inference Protocol's terms, without a
transport: what gRPC's ModelStreamInfer answers a request with ``stream: true`` (Triton's
decoupled responses, as its LLM backends send them to tritonclient's ``async_stream_infer``).

Each response carries a piece of the translation in its ``translation`` output, and the pieces
concatenate to the translation, as generate_stream's ``text_output`` pieces do: greedy search
sends one piece per token; beam search an empty piece with its best hypothesis so far in the
``hypothesis`` parameter; the last response the rest (and a sample's ``seed``). A failure after
the first response ends the stream with the error (the transport answers it as one). The
request is checked, admitted and decoded as a v2 infer request is, with one text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from service import inference
from service.errors import InvalidInput
from service.inputs import check_texts
from service.registry import ServedModel
from service.settings import Settings
from service.streaming import Failed, Final, TextPieces
from service.v2_infer import (
    FIELD,
    InferResult,
    InputTensor,
    OutputTensor,
    check_outputs,
    in_parameters,
    param_int,
    search_options,
    texts_from,
)

STREAM = "stream"  # the request parameter asking for it


def wants_stream(params: dict[str, Any]) -> bool:
    """Whether a request's parameters ask for a streamed answer (``stream``: a bool)."""
    value = params.get(STREAM, False)
    if not isinstance(value, bool):
        raise InvalidInput("parameters.stream must be true or false", field=in_parameters(STREAM))
    return value


async def infer_stream(settings: Settings, model: ServedModel, inputs: list[InputTensor],
                       requested: list[str] | None, params: dict[str, Any],
                       deadline: Callable[[dict[str, Any]], float]) -> AsyncIterator[InferResult]:
    """The responses for one streamed request, as they come. Raises ServiceError, before the first
    response for a request refused (bad input, queue full), or later for a failure. The adapter
    counts it (``v2_stats.counted``)."""
    runner = inference.translator(model)  # 422 for a model that does not generate text
    if requested and check_outputs(model, requested) != ["translation"]:
        raise InvalidInput("a streamed translation answers the output 'translation' only", field="outputs")
    texts, rank = texts_from(inputs)
    if len(texts) != 1:
        raise InvalidInput(f"a streamed translation takes one text, not {len(texts)}", field=FIELD, limit=1)
    check_texts(texts, settings, FIELD)
    options = search_options(params)
    if options.num_hypotheses is not None:
        raise InvalidInput("num_hypotheses is not streamed: ask without stream", field=in_parameters(
            "num_hypotheses"))
    until = deadline(params)
    job = inference.translation_jobs(model, texts, FIELD, param_int(params, "beam_size"),
                                      param_int(params, "max_length"), False, options, in_parameters)[0]
    shape = [1] if rank == 1 else [1, 1]

    def piece(text: str, last: bool = False, **parameters: int | str) -> InferResult:
        return InferResult(model.name, model.version, [OutputTensor("translation", "BYTES", shape, [text])],
                           dict(parameters), last)

    pieces = TextPieces(runner.detokenize)
    batches = inference.translate_stream(model, job, until).batches()
    try:
        async for events in batches:
            for event in events:
                if isinstance(event, Failed):
                    raise event.error
                text, hypothesis = pieces.piece(event)
                last = isinstance(event, Final)  # the last event, with the rest of the translation
                if last:
                    yield piece(text, True, **inference.seed_of(job))
                else:
                    yield piece(text, False, **({} if hypothesis is None else {"hypothesis": hypothesis}))
    finally:  # the stream ended, or the client left: cancel what still runs
        await batches.aclose()
