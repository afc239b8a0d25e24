"""Open Inference Protocol inference without a transport: what the v2 REST route and the gRPC
servicer both call. Each adapter turns its wire format into InputTensors (flat values) and the
InferResult back; validation, limits, deadlines, batching and errors are the same for both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from service import inference
from service.errors import SHARED_MEMORY_NOT_SERVED, InvalidInput, NotReady
from service.inputs import check_texts, integral, timeout_us
from service.registry import ModelRegistry, ServedModel
from service.runners import TranslationRunner
from service.settings import Settings
from service.v2_model import TEXT_INPUT, outputs_of

FIELD = "inputs.text.data"

T = TypeVar("T")


class Guard(Protocol):
    """What a transport wraps long work in (HTTP: dropped when its client leaves)."""

    def __call__(self, work: Awaitable[T], /) -> Awaitable[T]: ...


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]  # flat; BYTES items are str (JSON) or bytes (binary, gRPC)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[str] | np.ndarray  # str items for BYTES, a float32 array for FP32


@dataclass
class InferResult:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    # the response's parameters: "seed", the sampling seed used (drawn when the request gave none);
    # a streamed response's "hypothesis" (service/v2_stream.py)
    parameters: dict[str, int | str] = field(default_factory=dict)
    last: bool = True  # a request's last response (a streamed translation's pieces are not, but its end)


def _as_text(item: Any, index: int) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{FIELD}[{index}] is not valid UTF-8", field=f"{FIELD}[{index}]") from None
    if not isinstance(item, str):
        raise InvalidInput(f"{FIELD}[{index}] must be a string, not {type(item).__name__}", field=FIELD)
    return item


def texts_from(inputs: list[InputTensor]) -> tuple[list[str], int]:
    """The texts of the "text" input and its rank (1 or 2)."""
    if len(inputs) != 1 or inputs[0].name != TEXT_INPUT.name:  # the one input every model here declares
        raise InvalidInput("inputs must hold one BYTES tensor named 'text'", field="inputs")
    tensor = inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input 'text' must have datatype BYTES, not {tensor.datatype}",
                           field="inputs.text.datatype", limit="BYTES")
    shape = tensor.shape
    if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or shape[0] < 0:
        raise InvalidInput(f"input 'text' must have shape [N] or [N, 1], not {shape}", field="inputs.text.shape")
    if len(tensor.data) != shape[0]:
        raise InvalidInput(f"input 'text' data must be {shape[0]} strings, as its shape says; got {len(tensor.data)}",
                           field=FIELD, limit=shape[0])
    return [_as_text(item, i) for i, item in enumerate(tensor.data)], len(shape)


def param_int(params: dict[str, Any], key: str, where: str = "parameters.") -> int | None:
    """``params[key]`` as an integer (an integral 5.0 becomes 5), None if absent; ``where`` the
    parameters sit in the request, for the error."""
    value = integral(params.get(key))
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidInput(f"{where}{key} must be an integer", field=f"{where}{key}")
    return value


def param_float(params: dict[str, Any], key: str, where: str = "parameters.") -> float | None:
    value = params.get(key)
    if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise InvalidInput(f"{where}{key} must be a number", field=f"{where}{key}")
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:  # a JSON integer of hundreds of digits: out of every range checked after this
        return math.inf if value > 0 else -math.inf


def param_timeout_s(params: dict[str, Any], where: str = "parameters.") -> float | None:
    """The request's ``timeout`` parameter, in seconds (None: not given). It counts microseconds,
    as Triton's does (service/inputs.py, ``timeout_us``)."""
    return timeout_us(param_float(params, "timeout", where), f"{where}timeout")


def in_parameters(option: str) -> str:
    """How a v2 request names a decoding option in its errors: under ``parameters``."""
    return f"parameters.{option}"


def search_options(params: dict[str, Any]) -> inference.SearchOptions:
    """The decoding options a v2 request's parameters carry (same names and limits as v1)."""
    return inference.SearchOptions(param_int(params, "num_hypotheses"), param_float(params, "length_penalty"),
                                   param_int(params, "sampling_topk"), param_float(params, "sampling_temperature"),
                                   param_int(params, "seed"))


def refuse_shared_memory(field: str, parameters: Mapping[str, Any]) -> None:
    """Triton's shared-memory extension (a tensor's ``shared_memory_region`` parameter) is not
    served: refused by name, where an input without data would be refused as empty and an output
    would be answered inline to a client that reads it from its region."""
    if "shared_memory_region" in parameters:
        raise InvalidInput(f"{field}: {SHARED_MEMORY_NOT_SERVED} (JSON data, or the binary data extension) and read "
                           "outputs from the answer",
                           field=f"{field}.parameters.shared_memory_region")


