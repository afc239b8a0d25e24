"""The one inference API that every protocol adapter calls (REST v1, Open Inference Protocol v2).

It owns what must not differ between protocols: the token limits and decoding options checked
before anything is queued, one request's texts admitted whole or refused whole by the model's
engine, the deadline, and the shape of a result. A request that would not fit in the model's
queue is refused before its texts are tokenised (the costliest check): under overload a refusal
then costs little more than parsing, so it comes fast and leaves the event loop free. (A request
whose texts are split into sentences, a translator's or a long sentiment text's, is checked again
once they are counted.)
Adapters only map their wire format onto these calls and the errors (service/errors.py) onto
their status codes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.batching import Each
from service.decoding import Sampling, StepUpdate
from service.engines import SentimentEngine
from service.errors import InvalidInput
from service.inputs import Problems, check_range, check_texts, check_tokens, item_field
from service.registry import ModelRegistry, ServedModel
from service.runners import SentimentRunner, TranslationRunner
from service.runners.translation import TranslationJob, TranslationOutput
from service.schemas import SentimentRequest
from service.sentences import SentencesJob, joined, reads_words, sentences, translated_parts
from service.settings import Settings
from service.streaming import TranslationStream

# 7 decimals: rounding moves a row's sum by at most 129 x 5e-8, inside the 1e-5 promised
ATTENTION_DECIMALS = 7


@dataclass(slots=True)
class SentimentPieces:
    """A request's texts as the model scores them: a text within the model's subword limit as
    itself; a longer one sentence by sentence (service/sentences.py), its probabilities the mean
    of its sentences'. The model was trained on sentences, and a review of a few hundred words was
    refused with 422: scored this way, pseudo-reviews of SST-2 sentences over the limit came out
    right more often than their first 256 subwords or their sentences packed into chunks
    (loadtests/long_texts.py). Each piece takes a place in the model's queue."""

    ids: list[list[int]]  # every piece's subword ids, in order
    counts: list[int]  # how many pieces each text is

    @property
    def split(self) -> bool:
        """Some text is scored by its sentences: the request may take long enough (up to the whole
        queue's worth) to be worth dropping if its client leaves."""
        return len(self.ids) > len(self.counts)


def sentiment_job(registry: ModelRegistry, settings: Settings, request: SentimentRequest
                  ) -> tuple[ServedModel, SentimentPieces]:
    """A POST /v1/sentiment request's model and what its texts are scored as, or the error that
    refuses it, whichever transport read it (the FastAPI route, or the server's protocol for the
    plainest requests: service/direct_route.py)."""
    model = registry.for_task("text-classification")
    field, texts = request.field_and_texts()
    check_texts(texts, settings, field)
    return model, sentiment_ids(model, texts, field)


def sentiment_answer(model: ServedModel, request: SentimentRequest, pieces: SentimentPieces,
                     probs: list[list[float]]) -> dict[str, Any]:
    """The body that answers a POST /v1/sentiment request, given its texts' probabilities."""
    return request.answer([sentiment_result(model, p, n) for p, n in zip(probs, pieces.counts, strict=True)])


def sentiment_ids(model: ServedModel, texts: list[str], field: str) -> SentimentPieces:
    """What each text is scored as, refused (422 naming the text, and the sentence of a long one)
    when a piece is over the model's limit."""
    admission = model.engine.admission
    admission.refuse_if_full(len(texts))
    runner = model.runner
    assert isinstance(runner, SentimentRunner)
    limit = model.card.max_input_tokens
    pieces = SentimentPieces([], [])
    problems = Problems()  # every text over the limit, named at once
    for i, text in enumerate(texts):
        if not reads_words(text):  # scored, it came out confident: "😍😍😍" 0.90 negative
            _no_words(problems, item_field(field, i))
            continue
        text_ids = runner.tokenize(text)
        parts = [text] if len(text_ids) <= limit else sentences(text)
        if len(parts) == 1:
            check_tokens(text_ids, limit, item_field(field, i), model.name, problems, ONE_SENTENCE)
            pieces.ids.append(text_ids)
            pieces.counts.append(1)
            continue
        scored = 0  # its sentences of words: "!!!" between them is not scored, nor in the mean
        for k, part in enumerate(parts):
            if not reads_words(part):
                continue
            part_ids = runner.tokenize(part)
            if not check_tokens(part_ids, limit, item_field(field, i), model.name, problems, f" (sentence {k + 1})"):
                break  # the text's first sentence over the limit is its one problem
            pieces.ids.append(part_ids)
            scored += 1
        else:
            if not scored:  # a list of "1. 👍" lines: words in none of its sentences
                _no_words(problems, item_field(field, i))
        pieces.counts.append(scored)
    problems.check()
    count = len(pieces.ids)
    if count > admission.limit:  # admitted whole or not at all: this request never could be
        raise InvalidInput(f"{field} holds {count} sentences; model {model.name} takes at most {admission.limit} "
                           "at once (SEQSERVE_MAX_QUEUE_SIZE)", field=field, limit=admission.limit)
    if count > len(texts):
        admission.refuse_if_full(count)
    return pieces


