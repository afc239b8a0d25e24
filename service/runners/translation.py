"""Many-to-many runner: an encoder graph and a one-step decoder graph, decoded in numpy.

``translate`` batches whole requests: it encodes them together and decodes them together, each
request keeping its own beam size and length limit (service/decoding.py). The iteration-level
scheduler reuses ``encode`` and ``step`` with its own driver loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.decoding import BeamSearch, Breaks, Hypothesis, Sampling, StepUpdate, laid_out
from service.metrics import MODEL_CPU
from service.model_card import ModelCard
from service.onnx_session import Precision, Provider, device_of, graph_path, open_session
from service.runners.row_ops import DecoderRows, DeviceRows, Encoded, RowGather, Tensor, gather_on_host, source_width
from service.runners.sentiment import pad_batch
from service.runners.vocabulary import check_embedding, check_output_vocabulary, checked_tokenizer


@dataclass
class TranslationJob:
    src_ids: list[int]
    beam_size: int
    max_length: int
    keep_attention: bool = False
    num_hypotheses: int = 0  # n-best list asked for: up to beam_size finished hypotheses (0 = no list)
    length_penalty: float | None = None  # the exponent; None = the model card's
    sampling: Sampling | None = None
    # streaming: called on the event loop after each decoder step that did not finish the search
    on_step: Callable[[StepUpdate], None] | None = None


@dataclass
class TranslationOutput:
    tokens: list[int]
    score: float
    attention: np.ndarray | None  # [target tokens, source tokens incl. </s>], rows sum to 1
    hypotheses: list[tuple[list[int], float]] | None = None  # n-best (tokens, score) when asked for
    breaks: Breaks = ()  # a text of several sentences: the line breaks between them (of ``tokens``)
    hypothesis_breaks: list[Breaks] | None = None  # and of each hypothesis's tokens
    # the best hypothesis (of a sentence of the text) reached max_length before its </s>: the
    # translation may end mid-sentence (a loop on text the model does not know, or a small max_length)
    cut: bool = False
    tail: str = ""  # what the text ended with that the model did not read (emoji, service/sentences.py)

    @property
    def finish_reason(self) -> str:
        """As LLM APIs say it: "length" when ``cut``, "stop" when the model ended the translation."""
        return "length" if self.cut else "stop"

    def text(self, decode: Callable[[Sequence[int]], str]) -> str:
        """The translation: ``tokens`` decoded, the source's line breaks between sentences kept."""
        return laid_out(decode, self.tokens, self.breaks) + self.tail

    def hypothesis_texts(self, decode: Callable[[Sequence[int]], str]) -> list[str]:
        """The n-best list's translations, best first, laid out as ``text``."""
        breaks = self.hypothesis_breaks or [()] * len(self.hypotheses or [])
        return [laid_out(decode, tokens, layout) + self.tail for (tokens, _), layout in
                zip(self.hypotheses or [], breaks, strict=True)]


