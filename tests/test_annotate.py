"""Annotation: detection boxes, palette strips, PNG/JPEG round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from streamimg.analytics.annotate import (
    decode_image,
    draw_detections,
    draw_palette,
    encode_image,
    palette_widths,
)
from streamimg.analytics.detect import Detection

ASTRO = data.astronaut()


def test_draw_detections_on_a_copy():
    frame = np.zeros((120, 160, 3), np.uint8)
    dets = [Detection("face", 0.87, (20.0, 40.0, 100.0, 110.0)),
            Detection("cat", 0.5, (0.0, 0.0, 30.0, 30.0))]   # no room above: label inside
    out = draw_detections(frame, dets, color=(0, 255, 0), thickness=2)
    assert frame.max() == 0 and out.shape == frame.shape and out.dtype == np.uint8
    # box edges drawn in the given colour (RGB order kept)
    assert (out[75, 19:22] == (0, 255, 0)).all() and (out[75, 99:102] == (0, 255, 0)).all()
    assert (out[109:111, 60] == (0, 255, 0)).all()
    assert (out[75, 25:95] == 0).all()               # interior untouched
    assert (out[30:38, 22:60] != 0).any()            # label above the first box
    assert (out[3:15, 3:30] != 0).any()              # label inside the second box
    assert draw_detections(frame, []).tolist() == frame.tolist()
    with pytest.raises(ValueError, match="RGB"):
        draw_detections(frame[..., 0], dets)


def test_draw_palette_layout():
    frame = ASTRO[:100, :200]
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    out = draw_palette(frame, colors, [0.5, 0.3, 0.2])
    assert out.shape == (116, 200, 3) and out.dtype == np.uint8   # max(16, 100 // 8)
    np.testing.assert_array_equal(out[:100], frame)
    strip = out[100:]
    assert (strip[:, :100] == colors[0]).all() and (strip[:, 100:160] == colors[1]).all()
    assert (strip[:, 160:] == colors[2]).all()
    assert draw_palette(ASTRO, colors, [1, 1, 1]).shape == (512 + 64, 512, 3)
    assert draw_palette(frame, colors, [1, 0, 1], strip_height=5).shape == (105, 200, 3)
    assert out.flags.writeable and not np.shares_memory(out, frame)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=12).filter(lambda f: sum(f) > 1e-3),
       st.integers(1, 2000))
def test_palette_widths_sum_exactly_and_are_proportional(fractions, width):
    w = palette_widths(fractions, width)
    f = np.array(fractions) / sum(fractions)
    assert w.sum() == width and (w >= 0).all()
    assert np.abs(w - f * width).max() <= 1.0 + 1e-9


@pytest.mark.parametrize("colors, fractions, kwargs, match", [
    (np.zeros((2, 3), np.uint8), [0.5], {}, "fractions"),
    (np.zeros((2, 4), np.uint8), [0.5, 0.5], {}, r"\(k, 3\)"),
    (np.zeros((2, 3), np.uint8), [0.5, -0.1], {}, "non-negative"),
    (np.zeros((2, 3), np.uint8), [0, 0], {}, "not all zero"),
    (np.zeros((2, 3), np.uint8), [1, 1], {"strip_height": 0}, "strip_height"),
])
def test_draw_palette_errors(colors, fractions, kwargs, match):
    with pytest.raises(ValueError, match=match):
        draw_palette(ASTRO, colors, fractions, **kwargs)


def test_png_round_trip_is_lossless_and_rgb():
    png = encode_image(ASTRO, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_image(png), ASTRO)
    # Pillow reads it with the same (RGB) channel order: no BGR trap
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), ASTRO)
    gray = ASTRO[..., 1]
    np.testing.assert_array_equal(decode_image(encode_image(gray))[..., 0], gray)


def test_jpeg_quality_and_channel_order():
    hi, lo = encode_image(ASTRO, "jpeg", quality=95), encode_image(ASTRO, "jpg", quality=30)
    assert hi[:2] == b"\xff\xd8" and len(lo) < len(hi)
    back = decode_image(hi)
    assert back.shape == ASTRO.shape
    assert np.abs(back.astype(int) - ASTRO).mean() < 3
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    px = decode_image(encode_image(red, "jpeg"))[16, 16]
    assert px[0] > 240 and px[2] < 15
    pil = np.asarray(Image.open(io.BytesIO(encode_image(red, "jpeg"))))[16, 16]
    assert pil[0] > 240 and pil[2] < 15


def test_codec_errors():
    with pytest.raises(ValueError, match="tiff"):
        encode_image(ASTRO, "tiff")
    with pytest.raises(ValueError, match="quality"):
        encode_image(ASTRO, "jpeg", quality=101)
    with pytest.raises(ValueError, match="uint8"):
        encode_image(ASTRO.astype(np.float32))
    with pytest.raises(ValueError, match="decode"):
        decode_image(b"not an image")
