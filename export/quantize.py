"""Derive a model version's INT8 graphs from its committed fp32 graphs, and check them by parity.

    python -m export.quantize --model-dir models/sentiment/1 [--data-dir ../shared/data | --builtin-probe]
                              [--write] [--force]

Every graph in model.json is quantized into ``<stem>.int8.onnx`` beside it (git-ignored), stamped
with the sha256 of the fp32 graph it came from, by the method of its model's task (METHODS):

- the classifier through ``onnxruntime.quantization.quantize_dynamic`` with QInt8 weights: its
  LSTMs become DynamicQuantizeLSTM, which is where its time goes; their activations are quantized
  with one scale per batch tensor, so a sentence's probabilities move slightly with its batch-mates;
- the translator "by rows" (export/row_int8.py): its large products (the decoder's GRUs, written
  out for their one time step, the readout, the vocabulary, the encoder's initial state) as u8 x s8
  integer products whose activations are quantized one row at a time, with a fixed scale where
  they lie in [-1, 1] (BOUNDED_INPUTS); the products of the target embedding as int8 tables made
  once; the encoder's mean over time as a running sum; its GRUs and the embeddings stay fp32.
  No scale is shared across rows, the integer sums are exact, and no kernel changes with the
  batch, so a sentence's translation does not move with its batch-mates (streamed equals
  non-streamed, bit for bit, on 1,000 of 1,000 val sentences), and SEQSERVE_PRECISION=auto serves
  it in INT8 on the CPU like the classifier (AUTO, in the card).

A version whose derived graphs already carry the current stamps is left alone (``--force`` derives
again).

Before the new graphs replace anything they are checked against fp32 on the same inputs: SST-2
dev sentences or the first 256 Multi30k val sources when the data is there, else a built-in probe
(an image build has no data): seeded random token sequences of mixed lengths for the classifier,
32 captions written for this check for the translator. The top class / next token must
agree on at least MIN_AGREEMENT of the rows, and the per-row largest probability difference must
average at most TOLERANCE (the translator teacher-forced along fp32's greedy path, both graphs
INT8). Otherwise the command exits 1 and writes nothing.

``--write`` also measures quality as export/evaluate does, through the service's runner in INT8
(SST-2 dev and test accuracy; BLEU greedy and beam 5 on Multi30k val and test_2016_flickr), and
records it with the parity in model.json under ``precisions.int8``. Needs onnx and onnxruntime,
no torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from export.bidirectional import fuse_bidirectional
from export.cli import run
from export.data import DEFAULT_DATA_DIR, read_multi30k_pairs, read_sst2
from export.row_int8 import quantize_rows
from export.tied_weights import materialise_transposes
from service.model_card import DerivedParity, ModelCard, PrecisionSpec, load_model_card, write_model_card
from service.onnx_session import SOURCE_SHA256_KEY, graph_path, sha256_of
from service.runners import SentimentRunner, TranslationRunner, load_runner
from service.runners.sentiment import pad_batch
from service.tokenization import SubwordTokenizer

MIN_AGREEMENT = 0.97
TOLERANCE = 0.02
PROBE_SENTENCES = 256  # translation: Multi30k val sources checked (teacher-forced, every step)
# the translator's graph inputs that lie in [-1, 1] by the model's construction: the decoder state
# (tanh of the encoder's summary, then GRU states) and the encoder's states (GRU outputs, zero on
# padding); INT8 by rows quantizes them, and what follows from them, with a fixed scale (row_int8.py)
BOUNDED_INPUTS = {"decoder_step": {"decoder_state", "encoder_states"}}
# whether SEQSERVE_PRECISION=auto serves the INT8 graphs on the CPU (recorded in the card, where a
# version can keep them opt-in)
AUTO = {"text-classification": True, "translation": True}
# what a derived graph's recipe is; a graph stamped with another (older) one is derived again by
# `make int8`, though the service still loads it: it was checked by parity when it was made
RECIPE_KEY = "seqserve.int8_recipe"
RECIPE = "2: bidirectional layers fused (export/bidirectional.py)"
METHODS = {
    "text-classification": "each bidirectional layer one ONNX LSTM (export/bidirectional.py), then "
                           "onnxruntime.quantization.quantize_dynamic, QInt8 weights, per-tensor, all supported "
                           "operators (activation scales per batch tensor)",
    "translation": "export/row_int8.py: GRU steps, readout, vocabulary and initial-state products as u8 x s8 "
                   "MatMulIntegerToFloat, weights per column, activations per row (a fixed 1/127 where they lie in "
                   "[-1, 1]), the embedding's products as int8 tables; the encoder's mean over time as a running "
                   "sum; encoder GRUs (each bidirectional layer one ONNX GRU, export/bidirectional.py) and "
                   "embeddings fp32",
}

log = logging.getLogger("seqserve.quantize")

# the translation probe where no data set is at hand (an image build): image captions in the
# style of Multi30k, written for this check
PROBE_CAPTIONS = [
    "A man in a red shirt is climbing a ladder.", "Two children are playing on the beach.",
    "A woman is reading a book in the park.", "A dog runs through the grass with a ball in its mouth.",
    "A group of people are sitting at a table in a restaurant.", "A young boy is riding his bike down the street.",
    "An old man sits on a bench and feeds the birds.", "Three women are walking along a busy sidewalk.",
    "A girl in a pink dress is jumping into a pool.", "A man is cooking food on a grill outside.",
    "Two men are working on the roof of a house.", "A black dog and a white dog are playing in the snow.",
    "A crowd watches a band perform on a stage.", "A woman with a hat is selling fruit at a market.",
    "A little girl is smiling at the camera.", "A man on a horse rides across a field.",
    "People are waiting for the train at the station.", "A boy kicks a soccer ball on a green field.",
    "A woman in a blue jacket walks her dog.", "Two girls are laughing while they eat ice cream.",
    "A man wearing glasses is playing the guitar.", "A child in a yellow shirt is climbing a tree.",
    "Several people are swimming in a lake.", "A construction worker is standing next to a truck.",
    "A baby is sleeping in a small bed.", "A man and a woman are dancing in the street.",
    "A cyclist rides up a steep hill.", "A woman is taking a picture of the mountains.",
    "Four young men are playing basketball.", "A cat is sitting on the window.",
    "A man in a suit is talking on his phone.", "Children are running in front of a school.",
]


class ParityError(RuntimeError):
    """Derived graphs that cannot be trusted (or a source graph that is not the committed one)."""


@dataclass
class Parity:
    agreement: float
    mean_abs_diff: float
    max_abs_diff: float
    rows: int
    checked_on: str

    def ok(self) -> bool:
        return self.agreement >= MIN_AGREEMENT and self.mean_abs_diff <= TOLERANCE

    def spec(self) -> DerivedParity:
        return DerivedParity(agreement=round(self.agreement, 5), min_agreement=MIN_AGREEMENT,
                             mean_abs_diff=round(self.mean_abs_diff, 6), tolerance=TOLERANCE,
                             max_abs_diff=round(self.max_abs_diff, 6), checked_on=self.checked_on)


def stamp(path: Path, key: str = SOURCE_SHA256_KEY) -> str | None:
    """A derived graph's stamp: by default the fp32 sha256 it was made from (None: no file or no stamp)."""
    if not path.is_file():
        return None
    props = onnx.load(str(path), load_external_data=False).metadata_props
    return next((p.value for p in props if p.key == key), None)


