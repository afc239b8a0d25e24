"""Engines: what a route calls to run one request on one model, batched with others."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Generic, Protocol, TypeVar

from service.admission import Admission
from service.batching import BatchPolicy, DynamicBatcher, Each
from service.loop_budget import GiveWay
from service.runners import SentimentRunner, TranslationRunner
from service.runners.translation import TranslationJob, TranslationOutput

P = TypeVar("P")
R = TypeVar("R")


class TranslationEngine(Protocol):
    """The seam between routes and decoding: whole-request batching or iteration-level scheduling."""

    runner: TranslationRunner

    @property
    def policy(self) -> BatchPolicy: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def unhealthy_s(self) -> float: ...
    @property
    def admission(self) -> Admission: ...

    async def translate_all(self, jobs: list[TranslationJob], deadline: float,
                            each: Each | None = None) -> list[TranslationOutput]: ...
    def start(self, give_way: GiveWay | None = None) -> None: ...
    async def drain(self, timeout_s: float) -> bool: ...
    async def close(self) -> None: ...


class _BatchedEngine(Generic[P, R]):
    """Lifecycle shared by the engines built on the dynamic batcher."""

    batcher: DynamicBatcher[P, R]

    @property
    def policy(self) -> BatchPolicy:
        return self.batcher.policy

    @property
    def healthy(self) -> bool:
        return self.batcher.healthy

    @property
    def unhealthy_s(self) -> float:
        return self.batcher.unhealthy_s

    @property
    def admission(self) -> Admission:
        return self.batcher.admission

    def start(self, give_way: GiveWay | None = None) -> None:
        self.batcher.start(give_way)

    async def drain(self, timeout_s: float) -> bool:
        return await self.batcher.drain(timeout_s)

    async def close(self) -> None:
        await self.batcher.close()


class SentimentEngine(_BatchedEngine[list[int], list[float]]):
    def __init__(self, name: str, runner: SentimentRunner, policy: BatchPolicy) -> None:
        self.runner = runner
        # a text over the subword limit takes a place per sentence (service/inference.py SentimentPieces)
        self.batcher = DynamicBatcher(name, self._run, policy, runner.card.version, unit="texts or sentences")

    def _run(self, batch: list[list[int]]) -> list[list[float]]:
        # plain floats, a batch's in one numpy call here, rather than a row object each and a
        # numpy call per answer on the event loop: a request answered there touches no numpy
        result: list[list[float]] = self.runner.run(batch).tolist()
        return result

    def classify_all(self, texts_ids: list[list[int]], deadline: float) -> Coroutine[Any, Any, list[list[float]]]:
        """One request's texts, admitted whole or refused whole; probabilities in order. The
        batcher's own coroutine, not one awaiting it: each coroutine between the request's task
        and the answer's future is entered again when the answer comes (~0.9 us a level)."""
        return self.batcher.submit_all([(ids, len(ids)) for ids in texts_ids], deadline)


class RequestBatchedTranslator(_BatchedEngine[TranslationJob, TranslationOutput]):
    """Whole-request batching: a batch is encoded and decoded together until its last request ends."""

    def __init__(self, name: str, runner: TranslationRunner, policy: BatchPolicy) -> None:
        self.runner = runner
        self.batcher = DynamicBatcher(name, runner.translate, policy, runner.card.version, unit="sentences")

    async def translate_all(self, jobs: list[TranslationJob], deadline: float,
                            each: Each | None = None) -> list[TranslationOutput]:
        return await self.batcher.submit_all([(job, len(job.src_ids)) for job in jobs], deadline, each)
