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
    send it. Gzip data may be several members one after another (RFC 1952; what concatenated
    ``.gz`` files and parallel compressors give), decoded as one."""
    problem = ""
    # 47: a gzip or zlib header, detected; -15: raw deflate
    for wbits in (47,) if coding == "gzip" else (47, -15):
        try:
            return _members(body, wbits, limit, coding == "gzip")
        except zlib.error as exc:
            problem = str(exc)
        except _NotWhole as exc:
            problem = str(exc)
    raise ValueError(f"the body is not valid {coding} data ({problem})")


class _NotWhole(ValueError):
    pass


def _members(body: bytes, wbits: int, limit: int, several: bool) -> bytes:
    decoded: list[bytes] = []
    size = 0
    while True:
        decoder = zlib.decompressobj(wbits)
        part = decoder.decompress(body, limit + 1 - size)
        size += len(part)
        if size > limit:
            raise DecodedTooLarge(f"the body decodes to more than {limit} bytes")
        decoded.append(part)
        if not decoder.eof:
            raise _NotWhole("it ends early")
        body = decoder.unused_data
        if not body:
            return b"".join(decoded)
        if not (several and body.startswith(b"\x1f\x8b")):  # another gzip member's magic number
            raise _NotWhole("bytes follow its end")
