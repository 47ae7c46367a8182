"""A checkpoint state as JSON plus ``.npy`` arrays: loading it runs no code.

``encode`` turns plain data (dicts, lists, tuples, str, int, float, bool, None, bytes,
NumPy arrays and scalars of non-object dtype) into a JSON document and a list of arrays;
anything else makes it return None and the store falls back to pickle, which it loads only
when signed or explicitly allowed (as ``torch.load(weights_only=True)`` and safetensors
refuse code by default). Arrays are written as ``.npy`` (header + raw bytes, no copy) and
read back with ``allow_pickle=False`` semantics from the very buffer that was verified.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

__all__ = ["decode", "decode_npy", "encode", "npy_buffers"]

_TAG = "$t"
_HEADER_LIMIT = 2**20  # an .npy header is a few hundred bytes


def encode(state: Any) -> tuple[bytes, list[np.ndarray]] | None:
    """``(json_bytes, arrays)`` for plain data; None when the state needs pickle."""
    arrays: list[np.ndarray] = []
    try:
        doc = _encode(state, arrays)
    except _NotPlain:
        return None
    return json.dumps(doc, allow_nan=True, separators=(",", ":")).encode(), arrays


def decode(document: bytes | bytearray | memoryview, arrays: list[np.ndarray]) -> Any:
    """Inverse of :func:`encode`; ValueError on anything malformed."""
    try:
        doc = json.loads(bytes(document))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"state document is not valid JSON: {exc}"
        raise ValueError(msg) from exc
    return _decode(doc, arrays)


class _NotPlain(Exception):
    pass


def _encode(value: Any, arrays: list[np.ndarray]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):  # before int/float: np.float64 is a float
        return _array(np.asarray(value), arrays, scalar=True)
    if isinstance(value, int) and type(value) is int:
        return value
    if isinstance(value, float) and type(value) is float:
        return value
    if isinstance(value, np.ndarray):
        return _array(value, arrays, scalar=False)
    if type(value) is list:
        return [_encode(v, arrays) for v in value]
    if type(value) is tuple:
        return {_TAG: "tuple", "v": [_encode(v, arrays) for v in value]}
    if type(value) is dict:
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: _encode(v, arrays) for k, v in value.items()}
        return {
            _TAG: "dict",
            "v": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()],
        }
    if type(value) is bytes:
        return {_TAG: "bytes", "v": value.hex()}
    raise _NotPlain


def _array(value: np.ndarray, arrays: list[np.ndarray], *, scalar: bool) -> dict[str, Any]:
    if value.dtype.hasobject:
        raise _NotPlain
    arrays.append(value)
    return {_TAG: "scalar" if scalar else "array", "i": len(arrays) - 1}


def _decode(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {k: _decode(v, arrays) for k, v in value.items()}
    if tag in ("array", "scalar"):
        index = value.get("i")
        if not isinstance(index, int) or not 0 <= index < len(arrays):
            msg = f"state refers to array {index!r}, which the checkpoint does not hold"
            raise ValueError(msg)
        array = arrays[index]
        return array[()] if tag == "scalar" else array
    if tag == "tuple":
        return tuple(_decode(v, arrays) for v in value["v"])
    if tag == "dict":
        return {_decode(k, arrays): _decode(v, arrays) for k, v in value["v"]}
    if tag == "bytes":
        return bytes.fromhex(value["v"])
    msg = f"unknown tag {tag!r} in the state document"
    raise ValueError(msg)


def npy_buffers(array: np.ndarray) -> list[bytes | memoryview]:
    """The ``.npy`` file of ``array`` as buffers to write: its header, then its bytes
    (a view, not a copy, when the array is contiguous)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, np.lib.format.header_data_from_array_1_0(array))
    data: bytes | memoryview
    if not array.size:
        data = b""
    elif array.flags.c_contiguous:
        data = memoryview(array.ravel(order="C").view(np.uint8))  # type: ignore[arg-type]
    elif array.flags.f_contiguous:  # its header says fortran_order: the bytes as they lie
        data = memoryview(array.ravel(order="F").view(np.uint8))  # type: ignore[arg-type]
    else:
        data = array.tobytes("C")
    return [header.getvalue(), data]


def decode_npy(buffer: bytearray | memoryview) -> np.ndarray:
    """An array from the bytes of a ``.npy`` file, sharing them (never unpickles)."""
    stream = io.BytesIO(bytes(memoryview(buffer)[:_HEADER_LIMIT]))  # the header only
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        msg = f"unsupported .npy version {version}"
        raise ValueError(msg)
    if dtype.hasobject:
        msg = "the array holds Python objects; loading it would unpickle (refused)"
        raise ValueError(msg)
    count = int(np.prod(shape, dtype=np.int64))
    offset = stream.tell()
    if len(buffer) - offset != count * dtype.itemsize:
        msg = (
            f"array data is {len(buffer) - offset} bytes, its header says {count * dtype.itemsize}"
        )
        raise ValueError(msg)
    flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")
