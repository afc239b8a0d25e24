"""Streaming one translation step by step, for Server-Sent Events adapters (v1 and v2 generate).

The decode lane hands a streamed request a ``StepUpdate`` after its first decoder step and then
at most every ``STREAM_INTERVAL_MS`` (delivered on the event loop, batched with every other
stream's updates of that step; an update holds every token so far, so steps in between are not
lost). ``TranslationStream`` turns them into events that do not depend on a wire format:

- greedy (beam 1): one ``Delta`` per new target token: the token, the text it adds (incremental
  detokenisation: the deltas concatenate to the final translation, byte-fallback pieces
  included: a delta waits while the text ends in an incomplete UTF-8 sequence) and, when asked,
  its attention row;
- beam search: a ``Partial`` whenever the best live beam (highest summed log-probability) at an
  update differs from the last one sent; it is the whole current text, since a beam may revise
  earlier words;
- at the end, any deltas not yet sent (greedy: the step that hit the length limit), then ``Final``
  with the same result as the non-streamed call, or ``Failed`` with the error.

Detokenising and formatting happen here, on the event loop, never on the decode thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import metrics
from service.access_log import CURRENT_REQUEST_ID
from service.decoding import Breaks, StepUpdate, laid_out
from service.errors import InferenceFailed, ServiceError
from service.runners.translation import TranslationOutput
from service.tokenization import SubwordTokenizer

log = logging.getLogger("seqserve.stream")
_REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 byte sequence decodes to, for now


@dataclass(frozen=True)
class Delta:
    index: int  # position of the token in the translation
    token: str  # its subword piece
    text: str  # what it adds to the translation ("" while a byte sequence is incomplete)
    attention: list[float] | None


@dataclass(frozen=True)
class Partial:
    step: int
    tokens: list[int]
    text: str


@dataclass(frozen=True)
class Final:
    output: TranslationOutput


@dataclass(frozen=True)
class Failed:
    error: ServiceError


Event = Delta | Partial | Final | Failed


class TextDeltas:
    """Incremental detokenisation: decode the tokens so far and send what the text gained.

    Sentencepiece decodes a prefix of the tokens to a prefix of the final text, except while the
    last pieces are the first bytes of a multi-byte character (decoded as U+FFFD): then nothing
    is sent until the character is whole. ``finish`` sends the rest of the final text.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], piece_texts: Sequence[str | None] = ()) -> None:
        self.decode = decode
        self.sent = ""
        # one ordinary piece after text already sent adds its own text: no decode needed (a decode
        # per step was a quarter of the event loop's time at 64 streams); anything else decodes
        self.piece_texts = piece_texts
        self._fed = 0  # tokens the text in ``sent`` (or held back) accounts for
        self._whole = True  # ``sent`` is the decoded text of the tokens fed (nothing held back)

    def feed(self, tokens: Sequence[int], breaks: Breaks = ()) -> str:
        """What the text gained with ``tokens`` (all so far; ``breaks``: the line breaks between
        sentences told so far, service/decoding.py)."""
        if self.piece_texts and self._whole and self.sent and self._fed == len(tokens) - 1 \
                and (not breaks or breaks[-1][0] < len(tokens) - 1):
            text = self.piece_texts[tokens[-1]]
            if text is not None:
                self.sent += text
                self._fed = len(tokens)
                return text
        text = laid_out(self.decode, tokens, breaks)
        self._fed = len(tokens)
        self._whole = not text.endswith(_REPLACEMENT) and text.startswith(self.sent)
        if not self._whole:
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self, text: str) -> str:
        if not text.startswith(self.sent):  # cannot happen with sentencepiece; never send a wrong concatenation
            raise InferenceFailed("streamed text is not a prefix of the translation")
        delta, self.sent = text[len(self.sent):], text
        return delta


def round_row(row: np.ndarray, width: int, decimals: int) -> list[float]:
    """An attention row as the non-streamed result rounds it, ``width`` columns."""
    rounded: list[float] = np.round(row[:width].astype(np.float64), decimals).tolist()
    return rounded


