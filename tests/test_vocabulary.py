"""A model's tokenizers checked against its card and graphs at load (service/runners/vocabulary.py):
each case loaded before and then failed whole batches or answered nonsense."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from service.onnx_session import ModelLoadError
from service.runners import load_runner
from tests.conftest import COMMITTED_MODELS

CPU = ["CPUExecutionProvider"]


def _copy(tiny_repo: Path, model: str, dest: Path) -> Path:
    folder = dest / model / "1"
    shutil.copytree(tiny_repo / model / "1", folder)
    return folder


def _edit_card(folder: Path, key: str, **changes: object) -> None:
    card = json.loads((folder / "model.json").read_text())
    card["tokenizers"][key].update(changes)
    for name, value in changes.items():
        if value is None:
            del card["tokenizers"][key][name]
    (folder / "model.json").write_text(json.dumps(card))


def test_the_exported_and_committed_cards_name_their_tokenizers_by_hash(tiny_repo: Path) -> None:
    for card in [*tiny_repo.glob("*/*/model.json"), *COMMITTED_MODELS.glob("*/*/model.json")]:
        assert all(len(spec.get("sha256", "")) == 64 for spec in json.loads(card.read_text())["tokenizers"].values())


def test_a_tokenizer_file_other_than_the_one_the_card_hashes_is_refused(tiny_repo: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_repo, "translate-en-de", tmp_path)  # source and target swapped: the same sizes
    (folder / "source.spm.model").rename(folder / "swap")
    (folder / "target.spm.model").rename(folder / "source.spm.model")
    (folder / "swap").rename(folder / "target.spm.model")
    with pytest.raises(ModelLoadError, match=re.escape(f"{folder / 'source.spm.model'}: sha256 differs from "
                                                       "model.json tokenizers.source")):
        load_runner(folder, CPU)


def test_without_a_hash_a_tokenizer_of_another_size_is_refused(tiny_repo: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from service.runners.vocabulary import log

    monkeypatch.setattr(log, "disabled", False)  # an earlier test's logging configuration may have disabled it
    caplog.set_level(logging.WARNING, log.name)
    folder = _copy(tiny_repo, "sentiment", tmp_path)  # an older card: no sha256
    _edit_card(folder, "text", sha256=None)
    shutil.copy(COMMITTED_MODELS / "sentiment" / "1" / "sentiment.spm.model", folder / "sentiment.spm.model")
    with pytest.raises(ModelLoadError, match=re.escape(f"{folder / 'sentiment.spm.model'}: holds 8000 subwords, "
                                                       "but model.json says tokenizers.text.vocab_size 400")):
        load_runner(folder, CPU)
    # one of the same size would pass: said, with what to do
    assert "tokenizers.text has no sha256 (a card exported before it)" in caplog.text


def test_a_graph_whose_embedding_is_smaller_than_the_tokenizer_is_refused(tiny_repo: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_repo, "sentiment", tmp_path)  # the card agrees with the tokenizer, not with the graph
    _edit_card(folder, "text", sha256=None, vocab_size=8000)
    shutil.copy(COMMITTED_MODELS / "sentiment" / "1" / "sentiment.spm.model", folder / "sentiment.spm.model")
    with pytest.raises(ModelLoadError, match=re.escape(f"{folder / 'sentiment.onnx'}: fails on subword id 7999, "
                                                       "the last of sentiment.spm.model's 8000")):
        load_runner(folder, CPU)


def test_a_decoder_scoring_another_vocabulary_than_the_target_tokenizers_is_refused(tiny_repo: Path,
                                                                                    tmp_path: Path) -> None:
    folder = _copy(tiny_repo, "translate-en-de", tmp_path)
    _edit_card(folder, "target", sha256=None, vocab_size=6000)
    shutil.copy(COMMITTED_MODELS / "translate-en-de" / "1" / "target.spm.model", folder / "target.spm.model")
    with pytest.raises(ModelLoadError, match=re.escape(f"{folder / 'decoder_step.onnx'}: scores 400 target "
                                                       "subwords, but target.spm.model holds 6000")):
        load_runner(folder, CPU)
