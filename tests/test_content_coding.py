"""service/content_coding.py: which codings are taken, and decoding within the size limit."""

from __future__ import annotations

import gzip
import zlib

import pytest

from service.content_coding import DecodedTooLarge, UnsupportedCoding, content_coding, decode


@pytest.mark.parametrize(("declared", "coding"), [
    (None, None), (b"identity", None), (b"GZIP", "gzip"), (b"x-gzip", "gzip"), (b" deflate ", "deflate"),
    (b"identity, gzip", "gzip"),
])
def test_the_coding_is_read_from_the_header(declared: bytes | None, coding: str | None) -> None:
    assert content_coding({} if declared is None else {b"content-encoding": declared}) == coding


@pytest.mark.parametrize("declared", [b"br", b"zstd", b"gzip, gzip", b"gzip, deflate"])
def test_other_codings_and_stacked_ones_are_refused(declared: bytes) -> None:
    with pytest.raises(UnsupportedCoding, match="gzip, deflate"):
        content_coding({b"content-encoding": declared})


def test_bodies_decode_in_each_coding_and_stop_past_the_limit() -> None:
    body = b'{"text": "A fine film."}' * 10
    raw = zlib.compressobj(wbits=-15)
    for coding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                         ("deflate", raw.compress(body) + raw.flush())):  # raw deflate, as some clients send
        assert decode(data, coding, len(body)) == body
    with pytest.raises(DecodedTooLarge):
        decode(gzip.compress(body), "gzip", len(body) - 1)
    # several gzip members one after another (RFC 1952), as `cat a.gz b.gz` or pigz give: one body
    assert decode(gzip.compress(body[:7]) + gzip.compress(body[7:]), "gzip", len(body)) == body
    with pytest.raises(DecodedTooLarge):
        decode(gzip.compress(body[:7]) + gzip.compress(body[7:]), "gzip", len(body) - 1)
    for bad in (gzip.compress(body)[:-9], gzip.compress(body) + b"x", b"not compressed",
                gzip.compress(body) + gzip.compress(body)[:-9]):
        with pytest.raises(ValueError, match="not valid gzip data"):
            decode(bad, "gzip", 1 << 20)
