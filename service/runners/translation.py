"""Many-to-many runner: an encoder graph and a one-step decoder graph, decoded in numpy.

``translate`` batches whole requests: it encodes them together and decodes them together, each
request keeping its own beam size and length limit (service/decoding.py). The iteration-level
scheduler reuses ``encode`` and ``step`` with its own driver loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.decoding import BeamSearch, Hypothesis
from service.model_card import ModelCard
from service.onnx_session import open_session
from service.runners.sentiment import pad_batch
from service.tokenization import SubwordTokenizer


@dataclass
class Encoded:
    states: np.ndarray  # [N, S, E] float32
    keys: np.ndarray  # [N, S, A] float32
    init_state: np.ndarray  # [N, layers, H] float32
    mask: np.ndarray  # [N, S] float32, 1 on real tokens
    lengths: np.ndarray  # [N] int64


@dataclass
class TranslationJob:
    src_ids: list[int]
    beam_size: int
    max_length: int
    keep_attention: bool = False


@dataclass
class TranslationOutput:
    tokens: list[int]
    score: float
    attention: np.ndarray | None  # [target tokens, source tokens without </s>]


class TranslationRunner:
    def __init__(self, model_dir: Path, card: ModelCard, providers: list[str], intra_op_threads: int = 0) -> None:
        if card.decoding is None or card.max_output_tokens is None:
            raise ValueError(f"{model_dir / 'model.json'}: a translation card needs decoding and max_output_tokens")
        self.card = card
        self.model_dir = model_dir
        self.decoding = card.decoding
        self.max_output_tokens = card.max_output_tokens
        self.encoder = open_session(model_dir, card.graphs["encoder"], providers, intra_op_threads)
        self.decoder = open_session(model_dir, card.graphs["decoder_step"], providers, intra_op_threads)
        self.providers = self.encoder.get_providers()
        self.source_tokenizer = SubwordTokenizer(model_dir / card.tokenizers["source"].file,
                                                 card.tokenizers["source"].normalizer)
        self.target_tokenizer = SubwordTokenizer(model_dir / card.tokenizers["target"].file,
                                                 card.tokenizers["target"].normalizer)
        self._enc_in = [t.name for t in card.graphs["encoder"].inputs]
        self._enc_out = [t.name for t in card.graphs["encoder"].outputs]
        self._dec_in = [t.name for t in card.graphs["decoder_step"].inputs]
        self._dec_out = [t.name for t in card.graphs["decoder_step"].outputs]

    # --- pre/post-processing ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Source subword ids, ending with </s>."""
        return self.source_tokenizer.encode(text, add_eos=True)

    def default_max_length(self, source_len: int) -> int:
        guess = int(self.decoding.max_length_ratio * source_len) + self.decoding.max_length_extra
        return min(guess, self.max_output_tokens)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.target_tokenizer.decode(ids)

    # --- graphs -----------------------------------------------------------------------------
    def encode(self, batch: Sequence[Sequence[int]]) -> Encoded:
        ids, lengths = pad_batch(batch)
        states, keys, init = self.encoder.run(self._enc_out, {self._enc_in[0]: ids, self._enc_in[1]: lengths})
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
        return Encoded(states, keys, init, mask, lengths)

    def step(self, prev: np.ndarray, state: np.ndarray, states: np.ndarray, keys: np.ndarray,
             mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder step for every row: log-probs [R,V], new state, attention [R,S]."""
        feeds = dict(zip(self._dec_in, (prev, state, states, keys, mask), strict=True))
        log_probs, new_state, attention = self.decoder.run(self._dec_out, feeds)
        return log_probs, new_state, attention

    # --- whole-request batched decoding -----------------------------------------------------
    def translate(self, jobs: Sequence[TranslationJob]) -> list[TranslationOutput]:
        enc = self.encode([j.src_ids for j in jobs])
        searches = [BeamSearch(j.beam_size, j.max_length, self.decoding.length_penalty, j.keep_attention)
                    for j in jobs]
        state = enc.init_state
        owners = np.arange(len(jobs))
        row_states, row_keys, row_mask = enc.states, enc.keys, enc.mask
        while True:
            prev = np.fromiter((t for j in owners_unique(owners) for t in searches[j].last_tokens()), dtype=np.int64)
            log_probs, new_state, attention = self.step(prev, state, row_states, row_keys, row_mask)
            reorder: list[np.ndarray] = []
            offset = 0
            for j in owners_unique(owners):
                live = searches[j].live
                parents = searches[j].advance(log_probs[offset : offset + live], attention[offset : offset + live])
                reorder.append(offset + parents)
                offset += live
            index = np.concatenate(reorder)
            if index.size == 0:
                break
            new_owners = owners[index]
            state = new_state[index]
            if not np.array_equal(new_owners, owners):
                # membership changed: gather the encoder rows once, not on every step
                row_states, row_keys, row_mask = enc.states[new_owners], enc.keys[new_owners], enc.mask[new_owners]
                owners = new_owners
        return [self._output(s.best(), int(enc.lengths[j])) for j, s in enumerate(searches)]

    @staticmethod
    def _output(hyp: Hypothesis, source_len: int) -> TranslationOutput:
        attention = None
        if hyp.attention:
            attention = np.stack(hyp.attention[: len(hyp.tokens)])[:, : source_len - 1] if hyp.tokens else \
                np.zeros((0, source_len - 1), dtype=np.float32)
        return TranslationOutput(tokens=hyp.tokens, score=hyp.score, attention=attention)

    def warmup(self, batch_sizes: Sequence[int] = (1, 8), length: int = 16) -> None:
        for size in batch_sizes:
            self.translate([TranslationJob([5] * length, beam_size=2, max_length=4)] * size)


def owners_unique(owners: np.ndarray) -> list[int]:
    """Request indices in row order, each once (rows of one request are contiguous)."""
    if owners.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    return [int(owners[s]) for s in starts]
