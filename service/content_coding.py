"""Request bodies sent compressed: ``Content-Encoding: gzip`` or ``deflate``.

tritonclient's ``request_compression_algorithm`` sends them, and Triton takes them. They are
decoded before the app reads them (service/middleware.py), within the same size limit as a plain
body: a body of a few kilobytes can unpack to gigabytes, so decoding stops one byte past the limit.
Other codings (br, zstd, several stacked) are refused with 415 naming the ones taken.
"""

from __future__ import annotations

import zlib

ACCEPTED = "gzip, deflate"  # the Accept-Encoding of a 415 (RFC 7694)
_CODINGS = {b"gzip": "gzip", b"x-gzip": "gzip", b"deflate": "deflate"}


class UnsupportedCoding(ValueError):
    pass


class DecodedTooLarge(ValueError):
    pass


def content_coding(headers: dict[bytes, bytes]) -> str | None:
    """The body's coding, "gzip" or "deflate"; None for none (or identity). Raises
    UnsupportedCoding for any other, or for several applied one over the other."""
    declared = headers.get(b"content-encoding")
    if declared is None:
        return None
    codings = [c.strip().lower() for c in declared.split(b",") if c.strip().lower() not in (b"", b"identity")]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _CODINGS:
        raise UnsupportedCoding(f"Content-Encoding {declared.decode('latin-1')!r} is not supported: send the "
                                f"body as it is, or with one of {ACCEPTED}")
    return _CODINGS[codings[0]]


def decode(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` decoded. Raises DecodedTooLarge past ``limit`` bytes, ValueError if it is not whole,
    valid data of its coding. Deflate is the zlib format (RFC 9110), or raw deflate as some clients
    send it."""
    # 47: a gzip or zlib header, detected; -15: raw deflate
    for wbits in (47,) if coding == "gzip" else (47, -15):
        decoder = zlib.decompressobj(wbits)
        try:
            decoded = decoder.decompress(body, limit + 1)
        except zlib.error as exc:
            problem = str(exc)
            continue
        if len(decoded) > limit:
            raise DecodedTooLarge(f"the body decodes to more than {limit} bytes")
        if not decoder.eof or decoder.unused_data:
            problem = "it ends early" if not decoder.eof else "bytes follow its end"
            continue
        return decoded
    raise ValueError(f"the body is not valid {coding} data ({problem})")