class TranslationRunner:
    def __init__(self, model_dir: Path, card: ModelCard, providers: list[Provider], intra_op_threads: int = 0,
                 io_binding: bool | None = None, precision: Precision = "fp32", profile: bool | None = None) -> None:
        if card.decoding is None or card.max_output_tokens is None:
            raise ValueError(f"{model_dir / 'model.json'}: a translation card needs decoding and max_output_tokens")
        self.card = card
        self.model_dir = model_dir
        self.decoding = card.decoding
        self.max_output_tokens = card.max_output_tokens
        self.precision = precision
        self.encoder = open_session(model_dir, card.graphs["encoder"], providers, intra_op_threads, precision,
                                    profile)
        self.decoder = open_session(model_dir, card.graphs["decoder_step"], providers, intra_op_threads, precision,
                                    profile)
        self.providers = self.encoder.get_providers()
        self.device, self.device_id = device_of(self.decoder)
        # On a GPU, the encoder's outputs and the decoder state stay on the device (I/O binding), and
        # joins and leaves reorder them there (row_ops.DeviceRows). The CPU provider can run the same
        # binding code (tests do) but by default keeps its rows in numpy, which costs less there.
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        self.device_rows = (DeviceRows(providers, self.device, self.device_id, intra_op_threads,
                                       profile=self.device == "cuda" if profile is None else profile)
                            if self.io_binding else None)
        # the running set's rows after a join or leave (see RowGather)
        self.gather_rows: RowGather = self.device_rows or gather_on_host
        self.source_tokenizer = checked_tokenizer(model_dir, "source", card.tokenizers["source"])
        self.target_tokenizer = checked_tokenizer(model_dir, "target", card.tokenizers["target"])
        self.target_tokenizer.prepare_decoding()
        self._enc_in = [t.name for t in card.graphs["encoder"].inputs]
        self._enc_out = [t.name for t in card.graphs["encoder"].outputs]
        self._dec_in = [t.name for t in card.graphs["decoder_step"].inputs]
        self._dec_out = [t.name for t in card.graphs["decoder_step"].outputs]
        self._model_cpu = MODEL_CPU.labels(card.name, card.version)
        self._check_vocabularies()

    def _check_vocabularies(self) -> None:
        """Each tokenizer fits the graph that reads or scores its subwords (service/runners/vocabulary.py)."""
        encoder, decoder = (graph_path(self.model_dir, self.card.graphs[key], self.precision)
                            for key in ("encoder", "decoder_step"))
        check_embedding(encoder, self.source_tokenizer, lambda last: self.encode([[last]]))
        check_output_vocabulary(decoder, self.decoder.get_outputs()[0].shape[-1], self.target_tokenizer)

        def one_step(last: int) -> None:  # the previous token's embedding, one row
            rows, state = self.gather_rows(None, None, None, self.encode([[5]]), 1)
            self.step(np.array([last], np.int64), state, np.arange(1), rows, False)

        check_embedding(decoder, self.target_tokenizer, one_step)

    def sessions(self) -> dict[str, ort.InferenceSession]:
        row_ops = self.device_rows.named_sessions() if self.device_rows is not None else {}
        return {"encoder": self.encoder, "decoder_step": self.decoder, **row_ops}

    # --- pre/post-processing ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Source subword ids, ending with </s>."""
        return self.source_tokenizer.encode(text, add_eos=True)

    def default_max_length(self, source_len: int) -> int:
        guess = int(self.decoding.max_length_ratio * source_len) + self.decoding.max_length_extra
        return min(guess, self.max_output_tokens)

    def job(self, src_ids: list[int], beam_size: int | None = None, max_length: int | None = None,
            keep_attention: bool = False) -> TranslationJob:
        """A decoding job with the model card's defaults for what the caller leaves out."""
        return TranslationJob(src_ids, beam_size or self.decoding.default_beam_size,
                              max_length or self.default_max_length(len(src_ids)), keep_attention)

    def length_penalty_of(self, job: TranslationJob) -> float:
        """The exponent ``job``'s hypotheses are scored with: its own, else the model card's."""
        return self.decoding.length_penalty if job.length_penalty is None else job.length_penalty

    def search_for(self, job: TranslationJob) -> BeamSearch:
        """The search that decodes ``job`` (one place, for both schedulers)."""
        return BeamSearch(job.beam_size, job.max_length, self.length_penalty_of(job), job.keep_attention,
                          job.sampling)

    @classmethod
    def result_of(cls, search: BeamSearch, job: TranslationJob) -> TranslationOutput:
        """The finished search's answer: its best hypothesis, and the n-best list when asked for."""
        output = cls.to_output(search.best(), len(job.src_ids))
        output.cut = len(output.tokens) >= search.max_length  # closed at the limit, without its </s>
        if job.num_hypotheses > 0:
            output.hypotheses = [(h.tokens, h.score) for h in search.nbest(job.num_hypotheses)]
        return output

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.target_tokenizer.decode(ids)

    # --- graphs -----------------------------------------------------------------------------
    def encode(self, batch: Sequence[Sequence[int]]) -> Encoded:
        """The encoder's outputs for a batch of sources: left on the device under I/O binding (only
        the token ids go there), numpy otherwise."""
        ids, lengths = pad_batch(batch)
        started = time.thread_time()
        if not self.io_binding:
            states, keys, init = self.encoder.run(self._enc_out, {self._enc_in[0]: ids, self._enc_in[1]: lengths})
            self._model_cpu.inc(time.thread_time() - started)
            return Encoded(states, keys, init, lengths)
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(self._enc_in[0], ids)
        binding.bind_cpu_input(self._enc_in[1], lengths)
        for name in self._enc_out:
            binding.bind_output(name, self.device, self.device_id)
        self.encoder.run_with_iobinding(binding)
        self._model_cpu.inc(time.thread_time() - started)
        states, keys, init = binding.get_outputs()
        return Encoded(states, keys, init, lengths)

    @staticmethod
    def to_host(value: Tensor) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def step(self, prev: np.ndarray, state: Tensor, parents: np.ndarray, rows: DecoderRows,
             want_attention: bool) -> tuple[np.ndarray, np.ndarray, Tensor, np.ndarray | None]:
        """One decoder step for every row.

        ``state`` is the previous step's new state (or the one a gather made) and ``parents``
        picks its rows for this step. Returns each row's top-k (log-probs, ids), the new state
        (left on the device under I/O binding) and, if asked, attention [rows, src_time].
        """
        if not self.io_binding:
            feeds = dict(zip(self._dec_in, (prev, state, parents, rows.states, rows.keys, rows.mask), strict=True))
            started = time.thread_time()
            # not the full log-probabilities (the first output): only their top-k are read, and
            # copying [rows, vocabulary] out of ONNX Runtime cost ~3% of a step
            top_lp, top_ids, new_state, attention = self.decoder.run(self._dec_out[1:], feeds)
            self._model_cpu.inc(time.thread_time() - started)
            return top_lp, top_ids, new_state, attention if want_attention else None
        binding = self.decoder.io_binding()
        for name, value in zip(self._dec_in, (prev, state, parents, rows.states, rows.keys, rows.mask), strict=True):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        _, top_lp_name, top_ids_name, state_name, attention_name = self._dec_out
        binding.bind_output(top_lp_name, "cpu")  # only these small arrays come back every step
        binding.bind_output(top_ids_name, "cpu")
        binding.bind_output(state_name, self.device, self.device_id)
        if want_attention:
            binding.bind_output(attention_name, "cpu")
        else:
            binding.bind_output(attention_name, self.device, self.device_id)
        started = time.thread_time()
        self.decoder.run_with_iobinding(binding)
        self._model_cpu.inc(time.thread_time() - started)
        top_lp, top_ids, new_state, attention = binding.get_outputs()  # in the order bound above
        return top_lp.numpy(), top_ids.numpy(), new_state, attention.numpy() if want_attention else None

    # --- whole-request batched decoding -----------------------------------------------------
    def translate(self, jobs: Sequence[TranslationJob]) -> list[TranslationOutput]:
        enc = self.encode([j.src_ids for j in jobs])
        searches = [self.search_for(j) for j in jobs]
        want_attention = any(j.keep_attention for j in jobs)
        owners = np.arange(len(jobs))
        width = source_width(int(enc.lengths.max(initial=1)))
        rows, state = self.gather_rows(None, None, None, enc, width)
        parents = np.arange(len(jobs))
        while True:
            active = owners_unique(owners)
            prev = np.fromiter((t for j in active for t in searches[j].last_tokens()), dtype=np.int64)
            top_lp, top_ids, state, attention = self.step(prev, state, parents, rows, want_attention)
            reorder: list[np.ndarray] = []
            offset = 0
            for j in active:
                live = searches[j].live
                window = slice(offset, offset + live)
                found = searches[j].advance(top_lp[window], top_ids[window],
                                            attention[window] if attention is not None else None)
                reorder.append(offset + found)
                offset += live
            parents = np.concatenate(reorder)
            if parents.size == 0:
                break
            new_owners = owners[parents]
            if not np.array_equal(new_owners, owners):
                # membership changed: gather the rows once (state included), not on every step
                rows, state = self.gather_rows(rows, state, parents, None, width)
                parents = np.arange(len(parents))
                owners = new_owners
        return [self.result_of(s, job) for s, job in zip(searches, jobs, strict=True)]

    @staticmethod
    def to_output(hyp: Hypothesis, source_len: int) -> TranslationOutput:
        """The API-facing result of a finished search: tokens, score, and attention with one row
        per emitted token over every source position including the source </s>, so that each row
        is the step's whole attention distribution (sums to 1)."""
        attention = None
        if hyp.attention:  # the target </s> step's row is left out: that token is not returned
            rows = hyp.attention[: len(hyp.tokens)]
            attention = np.stack(rows)[:, :source_len] if rows else np.zeros((0, source_len), np.float32)
        return TranslationOutput(tokens=hyp.tokens, score=hyp.score, attention=attention)

    def warmup(self, batch_sizes: Sequence[int] = (1, 8), length: int = 16) -> None:
        for size in batch_sizes:
            self.translate([TranslationJob([5] * length, beam_size=2, max_length=4)] * size)
        # a join onto survivors with a longer source (whole-request decoding never does that)
        rows, state = self.gather_rows(None, None, None, self.encode([[5] * length] * 2), length)
        self.gather_rows(rows, state, np.array([1, 0]), self.encode([[5] * (length + 4)]), length + 4)


def owners_unique(owners: np.ndarray) -> list[int]:
    """Request indices in row order, each once (rows of one request are contiguous)."""
    if owners.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    return [int(owners[s]) for s in starts]
