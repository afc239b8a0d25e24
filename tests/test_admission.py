"""The per-model admission counter: whole requests in or out, each place given back once."""

from __future__ import annotations

import pytest

from service.admission import Admission, Waiting
from service.errors import Overloaded


def test_a_request_is_admitted_whole_or_refused_whole() -> None:
    admission = Admission("m", limit=4)
    first = [Waiting() for _ in range(3)]
    admission.admit(first)
    assert admission.waiting == 3 and all(t.waiting for t in first)
    second = [Waiting() for _ in range(2)]
    with pytest.raises(Overloaded, match=r"3 texts waiting \(limit 4\); this request brings 2") as refused:
        admission.admit(second)
    assert refused.value.headers["Retry-After"] == "1"
    assert admission.waiting == 3 and not any(t.waiting for t in second)  # none of the refused one got in
    admission.admit(second[:1])
    assert admission.waiting == 4


def test_a_translators_refusal_counts_sentences() -> None:
    admission = Admission("translator", limit=2, unit="sentences")
    admission.admit([Waiting(), Waiting()])
    with pytest.raises(Overloaded, match=r"translator has 2 sentences waiting \(limit 2\); this request brings 1"):
        admission.admit([Waiting()])


def test_each_text_gives_its_place_back_once() -> None:
    admission = Admission("m", limit=2)
    texts = [Waiting(), Waiting()]
    admission.admit(texts)
    admission.leave(texts[0])
    admission.leave(texts[0])  # taken by an engine, then abandoned by its caller: counted once
    assert admission.waiting == 1
    admission.admit([Waiting()])
    assert admission.waiting == 2


def test_a_refusal_names_the_requests_that_hold_places_before_their_texts_are_counted() -> None:
    admission = Admission("m", limit=2)
    admission.arriving = 2
    assert admission.full()
    error = admission.refusal(admission.waiting, None, admission.arriving)
    assert "model m has 0 texts waiting and 2 requests arriving (limit 2); retry later" in str(error)
