"""The hand-written tf.train.Example decoder, against bytes encoded by hand."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fedp13n.data.tf_example import ProtoDecodeError, parse_example

# --- a tiny independent encoder (protobuf wire format, written from the spec) -------------


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_len(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def feature_floats(values, packed=True) -> bytes:
    if packed:
        inner = field_len(1, struct.pack(f"<{len(values)}f", *values))
    else:
        inner = b"".join(varint(1 << 3 | 5) + struct.pack("<f", v) for v in values)
    return field_len(2, inner)


def feature_ints(values, packed=True) -> bytes:
    if packed:
        inner = field_len(1, b"".join(varint(v) for v in values))
    else:
        inner = b"".join(varint(1 << 3 | 0) + varint(v) for v in values)
    return field_len(3, inner)


def feature_bytes(values) -> bytes:
    return field_len(1, b"".join(field_len(1, v) for v in values))


def example(features: dict[str, bytes]) -> bytes:
    entries = b"".join(
        field_len(1, field_len(1, k.encode()) + field_len(2, v)) for k, v in features.items()
    )
    return field_len(1, entries)


# --- tests ----------------------------------------------------------------------------------


def test_literal_bytes_label_7():
    # Example{features{feature{key:"label" value{int64_list{value:7}}}}}, encoded by hand:
    # 0a 0f | 0a 0d | 0a 05 "label" | 12 04 | 1a 02 | 08 07   (unpacked varint int64)
    data = bytes.fromhex("0a0f0a0d0a056c6162656c12041a020807")
    out = parse_example(data)
    assert list(out) == ["label"]
    assert out["label"].dtype == np.int64
    assert out["label"].tolist() == [7]


def test_literal_bytes_packed_floats():
    # feature "p" = float_list{0.5, 1.0} packed: 12 0a | 0a 08 | 00 00 00 3f | 00 00 80 3f
    feat = bytes.fromhex("120a0a080000003f0000803f")
    entry = bytes.fromhex("0a0170") + b"\x12" + bytes([len(feat)]) + feat
    data = b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
    out = parse_example(data)
    assert out["p"].dtype == np.float32
    assert out["p"].tolist() == [0.5, 1.0]


def test_emnist_like_example_roundtrip():
    rng = np.random.default_rng(0)
    pixels = (rng.integers(0, 256, 784) / 255.0).astype(np.float32)
    data = example({"pixels": feature_floats(pixels.tolist()), "label": feature_ints([61])})
    out = parse_example(data)
    np.testing.assert_array_equal(out["pixels"], pixels)
    assert out["label"].tolist() == [61]


@pytest.mark.parametrize("packed", [True, False])
def test_packed_and_unpacked_repeated_scalars(packed):
    data = example(
        {
            "f": feature_floats([0.25, -2.0, 3.5], packed=packed),
            "i": feature_ints([0, 1, 300, -5, 2**40], packed=packed),
        }
    )
    out = parse_example(data)
    assert out["f"].tolist() == [0.25, -2.0, 3.5]
    assert out["i"].tolist() == [0, 1, 300, -5, 2**40]


def test_bytes_feature_and_unknown_fields_skipped():
    unknown_varint = varint(9 << 3 | 0) + varint(12345)
    unknown_fixed64 = varint(10 << 3 | 1) + b"\x00" * 8
    data = unknown_varint + example({"b": feature_bytes([b"ab", b""])}) + unknown_fixed64
    assert parse_example(data) == {"b": [b"ab", b""]}


def test_empty_example():
    assert parse_example(b"") == {}


@pytest.mark.parametrize(
    "data, match",
    [
        (bytes.fromhex("0a0f0a0d0a056c6162656c12041a0208"), "past the end|truncated"),
        (b"\x0a\x05abc", "past the end"),
        (b"\x08\xff", "truncated varint"),
        (b"\x0b", "wire type"),
        (b"\x00\x01", "field number 0"),
    ],
)
def test_malformed_bytes_raise(data, match):
    with pytest.raises(ProtoDecodeError, match=match):
        parse_example(data)
