"""A model's tokenizers checked against its card and its graphs when it loads.

A tokenizer file from another model (a larger vocabulary, or the source and target swapped)
loaded without a word: the server said ready, then failed whole batches with ONNX Runtime's
"idx=3001 must be within [-2000,1999]" (one bad text failing its batch-mates), or, with a
smaller vocabulary, answered 200 with nonsense. Here such a model is refused at load, naming
the file, as a graph whose inputs do not match its card is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from service.model_card import TokenizerSpec
from service.onnx_session import ModelLoadError, sha256_of
from service.tokenization import SubwordTokenizer

log = logging.getLogger("seqserve.registry")


def checked_tokenizer(model_dir: Path, key: str, spec: TokenizerSpec) -> SubwordTokenizer:
    """The card's tokenizer ``key``, refused unless it is the file the card names (its sha256, where
    the card has one) and holds the card's ``vocab_size`` subwords."""
    path = model_dir / spec.file
    if spec.sha256 is None:
        log.warning("%s: tokenizers.%s has no sha256 (a card exported before it): a tokenizer of another model with "
                    "as many subwords would not be noticed; export the model again, or add the file's sha256",
                    model_dir / "model.json", key)
    elif path.is_file() and sha256_of(path) != spec.sha256:
        raise ModelLoadError(f"{path}: sha256 differs from model.json tokenizers.{key} (a tokenizer of another "
                             "model, or the file replaced)")
    tokenizer = SubwordTokenizer.from_spec(model_dir, spec)
    if tokenizer.vocab_size != spec.vocab_size:
        raise ModelLoadError(f"{model_dir / spec.file}: holds {tokenizer.vocab_size} subwords, but model.json says "
                             f"tokenizers.{key}.vocab_size {spec.vocab_size} (a tokenizer of another model?)")
    return tokenizer


def check_embedding(graph: Path, tokenizer: SubwordTokenizer, run: Callable[[int], object]) -> None:
    """Run ``graph`` (through ``run``) on the tokenizer's highest subword id: a graph whose
    embedding holds fewer rows than the tokenizer has subwords fails here, not on a request. On
    the CPU provider: CUDA's Gather does not check its indices (it reads zeros), so there only the
    card's sha256 and vocabulary size stand guard."""
    last = tokenizer.vocab_size - 1
    try:
        run(last)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"{graph}: fails on subword id {last}, the last of {tokenizer.model_file.name}'s "
                             f"{tokenizer.vocab_size} (a tokenizer of another model, or a graph trained with a "
                             f"smaller vocabulary?): {exc}") from exc


def check_output_vocabulary(graph: Path, size: int | str | None, tokenizer: SubwordTokenizer) -> None:
    """A decoder's log-probabilities cover exactly the target tokenizer's subwords."""
    if isinstance(size, int) and size != tokenizer.vocab_size:
        raise ModelLoadError(f"{graph}: scores {size} target subwords, but {tokenizer.model_file.name} holds "
                             f"{tokenizer.vocab_size} (a tokenizer of another model?)")