def _no_words(problems: Problems, field: str) -> None:
    problems.add(f"{field} has no words: the model reads letters and digits, and emoji, symbols or punctuation "
                 "alone are not scored", field)


def classify(model: ServedModel, pieces: SentimentPieces, deadline: float) -> Coroutine[Any, Any, list[list[float]]]:
    """Class probabilities of each text, batched with other requests: the engine's coroutine where
    each text is one piece (engines.py ``classify_all`` says why), else one that averages each
    text's sentences."""
    engine = model.engine
    assert isinstance(engine, SentimentEngine)
    work = engine.classify_all(pieces.ids, deadline)
    return _by_text(work, pieces.counts) if pieces.split else work


async def _by_text(work: Coroutine[Any, Any, list[list[float]]], counts: list[int]) -> list[list[float]]:
    """Each text's probabilities: the mean of its sentences' where it was scored by sentences."""
    probs = await work
    texts, at = [], 0
    for count in counts:
        # the mean in the model's float32, as it was when the rows were its arrays
        texts.append(probs[at] if count == 1 else
                     np.mean(np.asarray(probs[at : at + count], dtype=np.float32), axis=0).tolist())
        at += count
    return texts


def sentiment_result(model: ServedModel, values: list[float], sentences: int = 1) -> dict[str, Any]:
    """One text's answer (``values``: its probabilities); ``sentences``: how many sentences a text
    over the subword limit was scored as."""
    labels = model.card.labels or []
    best = max(range(len(values)), key=values.__getitem__)
    result = {"label": labels[best], "score": values[best],
              "probabilities": dict(zip(labels, values, strict=True)),
              "model": model.name, "version": model.version}
    if sentences > 1:
        result["sentences"] = sentences
    return result


@dataclass(frozen=True)
class SearchOptions:
    """Decoding options beyond beam size and length (the README's "Decoding options")."""

    num_hypotheses: int | None = None  # n-best list, up to the beam size
    length_penalty: float | None = None  # the exponent of the length in the score; default the card's
    sampling_topk: int | None = None  # sampling: from the k best candidates (up to the decoder's top-k)
    sampling_temperature: float | None = None
    seed: int | None = None  # for a repeatable sample; drawn at random (and returned) when left out


NO_OPTIONS = SearchOptions()
# a text over a model's subword limit that does not split into sentences, as its 422 names it: a
# 1,800-character review without full stops read as if 256 subwords were the limit of a text
ONE_SENTENCE = " (one sentence)"
MAX_SEED = 2**63 - 1  # what a request may give (gRPC's int64)
# What the server draws: a JSON number a browser reads exactly (JavaScript's Number.MAX_SAFE_INTEGER).
# Drawn from 63 bits, nearly every seed was over 2^53: the web page showed it rounded, and the
# rounded seed sent back drew another sample.
DRAWN_SEED_BITS = 53


def _limit(value: float | None, low: float, high: float, field: str, low_open: bool = False) -> None:
    if value is None:
        return
    if value != value or (value <= low if low_open else value < low) or value > high:  # NaN fails too
        bound = f"above {low}" if low_open else f"at least {low}"
        raise InvalidInput(f"{field} must be {bound} and at most {high}; got {value}", field=field, limit=[low, high])


def as_given(option: str) -> str:
    """How v1 names a decoding option in its errors: as its body field."""
    return option


