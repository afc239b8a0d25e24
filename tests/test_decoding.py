"""Beam search on a hand-made step function: greedy is argmax, beams find better sequences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.decoding import BeamSearch, Sampling, laid_out, top_candidates
from service.tokenization import EOS_ID

VOCAB = 8


def _log_probs(table: dict[tuple[int, ...], dict[int, float]], prefix: list[int]) -> np.ndarray:
    probs = np.full(VOCAB, 1e-6)
    for token, p in table.get(tuple(prefix), {EOS_ID: 1.0}).items():
        probs[token] = p
    return np.log(probs / probs.sum())


def _run(search: BeamSearch, table: dict[tuple[int, ...], dict[int, float]]) -> list[int]:
    while not search.done:
        rows = np.stack([_log_probs(table, t) for t in search.tokens])
        search.advance(*top_candidates(rows, 2 * search.beam_size))
    return search.best().tokens


# Greedy takes 4 (p=0.6) and then faces a flat distribution; 5 (p=0.4) leads to a sure path.
TABLE = {
    (): {4: 0.6, 5: 0.4},
    (4,): {6: 0.3, 7: 0.3, EOS_ID: 0.4},
    (5,): {6: 0.99, EOS_ID: 0.01},
    (5, 6): {EOS_ID: 1.0},
    (4, 6): {EOS_ID: 1.0},
    (4, 7): {EOS_ID: 1.0},
}


def test_beam_one_is_greedy() -> None:
    assert _run(BeamSearch(beam_size=1, max_length=10), TABLE) == [4]


def test_beam_search_finds_the_more_likely_sequence() -> None:
    assert _run(BeamSearch(beam_size=3, max_length=10, length_penalty=0.0), TABLE) == [5, 6]


def test_max_length_closes_live_beams() -> None:
    endless = {(): {4: 1.0}, (4,): {4: 1.0}, (4, 4): {4: 1.0}}
    search = BeamSearch(beam_size=2, max_length=3)
    tokens = _run(search, endless)
    assert len(tokens) == 3 and search.done


def test_parents_index_live_rows() -> None:
    search = BeamSearch(beam_size=2, max_length=5)
    parents = search.advance(*top_candidates(np.stack([_log_probs(TABLE, [])]), 4))
    assert list(parents) == [0, 0] and search.tokens == [[4], [5]]
    parents = search.advance(*top_candidates(np.stack([_log_probs(TABLE, t) for t in search.tokens]), 4))
    assert set(parents.tolist()) <= {0, 1}


class _GeneralPathOnly(BeamSearch):
    """Beam 1 through the general beam code (the fast path switched off), as a reference."""

    def advance(self, top_log_probs: np.ndarray, top_ids: np.ndarray,
                attention: np.ndarray | None = None) -> np.ndarray:
        return self._advance_beams(top_log_probs, top_ids, attention)


def test_greedy_fast_path_equals_the_general_path() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        fast = BeamSearch(1, max_length=int(rng.integers(1, 12)), keep_attention=True)
        general = _GeneralPathOnly(1, max_length=fast.max_length, keep_attention=True)
        while not fast.done:
            logits = rng.normal(size=(1, VOCAB)) * 3
            logits[0, EOS_ID] += trial % 3 - 1  # some searches end early, some run to the limit
            candidates = top_candidates(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True), 4)
            attention = rng.random((1, 5)).astype(np.float32)
            assert fast.advance(*candidates, attention).tolist() == general.advance(*candidates, attention).tolist()
        assert general.done
        a, b = fast.best(), general.best()
        assert (a.tokens, a.log_prob, a.score, len(a.attention)) == (b.tokens, b.log_prob, b.score, len(b.attention))


def test_nbest_is_sorted_by_score_and_starts_with_the_best() -> None:
    search = BeamSearch(beam_size=3, max_length=10)
    _run(search, TABLE)
    nbest = search.nbest(3)
    assert nbest[0] is search.best() and len(nbest) == 3
    assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
    assert search.nbest(2) == nbest[:2]


def test_length_penalty_is_the_exponent_of_the_length() -> None:
    # score = sum(log p) / (tokens + 1 for </s>) ** alpha
    for alpha in (0.0, 0.6, 1.0, 2.0):
        search = BeamSearch(beam_size=1, max_length=10, length_penalty=alpha)
        _run(search, TABLE)
        best = search.best()
        assert best.tokens == [4]
        assert best.score == best.log_prob / 2 ** alpha


def _sampled(seed: int, topk: int = 20, temperature: float = 1.0, table: dict | None = None) -> list[int]:
    return _run(BeamSearch(1, max_length=10, sampling=Sampling(topk, temperature, seed)), table or TABLE)


def test_sampling_follows_the_model_and_a_seed_repeats_it() -> None:
    firsts = [_sampled(seed)[0] for seed in range(2000)]
    assert abs(firsts.count(4) / 2000 - 0.6) < 0.06  # p(4) = 0.6, p(5) = 0.4
    assert all(_sampled(seed) == _sampled(seed) for seed in range(50))


def test_sampling_topk_one_or_a_cold_temperature_is_greedy() -> None:
    greedy = _run(BeamSearch(beam_size=1, max_length=10), TABLE)
    assert all(_sampled(seed, topk=1) == greedy for seed in range(50))
    assert all(_sampled(seed, temperature=1e-3) == greedy for seed in range(50))
    # the smallest positive temperature (a subnormal float) is the coldest: greedy, not NaN weights
    assert all(_sampled(seed, temperature=5e-324) == greedy for seed in range(50))


def test_sampling_needs_beam_one() -> None:
    with pytest.raises(ValueError, match="beam_size must be 1"):
        BeamSearch(beam_size=2, max_length=5, sampling=Sampling(5, 1.0, 0))


def test_line_breaks_go_only_between_tokens() -> None:
    """A text's sentences with the source's line breaks between them (service/sentences.py): a
    break before the first token or after the last (a sentence translated to nothing, or a
    stream's prefix) is left out, and of two at one place the longer is kept."""
    def decode(ids: object) -> str:
        return " ".join(map(str, ids))  # type: ignore[call-overload]

    assert laid_out(decode, [1, 2, 3], ((2, "\n"),)) == "1 2\n3"
    assert laid_out(decode, [1, 2, 3], ()) == "1 2 3"
    assert laid_out(decode, [1, 2], ((2, "\n"),)) == "1 2"  # the next sentence has not begun (or is empty)
    assert laid_out(decode, [1, 2], ((0, "\n"),)) == "1 2"  # the first was empty
    # a list marker: the first sentence's before its first token; the next's after a break
    assert laid_out(decode, [1, 2, 3], ((0, "1. "), (2, "\n2. "))) == "1. 1 2\n2. 3"
    assert laid_out(decode, [1, 2], ((0, "\n2. "),)) == "2. 1 2"  # the first was empty: its marker, no line
    assert laid_out(decode, [], ((0, "1. "),)) == ""  # nothing translated yet
    assert laid_out(decode, [1, 2, 3], ((1, "\n\n"), (1, "\n"))) == "1\n\n2 3"  # an empty one between
    # a stream's text grows by prefixes: each is the start of the next
    texts = [laid_out(decode, [1, 2, 3, 4][:k], ((2, "\n"), (3, "\n\n"))) for k in range(5)]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts)) and texts[-1] == "1 2\n3\n\n4"
