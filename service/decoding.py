"""Beam search (greedy is beam 1) for one request, independent of how rows are batched.

A ``BeamSearch`` holds one request's live hypotheses and finished ones. The caller runs the
decoder for all live rows of all requests at once, hands each request its slice of the
log-probabilities, and reorders its decoder-state rows by the parents ``advance`` returns.
Keeping the per-request logic here lets whole-request batching and iteration-level scheduling
share one search implementation, so they produce identical output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.tokenization import BOS_ID, EOS_ID

_NO_PARENTS = np.zeros(0, dtype=np.int64)
_FIRST_ROW = np.zeros(1, dtype=np.int64)
_NO_PARENTS.flags.writeable = False  # shared: callers only read them
_FIRST_ROW.flags.writeable = False


# Where a text's sentences begin in its joined tokens, with what the source had before each
# (service/sentences.py): (token index, "\n" or more, and the sentence's list marker if it has one),
# ascending. Sentences the source separated by spaces alone have none: sentencepiece puts the
# space back between them. One at 0 is the first sentence's list marker.
Breaks = tuple[tuple[int, str], ...]


def laid_out(decode: Callable[[Sequence[int]], str], tokens: Sequence[int], breaks: Breaks = ()) -> str:
    """The text of ``tokens``, each sentence decoded on its own and what the source had between
    them put back. A break goes only before a token, and before the first without its line breaks
    (its list marker alone); not after the last (a stream's prefix has not reached it yet; a
    sentence translated to nothing leaves no stray line); of several at one place (around such an
    empty sentence) the longest."""
    chosen: dict[int, str] = {}  # breaks come in ascending order; so do these
    for index, separator in breaks:
        if index == 0:
            separator = separator.lstrip("\n")
        if 0 <= index < len(tokens) and len(separator) > len(chosen.get(index, "")):
            chosen[index] = separator
    if not chosen:
        return decode(tokens)
    pieces, at = [], 0
    for index, separator in chosen.items():
        pieces += [decode(tokens[at:index]), separator]
        at = index
    pieces.append(decode(tokens[at:]))
    return "".join(pieces)


@dataclass(frozen=True)
class Sampling:
    """Random sampling instead of the argmax (beam 1 only): from the ``topk`` best candidates the
    decoder returns, with probabilities softmax(log p / temperature). Each request draws from its
    own generator seeded with ``seed``, so a sample does not depend on what it is batched with."""

    topk: int
    temperature: float
    seed: int


@dataclass(frozen=True)
class StepUpdate:
    """A streamed request's search after one decoder step, built on the decode thread without
    copies (the search replaces its token lists rather than appending to them)."""

    step: int  # decoder steps taken
    tokens: list[int]  # the best live hypothesis (greedy: every token so far)
    attention: list[np.ndarray] | None = None  # greedy with attention kept: a row per token so far
    breaks: Breaks = ()  # a text of several sentences: the line breaks between those told so far


@dataclass
class Hypothesis:
    tokens: list[int]
    log_prob: float
    score: float  # length-normalised
    attention: list[np.ndarray] = field(default_factory=list)  # one [source_len] row per token


class BeamSearch:
    """Length-normalised beam search state for one request.

    score = sum(log p) / len(tokens incl. </s>) ** length_penalty. The search stops when
    ``beam_size`` hypotheses have finished, or at ``max_length`` (live beams are then closed as
    they are). With beam_size 1 this is exactly greedy decoding.
    """

    def __init__(self, beam_size: int, max_length: int, length_penalty: float = 1.0,
                 keep_attention: bool = False, sampling: Sampling | None = None) -> None:
        if beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if sampling is not None and beam_size != 1:
            raise ValueError("sampling draws one token per step: beam_size must be 1")
        self.sampling = sampling
        self._rng = np.random.default_rng(sampling.seed) if sampling is not None else None
        self.beam_size = beam_size
        self.max_length = max(1, max_length)
        self.length_penalty = length_penalty
        self.keep_attention = keep_attention
        self.tokens: list[list[int]] = [[]]
        self.log_probs = np.zeros(1, dtype=np.float64)
        self.attention: list[list[np.ndarray]] = [[]]
        self.finished: list[Hypothesis] = []
        self.steps = 0

    @property
    def live(self) -> int:
        """Rows this request occupies in the next decoder step (0 when done)."""
        return 0 if self.done else len(self.tokens)

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.beam_size or (self.steps >= self.max_length) or not self.tokens

    def last_tokens(self) -> list[int]:
        return [t[-1] if t else BOS_ID for t in self.tokens]

    def _normalise(self, log_prob: float, length: int) -> float:
        return log_prob / (max(length, 1) ** self.length_penalty)

    def _finish(self, tokens: list[int], log_prob: float, attention: list[np.ndarray]) -> None:
        # the emitted </s> counts towards the length, its token is not returned
        self.finished.append(Hypothesis(tokens, log_prob, self._normalise(log_prob, len(tokens) + 1), attention))

    def advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray,
                attention: np.ndarray | None = None) -> np.ndarray:
        """Consume this step's candidates: each live row's best tokens ([live, k] log-probs and
        ids, k >= 2 x beam size, as the decoder graph returns them). Returns the parent rows of
        the new beams (indices into this request's current live rows), which say how to reorder
        its decoder state; the array is empty when the request is done.
        """
        if self.sampling is not None:
            return self._advance_sampled(top_log_probs, top_ids, attention)
        if self.beam_size == 1:
            return self._advance_greedy(top_log_probs, top_ids, attention)
        return self._advance_beams(top_log_probs, top_ids, attention)

    def _advance_beams(self, top_log_probs: np.ndarray, top_ids: np.ndarray,
                       attention: np.ndarray | None) -> np.ndarray:
        live, width = top_log_probs.shape
        if width < 2 * self.beam_size:
            raise ValueError(f"beam {self.beam_size} needs at least {2 * self.beam_size} candidates per row")
        total = self.log_probs[:live, None] + top_log_probs.astype(np.float64)
        want = min(2 * self.beam_size, total.size)
        flat = total.ravel()
        top = np.argpartition(-flat, want - 1)[:want]
        top = top[np.argsort(-flat[top], kind="stable")]
        new_tokens: list[list[int]] = []
        new_scores: list[float] = []
        new_attn: list[list[np.ndarray]] = []
        parents: list[int] = []
        self.steps += 1
        at_limit = self.steps >= self.max_length
        for rank, index in enumerate(top):
            parent, column = divmod(int(index), width)
            token = int(top_ids[parent, column])
            attn = self.attention[parent] + [attention[parent]] if self.keep_attention and attention is not None else []
            if token == EOS_ID:
                # as in fairseq: only an end among the top beam_size candidates finishes a hypothesis
                if rank < self.beam_size and len(self.finished) < self.beam_size:
                    self._finish(self.tokens[parent], float(flat[index]), attn)
                continue
            if len(new_tokens) < self.beam_size:
                new_tokens.append(self.tokens[parent] + [token])
                new_scores.append(float(flat[index]))
                new_attn.append(attn)
                parents.append(parent)
            if len(new_tokens) >= self.beam_size and len(self.finished) >= self.beam_size:
                break
        if at_limit and len(self.finished) < self.beam_size:
            # out of length: close the best live beams as they are
            for tokens, score, attn in zip(new_tokens, new_scores, new_attn, strict=True):
                if len(self.finished) < self.beam_size:
                    self.finished.append(Hypothesis(tokens, score, self._normalise(score, len(tokens)), attn))
        self.tokens, self.log_probs, self.attention = new_tokens, np.asarray(new_scores), new_attn
        if self.done:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(parents, dtype=np.int64)

    def _advance_greedy(self, top_log_probs: np.ndarray, top_ids: np.ndarray,
                        attention: np.ndarray | None) -> np.ndarray:
        """Beam 1, without the candidate sort: the decoder's TopK already puts each row's best
        candidate first. Same result as the general path (same float64 sums, same rules)."""
        row = attention[0] if attention is not None else None
        return _FIRST_ROW if self.advance_token(int(top_ids[0, 0]), float(top_log_probs[0, 0]), row) else _NO_PARENTS

    def _advance_sampled(self, top_log_probs: np.ndarray, top_ids: np.ndarray,
                         attention: np.ndarray | None) -> np.ndarray:
        """One token drawn from the row's ``topk`` candidates; its score is the model's own log p."""
        assert self.sampling is not None and self._rng is not None
        k = min(self.sampling.topk, top_log_probs.shape[1])
        log_probs = top_log_probs[0, :k].astype(np.float64)
        # the best candidate at 0 before dividing: at a tiny temperature every log p / T would
        # overflow to -inf and the weights turn NaN (which picked the *least* likely candidate)
        weights = np.exp((log_probs - log_probs.max()) / self.sampling.temperature)
        pick = min(int(np.searchsorted(np.cumsum(weights), self._rng.random() * weights.sum(), side="right")), k - 1)
        row = attention[0] if attention is not None else None
        token, log_prob = int(top_ids[0, pick]), float(top_log_probs[0, pick])
        return _FIRST_ROW if self.advance_token(token, log_prob, row) else _NO_PARENTS

    def advance_token(self, token: int, log_prob: float, attention: np.ndarray | None = None) -> bool:
        """Greedy (beam 1) step from the row's best candidate; True while the search goes on.
        The scheduler calls this directly with plain numbers: it runs for every greedy request
        at every step, so it is kept to a few Python operations."""
        total = float(self.log_probs[0]) + log_prob
        attn = self.attention[0] + [attention] if self.keep_attention and attention is not None else []
        self.steps += 1
        if token == EOS_ID:
            self._finish(self.tokens[0], total, attn)
            return False
        tokens = self.tokens[0] + [token]
        self.tokens, self.log_probs, self.attention = [tokens], np.array([total]), [attn]
        if self.steps >= self.max_length:  # out of length: close the live beam as it is
            self.finished.append(Hypothesis(tokens, total, self._normalise(total, len(tokens)), attn))
            return False
        return True

    def update(self) -> StepUpdate:
        """The state a stream reports after a step (call while the search is not done)."""
        rows = self.attention[0] if self.beam_size == 1 and self.keep_attention else None
        return StepUpdate(self.steps, self.tokens[0], rows)

    def best(self) -> Hypothesis:
        return self.nbest(1)[0]

    def nbest(self, n: int) -> list[Hypothesis]:
        """The ``n`` best finished hypotheses (at most the beam size), best first; ties keep the
        order they finished in."""
        if not self.finished:
            raise RuntimeError("nbest() called before the search finished")
        return sorted(self.finished, key=lambda h: h.score, reverse=True)[:n]


def top_candidates(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best (log-prob, id), best first: what the decoder graph's TopK returns."""
    k = min(k, log_probs.shape[1])
    ids = np.argpartition(-log_probs, k - 1, axis=1)[:, :k]
    scores = np.take_along_axis(log_probs, ids, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
