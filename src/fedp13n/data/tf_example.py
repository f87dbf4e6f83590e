"""A minimal decoder of serialized ``tf.train.Example`` protocol buffers, without TensorFlow.

Why: TFF's current EMNIST distribution (``emnist_all.sqlite``) stores each example as a
serialized ``tf.train.Example``; depending on TensorFlow or protobuf only to read two
features would be a heavy dependency. The messages involved are tiny::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   // entries: key = 1, value = 2
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                        Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

The decoder follows the protobuf wire format (varints, length-delimited fields, fixed
32/64-bit fields), accepts packed and unpacked repeated scalars, and skips unknown fields.
"""

from __future__ import annotations

import numpy as np

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtoDecodeError(ValueError):
    """The bytes are not a well-formed ``tf.train.Example``."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtoDecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if result >> 64:
                raise ProtoDecodeError("varint does not fit in 64 bits")
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoDecodeError("varint longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int):
    """Yield ``(field_number, wire_type, value_or_start, stop)`` for each field in a span.

    For length-delimited fields the value is the span ``[start, stop)``; for scalars the
    decoded integer (fixed-width ones as raw little-endian integers) and ``stop`` = -1.
    """
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ProtoDecodeError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, -1
        elif wire == _LEN:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ProtoDecodeError("length-delimited field runs past the end")
            yield field, wire, pos, pos + n
            pos += n
        elif wire in (_I32, _I64):
            n = 4 if wire == _I32 else 8
            if pos + n > end:
                raise ProtoDecodeError(f"truncated {8 * n}-bit field")
            yield field, wire, int.from_bytes(buf[pos : pos + n], "little"), -1
            pos += n
        else:
            raise ProtoDecodeError(f"unsupported wire type {wire}")


def _to_int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: bytes, start: int, end: int) -> np.ndarray | list[bytes]:
    kind = None
    floats: list[np.ndarray] = []
    ints: list[int] = []
    blobs: list[bytes] = []
    for field, wire, a, b in _fields(buf, start, end):
        if wire != _LEN or field not in (1, 2, 3):
            continue  # unknown field: skip, as protobuf does
        kind = field
        for f2, w2, v, stop in _fields(buf, a, b):
            if f2 != 1:
                continue
            if field == 1:  # BytesList
                if w2 != _LEN:
                    raise ProtoDecodeError("bytes_list value is not length-delimited")
                blobs.append(bytes(buf[v:stop]))
            elif field == 2:  # FloatList
                if w2 == _LEN:
                    if (stop - v) % 4:
                        raise ProtoDecodeError("packed float_list length not a multiple of 4")
                    floats.append(np.frombuffer(buf, dtype="<f4", count=(stop - v) // 4, offset=v))
                elif w2 == _I32:
                    floats.append(np.array([v], dtype="<u4").view("<f4"))
                else:
                    raise ProtoDecodeError("float_list value has the wrong wire type")
            else:  # Int64List
                if w2 == _LEN:
                    p = v
                    while p < stop:
                        iv, p = _varint(buf, p, stop)
                        ints.append(_to_int64(iv))
                elif w2 == _VARINT:
                    ints.append(_to_int64(v))
                else:
                    raise ProtoDecodeError("int64_list value has the wrong wire type")
    if kind == 1:
        return blobs
    if kind == 2:
        return (np.concatenate(floats) if floats else np.zeros(0, "<f4")).astype(np.float32)
    return np.array(ints, dtype=np.int64)


def parse_example(data: bytes) -> dict[str, np.ndarray | list[bytes]]:
    """Decode a serialized ``tf.train.Example`` into ``{feature name: values}``.

    Float features become float32 arrays, int64 features int64 arrays, bytes features
    lists of bytes. A feature with no kind set decodes as an empty int64 array.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtoDecodeError(f"expected the bytes of a message, got {type(data).__name__}")
    buf = bytes(data)
    out: dict[str, np.ndarray | list[bytes]] = {}
    for field, wire, a, b in _fields(buf, 0, len(buf)):
        if field != 1 or wire != _LEN:
            continue
        for f2, w2, ea, eb in _fields(buf, a, b):  # Features
            if f2 != 1 or w2 != _LEN:
                continue
            key, value = None, np.zeros(0, np.int64)
            for f3, w3, va, vb in _fields(buf, ea, eb):  # map entry
                if f3 == 1 and w3 == _LEN:
                    try:
                        key = buf[va:vb].decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtoDecodeError("feature name is not UTF-8") from None
                elif f3 == 2 and w3 == _LEN:
                    value = _decode_feature(buf, va, vb)
            if key is None:
                key = ""
            out[key] = value
    return out
