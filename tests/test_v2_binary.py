"""The binary tensor codec (service/v2_binary.py) against tritonclient's own encoders."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.errors import InvalidInput
from service.v2_binary import decode_tensor, encode_tensor, split_body, take_binary


def test_bytes_round_trip_with_the_clients_encoding() -> None:
    texts = ["A gorgeous movie.", "", "Zwei Hunde spielen im Schnee. äöü"]
    raw = serialize_byte_tensor(np.array([t.encode() for t in texts], dtype=np.object_)).item()
    assert decode_tensor("BYTES", [3], raw, "inputs.text") == [t.encode() for t in texts]
    assert encode_tensor("BYTES", texts) == raw
    assert [b.decode() for b in deserialize_bytes_tensor(encode_tensor("BYTES", texts))] == texts


def test_numeric_tensors_are_little_endian_row_major() -> None:
    values = np.array([[0.25, -1.5], [3.0, 1e-3]], dtype=np.float32)
    assert encode_tensor("FP32", values) == values.astype("<f4").tobytes()
    assert decode_tensor("FP32", [2, 2], values.tobytes(), "x") == pytest.approx(values.ravel().tolist())
    assert decode_tensor("INT64", [3], np.array([1, -2, 3], dtype="<i8").tobytes(), "x") == [1, -2, 3]


@pytest.mark.parametrize(("datatype", "shape", "raw", "field", "words"), [
    ("BYTES", [2], struct.pack("<I", 2) + b"ab", "inputs.text", "1 BYTES elements"),
    ("BYTES", [1], struct.pack("<I", 9) + b"ab", "inputs.text", "says 9 bytes"),
    ("BYTES", [1], b"\x01\x00", "inputs.text", "truncated"),
    ("FP32", [3], b"\x00" * 8, "inputs.text", "takes 12"),
    ("BF16", [1], b"\x00\x00", "inputs.text.datatype", "cannot be read"),
    ("FP32", [-1], b"", "inputs.text.shape", "negative"),
])
def test_malformed_binary_data_is_a_clear_422(datatype: str, shape: list[int], raw: bytes, field: str,
                                              words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_tensor(datatype, shape, raw, "inputs.text")
    assert err.value.field == field and words in err.value.message


def test_body_split_and_binary_slices() -> None:
    header, tail = split_body(b'{"a":1}xyzw', "7")
    assert (header, tail) == (b'{"a":1}', b"xyzw")
    assert take_binary([("inputs.a", 3), ("inputs.b", 1)], tail) == {"inputs.a": b"xyz", "inputs.b": b"w"}
    for length in ("0", "99", "seven"):
        with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
            split_body(b'{"a":1}', length)
    with pytest.raises(InvalidInput, match="belong to no input"):
        take_binary([("inputs.a", 3)], tail)
    with pytest.raises(InvalidInput, match="runs past"):
        take_binary([("inputs.a", 5)], tail)
    with pytest.raises(InvalidInput, match="must not be negative"):
        take_binary([("inputs.a", -1)], tail)