def up_to_date(model_dir: Path, card: ModelCard) -> bool:
    """Every derived graph made from the committed fp32 graph by the current recipe."""
    paths = {graph_path(model_dir, spec, "int8"): spec.sha256 for spec in card.graphs.values()}
    return all(stamp(path) == sha256 and stamp(path, RECIPE_KEY) == RECIPE for path, sha256 in paths.items())


def derive(source: Path, target: Path, source_sha256: str, task: str, graph: str) -> None:
    """Quantize one graph (``graph``: its key in model.json) into ``target`` by its task's method,
    stamped with its source's hash and the recipe. Both methods start from the graph with its
    bidirectional layers fused (about a quarter of the classifier's time went to the nodes around
    its separate directions); the arithmetic of each direction is the fp32 graph's. A weight the
    fp32 graph stores once for two uses (export/tied_weights.py) is materialised again first: both
    methods look for products by a constant initializer."""
    model = onnx.load(str(source))
    materialise_transposes(model)
    model, _ = fuse_bidirectional(model)
    if task == "translation":
        model, _ = quantize_rows(model, BOUNDED_INPUTS.get(graph, set()))
    else:
        quantize_dynamic(model, target, weight_type=QuantType.QInt8)
        model = onnx.load(str(target))
    for key, value in ((SOURCE_SHA256_KEY, source_sha256), (RECIPE_KEY, RECIPE)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(target))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _compare(p32: np.ndarray, p8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: does the argmax agree, and the largest probability difference."""
    return p32.argmax(-1) == p8.argmax(-1), np.abs(p32 - p8).max(-1)


def _summary(agree: list[np.ndarray], diffs: list[np.ndarray], checked_on: str) -> Parity:
    a, d = np.concatenate(agree), np.concatenate(diffs)
    return Parity(float(a.mean()), float(d.mean()), float(d.max()), int(d.size), checked_on)


def random_probe(vocab: int, count: int, max_len: int, seed: int = 0) -> list[list[int]]:
    """Token ids of mixed lengths (1..max_len) over the ordinary vocabulary (ids >= 4)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(4, vocab, size=int(n)).tolist() for n in rng.integers(1, max_len + 1, size=count)]


