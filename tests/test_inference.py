"""Decoding options of the inference API (service/inference.py) through v1 and v2 on a real server:
n-best lists, seeded sampling, the length-penalty exponent, and their limits."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from loadtests.server import metric_value
from tests.conftest import Server

TEXT = "Two young children are playing in the sand near the water."
OTHERS = ["A dog runs.", "A man in a red shirt is riding a bike.", "Three women are talking on a busy street."]


def _translate(url: str, **body: object) -> dict:
    r = httpx.post(f"{url}/v1/translate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_nbest_first_is_the_beam_result(committed_server: Server) -> None:
    url = committed_server.url
    plain = _translate(url, text=TEXT, beam_size=5)
    nbest = _translate(url, text=TEXT, beam_size=5, num_hypotheses=5)
    assert {k: v for k, v in nbest.items() if k != "hypotheses"} == plain
    hyps = nbest["hypotheses"]
    assert len(hyps) == 5 and hyps[0]["translation"] == plain["translation"] and hyps[0]["score"] == plain["score"]
    assert hyps[0]["target_tokens"] == plain["target_tokens"]
    assert [h["score"] for h in hyps] == sorted((h["score"] for h in hyps), reverse=True)
    assert len({h["translation"] for h in hyps}) > 1
    assert "hypotheses" not in plain and "seed" not in plain


def test_v2_nbest_output_is_n_by_k(committed_server: Server) -> None:
    url = committed_server.url
    body = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [TEXT, OTHERS[1]]}],
            "parameters": {"beam_size": 4, "num_hypotheses": 3}}
    out = httpx.post(f"{url}/v2/models/translate-en-de/infer", json=body, timeout=60).json()
    outputs = {o["name"]: o for o in out["outputs"]}
    assert outputs["hypotheses"]["shape"] == [2, 3] and outputs["hypotheses"]["datatype"] == "BYTES"
    data = outputs["hypotheses"]["data"]
    assert [data[0], data[3]] == outputs["translation"]["data"]
    plain = httpx.post(f"{url}/v2/models/translate-en-de/infer", json={**body, "parameters": {"beam_size": 4}}).json()
    assert [o["name"] for o in plain["outputs"]] == ["translation"]  # no list unless asked for
    # every output asked for by name (perf_analyzer asks for all the metadata lists): the list of one;
    # timeout 0 is Triton's default, no timeout of the request's own
    named = {**body, "parameters": {"beam_size": 4, "timeout": 0},
             "outputs": [{"name": "translation"}, {"name": "hypotheses"}]}
    out = httpx.post(f"{url}/v2/models/translate-en-de/infer", json=named, timeout=60).json()
    outputs = {o["name"]: o for o in out["outputs"]}
    assert outputs["hypotheses"]["shape"] == [2, 1] and outputs["hypotheses"]["data"] == outputs["translation"]["data"]
    r = httpx.post(f"{url}/v2/models/translate-en-de/infer", json={**body, "parameters": {"num_hypotheses": 11}})
    assert r.status_code == 422 and r.json()["field"] == "parameters.num_hypotheses"


def test_a_fixed_seed_gives_the_same_sample_alone_and_in_any_batch(committed_server: Server) -> None:
    url = committed_server.url
    options = {"sampling_topk": 20, "sampling_temperature": 1.5, "seed": 1234}
    alone = _translate(url, text=TEXT, **options)
    assert alone["seed"] == 1234 and _translate(url, text=TEXT, **options) == alone
    # in one request's batch, between other texts, and beside concurrent requests of other texts
    batch = _translate(url, texts=[OTHERS[0], TEXT, OTHERS[1], TEXT], **options)["results"]
    assert batch[1]["translation"] == batch[3]["translation"] == alone["translation"]
    with ThreadPoolExecutor(8) as pool:
        noise = [pool.submit(_translate, url, text=t, beam_size=5) for t in OTHERS * 4]
        busy = [pool.submit(_translate, url, text=TEXT, **options) for _ in range(4)]
        assert all(f.result()["translation"] == alone["translation"] for f in busy)
        assert all(f.result() for f in noise)


def test_sampling_varies_with_the_seed_and_reports_a_drawn_one(committed_server: Server) -> None:
    url = committed_server.url
    samples = {_translate(url, text=TEXT, sampling_topk=20, sampling_temperature=1.5, seed=s)["translation"]
               for s in range(8)}
    assert len(samples) > 1
    drawn = _translate(url, text=TEXT, sampling_temperature=1.5)
    # sent back as a browser reads it (a JavaScript number, a double): the same sample
    again = _translate(url, text=TEXT, sampling_temperature=1.5, seed=int(float(drawn["seed"])))
    assert again["translation"] == drawn["translation"]
    draws = [_translate(url, text=TEXT, sampling_topk=5)["seed"] for _ in range(4)]  # 63 bits: each over 2^53
    assert all(0 <= seed < 2**53 for seed in draws) and len(set(draws)) == 4
    greedy = _translate(url, text=TEXT, beam_size=1)
    assert _translate(url, text=TEXT, sampling_topk=1, seed=3)["translation"] == greedy["translation"]


def test_length_penalty_is_the_exponent_of_the_length(committed_server: Server) -> None:
    url = committed_server.url
    raw = _translate(url, text=TEXT, beam_size=1, length_penalty=0)  # the summed log-probability
    normalised = _translate(url, text=TEXT, beam_size=1, length_penalty=1.0)
    squared = _translate(url, text=TEXT, beam_size=1, length_penalty=2.0)
    length = len(raw["target_tokens"]) + 1  # the emitted </s> counts
    assert raw["translation"] == normalised["translation"] == squared["translation"]
    assert normalised["score"] == pytest.approx(raw["score"] / length, rel=1e-6)
    assert squared["score"] == pytest.approx(raw["score"] / length**2, rel=1e-6)


@pytest.mark.parametrize(("body", "field"), [
    ({"num_hypotheses": 6, "beam_size": 5}, "num_hypotheses"),
    ({"num_hypotheses": 0}, "num_hypotheses"),
    ({"sampling_topk": 5, "beam_size": 5}, "beam_size"),
    ({"sampling_topk": 21}, "sampling_topk"),
    ({"sampling_temperature": 0}, "sampling_temperature"),
    ({"sampling_temperature": -1.0}, "sampling_temperature"),
    ({"seed": 5}, "seed"),
    ({"sampling_topk": 5, "seed": -1}, "seed"),
    ({"sampling_topk": 5, "num_hypotheses": 2}, "num_hypotheses"),
    ({"length_penalty": 6}, "length_penalty"),
    ({"sampling_topk": "5"}, "sampling_topk"),
])
def test_decoding_options_outside_their_limits_are_422(committed_server: Server, body: dict, field: str) -> None:
    r = httpx.post(f"{committed_server.url}/v1/translate", json={"text": TEXT, **body})
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def _streamed(url: str, **body: object) -> dict:
    with httpx.stream("POST", f"{url}/v1/translate", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = "".join(e["text"] for e in events[:-1] if "index" in e)
    return {**events[-1], "deltas": deltas}


@pytest.mark.parametrize("beam_size", [1, 5])
def test_a_translation_cut_at_max_length_says_so(committed_server: Server, beam_size: int) -> None:
    """"Ein Hund rennt" (max_length 3) and a loop cut at the default length looked like finished
    translations: ``finish_reason`` is "length" then, "stop" when the model ended it, on v1 (its
    stream too) and generate (its stream's last event too); a text is cut if any sentence is."""
    url = committed_server.url
    text = "A dog runs on the beach."
    cut = _translate(url, text=text, max_length=3, beam_size=beam_size)
    assert len(cut["target_tokens"]) == 3 and cut["finish_reason"] == "length"
    assert _translate(url, text=text, beam_size=beam_size)["finish_reason"] == "stop"
    assert _streamed(url, text=text, max_length=3, beam_size=beam_size)["finish_reason"] == "length"
    both = _translate(url, texts=["A dog runs.", "A cat sleeps. A dog runs on the beach."], max_length=5,
                      beam_size=beam_size)["results"]
    assert [r["finish_reason"] for r in both] == ["stop", "length"]  # the second text's second sentence is cut
    generate = f"{url}/v2/models/translate-en-de/generate"
    for max_tokens, reason in ((3, "length"), (40, "stop")):
        body = {"text_input": text, "parameters": {"max_tokens": max_tokens, "beam_size": beam_size}}
        assert httpx.post(generate, json=body, timeout=60).json()["finish_reason"] == reason
        with httpx.stream("POST", f"{generate}_stream", json=body, timeout=60) as r:
            last = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")][-1]
        assert last["finished"] is True and last["finish_reason"] == reason


@pytest.mark.parametrize("beam_size", [1, 5])
def test_a_text_of_several_sentences_is_translated_sentence_by_sentence(committed_server: Server,
                                                                      beam_size: int) -> None:
    """Given as one text, the second sentence used to be dropped ("Eine Frau kocht im Schnee."):
    each sentence is decoded as its own job and the answers are joined, streamed or not."""
    url = committed_server.url
    parts = ["A woman is cooking.", "Two dogs play in the snow."]
    alone = [_translate(url, text=part, beam_size=beam_size, return_attention=True) for part in parts]
    whole = _translate(url, text="  ".join(parts), beam_size=beam_size, return_attention=True)
    assert whole["translation"] == " ".join(a["translation"] for a in alone)
    assert whole["source_tokens"] == alone[0]["source_tokens"] + alone[1]["source_tokens"]  # each with its </s>
    assert whole["target_tokens"] == alone[0]["target_tokens"] + alone[1]["target_tokens"]
    rows, width = whole["attention"], len(whole["source_tokens"])
    assert len(rows) == len(whole["target_tokens"]) and all(len(row) == width for row in rows)
    assert all(abs(sum(row) - 1) < 1e-5 for row in rows)  # block-diagonal: each sentence over its own columns
    first = len(alone[0]["target_tokens"])
    assert rows[first][:len(alone[0]["source_tokens"])] == [0.0] * len(alone[0]["source_tokens"])
    streamed = _streamed(url, text="  ".join(parts), beam_size=beam_size, return_attention=True)
    assert {k: streamed[k] for k in whole} == whole
    if beam_size == 1:  # the deltas run on from one sentence into the next
        assert streamed["deltas"] == whole["translation"]
    v2 = httpx.post(f"{url}/v2/models/translate-en-de/generate", json={"text_input": "  ".join(parts),
                                                                       "parameters": {"beam_size": beam_size}},
                    timeout=60).json()
    assert v2["text_output"] == whole["translation"]


@pytest.mark.parametrize("beam_size", [1, 5])
def test_line_breaks_between_sentences_are_kept_on_every_route(committed_server: Server, beam_size: int) -> None:
    """A list or paragraphs typed on several lines came back as one line ("- Ein Hund rennt. -
    Eine Katze ..."): each sentence's translation now has the source's line breaks before it,
    on every route, streamed or not, in the n-best list too; the tokens are the model's as before.
    A list marker is not translated ("2. Two dogs" read "2." as a word, "• " became words or
    nothing) but put back before its sentence's translation, as typed."""
    url = committed_server.url
    lines = ["A woman is cooking.", "Two dogs play in the snow.", "A man rides a horse."]
    text = f"1. {lines[0]}\n2. {lines[1]}\n\n\u2022 {lines[2]}"
    alone = [_translate(url, text=line, beam_size=beam_size)["translation"] for line in lines]
    expected = f"1. {alone[0]}\n2. {alone[1]}\n\n\u2022 {alone[2]}"
    assert _translate(url, text=f"3) {lines[1]}", beam_size=beam_size)["translation"] == f"3) {alone[1]}"
    options = {"beam_size": beam_size, "num_hypotheses": 2} if beam_size > 1 else {"beam_size": 1}
    whole = _translate(url, text=text, **options)
    assert whole["translation"] == expected
    assert whole["target_tokens"] == _translate(url, text=" ".join(lines), beam_size=beam_size)["target_tokens"]
    if beam_size > 1:
        assert whole["hypotheses"][0]["translation"] == expected
        assert all(h["translation"].count("\n") == 3 for h in whole["hypotheses"])
    streamed = _streamed(url, text=text, **options)
    assert streamed["translation"] == expected
    if beam_size == 1:
        assert streamed["deltas"] == expected
    v2 = httpx.post(f"{url}/v2/models/translate-en-de/infer", timeout=60, json={
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}], "parameters": options}).json()
    assert {o["name"]: o["data"] for o in v2["outputs"]}["translation"] == [expected]
    generated = httpx.post(f"{url}/v2/models/translate-en-de/generate", timeout=60,
                           json={"text_input": text, "parameters": {"beam_size": beam_size}}).json()
    assert generated["text_output"] == expected
    with httpx.stream("POST", f"{url}/v2/models/translate-en-de/generate_stream", timeout=60,
                      json={"text_input": text, "parameters": {"beam_size": beam_size}}) as r:
        pieces = [json.loads(line[6:])["text_output"] for line in r.iter_lines() if line.startswith("data: ")]
    assert "".join(pieces) == expected


