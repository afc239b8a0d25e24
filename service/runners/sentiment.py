"""Many-to-one runner: one graph, token ids + lengths → class probabilities."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.metrics import MODEL_CPU
from service.model_card import ModelCard
from service.onnx_session import Precision, Provider, graph_path, open_session
from service.runners.vocabulary import check_embedding, checked_tokenizer
from service.tokenization import PAD_ID


def pad_batch(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to [batch, max_len] int64 plus lengths [batch] int64.

    One list of every row's ids and padding, made an array at once: a worker pads a batch right
    after ONNX Runtime's last run has left the core's caches cold, where each numpy call costs
    several times what it costs warm, and a numpy assignment per row took 116-119 us a batch of 9
    there against 72-75 (python -m loadtests.turn_cost)."""
    lengths = [len(s) for s in sequences]
    width = max(lengths, default=1) or 1
    flat: list[int] = []
    for seq, length in zip(sequences, lengths, strict=True):
        flat.extend(seq)
        flat.extend([PAD_ID] * (width - length))
    return np.array(flat, dtype=np.int64).reshape(len(sequences), width), np.array(lengths, dtype=np.int64)


class SentimentRunner:
    def __init__(self, model_dir: Path, card: ModelCard, providers: list[Provider], intra_op_threads: int = 0,
                 precision: Precision = "fp32", profile: bool | None = None) -> None:
        self.card = card
        self.model_dir = model_dir
        self.precision = precision
        self.session = open_session(model_dir, card.graphs["model"], providers, intra_op_threads, precision, profile)
        self.providers = self.session.get_providers()
        self.tokenizer = checked_tokenizer(model_dir, "text", card.tokenizers["text"])
        self.labels: list[str] = list(card.labels or [])
        self._inputs = [i.name for i in card.graphs["model"].inputs]
        self._output = card.graphs["model"].outputs[0].name
        self._model_cpu = MODEL_CPU.labels(card.name, card.version)
        check_embedding(graph_path(model_dir, card.graphs["model"], precision), self.tokenizer, self._probe)

    def _probe(self, token: int) -> None:
        """One text of one subword through the graph (outside ``run``: no batch, no metrics)."""
        ids, lengths = pad_batch([[token]])
        self.session.run([self._output], {self._inputs[0]: ids, self._inputs[1]: lengths})

    def sessions(self) -> dict[str, ort.InferenceSession]:
        return {"model": self.session}

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def run(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Probabilities [len(batch), classes] for already tokenised texts (any lengths)."""
        ids, lengths = pad_batch(batch)
        started = time.thread_time()
        (probs,) = self.session.run([self._output], {self._inputs[0]: ids, self._inputs[1]: lengths})
        self._model_cpu.inc(time.thread_time() - started)
        return np.asarray(probs)

    def warmup(self, batch_sizes: Sequence[int] = (1, 8, 32), length: int = 24) -> None:
        for size in batch_sizes:
            self.run([[5] * length] * size)

    def measure_batch_overhead(self, length: int = 24, big: int = 32, repeats: int = 10) -> float:
        """Fixed cost of one run in padded-token equivalents: t(b, L) ~ a + c*b*L, returns a/c.

        Each size's time is its fastest of ``repeats`` runs: on a shared machine noise only adds
        time, and the median of 5 gave 1 to 17 (INT8) across eight measurements in one process,
        the fastest of 10 gave 6 to 9, so servers started alike batch alike."""

        def timed(size: int) -> float:
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.run([[5] * length] * size)
                runs.append(time.perf_counter() - start)
            return min(runs)

        small_t, big_t = timed(1), timed(big)
        per_token = max((big_t - small_t) / ((big - 1) * length), 1e-9)
        fixed = max(small_t - per_token * length, 0.0)
        return float(min(max(fixed / per_token, 1.0), 4096.0))
