"""Runners: a model's ONNX Runtime sessions plus the pre/post-processing around them.

The same runner code serves HTTP requests and computes the figures in the model cards
(export/evaluate.py), so the published numbers are the numbers the service produces.
"""

from __future__ import annotations

from pathlib import Path

from service.model_card import ModelCard, load_model_card
from service.onnx_session import Precision, Provider
from service.runners.sentiment import SentimentRunner
from service.runners.translation import TranslationRunner

Runner = SentimentRunner | TranslationRunner


def load_runner(model_dir: Path, providers: list[Provider], intra_op_threads: int = 0, precision: Precision = "fp32",
                card: ModelCard | None = None) -> Runner:
    card = card or load_model_card(model_dir / "model.json")
    if card.task == "text-classification":
        return SentimentRunner(model_dir, card, providers, intra_op_threads, precision)
    return TranslationRunner(model_dir, card, providers, intra_op_threads, precision=precision)


__all__ = ["Runner", "SentimentRunner", "TranslationRunner", "load_runner"]