@pytest.mark.parametrize("beam_size", [1, 5])
def test_emoji_around_a_sentence_are_kept_as_typed_not_translated(committed_server: Server, beam_size: int) -> None:
    """Multi30k has no emoji: read as bytes, "A dog runs on the beach. 🐶🌊" came back as "Ein Hund rennt
    am Strand und ist dabei, das erfagt.", the emoji gone. Before and after the words they are put
    back around the translation, on every route; inside them they are still the model's to read."""
    url = committed_server.url
    dog, cat = "A dog runs on the beach.", "A cat sleeps."
    alone = [_translate(url, text=t, beam_size=beam_size)["translation"] for t in (dog, cat)]
    text = f"\U0001f436 {dog} \U0001f30a\n{cat} \U0001f60d"
    expected = f"\U0001f436 {alone[0]} \U0001f30a\n{alone[1]} \U0001f60d"
    assert _translate(url, text=text, beam_size=beam_size)["translation"] == expected
    streamed = _streamed(url, text=text, beam_size=beam_size)
    assert streamed["translation"] == expected and (beam_size > 1 or streamed["deltas"] == expected)
    generated = httpx.post(f"{url}/v2/models/translate-en-de/generate", timeout=60,
                           json={"text_input": f"{dog} \U0001f436", "parameters": {"beam_size": beam_size}}).json()
    assert generated["text_output"] == f"{alone[0]} \U0001f436"


