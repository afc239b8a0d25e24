"""service/v2_stream.py: which requests may be streamed, checked before any work (the pieces
themselves are checked against the unary answer through gRPC, tests/test_grpc_v2.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.errors import InvalidInput
from service.registry import ModelRegistry
from service.settings import Settings
from service.v2_infer import InputTensor, served
from service.v2_stream import infer_stream, wants_stream
from tests.conftest import COMMITTED_MODELS

SETTINGS = Settings(model_repository=COMMITTED_MODELS, warmup=False, precision="fp32")


@pytest.fixture(scope="module")
def registry() -> Iterator[ModelRegistry]:
    yield ModelRegistry.load(SETTINGS)  # not started: a request checked and refused never reaches a thread


def test_stream_is_a_bool_parameter() -> None:
    assert wants_stream({"stream": True}) and not wants_stream({}) and not wants_stream({"stream": False})
    with pytest.raises(InvalidInput) as err:
        wants_stream({"stream": "yes"})
    assert err.value.field == "parameters.stream"


@pytest.mark.parametrize(("texts", "params", "outputs", "field"), [
    (["A dog.", "A cat."], {}, None, "inputs.text.data"),  # one text a stream
    (["A dog."], {"num_hypotheses": 2}, None, "parameters.num_hypotheses"),
    (["A dog."], {}, ["hypotheses"], "outputs"),
    (["A dog."], {"beam_size": 99}, None, "parameters.beam_size"),
])
def test_what_cannot_be_streamed_is_refused_before_any_work(registry: ModelRegistry, texts: list[str],
                                                             params: dict[str, Any], outputs: list[str] | None,
                                                             field: str) -> None:
    tensor = InputTensor("text", "BYTES", [len(texts), 1], texts)

    async def first() -> Any:
        stream = infer_stream(SETTINGS, served(registry, True, "translate-en-de", None), [tensor], outputs, params,
                              lambda _: time.monotonic() + 10)
        return await anext(stream)

    with pytest.raises(InvalidInput) as err:
        asyncio.run(first())
    assert err.value.field == field