def sentiment_parity(card: ModelCard, fp32: Path, int8: Path, probe: list[list[int]], checked_on: str) -> Parity:
    """Both graphs on the same batches of 32 in the probe's order (mixed lengths, padded)."""
    s32, s8 = _session(fp32), _session(int8)
    names = [t.name for t in card.graphs["model"].inputs]
    agree, diffs = [], []
    for start in range(0, len(probe), 32):
        ids, lengths = pad_batch(probe[start : start + 32])
        feeds = {names[0]: ids, names[1]: lengths}
        a, d = _compare(s32.run(None, feeds)[0], s8.run(None, feeds)[0])
        agree.append(a)
        diffs.append(d)
    return _summary(agree, diffs, checked_on)


def translation_parity(card: ModelCard, graphs: dict[str, tuple[Path, Path]], probe: list[list[int]],
                       checked_on: str, max_steps: int = 60) -> Parity:
    """fp32 and INT8 (encoder and decoder) decode the same batches of 16, both fed fp32's greedy
    tokens; each step's next-token distributions are compared while fp32 has not ended the row."""
    (enc32, enc8), (dec32, dec8) = ((_session(a), _session(b)) for a, b in (graphs["encoder"], graphs["decoder_step"]))
    enc_in = [t.name for t in card.graphs["encoder"].inputs]
    dec_in = [t.name for t in card.graphs["decoder_step"].inputs]
    bos, eos = card.special_tokens["bos"], card.special_tokens["eos"]
    agree, diffs = [], []
    for start in range(0, len(probe), 16):
        ids, lengths = pad_batch(probe[start : start + 16])
        rows = len(lengths)
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
        parents = np.arange(rows, dtype=np.int64)
        prev = np.full(rows, bos, dtype=np.int64)
        alive = np.ones(rows, dtype=bool)
        sides = []
        for encoder in (enc32, enc8):
            states, keys, init = encoder.run(None, {enc_in[0]: ids, enc_in[1]: lengths})
            sides.append([states, keys, init])
        for _ in range(max_steps):
            outs = []
            for (states, keys, state), decoder in zip(sides, (dec32, dec8), strict=True):
                feeds = dict(zip(dec_in, (prev, state, parents, states, keys, mask), strict=True))
                log_probs, *_, new_state, _attention = decoder.run(None, feeds)
                outs.append((np.exp(log_probs), new_state))
            a, d = _compare(outs[0][0], outs[1][0])
            agree.append(a[alive])
            diffs.append(d[alive])
            for side, (_, new_state) in zip(sides, outs, strict=True):
                side[2] = new_state
            prev = outs[0][0].argmax(-1).astype(np.int64)
            alive &= prev != eos
            if not alive.any():
                break
    return _summary(agree, diffs, checked_on)


def probe_inputs(model_dir: Path, card: ModelCard, data_dir: Path | None) -> tuple[list[list[int]], str]:
    """Real dev/val sentences when the data is there, else the built-in probe: (ids, description)."""
    if card.task == "text-classification":
        tok = card.tokenizers["text"]
        if data_dir is not None and (data_dir / "sst2").is_dir():
            tokenizer = SubwordTokenizer.from_spec(model_dir, tok)
            rows = read_sst2(data_dir, "dev")
            return [tokenizer.encode(r.text) for r in rows], f"SST-2 dev ({len(rows)} sentences, batches of 32)"
        return random_probe(tok.vocab_size, 512, 64), "512 random token sequences (1-64), batches of 32"
    tok = card.tokenizers["source"]
    if data_dir is not None and (data_dir / "multi30k").is_dir():
        tokenizer = SubwordTokenizer.from_spec(model_dir, tok)
        pairs = read_multi30k_pairs(data_dir, "val")[:PROBE_SENTENCES]
        return ([tokenizer.encode(s, add_eos=True) for s, _ in pairs],
                f"Multi30k val, first {len(pairs)} sources, batches of 16, next-token probabilities at every "
                "step teacher-forced on fp32 greedy output")
    # random ids make flat next-token distributions whose argmax flips on any noise: use sentences
    tokenizer = SubwordTokenizer.from_spec(model_dir, tok)
    return ([tokenizer.encode(s, add_eos=True) for s in PROBE_CAPTIONS],
            f"{len(PROBE_CAPTIONS)} built-in English captions, batches of 16, next-token probabilities at every step "
            "teacher-forced on fp32 greedy output")