def test_text_of_no_words_is_kept_as_typed_and_no_model_runs(committed_server: Server) -> None:
    """"😊" came back as "Ein Krankenschwestern in der Hand.", "- 😊" as "Es.": the model read
    emoji and marks as subwords it never saw. A text, or a sentence of one, with no letter or
    digit is kept as typed on every route, and a text of none runs no model."""
    url = committed_server.url
    text = "\U0001f60a \U0001f44d"
    before = metric_value(url, "seqserve_model_cpu_seconds_total", model="translate-en-de")
    whole = _translate(url, text=text, return_attention=True, beam_size=3, num_hypotheses=2)
    assert whole["translation"] == text and whole["source_tokens"] == whole["target_tokens"] == []
    assert whole["attention"] == [] and whole["finish_reason"] == "stop"
    assert [h["translation"] for h in whole["hypotheses"]] == [text]
    assert _streamed(url, text=text)["translation"] == text
    v2 = httpx.post(f"{url}/v2/models/translate-en-de/infer", timeout=60, json={
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": [text, "!!!"]}]}).json()
    assert {o["name"]: o["data"] for o in v2["outputs"]}["translation"] == [text, "!!!"]
    assert httpx.post(f"{url}/v2/models/translate-en-de/generate", timeout=60,
                      json={"text_input": text}).json()["text_output"] == text
    with httpx.stream("POST", f"{url}/v2/models/translate-en-de/generate_stream", timeout=60,
                      json={"text_input": text}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["text_output"] for e in events] == [text] and events[0]["finished"]
    assert metric_value(url, "seqserve_model_cpu_seconds_total", model="translate-en-de") == before
    sampled = _translate(url, text=text, sampling_topk=5)  # the request's seed is still said, to repeat it
    assert sampled["translation"] == text and isinstance(sampled["seed"], int)
    # sentences of no words keep their places among the translated ones
    dog = _translate(url, text="A dog runs.")["translation"]
    listed = "1. \U0001f60a\n2. A dog runs.\n3. \U0001f44d"
    assert _translate(url, text=listed)["translation"] == f"1. \U0001f60a\n2. {dog}\n3. \U0001f44d"
    assert _streamed(url, text=listed)["translation"] == f"1. \U0001f60a\n2. {dog}\n3. \U0001f44d"
    assert _translate(url, text="!!! A dog runs.")["translation"] == f"!!! {dog}"
    texts = httpx.post(f"{url}/v1/translate", json={"texts": ["\U0001f60a", "A dog runs."]}, timeout=60).json()
    assert [t["translation"] for t in texts["results"]] == ["\U0001f60a", dog]
    # a sentence over the limit is named by its place in the text, sentences of no words counted
    r = httpx.post(f"{url}/v1/translate", json={"text": "!!! A dog runs. It is " + "very " * 200 + "big."}, timeout=60)
    assert r.status_code == 422 and r.json()["error"].startswith("text (sentence 3) is "), r.text


def test_each_sentence_keeps_the_subword_limit_and_is_named_when_over_it(committed_server: Server) -> None:
    r = httpx.post(f"{committed_server.url}/v1/translate", timeout=60,
                   json={"texts": ["A dog.", "A dog runs. It is " + "very " * 200 + "big."]})
    assert r.status_code == 422 and r.json()["field"] == "texts[1]" and r.json()["limit"] == 128
    assert r.json()["error"].startswith("texts[1] (sentence 2) is ")
    # a text of many short sentences is longer than one sentence may be, and is translated whole
    many = " ".join(["A man rides a horse."] * 30)
    assert _translate(committed_server.url, text=many)["translation"].count(".") == 30


def test_the_attention_of_a_text_of_many_sentences_is_bounded(committed_server: Server) -> None:
    """One matrix for the whole text grows with its square: "Go. " x 500 (2 KB) was a 24 MB answer
    and 280 MB of server memory. Refused before decoding, naming the option, for the request's maps
    together; a paragraph the size the web page draws still gets its map, and the text without the
    map is translated."""
    from service.inference import MAX_ATTENTION_CELLS

    for stream in (False, True):
        r = httpx.post(f"{committed_server.url}/v1/translate", timeout=60,
                       json={"text": "Go. " * 500, "return_attention": True, "stream": stream})
        assert r.status_code == 422 and r.json()["field"] == "return_attention", r.text
        assert r.json()["limit"] == MAX_ATTENTION_CELLS and "by text (500 sentences;" in r.json()["error"]
    # a budget for the request, not each text: 16 texts of 40 sentences were 3 MB, 64 would be 12
    r = httpx.post(f"{committed_server.url}/v1/translate", timeout=60,
                   json={"texts": ["Go. " * 40] * 16, "return_attention": True})
    assert r.status_code == 422 and r.json()["field"] == "return_attention", r.text
    assert "by texts[" in r.json()["error"] and "(40 sentences;" in r.json()["error"]
    paragraph = "Two dogs play in the snow. " * 22  # 594 characters: the page asks for its map
    answer = _translate(committed_server.url, text=paragraph, return_attention=True)
    assert len(answer["attention"]) * len(answer["source_tokens"]) <= MAX_ATTENTION_CELLS
    assert _translate(committed_server.url, text="Go. " * 500)["translation"]


def test_a_sampled_text_of_several_sentences_draws_each_from_its_own_seed(committed_server: Server) -> None:
    """Sentence k is sampled with the request's seed + k: repeatable, and not the same random
    draws for every sentence."""
    url = committed_server.url
    parts = ["A woman is cooking.", "Two dogs play in the snow."]
    options = {"sampling_topk": 20, "sampling_temperature": 1.5}
    whole = _translate(url, text=" ".join(parts), seed=41, **options)
    alone = [_translate(url, text=part, seed=41 + k, **options) for k, part in enumerate(parts)]
    assert whole["translation"] == " ".join(a["translation"] for a in alone) and whole["seed"] == 41


REVIEW = ["I went into this film with low expectations, having read mixed reviews.",
          "The first act drags, and the dialogue is often clumsy.",
          "But the second half is a triumph: the performances are extraordinary and the score is haunting."]


def test_a_text_over_the_sentiment_limit_is_scored_by_its_sentences(committed_server: Server) -> None:
    url = committed_server.url
    long = " ".join(REVIEW * 5)  # about 300 subwords: was a 422
    alone = [r["probabilities"] for r in httpx.post(f"{url}/v1/sentiment", json={"texts": REVIEW}).json()["results"]]
    r = httpx.post(f"{url}/v1/sentiment", json={"texts": ["Fine.", long, " ".join(REVIEW)]})
    assert r.status_code == 200, r.text
    short, scored, within = r.json()["results"]
    assert scored["sentences"] == 15 and "sentences" not in short and "sentences" not in within
    for label in ("negative", "positive"):  # the mean of its sentences', each scored alone
        assert scored["probabilities"][label] == pytest.approx(sum(p[label] for p in alone) / 3, abs=1e-5)
    # the same through v2, and a text within the limit still scored whole
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [long, " ".join(REVIEW)]}]}
    v2 = httpx.post(f"{url}/v2/models/sentiment/infer", json=body).json()["outputs"][1]["data"]
    assert v2[1] == pytest.approx(scored["probabilities"]["positive"], abs=1e-6)
    assert v2[3] == pytest.approx(within["probabilities"]["positive"], abs=1e-6)


def test_a_sentence_over_the_sentiment_limit_is_named(committed_server: Server) -> None:
    one = "very " * 300 + "good."
    r = httpx.post(f"{committed_server.url}/v1/sentiment", json={"texts": ["ok", one, f"Good. It is {one} Bad."]})
    assert r.status_code == 422 and r.json()["limit"] == 256
    assert [d["message"].split(" is ")[0] for d in r.json()["details"]] == ["texts[1] (one sentence)",
                                                                         "texts[2] (sentence 2)"]
    assert r.json()["details"][0]["message"].endswith("takes at most 256 a sentence")