def requested_outputs(outputs: list[tuple[str, Mapping[str, Any]]]) -> list[str] | None:
    """The names of the outputs a request asks for (None: all), from (name, parameters) pairs.
    Shared memory is refused (``refuse_shared_memory``). Triton's classification extension
    (``class_count``, parameter ``classification``) is not served:
    refused, where ignoring it would answer raw scores to a client expecting labels."""
    for name, parameters in outputs:
        refuse_shared_memory(f"outputs.{name}", parameters)
        if "classification" in parameters:
            raise InvalidInput(f"output {name!r}: classification (class_count) is not supported; ask for the "
                               "model's outputs by name, as its metadata lists them (a classifier's 'label' and "
                               "'probabilities')",
                               field=f"outputs.{name}.parameters.classification")
    return [name for name, _ in outputs] or None


def check_outputs(model: ServedModel, requested: list[str] | None) -> list[str]:
    """The names of the outputs to answer with, checked before any work is done."""
    names = [o.name for o in outputs_of(model)]
    if not requested:
        return names
    unknown = sorted(set(requested) - set(names))
    if unknown:
        raise InvalidInput(f"unknown outputs {unknown}; model {model.name} has {names}", field="outputs", limit=names)
    return [n for n in names if n in requested]


def _passthrough(work: Awaitable[T], /) -> Awaitable[T]:
    return work


def served(registry: ModelRegistry, ready: bool, name: str, version: str | None) -> ServedModel:
    """The version a request names: 503 while the server is not ready, 404 for one not served.
    Adapters ask first, before they read the inputs, as Triton answers an unknown model before its
    inputs' mistakes (a client learns first that it called the wrong model), and pass it on."""
    if not ready:
        raise NotReady("server is not ready")
    return registry.get(name, version)


async def infer(settings: Settings, model: ServedModel, inputs: list[InputTensor], requested: list[str] | None,
                params: dict[str, Any], deadline: Callable[[dict[str, Any]], float],
                guard: Guard = _passthrough) -> InferResult:
    """Run one request on ``model`` (``served``). ``deadline`` turns the request parameters into the
    absolute deadline (each transport adds its own timeout); ``guard`` wraps decoding (HTTP drops a
    client that leaves). The adapter counts it (``v2_stats.counted``) from before it reads the
    request, so that a refusal of its inputs counts as a failure too."""
    wanted = check_outputs(model, requested)
    parameters: dict[str, int | str] = {}  # the response's: the seed a sample drew
    texts, rank = texts_from(inputs)
    check_texts(texts, settings, FIELD)
    until = deadline(params)
    n = len(texts)
    text_shape = [n] if rank == 1 else [n, 1]
    outputs: list[OutputTensor]
    if model.card.task == "text-classification":
        ids = inference.sentiment_ids(model, texts, FIELD)
        work = inference.classify(model, ids, until)  # guarded as v1 guards it (routes_v1.sentiment)
        probs = np.array(await (guard(work) if ids.split else work), dtype=np.float32)  # the texts' rows, plain floats
        labels = model.card.labels or []
        outputs = [OutputTensor("label", "BYTES", text_shape, [labels[int(i)] for i in probs.argmax(-1)]),
                   OutputTensor("probabilities", "FP32", list(probs.shape), probs)]
    else:
        runner = model.runner
        assert isinstance(runner, TranslationRunner)
        options = search_options(params)
        if options.num_hypotheses is None:  # the n-best output exists only when a list is asked for
            if requested and "hypotheses" in requested:
                # asked for by name without a length (perf_analyzer asks for every output the
                # metadata lists): the list of one, the answer itself
                options = dataclasses.replace(options, num_hypotheses=1)
            else:
                wanted = [w for w in wanted if w != "hypotheses"]
        jobs = inference.translation_jobs(model, texts, FIELD, param_int(params, "beam_size"),
                                          param_int(params, "max_length"), False, options, in_parameters)
        results = await guard(inference.translate(model, jobs, until))
        outputs = [OutputTensor("translation", "BYTES", text_shape, [r.text(runner.detokenize) for r in results])]
        if options.num_hypotheses is not None:
            k = options.num_hypotheses
            # [N, k], best first; a search that closed fewer hypotheses than asked pads with ""
            rows = [r.hypothesis_texts(runner.detokenize) for r in results]
            flat = [text for row in rows for text in row + [""] * (k - len(row))]
            outputs.append(OutputTensor("hypotheses", "BYTES", [n, k], flat))
        parameters = {**inference.seed_of(jobs[0])}  # one seed for the whole request
    return InferResult(model.name, model.version, [o for o in outputs if o.name in wanted], parameters)
