import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamimg.codecs.pixel import (
    MAX_INDEX,
    Pixel,
    PixelDecodeError,
    decode_pixel,
    decode_pixel_binary,
    decode_pixel_text,
    encode_pixel_binary,
    encode_pixel_text,
)
from streamimg.codecs.pixel_frames import frame_to_pixels, pixels_to_arrays

names = st.text(st.characters(exclude_characters=";", exclude_categories=("Cs",)),
                min_size=1, max_size=20)
indices = st.integers(0, MAX_INDEX)
values = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(names, indices, indices, indices, values)
def test_round_trip_text_and_binary(name, frame, x, y, v):
    expected = Pixel(name, frame, x, y, v)
    for encode, decode in ((encode_pixel_text, decode_pixel_text),
                           (encode_pixel_binary, decode_pixel_binary)):
        raw = encode(name, frame, x, y, v)
        for got in (decode(raw), decode_pixel(raw)):
            assert got == expected
            assert math.copysign(1.0, got.v) == math.copysign(1.0, v)  # -0.0 survives too


def test_text_layout():
    assert encode_pixel_text("cam0", 7, 3, 2, 0.5) == b"cam0;7;3;2;0.5"
    assert encode_pixel_text("é", 0, 0, 0, 1e-300) == "é;0;0;0;1e-300".encode()
    assert decode_pixel(b"img;1;2;3;-4.5\n") == Pixel("img", 1, 2, 3, -4.5)
    assert decode_pixel(b"img;1;2;3;4\r\n") == Pixel("img", 1, 2, 3, 4.0)
    assert decode_pixel("img;1;2;3;.5e2") == Pixel("img", 1, 2, 3, 50.0)


def test_binary_layout():
    raw = encode_pixel_binary("ab", 1, 2, 3, 1.5)
    assert raw == b"\xff\x01\x00\x02ab" + struct.pack(">IIId", 1, 2, 3, 1.5)
    assert len(encode_pixel_binary("é" * 10, 0, 0, 0, 0.0)) == 24 + 20  # 2 UTF-8 bytes each


BIN = encode_pixel_binary("ab", 1, 2, 3, 1.5)


@pytest.mark.parametrize("record, field, shown", [
    (b"a;1;2;3", "record", "'a;1;2;3'"),
    (b"a;1;2;3;4;5", "record", "6"),
    (b"", "record", "empty"),
    (b";1;2;3;4", "name", "''"),
    (b"a;one;2;3;4", "frame", "'one'"),
    (b"a;1;2.5;3;4", "x", "'2.5'"),
    (b"a;1;2; 3;4", "y", "' 3'"),
    (b"a;1;-2;3;4", "x", "non-negative"),
    (b"a;1;+2;3;4", "x", "'+2'"),
    (b"a;4294967296;2;3;4", "frame", "4294967296"),
    (b"a;1;2;3;nan", "v", "finite"),
    (b"a;1;2;3;-inf", "v", "finite"),
    (b"a;1;2;3;1e999", "v", "1e999"),
    (b"a;1;2;3;1_0", "v", "'1_0'"),
    (b"a;1;2;3;", "v", "''"),
    (b"a\xc3;1;2;3;4", "record", "UTF-8"),
    (b"\xff\x01\x00", "record", "3 bytes"),
    (BIN[:-1], "record", "truncated: 25 bytes, expected 26"),
    (BIN + b"\x00", "record", "trailing"),
    (b"\xff\x02" + BIN[2:], "version", "2"),
    (b"\xff\x01\x00\x00" + BIN[6:], "name", "''"),
    (b"\xff\x01\x00\x01;" + BIN[6:], "name", "';'"),
    (BIN[:-8] + struct.pack(">d", float("nan")), "v", "nan"),
])
def test_malformed_records_name_the_field(record, field, shown):
    with pytest.raises(PixelDecodeError) as info:
        decode_pixel(record)
    assert info.value.field == field
    assert f" {field} " in str(info.value) and shown in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_magic_in_explicit_binary_decode():
    with pytest.raises(PixelDecodeError, match="magic must be 0xFF, got '0xFE'") as info:
        decode_pixel_binary(b"\xfe" + BIN[1:])
    assert info.value.field == "magic"