def search_settings(runner: TranslationRunner, beam_size: int | None, options: SearchOptions,
                    name: Callable[[str], str] = as_given) -> tuple[int, int, float | None, Sampling | None]:
    """(beam size, n-best size (0 = no list), length penalty, sampling), checked: sampling draws
    one hypothesis (beam 1), the n-best list holds at most the beam size. ``name``: how the
    request names an option (v2: ``parameters.beam_size``), for the errors."""
    check_range(beam_size, 1, runner.decoding.max_beam_size, name("beam_size"))
    _limit(options.length_penalty, 0.0, 5.0, name("length_penalty"))
    sampling = None
    if options.sampling_topk is not None or options.sampling_temperature is not None:
        top = runner.decoding.top_k
        check_range(options.sampling_topk, 1, top, name("sampling_topk"))
        _limit(options.sampling_temperature, 0.0, 100.0, name("sampling_temperature"), low_open=True)
        if beam_size not in (None, 1):
            raise InvalidInput(f"sampling draws one hypothesis: {name('beam_size')} must be 1 or left out",
                               field=name("beam_size"), limit=1)
        check_range(options.seed, 0, MAX_SEED, name("seed"))
        seed = secrets.randbits(DRAWN_SEED_BITS) if options.seed is None else options.seed
        sampling = Sampling(options.sampling_topk or top, options.sampling_temperature or 1.0, seed)
        beam_size = 1
    elif options.seed is not None:
        raise InvalidInput(f"{name('seed')} needs sampling: give {name('sampling_topk')} or "
                           f"{name('sampling_temperature')}", field=name("seed"))
    beam = beam_size or runner.decoding.default_beam_size
    check_range(options.num_hypotheses, 1, beam, name("num_hypotheses"))
    return beam, options.num_hypotheses or 0, options.length_penalty, sampling


def translation_jobs(model: ServedModel, texts: list[str], field: str, beam_size: int | None,
                     max_length: int | None, keep_attention: bool, options: SearchOptions = NO_OPTIONS,
                     name: Callable[[str], str] = as_given) -> list[TranslationJob]:
    """One job per text, a ``SentencesJob`` for a text of several sentences (service/sentences.py:
    each sentence is decoded as its own job, and counts as a text for admission and the subword
    limit; ``max_length`` bounds each sentence's translation); options and limits checked before
    anything is queued (``name``: how the request names each option, as in ``search_settings``)."""
    runner = model.runner
    assert isinstance(runner, TranslationRunner)
    beam, nbest, length_penalty, sampling = search_settings(runner, beam_size, options, name)
    check_range(max_length, 1, runner.max_output_tokens, name("max_length"))
    admission = model.engine.admission
    admission.refuse_if_full(len(texts))  # before any splitting: under overload a refusal costs little
    # emoji, list markers and sentences of no words: put back around the translations, not translated
    split = [translated_parts(text, sentences(text)) for text in texts]
    count = sum(len(read.parts) for read in split)
    if count > admission.limit:  # admitted whole or not at all: this request never could be
        raise InvalidInput(f"{field} holds {count} sentences; model {model.name} takes at most {admission.limit} "
                           "at once (SEQSERVE_MAX_QUEUE_SIZE)", field=field, limit=admission.limit)
    if count > len(texts):
        admission.refuse_if_full(count)
    jobs: list[TranslationJob] = []
    problems = Problems()  # every text over the limit, named at once
    cells = 0  # the most the request's attention maps could hold
    for i, read in enumerate(split):
        parts, edged = read.parts, read.edged
        if not parts:  # nothing to translate: the text comes back as typed, and no model runs
            jobs.append(SentencesJob(src_ids=[], beam_size=beam, max_length=1, keep_attention=keep_attention,
                                     num_hypotheses=nbest, length_penalty=length_penalty, sampling=sampling,
                                     tail=read.kept))
            continue
        sentence_jobs = []
        over = False  # the text's first sentence over the limit is its one problem
        for k, core in enumerate(read.cores):
            # the limit counts subwords before the </s> the model appends
            ids = runner.tokenize(core)
            which = f" (sentence {read.numbers[k] + 1})" if read.split else ONE_SENTENCE
            over = over or not check_tokens(ids[:-1], model.card.max_input_tokens, item_field(field, i), model.name,
                                            problems, which)
            job = runner.job(ids, beam, max_length, keep_attention)
            # each sentence its own draw, repeatable from the request's seed
            number = read.numbers[k]
            drawn = sampling if sampling is None or not number else \
                replace(sampling, seed=(sampling.seed + number) % MAX_SEED)
            job.num_hypotheses, job.length_penalty, job.sampling = nbest, length_penalty, drawn
            sentence_jobs.append(job)
        if keep_attention:
            cells += sum(len(job.src_ids) for job in sentence_jobs) * sum(job.max_length for job in sentence_jobs)
            if cells > MAX_ATTENTION_CELLS:
                problems.check()  # the texts before it that break a limit, first
                raise InvalidInput(
                    f"{name('return_attention')}: the attention maps of this request could reach {cells:,} cells by "
                    f"{item_field(field, i)} ({len(parts)} sentence{'s' if len(parts) > 1 else ''}; each text's map is "
                    f"its source subwords x the sum of its sentences' max_length), over the limit of "
                    f"{MAX_ATTENTION_CELLS:,}; ask for them with fewer or shorter texts or a smaller max_length",
                    field=name("return_attention"), limit=MAX_ATTENTION_CELLS)
        if len(sentence_jobs) == 1 and edged[0] == ("", ""):
            jobs.append(sentence_jobs[0])
            continue
        first = sentence_jobs[0]
        jobs.append(SentencesJob(src_ids=[token for job in sentence_jobs for token in job.src_ids],
                                 beam_size=first.beam_size, max_length=first.max_length, keep_attention=keep_attention,
                                 num_hypotheses=nbest, length_penalty=length_penalty, sampling=sampling,
                                 sentences=sentence_jobs, separators=read.between,
                                 lead=edged[0][0], tail=edged[-1][1]))
    problems.check()
    return jobs


