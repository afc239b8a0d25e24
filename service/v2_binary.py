"""The binary tensor data of the Open Inference Protocol: one codec for HTTP and gRPC.

HTTP (Triton's binary tensor data extension): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by each binary tensor's bytes, in the order of
the tensors whose ``parameters.binary_data_size`` says how many bytes are theirs. gRPC's
``raw_input_contents`` / ``raw_output_contents`` carry the same per-tensor bytes. A BYTES tensor is
its elements, each a 4-byte little-endian length and then that many bytes; numeric tensors are
their values, little-endian, row-major.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Literal, get_args

import numpy as np

from service.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"

# the protocol's numeric datatypes and their little-endian numpy forms (BF16 has no numpy type)
NUMPY_TYPES: dict[str, str] = {
    "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
Datatype = Literal["BYTES", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "FP32", "FP64", "BF16"]
DATATYPES: tuple[str, ...] = get_args(Datatype)
_LENGTH = struct.Struct("<I")


def element_count(shape: list[int], field: str) -> int:
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{field} must not have negative dimensions: {shape}", field=field)
    return math.prod(shape)


def decode_tensor(datatype: str, shape: list[int], raw: bytes, field: str) -> list[Any]:
    """A tensor's values, flat: ``bytes`` items for BYTES, Python numbers otherwise."""
    count = element_count(shape, f"{field}.shape")
    if datatype == "BYTES":
        items: list[Any] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidInput(f"{field}: BYTES element {len(items)} has a truncated 4-byte length prefix",
                                   field=field)
            (size,) = _LENGTH.unpack_from(raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise InvalidInput(f"{field}: BYTES element {len(items)} says {size} bytes; "
                                   f"{len(raw) - offset} remain", field=field)
            items.append(raw[offset:offset + size])
            offset += size
        if len(items) != count:
            raise InvalidInput(f"{field}: {len(items)} BYTES elements, but shape {shape} holds {count}",
                               field=field, limit=count)
        return items
    dtype = NUMPY_TYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"{field}: binary data of datatype {datatype!r} cannot be read",
                           field=f"{field}.datatype", limit=list(DATATYPES))
    width = np.dtype(dtype).itemsize
    if len(raw) != count * width:
        raise InvalidInput(f"{field}: {len(raw)} bytes, but shape {shape} of {datatype} takes {count * width}",
                           field=field, limit=count * width)
    return list(np.frombuffer(raw, dtype=dtype).tolist())


def encode_tensor(datatype: str, data: list[str] | np.ndarray) -> bytes:
    """A tensor's bytes: length-prefixed UTF-8 elements for BYTES, raw little-endian values otherwise."""
    if datatype == "BYTES":
        parts = []
        for item in data:
            value = item.encode() if isinstance(item, str) else bytes(item)
            parts += [_LENGTH.pack(len(value)), value]
        return b"".join(parts)
    return np.ascontiguousarray(data, dtype=NUMPY_TYPES[datatype]).tobytes()


def split_body(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """(the JSON header, the binary tensor data after it)."""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length must be a byte count, not {header_length!r}",
                           field="Inference-Header-Content-Length") from None
    if not 0 < length <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {length} is outside the body's {len(body)} bytes",
                           field="Inference-Header-Content-Length", limit=len(body))
    return body[:length], body[length:]


def take_binary(sizes: list[tuple[str, int]], tail: bytes) -> dict[str, bytes]:
    """Cut the binary tail into the named tensors' slices, in order; all of it must be claimed."""
    out: dict[str, bytes] = {}
    offset = 0
    for field, size in sizes:
        if size < 0:
            raise InvalidInput(f"{field}.parameters.binary_data_size must not be negative; got {size}",
                               field=f"{field}.parameters.binary_data_size", limit=[0, len(tail) - offset])
        if offset + size > len(tail):
            raise InvalidInput(f"{field}.parameters.binary_data_size {size} runs past the body's binary data "
                               f"({len(tail) - offset} bytes left)", field=f"{field}.parameters.binary_data_size")
        out[field] = tail[offset:offset + size]
        offset += size
    if offset != len(tail):
        raise InvalidInput(f"{len(tail) - offset} bytes of binary data after the header belong to no input",
                           field="body")
    return out