@pytest.mark.parametrize("args, match", [
    (("a;b", 0, 0, 0, 0.0), "name must not contain ';'"),
    (("", 0, 0, 0, 0.0), "name must be a non-empty"),
    (("a", -1, 0, 0, 0.0), "frame must be non-negative"),
    (("a", 0, 2**32, 0, 0.0), "x must be <= 4294967295"),
    (("a", 0, 0, True, 0.0), "y must be an int"),
    (("a", 0, 0, 1.0, 0.0), "y must be an int"),
    (("a", 0, 0, 0, float("nan")), "v must be finite"),
    (("a", 0, 0, 0, "x"), "v must be a real number"),
    (("a" * 70000, 0, 0, 0, 0.0), "65535"),
])
def test_encode_rejects_out_of_domain(args, match):
    for encode in (encode_pixel_text, encode_pixel_binary):
        with pytest.raises(ValueError, match=match):
            encode(*args)


@pytest.mark.parametrize("binary", [False, True])
def test_frame_to_pixels_row_major_x_is_column(binary):
    frame = np.arange(15, dtype=np.uint8).reshape(3, 5)  # 3 rows (y), 5 columns (x)
    msgs = frame_to_pixels("cam", 9, frame, binary=binary)
    assert len(msgs) == 15
    encode = encode_pixel_binary if binary else encode_pixel_text
    for i, msg in enumerate(msgs):
        y, x = divmod(i, 5)
        assert msg == encode("cam", 9, x, y, float(frame[y, x]))
    assert decode_pixel(msgs[7]) == Pixel("cam", 9, 2, 1, 7.0)


@pytest.mark.parametrize("binary", [False, True])
def test_frames_round_trip_through_pixels(binary):
    rng = np.random.default_rng(0)
    frames = {("a", 0): rng.standard_normal((4, 6)), ("a", 1): rng.standard_normal((4, 6)),
              ("b", 0): rng.standard_normal((2, 3))}
    msgs = [m for (name, f), arr in frames.items() for m in frame_to_pixels(name, f, arr, binary)]
    rng.shuffle(msgs)
    got = pixels_to_arrays(msgs)
    assert got.keys() == frames.keys()
    for key, arr in frames.items():
        np.testing.assert_array_equal(got[key], arr)  # exact: repr and f64 are lossless


def test_pixels_to_arrays_fill_shape_duplicates_and_errors():
    pixels = [Pixel("a", 0, 1, 0, 1.0), Pixel("a", 0, 1, 0, 2.0), b"a;0;0;1;3"]
    got = pixels_to_arrays(pixels, shape=(2, 3), fill=-1.0)[("a", 0)]
    np.testing.assert_array_equal(got, [[-1, 2, -1], [3, -1, -1]])  # last duplicate wins
    inferred = pixels_to_arrays(pixels)[("a", 0)]
    assert inferred.shape == (2, 2) and np.isnan(inferred[1, 1])
    with pytest.raises(ValueError, match=r"x=1, y=0.*\(1, 1\)"):
        pixels_to_arrays(pixels, shape=(1, 1))
    with pytest.raises(PixelDecodeError):
        pixels_to_arrays([b"a;0;0;0"])


def test_frame_to_pixels_errors():
    bad = np.zeros((3, 4))
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="row y=2, column x=1"):
        frame_to_pixels("a", 0, bad)
    with pytest.raises(ValueError, match=r"2-D.*\(2, 2, 3\)"):
        frame_to_pixels("a", 0, np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="name"):
        frame_to_pixels("a;b", 0, np.zeros((2, 2)), binary=True)
    with pytest.raises(ValueError, match="frame"):
        frame_to_pixels("a", -1, np.zeros((2, 2)))