# A text's attention map is one matrix, every German subword by every English one, so it grows with
# the square of the text: 500 two-word sentences made a 24 MB answer and 280 MB of server memory from
# a 2 KB request. A request's maps are bounded by the most they could reach (each text's source
# subwords x the sum of its sentences' max_length), at about 4 MB of JSON: 64 captions, the longest
# one-sentence map (128 x 200 subwords) and a 600-character paragraph (the web page's limit for
# drawing one) fit; 64 texts of 40 short sentences each (12 MB) do not.
MAX_ATTENTION_CELLS = 524_288


def _decoded(job: TranslationJob) -> list[TranslationJob]:
    """The jobs the engine decodes for ``job``: its sentences, or itself."""
    return job.sentences if isinstance(job, SentencesJob) else [job]


async def translate(model: ServedModel, jobs: list[TranslationJob], deadline: float,
                    each: Each | None = None) -> list[TranslationOutput]:
    """Decode one request's jobs, batched with other requests (a text's sentences among them),
    one answer per job (``each``: the engine's answers as they come in, in order, a sentence's
    among them)."""
    engine = model.engine
    assert not isinstance(engine, SentimentEngine)
    decoded = [sentence for job in jobs for sentence in _decoded(job)]
    outputs = await engine.translate_all(decoded, deadline, each) if decoded else []
    if not any(isinstance(job, SentencesJob) for job in jobs):  # (one of one sentence has edges)
        return outputs
    runner = translator(model)
    answers, at = [], 0
    for job in jobs:
        count = len(_decoded(job))
        part = outputs[at:at + count]
        answers.append(joined(job, part, runner.length_penalty_of(job)) if isinstance(job, SentencesJob) else part[0])
        at += count
    return answers


def translator(model: ServedModel) -> TranslationRunner:
    """The model's translation runner, or 422 for a model that does not generate text."""
    runner = model.runner
    if not isinstance(runner, TranslationRunner):
        raise InvalidInput(f"model {model.name} does not generate text (task {model.card.task})", field="model")
    return runner


def source_tokens(runner: TranslationRunner, job: TranslationJob) -> list[str]:
    return runner.source_tokenizer.pieces(job.src_ids)  # ends with "</s>": one per attention column


def translation_result(model: ServedModel, job: TranslationJob, out: TranslationOutput) -> dict[str, Any]:
    runner = model.runner
    assert isinstance(runner, TranslationRunner)
    return {"translation": out.text(runner.detokenize),
            "source_tokens": source_tokens(runner, job),
            "target_tokens": runner.target_tokenizer.pieces(out.tokens),
            "score": float(out.score),
            "attention": None if out.attention is None
            else np.round(out.attention.astype(np.float64), ATTENTION_DECIMALS).tolist(),
            "model": model.name, "version": model.version, "finish_reason": out.finish_reason,
            **_search_extras(runner, job, out)}


