"""The committed model cards follow the schema, and their files match what they say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from service.model_card import ModelCard, load_model_card
from service.onnx_session import sha256_of
from tests.conftest import COMMITTED_MODELS

CARDS = sorted(COMMITTED_MODELS.glob("*/*/model.json"))
SIZE_LIMIT_MB = {"sentiment": 20, "translate-en-de": 60}


def test_the_committed_repository_holds_both_models() -> None:
    assert {p.parent.parent.name for p in CARDS} == {"sentiment", "translate-en-de"}


@pytest.mark.parametrize("card_file", CARDS, ids=lambda p: p.parent.parent.name)
def test_card_validates_against_the_schema(card_file: Path) -> None:
    jsonschema.validate(json.loads(card_file.read_text()), ModelCard.model_json_schema())
    card = load_model_card(card_file)
    assert (card.name, card.version) == (card_file.parent.parent.name, card_file.parent.name)
    assert card.opset >= 17
    assert card.parity.max_abs_diff <= card.parity.tolerance <= 1e-4


@pytest.mark.parametrize("card_file", CARDS, ids=lambda p: p.parent.parent.name)
def test_card_files_exist_match_their_hashes_and_stay_small(card_file: Path) -> None:
    card = load_model_card(card_file)
    folder = card_file.parent
    total = 0
    for graph in card.graphs.values():
        assert sha256_of(folder / graph.file) == graph.sha256
        total += (folder / graph.file).stat().st_size
    for tok in card.tokenizers.values():
        for name in (tok.file, tok.truecaser):
            if name is not None:
                assert (folder / name).is_file()
                total += (folder / name).stat().st_size
    assert total / 1e6 <= SIZE_LIMIT_MB[card.name]
    assert (folder / "training_curves.png").is_file()


def test_cards_carry_measured_test_metrics() -> None:
    for card_file in CARDS:
        card = load_model_card(card_file)
        if card.task == "text-classification":
            assert card.metrics["sst2_test_accuracy"] >= 0.83
        else:
            assert card.metrics["test_2016_flickr_bleu_lc_beam5"] >= 35.0


def test_schema_refuses_a_card_with_missing_fields() -> None:
    card = json.loads(CARDS[0].read_text())
    del card["graphs"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(card, ModelCard.model_json_schema())


@pytest.mark.parametrize(("model", "remove", "named"), [
    ("translate-en-de", ("tokenizers", "target"), "tokenizers 'target'"),
    ("translate-en-de", ("graphs", "decoder_step"), "graphs 'decoder_step'"),
    ("translate-en-de", ("decoding",), "'decoding'"),
    ("sentiment", ("graphs", "model"), "graphs 'model'"),
    ("sentiment", ("tokenizers", "text"), "tokenizers 'text'"),
    ("sentiment", ("labels",), "'labels'"),
])
def test_a_card_missing_a_key_its_runner_reads_is_refused_naming_file_and_key(
        tmp_path: Path, model: str, remove: tuple[str, ...], named: str) -> None:
    from service.model_card import ModelCardError

    card = json.loads((COMMITTED_MODELS / model / "1" / "model.json").read_text())
    holder = card
    for key in remove[:-1]:
        holder = holder[key]
    del holder[remove[-1]]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(card))
    with pytest.raises(ModelCardError) as refused:
        load_model_card(path)
    assert str(path) in str(refused.value) and named in str(refused.value)


def test_a_misspelled_key_is_answered_with_the_nearest_one(tmp_path: Path) -> None:
    from service.model_card import ModelCardError

    card = json.loads((COMMITTED_MODELS / "sentiment" / "1" / "model.json").read_text())
    card["lables"] = card.pop("labels")
    card["tokenizers"]["text"]["vocabsize"] = card["tokenizers"]["text"].pop("vocab_size")
    card["sha256"] = "0" * 64  # a known key at the wrong level
    path = tmp_path / "model.json"
    path.write_text(json.dumps(card))
    with pytest.raises(ModelCardError) as refused:
        load_model_card(path)
    assert "lables: Extra inputs are not permitted (did you mean 'labels'?)" in str(refused.value)
    refusal = str(refused.value)
    assert "tokenizers.text.vocabsize: Extra inputs are not permitted (did you mean 'vocab_size'?)" in refusal
    assert refusal.endswith("sha256: Extra inputs are not permitted")  # not "did you mean 'sha256'?"


@pytest.mark.parametrize(("model", "change", "named"), [
    ("sentiment", {"labels": ["negative", "neutral", "positive"]}, "labels has 3 names for its graph's 2 classes"),
    ("translate-en-de", {"decoding": {"top_k": 12}}, "top_k 12 is under 2 x max_beam_size (20)"),
    ("translate-en-de", {"decoding": {"default_beam_size": 11}}, "default_beam_size 11 is over max_beam_size 10"),
    ("translate-en-de", {"decoding": {"top_k": 40, "max_beam_size": 20}}, "decoding.top_k is 40 but the decoder"),
    ("translate-en-de", {"languages": {"source": "en"}}, "languages needs 'target'"),
    ("translate-en-de", {"max_output_tokens": -1}, "max_output_tokens"),
])
def test_a_card_that_disagrees_with_its_graphs_or_itself_is_refused(
        tmp_path: Path, model: str, change: dict[str, object], named: str) -> None:
    """Each of these loaded before, then failed every request (a 500) or ran past its limits."""
    from service.model_card import ModelCardError

    card = json.loads((COMMITTED_MODELS / model / "1" / "model.json").read_text())
    for key, value in change.items():
        card[key] = {**card[key], **value} if isinstance(value, dict) and key == "decoding" else value
    path = tmp_path / "model.json"
    path.write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match=re.escape(named)):
        load_model_card(path)


def test_the_translator_card_carries_its_robustness_table() -> None:
    card = load_model_card(COMMITTED_MODELS / "translate-en-de" / "1" / "model.json")
    assert card.robustness is not None and card.robustness.truecaser and card.robustness.beam_size == 5
    for split in ("val", "test_2016_flickr"):
        scores = card.robustness.scores[split]
        assert set(scores) == {"given", "upper", "lower", "title", "no_final_punct"}
        assert scores["given"].bleu_lc == card.metrics[f"{split}_bleu_lc_beam5"]
        for variant in ("upper", "lower", "title"):  # the bar: each >= 0.9 x as given, none refused
            assert scores[variant].bleu_lc >= 0.9 * scores["given"].bleu_lc
        assert all(s.refused == 0 for s in scores.values())


def test_cards_written_before_int8_existed_still_load(tmp_path: Path) -> None:
    for card_file in CARDS:
        old = json.loads(card_file.read_text())
        old.pop("precisions", None)
        (tmp_path / "model.json").write_text(json.dumps(old))
        assert load_model_card(tmp_path / "model.json").precisions is None


@pytest.mark.parametrize("card_file", CARDS, ids=lambda p: p.parent.parent.name)
def test_cards_carry_the_measured_int8_parity_and_quality(card_file: Path) -> None:
    card = load_model_card(card_file)
    assert card.precisions and "int8" in card.precisions, (
        f"{card_file}: no INT8 entry; run python -m export.quantize --model-dir {card_file.parent} --write")
    entry = card.precisions["int8"]
    assert set(entry.graphs) == set(card.graphs)
    assert entry.parity.agreement >= entry.parity.min_agreement
    assert entry.parity.mean_abs_diff <= entry.parity.tolerance
    assert set(entry.metrics) == set(card.metrics)  # measured like fp32, on the same splits
    key = "sst2_test_accuracy" if card.task == "text-classification" else "test_2016_flickr_bleu_lc_beam5"
    allowed = 0.01 if card.task == "text-classification" else 1.0  # accuracy 1 point; BLEU 1 point
    assert abs(entry.metrics[key] - card.metrics[key]) <= allowed


def test_a_card_the_server_cannot_read_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model.json of another owner raised PermissionError's traceback (exit 1): now the refusal
    names the file and the server's uid, as for a missing card."""
    from service.model_card import ModelCardError

    card = tmp_path / "model.json"
    card.write_text("{}")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ModelCardError, match=r"model.json: cannot be read \(Permission denied; the server runs as uid"):
        load_model_card(card)