class TranslationStream:
    """One streamed translation: ``start``, then ``push`` (event loop, from the lane's hand-over)
    feeds ``batches``; ``stop`` when the client leaves."""

    def __init__(self, model: str, version: str, beam_size: int, target: SubwordTokenizer,
                 attention_width: int | None, attention_decimals: int) -> None:
        self.model = model
        self.version = version
        self.greedy = beam_size == 1
        self.decode = target.decode
        self.pieces = target.pieces
        self.attention_width = attention_width  # columns per row when attention is streamed
        self.attention_decimals = attention_decimals
        self.deltas = TextDeltas(target.decode, target.piece_texts)
        self._pending: list[StepUpdate] = []
        self._wake: asyncio.Future[None] | None = None
        self._sent_tokens = 0  # greedy: tokens already sent as deltas
        self._last: list[int] | None = None  # beam: the last hypothesis sent
        self._task: asyncio.Future[TranslationOutput] | None = None
        self._started = 0.0
        self._stopped = False

    def push(self, update: StepUpdate) -> None:
        self._pending.append(update)
        self._signal()

    def _signal(self, *_: object) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _deltas(self, tokens: list[int], rows: Sequence[np.ndarray | None], breaks: Breaks) -> list[Event]:
        """Deltas for tokens[sent:], with their attention rows (aligned with those tokens)."""
        out: list[Event] = []
        for index in range(self._sent_tokens, len(tokens)):
            at = index - self._sent_tokens
            row = rows[at] if at < len(rows) else None
            attention = round_row(row, self.attention_width, self.attention_decimals) \
                if row is not None and self.attention_width else None
            text = self.deltas.feed(tokens[: index + 1], breaks)
            out.append(Delta(index, self.pieces(tokens[index:index + 1])[0], text, attention))
        self._sent_tokens = len(tokens)
        return out

    def _events_for(self, update: StepUpdate) -> list[Event]:
        if self.greedy:
            return self._deltas(update.tokens, update.attention[self._sent_tokens:] if update.attention else [],
                                update.breaks)
        if update.tokens == self._last:
            return []
        self._last = update.tokens
        return [Partial(update.step, update.tokens, laid_out(self.decode, update.tokens, update.breaks))]

    def _final_events(self, output: TranslationOutput) -> list[Event]:
        out: list[Event] = []
        if self.greedy:
            rows = list(output.attention[self._sent_tokens:]) if output.attention is not None else []
            out = self._deltas(output.tokens, rows, output.breaks)
            rest = self.deltas.finish(output.text(self.decode))
            if rest:  # only an incomplete byte sequence at the very end: no token of its own
                out.append(Delta(len(output.tokens), "", rest, None))
        return [*out, Final(output)]

    def start(self, run: Awaitable[TranslationOutput]) -> None:
        """Run the translation (``run``: the engine call with ``push`` as its step callback)."""
        self._task = asyncio.ensure_future(run)
        self._task.add_done_callback(self._signal)
        self._started = time.monotonic()

    def stop(self) -> None:
        """The client left: end ``batches`` and cancel the run, which takes the request out of the
        decode batch at the next step."""
        self._stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._signal()

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        """The events as they come, in batches: all those ready when the stream wakes (usually one
        decoder step's), so that a busy server writes them at once. The last batch ends with
        ``Final`` or ``Failed``; closing the iterator early cancels the run."""
        task = self._task
        assert task is not None, "start() first"
        loop = asyncio.get_running_loop()
        first = True
        try:
            while not self._stopped:
                if not self._pending and not task.done():
                    self._wake = loop.create_future()
                    await self._wake
                    if self._stopped:
                        return
                updates, self._pending = self._pending, []
                events = self._ready_events(updates, task)
                if not events:
                    continue
                if first:
                    metrics.STREAM_FIRST_EVENT.labels(self.model, self.version).observe(
                        time.monotonic() - self._started)
                    first = False
                last = events[-1]
                if isinstance(last, Final):
                    elapsed = time.monotonic() - self._started
                    metrics.STREAM_TOKENS_PER_SECOND.labels(self.model, self.version).observe(
                        len(last.output.tokens) / elapsed if elapsed > 0 else 0.0)
                yield events
                if isinstance(last, Final | Failed):
                    return
        finally:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: an error nobody reads (the client left) is not logged as lost

    def _ready_events(self, updates: list[StepUpdate], task: asyncio.Future[TranslationOutput]) -> list[Event]:
        """The events for these updates, and the end if the run is over. A fault while building them
        (detokenising, say) ends the stream with a ``Failed``: the status line is gone already,
        and the client is owed an ``error`` event, not a cut-off stream."""
        events: list[Event] = []
        try:
            for update in updates:
                events += self._events_for(update)
            if task.done() and not self._pending:
                events += self._finish(task)
        except ServiceError as error:
            events.append(Failed(error))
        except Exception:
            log.exception("streamed translation failed on model %s (request %s)", self.model,
                          CURRENT_REQUEST_ID.get() or "unknown")
            events.append(Failed(InferenceFailed(f"inference failed on model {self.model}")))
        if events and isinstance(events[-1], Failed) and not task.done():
            task.cancel()
        return events

    def _finish(self, task: asyncio.Future[TranslationOutput]) -> list[Event]:
        if task.cancelled():
            return [Failed(InferenceFailed("the translation was cancelled"))]
        error = task.exception()
        if error is None:
            return self._final_events(task.result())
        if isinstance(error, ServiceError):
            return [Failed(error)]
        return [Failed(InferenceFailed(f"inference failed on model {self.model}: {type(error).__name__}"))]


class TextPieces:
    """A streamed translation's events as pieces of text that concatenate to the translation
    (generate_stream's ``text_output``, the translation of a gRPC stream's responses): a greedy
    delta, its text; a beam search's partial result, an empty piece and its best hypothesis so
    far; the end, what completes the translation after the pieces sent (all of it if they do not
    begin it)."""

    def __init__(self, detokenize: Callable[[Sequence[int]], str]) -> None:
        self._detokenize = detokenize
        self._sent: list[str] = []

    def piece(self, event: Delta | Partial | Final) -> tuple[str, str | None]:
        """(the piece, the best hypothesis so far where the event carries one)."""
        if isinstance(event, Delta):
            self._sent.append(event.text)
            return event.text, None
        if isinstance(event, Partial):
            return "", event.text
        text, sent = event.output.text(self._detokenize), "".join(self._sent)
        return (text[len(sent):] if text.startswith(sent) else text), None


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    """One Server-Sent Event; the JSON has no raw newline, so it is one data line."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


# how json.dumps(ensure_ascii=False) writes a str (its C implementation, quotes included)
_json_str: Callable[[str], str] = json.encoder.encode_basestring


def delta_sse(index: int, token: str, text: str) -> bytes:
    """``sse({"index": index, "token": token, "text": text}, event="delta")``, byte for byte, in
    1 us instead of 9: a greedy stream sends one per target token, on the event loop."""
    data = f'{{"index": {index:d}, "token": {_json_str(token)}, "text": {_json_str(text)}}}'
    return f"event: delta\ndata: {data}\n\n".encode()
