"""service/charsets.py: a declared charset is read, and a body in it re-encoded as UTF-8."""

from __future__ import annotations

import pytest

from service.charsets import UnsupportedCharset, declared_charset, to_utf8


@pytest.mark.parametrize(("content_type", "codec"), [
    (None, None), (b"application/json", None), (b"application/json; charset=utf-8", None),
    (b"application/json;charset=UTF8", None), (b"application/json; charset=us-ascii", None),
    (b'application/json; charset="ISO-8859-1"', "iso8859-1"), (b"application/json; Charset=windows-1252", "cp1252"),
    (b"application/json; boundary=x; charset=utf-16", "utf-16"),
])
def test_the_charset_is_read_from_the_content_type(content_type: bytes | None, codec: str | None) -> None:
    assert declared_charset(content_type) == codec


@pytest.mark.parametrize("label", [b"klingon", b"base64", b"zlib", b"rot13", b""])
def test_unknown_and_non_text_charsets_are_refused(label: bytes) -> None:
    with pytest.raises(UnsupportedCharset, match="send the body in UTF-8"):
        declared_charset(b"application/json; charset=" + label)


def test_a_body_is_re_encoded_as_utf8_and_one_not_in_its_charset_is_refused() -> None:
    assert to_utf8('{"text": "Café “crème”"}'.encode("cp1252"), "cp1252") == '{"text": "Café “crème”"}'.encode()
    assert to_utf8('{"text": "日本"}'.encode("utf-16"), "utf-16") == '{"text": "日本"}'.encode()
    with pytest.raises(ValueError, match="not valid utf-16"):
        to_utf8(b'{"text": "x"}', "utf-16")  # an odd number of bytes
