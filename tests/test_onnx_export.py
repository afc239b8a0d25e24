"""Export parity on small randomly initialised models (fast, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx_export import (
    PARITY_TOLERANCE,
    export_sentiment_graph,
    export_translation_graphs,
    sentiment_parity,
    translation_parity,
)
from export.sentiment_model import SentimentConfig, SentimentLSTM
from export.tied_weights import matrices
from export.translation_model import AttentionTranslator, TranslationConfig
from service.runners.sentiment import pad_batch


def _random_sequences(rng: np.random.Generator, count: int, vocab: int, max_len: int) -> list[list[int]]:
    return [list(rng.integers(4, vocab, size=int(rng.integers(1, max_len + 1)))) for _ in range(count)]


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[SentimentLSTM, Path]:
    torch.manual_seed(0)
    model = SentimentLSTM(SentimentConfig(vocab=300, embed_dim=24, hidden=16, layers=2)).eval()
    out = tmp_path_factory.mktemp("sentiment")
    export_sentiment_graph(model, out)
    return model, out / "sentiment.onnx"


@pytest.fixture(scope="module")
def translator(tmp_path_factory: pytest.TempPathFactory) -> tuple[AttentionTranslator, Path]:
    torch.manual_seed(0)
    model = AttentionTranslator(TranslationConfig(src_vocab=300, tgt_vocab=280, embed_dim=24, encoder_hidden=16,
                                                  decoder_hidden=32, attention_dim=16)).eval()
    out = tmp_path_factory.mktemp("translation")
    export_translation_graphs(model, out)
    return model, out


def test_sentiment_parity_on_mixed_lengths(sentiment: tuple[SentimentLSTM, Path]) -> None:
    model, path = sentiment
    rng = np.random.default_rng(1)
    batches = [_random_sequences(rng, size, 300, 40) for size in (1, 5, 17, 32)]
    assert sentiment_parity(model, path, batches) <= PARITY_TOLERANCE


def test_sentiment_result_does_not_depend_on_batch_mates(sentiment: tuple[SentimentLSTM, Path]) -> None:
    _, path = sentiment
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    target = [7, 8, 9, 10, 11]
    ids, lengths = pad_batch([target])
    (alone,) = session.run(None, {"token_ids": ids, "lengths": lengths})
    batch = [*_random_sequences(rng, 6, 300, 50), target, *_random_sequences(rng, 3, 300, 9)]
    ids, lengths = pad_batch(batch)
    (together,) = session.run(None, {"token_ids": ids, "lengths": lengths})
    np.testing.assert_allclose(together[6], alone[0], atol=1e-6)


def test_translation_parity_on_mixed_lengths(translator: tuple[AttentionTranslator, Path]) -> None:
    model, out = translator
    rng = np.random.default_rng(3)
    pairs = list(zip(_random_sequences(rng, 24, 300, 30), _random_sequences(rng, 24, 280, 30), strict=True))
    assert translation_parity(model, out, pairs, batch_size=8) <= PARITY_TOLERANCE


def test_the_tied_output_layer_is_stored_once(translator: tuple[AttentionTranslator, Path]) -> None:
    model, out = translator
    graph = onnx.load(str(out / "decoder_step.onnx")).graph
    tied = [node for node in graph.node if node.op_type == "Transpose" and node.name.startswith("tied/")]
    assert len(tied) == 1
    stored = matrices(graph)
    assert np.array_equal(stored[tied[0].input[0]], model.tgt_embed.weight.detach().numpy())
    assert tied[0].output[0] not in stored


def test_translation_step_does_not_depend_on_padding(translator: tuple[AttentionTranslator, Path]) -> None:
    _, out = translator
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / "decoder_step.onnx"), providers=["CPUExecutionProvider"])

    def first_step(batch: list[list[int]], row: int) -> tuple[np.ndarray, np.ndarray]:
        ids, lengths = pad_batch(batch)
        states, keys, state = enc.run(None, {"src_ids": ids, "src_lengths": lengths})
        mask = (np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.float32)
        log_probs, _, _, _, attention = dec.run(None, {
            "prev_tokens": np.full(len(batch), 2, dtype=np.int64), "decoder_state": state,
            "parent_rows": np.arange(len(batch)), "encoder_states": states, "encoder_keys": keys, "src_mask": mask})
        return log_probs[row], attention[row, : lengths[row]]

    target = [20, 21, 22, 3]
    alone = first_step([target], 0)
    together = first_step([[5] * 25, target, [6, 7, 3]], 1)
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(together[1], alone[1], atol=1e-6)


def test_decoder_step_reorders_state_rows_and_returns_top_k(translator: tuple[AttentionTranslator, Path]) -> None:
    _, out = translator
    dec = ort.InferenceSession(str(out / "decoder_step.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    rows, src = 3, 6
    feeds = {"prev_tokens": np.array([2, 5, 9]), "decoder_state": rng.normal(size=(4, 2, 32)).astype(np.float32),
             "encoder_states": rng.normal(size=(rows, src, 32)).astype(np.float32),
             "encoder_keys": rng.normal(size=(rows, src, 16)).astype(np.float32),
             "src_mask": np.ones((rows, src), dtype=np.float32)}
    picked = dec.run(None, {**feeds, "parent_rows": np.array([3, 0, 0])})
    direct = dec.run(None, {**feeds, "decoder_state": feeds["decoder_state"][[3, 0, 0]], "parent_rows": np.arange(3)})
    for a, b in zip(picked, direct, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    log_probs, top_lp, top_ids = picked[:3]
    assert top_ids.shape == (rows, 20)
    np.testing.assert_allclose(np.take_along_axis(log_probs, top_ids, axis=1), top_lp, atol=1e-6)
    assert (np.sort(log_probs, axis=1)[:, ::-1][:, :20] == top_lp).all()


def test_average_checkpoints_is_the_mean_of_the_last_kept_epochs(tmp_path: Path) -> None:
    from export.onnx_export import average_checkpoints

    for epoch in range(1, 5):  # epochs 1..4 kept; the last 3 are averaged
        torch.save({"config": {"size": 2}, "epoch": epoch,
                    "model": {"w": torch.full((2, 2), float(epoch)), "steps": torch.tensor(epoch)}},
                   tmp_path / f"epoch-{epoch}.pt")
    averaged = average_checkpoints(tmp_path, 3)
    assert averaged["averaged_epochs"] == [2, 3, 4] and averaged["config"] == {"size": 2}
    assert torch.equal(averaged["model"]["w"], torch.full((2, 2), 3.0))
    assert averaged["model"]["steps"].dtype == torch.int64
    with pytest.raises(SystemExit, match="only 4 epoch checkpoints"):
        average_checkpoints(tmp_path, 5)


def test_the_card_takes_its_name_and_version_from_the_out_dir(tmp_path: Path, tiny_repo: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The exporter wrote "sentiment" whatever the folder, and the server refused the card of
    models/my-sentiment/1 (its name differs from its folder's)."""
    from export.onnx_export import export_sentiment, main
    from service.model_card import load_model_card
    from tests.conftest import DATA_DIR

    card = export_sentiment(tiny_repo.parent / "run-s", tmp_path / "my-sentiment" / "3", DATA_DIR)
    assert (card.name, card.version) == ("my-sentiment", "3")
    assert load_model_card(tmp_path / "my-sentiment" / "3" / "model.json").name == "my-sentiment"
    assert card.training_data["train"].endswith("; 400 used in training")  # TINY_SENTIMENT's --limit

    for bad in ("My_Model/1", "my-model/latest", "my-model/01"):
        with pytest.raises(SystemExit) as exit_:
            main(["sentiment", "--run-dir", str(tmp_path / "no-run"), "--out-dir", str(tmp_path / bad)])
        assert exit_.value.code == 2
        assert "a model repository's <name>/<version> folder" in capsys.readouterr().err
