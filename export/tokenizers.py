"""Train sentencepiece subword models on a training split only."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from service.tokenization import BOS_ID, EOS_ID, NORMALIZERS, PAD_ID, UNK_ID


def train_subword_model(
    texts: Iterable[str], out_file: Path, vocab_size: int, normalizer: str, model_type: str = "unigram"
) -> Path:
    """Train a sentencepiece model on normalised ``texts`` and write it to ``out_file``.

    byte_fallback keeps unseen characters (emoji, other scripts) as UTF-8 byte pieces instead
    of <unk>; the special ids are fixed so the graphs and the service agree on them.
    """
    normalize = NORMALIZERS[normalizer]
    sentences = [normalize(t) for t in texts]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=0.9999,
        byte_fallback=True,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=False,
        num_threads=2,
        minloglevel=2,
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(model.getvalue())
    return out_file
