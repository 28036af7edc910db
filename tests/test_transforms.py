"""Frame transforms against scikit-image / OpenCV / NumPy references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import color, data, exposure, transform

from streamimg.operators import color as C
from streamimg.operators import geometry as G

ASTRO = data.astronaut()  # 512x512 RGB uint8
GRAY = cv2.cvtColor(ASTRO, cv2.COLOR_RGB2GRAY)


def batch_of(frame, n=3):
    """Distinct frames: rolled copies of one image."""
    return np.stack([np.roll(frame, 17 * i, axis=1) for i in range(n)])


# ------------------------------------------------------------------ resize


def test_resize_linear_matches_skimage():
    for size in [(200, 300), (700, 900)]:
        got = G.resize(ASTRO, size)
        ref = transform.resize(ASTRO, size, order=1, preserve_range=True,
                               anti_aliasing=False, mode="edge")
        assert got.shape == size + (3,) and got.dtype == np.uint8
        assert np.abs(got - ref).max() <= 1.0


def test_resize_nearest_and_area_match_skimage():
    got = G.resize(ASTRO, (256, 256), interpolation="nearest")
    ref = transform.resize(ASTRO, (256, 256), order=0, preserve_range=True,
                           anti_aliasing=False)
    np.testing.assert_array_equal(got, ref)
    got = G.resize(ASTRO, (128, 128), interpolation="area")
    ref = transform.downscale_local_mean(ASTRO, (4, 4, 1))
    assert np.abs(got - ref).max() <= 0.5


def test_resize_aspect_and_max_side():
    frame = np.zeros((272, 640, 3), np.uint8)
    assert G.resize(frame, (224, 224), keep_aspect=True).shape == (95, 224, 3)
    assert G.resize(frame, max_side=320).shape == (136, 320, 3)
    small = G.resize(frame, max_side=1000)
    assert small.shape == frame.shape and small is not frame
    assert G.resize(frame, 100).shape == (100, 100, 3)


def test_resize_batch_gray_channel_and_dtype():
    b = batch_of(ASTRO)
    got = G.resize(b, (100, 120), interpolation="cubic")
    assert got.shape == (3, 100, 120, 3)
    for i in range(3):
        np.testing.assert_array_equal(got[i], G.resize(b[i], (100, 120), interpolation="cubic"))
    assert G.resize(GRAY[:, :, None], (50, 60)).shape == (50, 60, 1)
    assert G.resize(GRAY, (50, 60)).shape == (50, 60)
    f = G.resize(ASTRO.astype(np.float32) / 255, (64, 64))
    assert f.dtype == np.float32


@pytest.mark.parametrize("kwargs, match", [
    ({"size": (10, 10), "interpolation": "bilinear"}, "bilinear"),
    ({}, "exactly one"),
    ({"size": (10, 10), "max_side": 5}, "exactly one"),
    ({"size": (0, 10)}, "positive"),
    ({"max_side": -3}, "max_side"),
])
def test_resize_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        G.resize(ASTRO, **kwargs)


# -------------------------------------------------------------------- crops


def test_crop_and_center_crop():
    got = G.crop(ASTRO, (10, 20, 110, 70))
    np.testing.assert_array_equal(got, ASTRO[20:70, 10:110])
    b = batch_of(ASTRO)
    np.testing.assert_array_equal(G.crop(b, (0, 0, 5, 6)), b[:, :6, :5])
    cc = G.center_crop(np.arange(7 * 9).reshape(7, 9), (3, 4))
    np.testing.assert_array_equal(cc, np.arange(63).reshape(7, 9)[2:5, 2:6])
    assert G.center_crop(b, 224).shape == (3, 224, 224, 3)


@pytest.mark.parametrize("box", [(0, 0, 513, 10), (-1, 0, 5, 5), (5, 5, 5, 9), (0, 0, 1.5, 3)])
def test_crop_rejects_bad_boxes(box):
    with pytest.raises(ValueError, match="box"):
        G.crop(ASTRO, box)


def test_center_crop_too_large():
    with pytest.raises(ValueError, match="larger"):
        G.center_crop(ASTRO, (600, 10))


# ------------------------------------------------------------------- colour


def test_gray_is_bt601():
    ref = ASTRO.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    got = C.convert_color(ASTRO, "RGB", "GRAY")
    assert got.shape == (512, 512) and np.abs(got - ref).max() <= 1.0
    bgr = C.convert_color(ASTRO, "RGB", "BGR")
    np.testing.assert_array_equal(bgr, ASTRO[:, :, ::-1])
    np.testing.assert_array_equal(C.convert_color(bgr, "bgr", "gray"), got)


def test_hsv_ranges_match_skimage():
    ref = color.rgb2hsv(ASTRO)
    hsv = C.convert_color(ASTRO, "RGB", "HSV")
    dh = np.abs(hsv[..., 0] - ref[..., 0] * 180)
    assert hsv.dtype == np.uint8 and hsv[..., 0].max() < 180
    assert np.minimum(dh, 180 - dh).max() <= 1.0
    assert np.abs(hsv[..., 1:] - ref[..., 1:] * 255).max() <= 1.0
    hsvf = C.convert_color(ASTRO.astype(np.float64) / 255, "RGB", "HSV")  # float64 -> float32
    assert hsvf.dtype == np.float32
    dh = np.abs(hsvf[..., 0] - ref[..., 0] * 360)
    chromatic = ref[..., 1] > 0.05
    assert np.minimum(dh, 360 - dh)[chromatic].max() < 0.01
    assert np.abs(hsvf[..., 1:] - ref[..., 1:]).max() < 1e-4


def test_lab_ranges_match_skimage():
    ref = color.rgb2lab(ASTRO)
    labf = C.convert_color(ASTRO.astype(np.float32) / 255, "RGB", "Lab")
    assert np.abs(labf - ref).max() < 0.5
    lab8 = C.convert_color(ASTRO, "RGB", "LAB")
    assert np.abs(lab8[..., 0] - ref[..., 0] * 255 / 100).max() <= 2
    assert np.abs(lab8[..., 1:].astype(float) - 128 - ref[..., 1:]).max() <= 3
    back = C.convert_color(labf, "Lab", "RGB")
    np.testing.assert_allclose(back, ASTRO / 255, atol=1 / 255)  # OpenCV's float Lab is approximate


def test_indirect_conversions_and_batches():
    hsv = C.convert_color(ASTRO, "RGB", "HSV")
    via = C.convert_color(hsv, "HSV", "Lab")
    np.testing.assert_array_equal(
        via, C.convert_color(C.convert_color(hsv, "HSV", "RGB"), "RGB", "Lab"))
    b = batch_of(ASTRO)
    g = C.convert_color(b, "RGB", "GRAY")
    assert g.shape == (3, 512, 512, 1)
    np.testing.assert_array_equal(g[1, :, :, 0], C.convert_color(b[1], "RGB", "GRAY"))
    rgb = C.convert_color(g, "GRAY", "RGB")
    assert rgb.shape == (3, 512, 512, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


@pytest.mark.parametrize("src, dst, frame, match", [
    ("RGB", "YUV", ASTRO, "YUV"),
    ("XYZ", "RGB", ASTRO, "XYZ"),
    ("GRAY", "RGB", ASTRO, "channel"),
    ("RGB", "HSV", ASTRO.astype(np.int32), "int32"),
])
def test_convert_color_errors(src, dst, frame, match):
    with pytest.raises(ValueError, match=match):
        C.convert_color(frame, src, dst)


# ---------------------------------------------------------------- normalise


def test_normalize():
    x = C.normalize(ASTRO)
    assert x.dtype == np.float32 and x.max() == 1.0
    np.testing.assert_allclose(x, ASTRO / 255.0, rtol=1e-6)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = C.normalize(batch_of(ASTRO), mean, std)
    ref = (batch_of(ASTRO) / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(C.normalize(np.array([[65535]], np.uint16)), [[1.0]])
    with pytest.raises(ValueError, match="mean"):
        C.normalize(ASTRO, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="std"):
        C.normalize(ASTRO, std=0)


# ---------------------------------------------------------------- histogram


def test_equalize_hist_gray_matches_textbook_formula():
    got = C.equalize_hist(GRAY)
    cdf = np.cumsum(np.bincount(GRAY.ravel(), minlength=256))
    cmin = cdf[cdf > 0][0]
    ref = np.rint((cdf[GRAY] - cmin) / (GRAY.size - cmin) * 255)
    assert np.abs(got - ref).max() <= 1
    dull = (GRAY // 4 + 90).astype(np.uint8)  # values 90..153
    out = C.equalize_hist(dull)
    assert out.min() == 0 and out.max() == 255


def test_equalize_hist_colour_equalises_lightness_keeps_hue():
    dull = (ASTRO // 3 + 60).astype(np.uint8)
    got = C.equalize_hist(dull)
    L = cv2.cvtColor(got, cv2.COLOR_RGB2Lab)[..., 0]
    assert L.min() < 15 and L.max() > 240
    h_in, h_out = color.rgb2hsv(dull)[..., 0], color.rgb2hsv(got)[..., 0]
    sat = color.rgb2hsv(dull)[..., 1] > 0.3
    dh = np.abs(h_in - h_out)
    assert np.median(np.minimum(dh, 1 - dh)[sat]) < 0.03


def test_clahe_close_to_skimage_and_batches():
    got = C.clahe(GRAY, clip_limit=2.0, tile_grid=(8, 8))
    ref = exposure.equalize_adapthist(GRAY, clip_limit=0.01, kernel_size=64) * 255
    assert np.abs(got - ref).mean() < 4
    b = batch_of(ASTRO, 2)
    out = C.clahe(b)
    assert out.shape == b.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[1], C.clahe(b[1]))
    assert C.clahe(GRAY[:, :, None]).shape == (512, 512, 1)
    with pytest.raises(ValueError, match="uint8"):
        C.clahe(GRAY.astype(np.float32))
    with pytest.raises(ValueError, match="clip_limit"):
        C.clahe(GRAY, clip_limit=0)


# ----------------------------------------------------------- flips, rotation


def test_flips_match_opencv():
    np.testing.assert_array_equal(G.hflip(ASTRO), cv2.flip(ASTRO, 1))
    np.testing.assert_array_equal(G.vflip(ASTRO), cv2.flip(ASTRO, 0))
    b = batch_of(ASTRO)
    got = G.flip(b, 1)
    assert got.flags.c_contiguous
    for i in range(3):
        np.testing.assert_array_equal(got[i], cv2.flip(b[i], 1))
    with pytest.raises(ValueError, match="axis"):
        G.flip(ASTRO, 2)


def test_rot90_matches_opencv():
    frame = ASTRO[:100, :150]
    np.testing.assert_array_equal(G.rot90(frame, 1),
                                  cv2.rotate(frame, cv2.ROTATE_90_COUNTERCLOCKWISE))
    np.testing.assert_array_equal(G.rot90(frame, -1), cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE))
    np.testing.assert_array_equal(G.rot90(frame, 2), cv2.rotate(frame, cv2.ROTATE_180))
    b = batch_of(frame)
    assert G.rot90(b, 1).shape == (3, 150, 100, 3)
    np.testing.assert_array_equal(G.rot90(b, 1)[2], G.rot90(b[2], 1))


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(-5, 5), seed=st.integers(0, 99))
def test_rot90_inverse_and_flip_involution(h, w, k, seed):
    frame = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(G.rot90(G.rot90(frame, k), -k), frame)
    np.testing.assert_array_equal(G.hflip(G.hflip(frame)), frame)
    np.testing.assert_array_equal(G.rot90(frame, 2), G.hflip(G.vflip(frame)))


def test_inputs_are_not_modified_and_bad_ndim():
    before = ASTRO.copy()
    for fn in (G.hflip, C.equalize_hist, C.clahe, lambda f: G.resize(f, (9, 9))):
        fn(ASTRO)
    np.testing.assert_array_equal(ASTRO, before)
    with pytest.raises(ValueError, match="shape"):
        G.resize(np.zeros((2, 2, 2, 2, 2), np.uint8), (3, 3))


@pytest.mark.parametrize("dst,order", [("HSV", "HSV"), ("lab", "Lab"), ("BGR", "BGR"),
                                       ("GRAY", "GRAY")])
def test_a_converted_frame_says_its_channel_order_in_its_header(dst, order):
    """convert_color(dst) -> to_kafka_frames: the frame message's order header names the
    space the values are in, and the values are OpenCV's; a later conversion back to RGB
    says RGB again."""
    import streamimg
    from streamimg.batching import FrameInfo
    from streamimg.codecs.frame import FrameHeader, decode_payload, parse_header
    from streamimg.worker import array_block, run_program

    t = streamimg.Topology(f"order-{dst}", inputs="in", frame_shape=(6, 8, 3))
    converted = t.source.convert_color("RGB", dst)
    converted.to_kafka_frames(encoding="raw", topic=f"conv-{dst}")
    if order != "GRAY":
        converted.convert_color(dst, "RGB").to_kafka_frames(encoding="raw", topic=f"back-{dst}")
    program = t.check()
    frame = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    info = FrameInfo("in", 0, 0, b"s", FrameHeader("s", 0, 0, 6, 8, 3, "uint8", "raw", "RGB"))
    result = run_program(program, [info], [frame], array_block, "r")
    assert result.failures == []
    (_, value, headers), = result.records[0][0]
    header = parse_header(headers)
    assert header.order == order
    code = {"HSV": cv2.COLOR_RGB2HSV, "Lab": cv2.COLOR_RGB2Lab, "BGR": cv2.COLOR_RGB2BGR,
            "GRAY": cv2.COLOR_RGB2GRAY}[order]
    expect = cv2.cvtColor(frame, code).reshape(header.shape)
    np.testing.assert_array_equal(decode_payload(header, value), expect)
    if order != "GRAY":
        (_, _, back), = result.records[1][0]
        assert parse_header(back).order == "RGB"
