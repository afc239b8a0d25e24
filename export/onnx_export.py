"""Export trained checkpoints to ONNX, check parity with PyTorch, and write model.json.

    python -m export.onnx_export sentiment --run-dir runs/sentiment --out-dir models/sentiment/1
    python -m export.onnx_export translation --run-dir runs/translate-en-de --out-dir models/translate-en-de/1 \
        [--average N]   # the mean of the last N kept epochs' weights instead of best.pt

Parity is measured on real dev/val batches of mixed lengths through ONNX Runtime; the export
fails if it exceeds the tolerance. Metrics are filled in afterwards by export/evaluate.py.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.cli import run
from export.data import DEFAULT_DATA_DIR, read_multi30k, read_multi30k_pairs, read_sst2
from export.sentiment_model import SentimentConfig, SentimentLSTM
from export.tied_weights import share_transposed_copies
from export.tokenizers import TRUECASER_FILE, write_truecaser
from export.training import EpochLog
from export.translation_model import (
    AttentionTranslator,
    TranslationConfig,
    TranslationDecoderStepGraph,
    TranslationEncoderGraph,
)
from service.model_card import (
    NAME_PATTERN,
    DecodingSpec,
    GraphSpec,
    ModelCard,
    ParitySpec,
    TensorSpec,
    TokenizerSpec,
    write_model_card,
)
from service.onnx_session import sha256_of
from service.runners.sentiment import pad_batch
from service.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SubwordTokenizer
from service.version_policy import is_version

OPSET = 17
PARITY_TOLERANCE = 1e-4
MAX_BEAM_SIZE = 10
TOP_K = 2 * MAX_BEAM_SIZE  # candidates per row the decoder step returns: enough for any allowed beam
SPECIAL_TOKENS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
_DTYPES: dict[int, str] = {
    onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.BOOL: "bool",
}


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
            outputs: list[str], dynamic_axes: dict[str, dict[int, str]]) -> GraphSpec:
    module.eval()
    # The TorchScript exporter maps nn.LSTM/nn.GRU onto ONNX's LSTM/GRU operators.
    torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                      dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    graph = onnx.load(str(path))
    if share_transposed_copies(graph):  # the translator's tied output layer (export/tied_weights.py)
        onnx.save(graph, str(path))
    onnx.checker.check_model(graph)

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        dims = value.type.tensor_type.shape.dim
        return TensorSpec(name=value.name, dtype=_DTYPES[value.type.tensor_type.elem_type],
                          shape=[d.dim_param if d.dim_param else d.dim_value for d in dims])

    return GraphSpec(file=path.name, sha256=sha256_of(path), inputs=[spec(v) for v in graph.graph.input],
                     outputs=[spec(v) for v in graph.graph.output])


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
def export_sentiment_graph(model: SentimentLSTM, out_dir: Path) -> GraphSpec:
    ids = torch.randint(4, model.config.vocab, (3, 7))
    lengths = torch.tensor([7, 4, 1])
    return _export(model, (ids, lengths), out_dir / "sentiment.onnx", ["token_ids", "lengths"],
                   ["probabilities"], {"token_ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                       "probabilities": {0: "batch"}})


def sentiment_parity(model: SentimentLSTM, onnx_file: Path, batches: list[list[list[int]]]) -> float:
    """Max |ORT - torch| over the probabilities of the given mixed-length batches."""
    session, worst = _session(onnx_file), 0.0
    model.eval()
    for batch in batches:
        ids, lengths = pad_batch(batch)
        with torch.no_grad():
            expected = model(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
        (got,) = session.run(None, {"token_ids": ids, "lengths": lengths})
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_translation_graphs(model: AttentionTranslator, out_dir: Path) -> tuple[GraphSpec, GraphSpec]:
    c = model.config
    ids = torch.randint(4, c.src_vocab, (3, 7))
    lengths = torch.tensor([7, 4, 1])
    encoder = _export(TranslationEncoderGraph(model), (ids, lengths), out_dir / "encoder.onnx",
                      ["src_ids", "src_lengths"], ["encoder_states", "encoder_keys", "decoder_state"],
                      {"src_ids": {0: "batch", 1: "src_time"}, "src_lengths": {0: "batch"},
                       "encoder_states": {0: "batch", 1: "src_time"}, "encoder_keys": {0: "batch", 1: "src_time"},
                       "decoder_state": {0: "batch"}})
    with torch.no_grad():
        states, keys, state = model.encode(ids, lengths)
    mask = (torch.arange(7)[None] < lengths[:, None]).float()
    prev = torch.tensor([BOS_ID, 5, 6])
    parents = torch.tensor([0, 1, 2])
    decoder = _export(TranslationDecoderStepGraph(model, TOP_K), (prev, state, parents, states, keys, mask),
                      out_dir / "decoder_step.onnx",
                      ["prev_tokens", "decoder_state", "parent_rows", "encoder_states", "encoder_keys", "src_mask"],
                      ["log_probs", "top_log_probs", "top_ids", "new_decoder_state", "attention"],
                      {"prev_tokens": {0: "rows"}, "decoder_state": {0: "state_rows"}, "parent_rows": {0: "rows"},
                       "encoder_states": {0: "rows", 1: "src_time"}, "encoder_keys": {0: "rows", 1: "src_time"},
                       "src_mask": {0: "rows", 1: "src_time"}, "log_probs": {0: "rows"},
                       "top_log_probs": {0: "rows"}, "top_ids": {0: "rows"},
                       "new_decoder_state": {0: "rows"}, "attention": {0: "rows", 1: "src_time"}})
    return encoder, decoder


def translation_parity(model: AttentionTranslator, out_dir: Path,
                       pairs: list[tuple[list[int], list[int]]], batch_size: int = 16) -> float:
    """Max |ORT - torch| over decoder log-probs, teacher-forced along real target prefixes."""
    enc, dec = _session(out_dir / "encoder.onnx"), _session(out_dir / "decoder_step.onnx")
    model.eval()
    worst = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        src, src_len = pad_batch([s for s, _ in chunk])
        tgt, _ = pad_batch([[BOS_ID, *t] for _, t in chunk])
        o_states, o_keys, o_state = enc.run(None, {"src_ids": src, "src_lengths": src_len})
        mask = (np.arange(src.shape[1])[None] < src_len[:, None]).astype(np.float32)
        with torch.no_grad():
            t_states, _, _ = model.encode(torch.from_numpy(src), torch.from_numpy(src_len))
            full = torch.log_softmax(model(torch.from_numpy(src), torch.from_numpy(src_len),
                                           torch.from_numpy(tgt)), -1).numpy()
        worst = max(worst, float(np.abs(o_states - t_states.numpy()).max()))
        for t in range(tgt.shape[1]):
            log_probs, _, _, o_state, _ = dec.run(None, {
                "prev_tokens": tgt[:, t], "decoder_state": o_state, "parent_rows": np.arange(len(chunk)),
                "encoder_states": o_states, "encoder_keys": o_keys, "src_mask": mask})
            real = tgt[:, t] != PAD_ID
            worst = max(worst, float(np.abs(log_probs[real] - full[real, t]).max()))
    return worst


# ---------------------------------------------------------------------------------------------
def _load(run_dir: Path) -> dict[str, Any]:
    ckpt: dict[str, Any] = torch.load(run_dir / "best.pt", weights_only=False)
    return ckpt


def average_checkpoints(run_dir: Path, count: int) -> dict[str, Any]:
    """The element-wise mean of the weights of the last ``count`` kept epochs (epoch-N.pt, written
    by --keep-epochs), as one checkpoint: averaging the end of a run smooths the optimiser's
    last steps and usually gains a little BLEU at no serving cost."""
    kept = sorted(run_dir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))[-count:]
    if len(kept) < count:
        raise SystemExit(f"--average {count}: only {len(kept)} epoch checkpoints in {run_dir} (train with "
                         f"--keep-epochs {count})")
    ckpts = [torch.load(p, weights_only=False) for p in kept]
    weights = {name: torch.stack([c["model"][name].float() for c in ckpts]).mean(0).to(tensor.dtype)
               for name, tensor in ckpts[-1]["model"].items()}
    epochs = [int(c["epoch"]) for c in ckpts]
    print(f"averaging the weights of epochs {epochs}")
    return {"config": ckpts[-1]["config"], "model": weights, "epoch": epochs[-1], "averaged_epochs": epochs}


def _training_summary(rows: list[dict[str, Any]], metric: str) -> dict[str, int | float | str]:
    """The card's ``training`` from the run's epoch log (``EpochLog.rows``)."""
    best = max(rows, key=lambda r: r[metric])
    # a log written before runs recorded their facts: the committed models' (2 cores, seed 13)
    last = {"hardware": "2-core CPU", "seed": 13, **rows[-1]}
    return {"epochs_run": len(rows), "best_epoch": int(best["epoch"]), f"best_{metric}": float(best[metric]),
            "minutes": round(float(last["minutes"]), 1), "hardware": str(last["hardware"]), "seed": int(last["seed"])}


def _trained_on(rows: list[dict[str, Any]], what: str) -> str:
    """``what`` with the count of examples the run used, where its log says (after --limit and
    the length filter)."""
    examples = rows[-1].get("train_examples") if rows else None
    return what if examples is None else f"{what}; {examples:,} used in training"


def _tokenizer_spec(tok: SubwordTokenizer, normalizer: Literal["sentiment", "translation"],
                    truecaser: str | None = None) -> TokenizerSpec:
    return TokenizerSpec(file=tok.model_file.name, normalizer=normalizer,
                         vocab_size=tok.vocab_size, sha256=sha256_of(tok.model_file), truecaser=truecaser)


def _copy_extras(run_dir: Path, out_dir: Path, files: list[str]) -> None:
    for name in files:
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out_dir / name)


def _previous_metrics(out_dir: Path) -> dict[str, float]:
    path = out_dir / "model.json"
    return json.loads(path.read_text()).get("metrics", {}) if path.exists() else {}


def _require_parity(worst: float, what: str) -> None:
    print(f"parity: max |ORT - torch| on {what} = {worst:.2e}")
    if worst > PARITY_TOLERANCE:
        raise SystemExit(f"parity {worst:.2e} exceeds the tolerance {PARITY_TOLERANCE:.0e}")


def export_sentiment(run_dir: Path, out_dir: Path, data_dir: Path) -> ModelCard:
    ckpt = _load(run_dir)
    model = SentimentLSTM(SentimentConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_extras(run_dir, out_dir, ["sentiment.spm.model", "training_curves.png", "log.jsonl"])
    epochs = EpochLog(run_dir / "log.jsonl").rows
    tok = SubwordTokenizer(out_dir / "sentiment.spm.model", "sentiment")
    graph = export_sentiment_graph(model, out_dir)
    dev = [tok.encode(r.text) for r in read_sst2(data_dir, "dev")]
    worst = sentiment_parity(model, out_dir / "sentiment.onnx", [dev[i : i + 32] for i in range(0, len(dev), 32)])
    _require_parity(worst, "SST-2 dev probabilities")
    card = ModelCard(
        name=out_dir.parent.name, version=out_dir.name, task="text-classification",
        description="Binary sentiment of English text, trained on movie-review sentences (SST-2): stacked "
                    "bidirectional LSTM over subwords.",
        architecture={"type": "bilstm-classifier", **ckpt["config"]},
        graphs={"model": graph},
        tokenizers={"text": _tokenizer_spec(tok, "sentiment")},
        special_tokens=SPECIAL_TOKENS, max_input_tokens=256, labels=["negative", "positive"],
        training_data={"name": "SST-2 (Stanford Sentiment Treebank, binary)",
                       "train": _trained_on(epochs, "GLUE SST-2 phrase-level train + stsa.binary.train sentences"),
                       "early_stopping": "stsa.binary.dev accuracy", "test": "stsa.binary.test"},
        training=_training_summary(epochs, "dev_acc"), metrics=_previous_metrics(out_dir), opset=OPSET,
        parity=ParitySpec(tolerance=PARITY_TOLERANCE, max_abs_diff=worst,
                          checked_on="SST-2 dev, batches of 32 mixed lengths, probabilities"),
    )
    write_model_card(card, out_dir / "model.json")
    return card


def export_translation(run_dir: Path, out_dir: Path, data_dir: Path, average: int = 0) -> ModelCard:
    ckpt = average_checkpoints(run_dir, average) if average else _load(run_dir)
    model = AttentionTranslator(TranslationConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_extras(run_dir, out_dir, ["source.spm.model", "target.spm.model", "training_curves.png", "log.jsonl"])
    epochs = EpochLog(run_dir / "log.jsonl").rows
    src_tok = SubwordTokenizer(out_dir / "source.spm.model", "translation")
    tgt_tok = SubwordTokenizer(out_dir / "target.spm.model", "translation")
    write_truecaser(read_multi30k(data_dir, "train", "en"), out_dir)  # names itself in an existing card
    encoder, decoder = export_translation_graphs(model, out_dir)
    val = read_multi30k_pairs(data_dir, "val")[:256]
    pairs = [(src_tok.encode(s, add_eos=True), tgt_tok.encode(t)) for s, t in val]
    worst = translation_parity(model, out_dir, pairs)
    _require_parity(worst, "Multi30k val log-probs")
    card = ModelCard(
        name=out_dir.parent.name, version=out_dir.name, task="translation",
        description="English→German translation of image captions (Multi30k: people, animals, scenes; other "
                    "text, such as names, numbers or conversation, translates poorly): bidirectional GRU "
                    "encoder, GRU decoder with additive (Bahdanau) attention over subwords.",
        architecture={"type": "gru-attention-seq2seq", **ckpt["config"]},
        graphs={"encoder": encoder, "decoder_step": decoder},
        tokenizers={"source": _tokenizer_spec(src_tok, "translation", TRUECASER_FILE),
                    "target": _tokenizer_spec(tgt_tok, "translation")},
        special_tokens=SPECIAL_TOKENS, max_input_tokens=128, max_output_tokens=200,
        languages={"source": "en", "target": "de"},
        decoding=DecodingSpec(default_beam_size=5, max_beam_size=MAX_BEAM_SIZE, length_penalty=1.0,
                              max_length_ratio=2.0, max_length_extra=10, top_k=TOP_K),
        training_data={"name": "Multi30k task 1 (en-de)", "train": _trained_on(epochs, "train (29,000 pairs)"),
                       "early_stopping": "val greedy BLEU", "test": "test_2016_flickr"},
        training={**_training_summary(epochs, "val_bleu_lc"),
                  "weights": (f"mean of epochs {ckpt['averaged_epochs'][0]}-{ckpt['averaged_epochs'][-1]}"
                              if average else f"best epoch ({ckpt['epoch']})")},
        metrics=_previous_metrics(out_dir), opset=OPSET,
        parity=ParitySpec(tolerance=PARITY_TOLERANCE, max_abs_diff=worst,
                          checked_on="Multi30k val, 256 pairs in batches of 16, decoder log-probs, teacher-forced"),
    )
    write_model_card(card, out_dir / "model.json")
    return card


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["sentiment", "translation"])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True,
                   help="the model repository's <name>/<version> folder to write (e.g. models/my-sentiment/1): "
                        "the card's name and version")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--average", type=int, default=0,
                   help="translation: export the mean weights of the last N kept epochs (epoch-N.pt) instead of "
                        "best.pt")
    args = p.parse_args(argv)
    # the card's name and version are its folders' (the server refuses a card that differs from them)
    if not (re.fullmatch(NAME_PATTERN, args.out_dir.parent.name)
            and is_version(args.out_dir.name)):
        p.error(f"--out-dir {args.out_dir}: a model repository's <name>/<version> folder, e.g. models/my-sentiment/1 "
                "(the name in lower case letters, digits and '-'; the version a number without leading zeros): the "
                "card takes both from it")
    if args.model == "sentiment":
        if args.average:
            p.error("--average is for the translator")
        card = export_sentiment(args.run_dir, args.out_dir, args.data_dir)
    else:
        card = export_translation(args.run_dir, args.out_dir, args.data_dir, args.average)
    sizes = {g.file: (args.out_dir / g.file).stat().st_size / 1e6 for g in card.graphs.values()}
    print(f"wrote {args.out_dir}/model.json; graphs: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()))


if __name__ == "__main__":
    run(main)
