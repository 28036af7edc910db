import itertools

import numpy as np
import pytest

from streamimg.codecs.frame import (
    DTYPES,
    FrameDecodeError,
    decode_payload,
    encode_frame,
    parse_header,
)

ORDERS = {1: ["GRAY"], 3: ["RGB", "BGR"], 4: ["RGBA", "BGRA"]}


def _frame(dtype, channels, h=7, w=11, seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=(h, w, channels), endpoint=True, dtype=dtype)
    else:
        a = rng.standard_normal((h, w, channels)).astype(dtype) * 1000
    return a


CASES = [(d, c, o, "raw") for d in DTYPES for c in (1, 3, 4) for o in ORDERS[c]]
CASES += [(d, c, o, "png") for d in ("uint8", "uint16") for c in (1, 3, 4) for o in ORDERS[c]]


@pytest.mark.parametrize("dtype,channels,order,encoding", CASES)
def test_lossless_round_trip(dtype, channels, order, encoding):
    frame = _frame(dtype, channels)
    value, headers = encode_frame(frame, stream="cam-1", index=42, timestamp_ms=1_700_000_000_123,
                                  encoding=encoding, order=order)
    header = parse_header(headers)
    assert (header.stream, header.frame, header.timestamp_ms) == ("cam-1", 42, 1_700_000_000_123)
    assert header.shape == frame.shape and header.dtype == dtype and header.order == order
    out = decode_payload(header, value)
    assert out.dtype == frame.dtype and out.shape == frame.shape
    np.testing.assert_array_equal(out, frame)


@pytest.mark.parametrize("channels,order", [(1, "GRAY"), (3, "RGB"), (3, "BGR")])
def test_jpeg_round_trip_is_close_and_keeps_channel_order(channels, order):
    # A smooth image JPEG keeps to a few grey levels; a channel swap would be ~100 off.
    y, x = np.mgrid[0:64, 0:96]
    base = np.stack([x * 2, y * 3, (x + y)], axis=-1)[:, :, :channels].astype(np.uint8)
    value, headers = encode_frame(base, stream="s", index=0, encoding="jpeg", order=order,
                                  jpeg_quality=95)
    out = decode_payload(parse_header(headers), value)
    assert out.shape == base.shape
    assert np.abs(out.astype(int) - base).mean() < 2.0


def test_raw_decode_is_a_view_without_copy():
    frame = _frame("uint8", 3, 720, 1280)
    value, headers = encode_frame(frame, stream="s", index=0)
    out = decode_payload(parse_header(headers), value)
    assert not out.flags.owndata and not out.flags.writeable
    assert np.shares_memory(out, np.frombuffer(value, np.uint8))


@pytest.mark.parametrize("encoding", ["raw", "png", "jpeg"])
def test_buffer_value_is_the_bytes_without_a_copy_of_a_raw_frame(encoding):
    frame = _frame("uint8", 3, 72, 128)
    as_bytes, headers = encode_frame(frame, stream="s", index=0, timestamp_ms=1,
                                     encoding=encoding)
    value, same = encode_frame(frame, stream="s", index=0, timestamp_ms=1, encoding=encoding,
                               buffer=True)
    assert same == headers and value.dtype == np.uint8 and value.ndim == 1
    assert len(value) == value.nbytes == len(as_bytes) and value.tobytes() == as_bytes
    assert not value.flags.writeable and frame.flags.writeable
    assert np.shares_memory(value, frame) == (encoding == "raw")
    out = decode_payload(parse_header(headers), value)
    assert np.array_equal(out, decode_payload(parse_header(headers), as_bytes))
    if encoding == "raw":  # a frame that is not C-contiguous is copied, as for bytes
        view = frame[:, ::2]
        value, _ = encode_frame(view, stream="s", index=0, buffer=True)
        assert value.tobytes() == np.ascontiguousarray(view).tobytes()


def test_grey_2d_frame_gets_one_channel():
    value, headers = encode_frame(np.zeros((5, 6), np.uint8), stream="s", index=1)
    assert parse_header(headers).shape == (5, 6, 1)


@pytest.mark.parametrize("dtype,encoding", [("float32", "png"), ("uint16", "jpeg"),
                                            ("int16", "png")])
def test_encoder_refuses_what_the_encoding_cannot_carry(dtype, encoding):
    with pytest.raises(ValueError, match="cannot be carried"):
        encode_frame(np.zeros((4, 4, 3), dtype), stream="s", index=0, encoding=encoding)


def _headers(**changes):
    _, headers = encode_frame(np.zeros((4, 5, 3), np.uint8), stream="s", index=3)
    h = dict(headers)
    for k, v in changes.items():
        key = "streamimg." + k
        if v is None:
            h.pop(key)
        else:
            h[key] = v
    return list(h.items())


@pytest.mark.parametrize("changes,field,message", [
    ({"encoding": b"webp"}, "streamimg.encoding", "unknown encoding 'webp'"),
    ({"schema": b"2"}, "streamimg.schema", "version 2 unsupported"),
    ({"height": b"abc"}, "streamimg.height", "not an integer"),
    ({"width": b"0"}, "streamimg.width", "outside"),
    ({"height": None}, "streamimg.height", "missing header"),
    ({"dtype": b"complex64"}, "streamimg.dtype", "unsupported dtype"),
    ({"order": b"RGB", "channels": b"4"}, "streamimg.channels", "4 channels but order RGB"),
    ({"order": b"XYZ"}, "streamimg.order", "unknown channel order"),
    ({"stream": b""}, "streamimg.stream", "empty stream id"),
    ({"frame": b"-1"}, "streamimg.frame", "outside"),
    ({"ts": b"\xff\xfe"}, "streamimg.ts", "not UTF-8"),
])
def test_malformed_headers_name_the_field(changes, field, message):
    with pytest.raises(FrameDecodeError, match=message) as info:
        parse_header(_headers(**changes))
    assert info.value.field == field


def test_duplicated_header_is_an_error():
    headers = _headers() + [("streamimg.width", b"5")]
    with pytest.raises(FrameDecodeError, match="appears twice"):
        parse_header(headers)


@pytest.mark.parametrize("cut", [1, 30, 59])
def test_truncated_raw_payload(cut):
    value, headers = encode_frame(np.zeros((4, 5, 3), np.uint8), stream="s", index=0)
    with pytest.raises(FrameDecodeError, match=f"{60 - cut} bytes, but"):
        decode_payload(parse_header(headers), value[:-cut])


def test_shape_mismatch_between_headers_and_png():
    value, _ = encode_frame(np.zeros((4, 5, 3), np.uint8), stream="s", index=0, encoding="png")
    _, headers = encode_frame(np.zeros((4, 6, 3), np.uint8), stream="s", index=0, encoding="png")
    with pytest.raises(FrameDecodeError, match=r"decodes to \(4, 5, 3\)"):
        decode_payload(parse_header(headers), value)


def test_garbage_png_and_empty_payload():
    _, headers = encode_frame(np.zeros((4, 5, 3), np.uint8), stream="s", index=0, encoding="png")
    with pytest.raises(FrameDecodeError, match="not a valid png"):
        decode_payload(parse_header(headers), b"\x89PNG not really")
    with pytest.raises(FrameDecodeError, match="empty"):
        decode_payload(parse_header(headers), b"")


def test_every_combination_is_covered():
    # Guards the parametrisation above: every dtype and channel count takes the raw path.
    assert {(d, c) for d, c, _, e in CASES if e == "raw"} == set(
        itertools.product(DTYPES, (1, 3, 4)))