def _search_extras(runner: TranslationRunner, job: TranslationJob, out: TranslationOutput) -> dict[str, Any]:
    """The n-best list and the sampling seed, when the request asked for them."""
    extras: dict[str, Any] = {}
    if out.hypotheses is not None:
        texts = out.hypothesis_texts(runner.detokenize)
        extras["hypotheses"] = [{"translation": text, "score": float(score),
                                 "target_tokens": runner.target_tokenizer.pieces(tokens)}
                                for (tokens, score), text in zip(out.hypotheses, texts, strict=True)]
    return extras | seed_of(job)


def seed_of(job: TranslationJob) -> dict[str, int]:
    """``{"seed": ...}`` for a sampled job (the seed drawn when the request gave none, so that the
    sample can be repeated), else nothing: what v1, v2 infer and generate return beside a sample."""
    return {"seed": job.sampling.seed} if job.sampling is not None else {}


def translate_stream(model: ServedModel, job: TranslationJob, deadline: float) -> TranslationStream:
    """Start decoding one job as a stream (service/streaming.py): the same engine call as
    ``translate``, with the job's step callback set; its events come from ``batches()``. A text
    of several sentences is admitted and decoded whole, and streamed sentence after sentence
    (``_SentenceAfterSentence``), each continuing the text where the one before ended."""
    runner = translator(model)
    width = len(job.src_ids) if job.keep_attention else None  # one attention column per source id
    stream = TranslationStream(model.name, model.version, job.beam_size, runner.target_tokenizer, width,
                               ATTENTION_DECIMALS)
    if not isinstance(job, SentencesJob):
        job.on_step = stream.push

        async def run() -> TranslationOutput:
            return (await translate(model, [job], deadline))[0]

        stream.start(run())
        return stream
    order = _SentenceAfterSentence(job, stream.push, width)

    async def run_sentences() -> TranslationOutput:
        return (await translate(model, [job], deadline, order.done))[0]

    stream.start(run_sentences())
    return stream


class _SentenceAfterSentence:
    """A text's sentences decode together, but the stream tells them one after another: the
    updates of the sentence being told go out as the whole text's (its tokens after those of
    the sentences before, its attention rows moved to its own columns of the text's ``width``);
    a later sentence's latest update is kept (an update holds every token so far) until the
    ones before it are done."""

    def __init__(self, job: SentencesJob, push: Callable[[StepUpdate], None], width: int | None) -> None:
        self.push, self.width = push, width
        self.columns = [len(sentence.src_ids) for sentence in job.sentences]
        self.separators = job.separators
        self.told = 0  # the sentence being told
        # what the sentences told before it gave (to begin with, the first one's beginning)
        self.before = StepUpdate(0, [], [] if width else None, ((0, job.lead),) if job.lead else ())
        self.column = 0  # its first column
        self.latest: dict[int, StepUpdate] = {}
        for index, sentence in enumerate(job.sentences):
            sentence.on_step = lambda update, index=index: self.step(index, update)

    def step(self, index: int, update: StepUpdate) -> None:
        if index == self.told:
            self.push(self._as_text(update))
        else:
            self.latest[index] = update

    def done(self, index: int, out: TranslationOutput) -> None:
        """The engine's answer for sentence ``index`` (all before it are in): the next is told."""
        rows = list(out.attention) if out.attention is not None and self.width else None
        told = self._as_text(StepUpdate(len(out.tokens) + 1, out.tokens, rows))
        separator = self.separators[index] if index < len(self.separators) else ""
        self.before = replace(told, breaks=(*told.breaks, (len(told.tokens), separator))) if separator else told
        self.column += self.columns[index]
        self.told = index + 1
        waiting = self.latest.pop(self.told, None)
        if waiting is not None:
            self.push(self._as_text(waiting))

    def _as_text(self, update: StepUpdate) -> StepUpdate:
        before, rows = self.before, None
        if before.attention is not None and update.attention is not None and self.width:
            rows = list(before.attention)
            for row in update.attention:
                placed = np.zeros(self.width, np.float32)
                placed[self.column:self.column + self.columns[self.told]] = row[:self.columns[self.told]]
                rows.append(placed)
        return StepUpdate(before.step + update.step, before.tokens + update.tokens, rows, before.breaks)
