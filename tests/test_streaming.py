"""Streaming building blocks (service/streaming.py): incremental detokenisation and SSE framing."""

from __future__ import annotations

import gzip
import json

import pytest

from service.streaming import TextDeltas, sse
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
    "Ein Hund 😀 läuft ő ṩ 日本",  # byte-fallback pieces: 2-, 3- and 4-byte characters
    "😀😀 ab",
    "Straße  mit   Leerzeichen ",
])
def test_deltas_concatenate_to_the_decoded_text(target: SubwordTokenizer, text: str) -> None:
    ids = target.encode(text)
    deltas = _stream(target, ids)
    assert "".join(deltas) == target.decode(ids)
    assert not any("\ufffd" in d for d in deltas)  # a partial character is never sent


def test_a_character_split_over_byte_pieces_arrives_whole(target: SubwordTokenizer) -> None:
    ids = target.encode("Hund 😀")
    pieces = target.pieces(ids)
    assert sum(p.startswith("<0x") for p in pieces) == 4
    deltas = _stream(target, ids)
    assert "😀" in deltas  # held back over the first three bytes, sent whole with the fourth


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
