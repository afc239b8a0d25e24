"""Streaming building blocks (service/streaming.py, service/event_stream.py): incremental
detokenisation, SSE framing, faults mid-stream."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from service.decoding import StepUpdate
from service.event_stream import EventStreamResponse
from service.runners.translation import TranslationOutput
from service.streaming import Delta, Failed, TextDeltas, TranslationStream, delta_sse, sse
from service.tokenization import SubwordTokenizer
from tests.conftest import COMMITTED_MODELS, DATA_DIR

TARGET_SPM = COMMITTED_MODELS / "translate-en-de" / "1" / "target.spm.model"


@pytest.fixture(scope="module")
def target() -> SubwordTokenizer:
    if not TARGET_SPM.exists():
        pytest.skip("no committed translator")
    return SubwordTokenizer(TARGET_SPM, "translation")


def _stream(tokenizer: SubwordTokenizer, ids: list[int], table: bool = True) -> list[str]:
    # with the piece table (as the service streams) and without it (a decode every step)
    deltas = TextDeltas(tokenizer.decode, tokenizer.piece_texts if table else ())
    out = [deltas.feed(ids[: k + 1]) for k in range(len(ids))]
    out.append(deltas.finish(tokenizer.decode(ids)))
    return out


@pytest.mark.parametrize("text", [
    "Ein Hund läuft über die Wiese.",
    # byte-fallback pieces: 2-, 3- and 4-byte characters (a rare CJK one: emoji are not read,
    # service/tokenization.py, but a character the target model cannot spell is spelled in bytes)
    "Ein Hund 𠜎 läuft ő ṩ 日本",
    "𠜎𠜎 ab",
    "Straße  mit   Leerzeichen ",
])
def test_deltas_concatenate_to_the_decoded_text(target: SubwordTokenizer, text: str) -> None:
    ids = target.encode(text)
    deltas = _stream(target, ids)
    assert "".join(deltas) == target.decode(ids)
    assert not any("\ufffd" in d for d in deltas)  # a partial character is never sent


def test_deltas_keep_the_line_breaks_between_sentences(target: SubwordTokenizer) -> None:
    """A text of several lines: the breaks between sentences go out with the stream (with and
    without the piece table) and the deltas still concatenate to the laid-out translation."""
    from service.decoding import laid_out

    first, second = target.encode("Ein Hund läuft."), target.encode("Zwei Katzen 𠜎 schlafen.")
    ids, breaks = first + second, ((len(first), "\n\n"),)
    expected = "Ein Hund läuft.\n\nZwei Katzen 𠜎 schlafen."
    assert laid_out(target.decode, ids, breaks) == expected
    for table in (True, False):
        deltas = TextDeltas(target.decode, target.piece_texts if table else ())
        # the break is known once the first sentence is done, as the stream learns it
        sent = [deltas.feed(ids[: k + 1], breaks if k + 1 >= len(first) else ()) for k in range(len(ids))]
        assert "".join(sent) + deltas.finish(expected) == expected


def test_a_character_split_over_byte_pieces_arrives_whole(target: SubwordTokenizer) -> None:
    ids = target.encode("Hund 𠜎")
    pieces = target.pieces(ids)
    assert sum(p.startswith("<0x") for p in pieces) == 4
    deltas = _stream(target, ids)
    assert "𠜎" in deltas  # held back over the first three bytes, sent whole with the fourth


def test_deltas_on_val_references(target: SubwordTokenizer) -> None:
    path = DATA_DIR / "multi30k" / "val.de.gz"
    if not path.exists():
        pytest.skip("no Multi30k val")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line, _ in zip(f, range(300), strict=False)]
    for line in lines:
        ids = target.encode(line)
        for table in (True, False):
            assert "".join(_stream(target, ids, table)) == target.decode(ids), line
            # each delta is what the text gained: the same with and without the table
        assert _stream(target, ids, True) == _stream(target, ids, False), line


def test_unknown_tokens_and_specials(target: SubwordTokenizer) -> None:
    ids = [1, *target.encode("Hund"), 1]  # <unk> decodes to " ⁇ "
    assert "".join(_stream(target, ids)) == target.decode(ids)


def test_sse_frames_one_json_data_line() -> None:
    frame = sse({"text": "zwei\nZeilen", "ü": 1}, event="delta")
    assert frame.endswith(b"\n\n") and frame.count(b"\n") == 3
    head, data = frame.decode().strip().split("\n")
    assert head == "event: delta"
    assert json.loads(data.removeprefix("data: ")) == {"text": "zwei\nZeilen", "ü": 1}
    assert sse({"a": 1}) == b'data: {"a": 1}\n\n'


@pytest.mark.parametrize("token,text", [("▁Ein", " Ein"), ('"', "\\"), ("\n\t\x00\x1f", "\u2028 ü 😀"), ("", "")])
def test_a_delta_event_is_formatted_as_sse_formats_it(token: str, text: str) -> None:
    assert delta_sse(7, token, text) == sse({"index": 7, "token": token, "text": text}, event="delta")


async def test_a_fault_after_the_first_event_ends_the_stream_with_a_failed_event(
        target: SubwordTokenizer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from service.access_log import CURRENT_REQUEST_ID

    CURRENT_REQUEST_ID.set("stream-3")  # as the middleware sets it for each request's task
    stream = TranslationStream("m", "1", 1, target, None, 7)
    run: asyncio.Future[TranslationOutput] = asyncio.get_running_loop().create_future()  # decoding, never done
    stream.start(run)
    batches = stream.batches()
    ids = target.encode("Ein Hund läuft.")
    stream.push(StepUpdate(1, ids[:1]))
    assert isinstance((await anext(batches))[0], Delta)
    monkeypatch.setattr(stream.deltas, "feed", lambda tokens: 1 / 0)  # a bug while detokenising
    stream.push(StepUpdate(2, ids[:2]))
    last = (await anext(batches))[-1]
    assert isinstance(last, Failed) and last.error.body()["code"] == "inference_failed"
    assert "streamed translation failed on model m (request stream-3)" in caplog.text  # the line names it
    await asyncio.sleep(0)
    assert run.cancelled()  # the decoding is stopped, not left running for nobody
    with pytest.raises(StopAsyncIteration):
        await anext(batches)


async def test_an_event_stream_whose_first_send_fails_stops_the_work_behind_it() -> None:
    stopped: list[bool] = []
    closed: list[bool] = []

    async def chunks() -> AsyncGenerator[tuple[bytes, bool], None]:
        try:
            yield b"data: {}\n\n", True
        finally:
            closed.append(True)

    async def send(message: dict[str, Any]) -> None:
        raise OSError("connection reset")

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(OSError):
        await EventStreamResponse(chunks(), lambda: stopped.append(True))({"type": "http"}, receive, send)
    assert stopped == [True]