def check_parity(model_dir: Path, card: ModelCard, derived: dict[str, Path], data_dir: Path | None) -> Parity:
    probe, checked_on = probe_inputs(model_dir, card, data_dir)
    pairs = {key: (model_dir / spec.file, derived[key]) for key, spec in card.graphs.items()}
    if card.task == "text-classification":
        return sentiment_parity(card, *pairs["model"], probe, checked_on)
    return translation_parity(card, pairs, probe, checked_on)


def measure_quality(model_dir: Path, data_dir: Path) -> dict[str, float]:
    """The card's metrics, measured the same way on the INT8 graphs (export/evaluate.py)."""
    from export.evaluate import evaluate_sentiment, evaluate_translation

    runner = load_runner(model_dir, ["CPUExecutionProvider"], precision="int8")
    if isinstance(runner, SentimentRunner):
        return evaluate_sentiment(runner, data_dir)
    assert isinstance(runner, TranslationRunner)
    return evaluate_translation(runner, data_dir, [1, 5])


def quantize(model_dir: Path, data_dir: Path | None = DEFAULT_DATA_DIR, force: bool = False,
             say: Callable[[str], None] = print) -> Parity | None:
    """Derive and check (on the built-in probe when ``data_dir`` is None or absent); None when the
    derived graphs were already current. Raises ParityError, leaving the old files, when the new
    graphs do not pass."""
    card = load_model_card(model_dir / "model.json")
    if not force and up_to_date(model_dir, card):
        say(f"{model_dir}: INT8 graphs are current (stamped with the fp32 hashes in model.json and the current recipe)")
        return None
    started = time.monotonic()
    temporary = {key: model_dir / f".{graph_path(model_dir, spec, 'int8').name}.tmp"
                 for key, spec in card.graphs.items()}
    try:
        for key, spec in card.graphs.items():
            source = model_dir / spec.file
            if sha256_of(source) != spec.sha256:
                raise ParityError(f"{source}: sha256 differs from model.json; refusing to derive from it")
            derive(source, temporary[key], spec.sha256, card.task, key)
        parity = check_parity(model_dir, card, temporary, data_dir)
        say(f"{model_dir}: parity vs fp32 on {parity.checked_on}: agreement {parity.agreement:.4f} "
            f"(min {MIN_AGREEMENT}), mean |diff| {parity.mean_abs_diff:.5f} (tolerance {TOLERANCE}), "
            f"max |diff| {parity.max_abs_diff:.4f}, {parity.rows} rows")
        if not parity.ok():
            raise ParityError(f"{model_dir}: INT8 graphs fail the parity check; nothing written")
        for key, spec in card.graphs.items():
            target = graph_path(model_dir, spec, "int8")
            temporary[key].replace(target)
            fp32_mb = (model_dir / spec.file).stat().st_size / 1e6
            say(f"  {target} {target.stat().st_size / 1e6:.1f} MB (fp32 {fp32_mb:.1f} MB)")
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
    say(f"  derived and checked in {time.monotonic() - started:.1f} s")
    return parity


def write_card_entry(model_dir: Path, parity: Parity, metrics: dict[str, float]) -> None:
    card = load_model_card(model_dir / "model.json")
    card.precisions = {**(card.precisions or {}), "int8": PrecisionSpec(
        graphs={key: graph_path(model_dir, spec, "int8").name for key, spec in card.graphs.items()},
        method=f"{METHODS[card.task]}; derived with onnxruntime {ort.__version__}",
        command=f"python -m export.quantize --model-dir {model_dir} --write",
        parity=parity.spec(), metrics=metrics, auto=AUTO[card.task])}
    write_model_card(card, model_dir / "model.json")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, nargs="+", required=True, help="one or more model version folders")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--builtin-probe", action="store_true", help="check parity on the built-in probe, not the data")
    p.add_argument("--force", action="store_true", help="derive again even if the stamps are current")
    p.add_argument("--write", action="store_true",
                   help="measure INT8 quality on dev and test and record it with the parity in model.json")
    args = p.parse_args(argv)
    # the quantizer logs a suggestion to pre-process at WARNING for every graph; its result is checked here
    logging.getLogger().setLevel(logging.ERROR)
    if args.write and args.builtin_probe:
        p.error("--write records figures measured on the data sets")
    failed = []  # each model is derived on its own: one that fails parity does not stop the rest
    for model_dir in args.model_dir:
        try:
            parity = quantize(model_dir, None if args.builtin_probe else args.data_dir, force=args.force or args.write)
        except ParityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(str(model_dir))
            continue
        if args.write and parity is not None:
            write_card_entry(model_dir, parity, measure_quality(model_dir, args.data_dir))
            print(f"  precisions.int8 written to {model_dir / 'model.json'}")
    if failed:
        sys.exit(f"error: no INT8 graphs for {', '.join(failed)} (they serve fp32); the others are derived")


if __name__ == "__main__":
    run(main)
