"""Request bodies in a declared charset other than UTF-8.

JSON between systems must be UTF-8 (RFC 8259 8.1), and ``application/json`` defines no charset
parameter; yet clients declare one, and some send what they declare: Java's ``StringEntity`` and
older .NET and PHP clients with ``application/json; charset=ISO-8859-1`` and Latin-1 bytes. Read
as UTF-8, "Café" in Latin-1 was a 422 about invalid JSON, and a Windows-1252 quotation mark
another. Such a body is now read in the charset it declares and re-encoded as UTF-8 before the app
parses it (service/middleware.py); a charset Python does not know, or one that is not a text
encoding, gets 415 naming Content-Type.
"""

from __future__ import annotations

import codecs

# what the parser reads as it is (ASCII is UTF-8); UTF-8 with a BOM is taken by the parser too
_AS_IS = frozenset({"utf-8", "ascii"})


class UnsupportedCharset(ValueError):
    pass


def declared_charset(content_type: bytes | None) -> str | None:
    """The codec of ``content_type``'s charset parameter, as Python names it; None when none is
    declared, or for UTF-8 or ASCII. Raises UnsupportedCharset for an unknown or non-text one."""
    if content_type is None or b"charset" not in content_type.lower():
        return None
    for parameter in content_type.split(b";")[1:]:
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() != b"charset":
            continue
        label = value.strip().strip(b'"').decode("latin-1")
        try:
            codec = codecs.lookup(label)
        except LookupError:
            codec = None
        if codec is None or not getattr(codec, "_is_text_encoding", True):  # base64, zlib, rot13...
            raise UnsupportedCharset(f"charset {label!r} is not a text encoding this server knows: send the "
                                     "body in UTF-8")
        return None if codec.name in _AS_IS else codec.name
    return None


def to_utf8(body: bytes, charset: str) -> bytes:
    """``body``, read in ``charset``, as UTF-8. Raises ValueError where it is not valid ``charset``."""
    try:
        return body.decode(charset).encode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not valid {charset}: byte {exc.start} cannot be read") from None
