"""Train sentencepiece subword models, and the translator's source truecaser, on a training split only."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from export.cli import run
from export.data import DEFAULT_DATA_DIR, read_multi30k
from service.model_card import load_model_card, write_model_card
from service.tokenization import BOS_ID, EOS_ID, NORMALIZERS, PAD_ID, UNK_ID, normalize_translation
from service.truecasing import Truecaser


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


TRUECASER_FILE = "source.truecase.txt"


def write_truecaser(sources: Iterable[str], model_dir: Path) -> Path:
    """Learn the source-side word-casing table (service/truecasing.py) from training sources only,
    write it beside the model and name it in the source tokenizer's entry of model.json."""
    out_file = model_dir / TRUECASER_FILE
    Truecaser.learn(normalize_translation(s) for s in sources).save(out_file)
    card_file = model_dir / "model.json"
    if card_file.exists():
        card = load_model_card(card_file)
        card.tokenizers["source"].truecaser = TRUECASER_FILE
        write_model_card(card, card_file)
    return out_file


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Add the truecaser (learned from Multi30k train.en) to a translator's "
                                            "model folder: python -m export.tokenizers --model-dir models/...")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = p.parse_args(argv)
    out = write_truecaser(read_multi30k(args.data_dir, "train", "en"), args.model_dir)
    print(f"wrote {out} ({len(Truecaser.load(out))} words)")


if __name__ == "__main__":
    run(main)
