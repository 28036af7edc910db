"""convolve/correlate against scipy.ndimage on the same NumPy frames, over chunkings."""

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st

from streamimg.operators import convolve as conv_mod
from streamimg.operators.convolve import BOUNDARIES, convolve, correlate
from streamimg.operators.kernels import sobel

BACKENDS = ["scipy"] + (["opencv"] if conv_mod.cv2 is not None else [])


@pytest.fixture(autouse=True)
def _sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


def _reference(frames, kernel, mode, cval, flip):
    """scipy on float64 frames; the kernel covers the two spatial axes only."""
    f = np.asarray(frames, dtype=np.float64)
    k = kernel.reshape({2: kernel.shape, 3: (1,) + kernel.shape,
                        4: (1,) + kernel.shape + (1,)}[f.ndim])
    fn = ndi.convolve if flip else ndi.correlate
    return fn(f, k, mode=mode, cval=cval)


def _assert_close(out, ref, frames, kernel, dtype):
    # Errors are relative to the largest possible magnitude of the sum, max|f| * sum|k|.
    scale = max(float(np.abs(frames).max(initial=0.0)), 1.0) * float(np.abs(kernel).sum())
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    err = float(np.abs(out.astype(np.float64) - ref).max(initial=0.0)) / scale
    assert err <= tol, f"relative error {err:.3g} > {tol}"


@st.composite
def cases(draw):
    ndim = draw(st.sampled_from([2, 3, 4]))
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = {2: (h, w), 3: (n, h, w), 4: (n, h, w, c)}[ndim]
    # Spatial chunks from 1 pixel up: often thinner than the kernel half size.
    ch, cw = draw(st.integers(1, h)), draw(st.integers(1, w))
    chunks = {2: (ch, cw), 3: (draw(st.integers(1, n)), ch, cw),
              4: (draw(st.integers(1, n)), ch, cw, draw(st.integers(1, c)))}[ndim]
    kh, kw = draw(st.sampled_from([1, 3, 5, 7, 9])), draw(st.sampled_from([1, 3, 5, 7, 11]))
    return dict(
        shape=shape, chunks=chunks, kshape=(kh, kw),
        mode=draw(st.sampled_from(BOUNDARIES)),
        cval=draw(st.sampled_from([0.0, 2.5, -7.0])),
        dtype=draw(st.sampled_from(["float64", "float32", "uint8", "int16"])),
        backend=draw(st.sampled_from(BACKENDS)),
        flip=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(cases())
def test_matches_scipy_for_any_chunking(case):
    rng = np.random.default_rng(case["seed"])
    dtype = np.dtype(case["dtype"])
    if dtype.kind == "f":
        frames = (rng.standard_normal(case["shape"]) * 50).astype(dtype)
    else:
        frames = rng.integers(0, 200, case["shape"]).astype(dtype)
    kernel = rng.standard_normal(case["kshape"])
    fn = convolve if case["flip"] else correlate
    out = fn(da.from_array(frames, chunks=case["chunks"]), kernel, boundary=case["mode"],
             cval=case["cval"], backend=case["backend"])
    assert isinstance(out, da.Array)
    result = out.compute()
    expected_dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)
    assert result.dtype == expected_dtype == out.dtype
    assert result.shape == frames.shape
    ref = _reference(frames, kernel, case["mode"], case["cval"], case["flip"])
    _assert_close(result, ref, frames, kernel, expected_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", BOUNDARIES)
def test_kernel_larger_than_split_frame(mode, backend):
    # 3x4 frames split into 1x2 chunks, kernel reach 4 rows and 5 columns: the frame is
    # shorter than the reach, so repeated reflection/wrapping is needed.
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((2, 3, 4))
    kernel = rng.standard_normal((9, 11))
    out = correlate(da.from_array(frames, chunks=(1, 1, 2)), kernel, boundary=mode, cval=1.5,
                    backend=backend).compute()
    _assert_close(out, _reference(frames, kernel, mode, 1.5, False), frames, kernel, "float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", BOUNDARIES)
def test_opencv_large_kernels_on_large_frames(mode, dtype):
    # filter2D switches to a DFT from 11x11 kernels on large images; its BORDER_WRAP was
    # wrong there (4-12 % errors), so this pins the padded path for wrap.
    if conv_mod.cv2 is None:
        pytest.skip("OpenCV not installed")
    rng = np.random.default_rng(2)
    frame = (rng.random((300, 400)) * 255).astype(dtype)
    kernel = rng.standard_normal((15, 13))
    out = convolve(frame, kernel, boundary=mode, cval=9.0, backend="opencv").compute()
    _assert_close(out, _reference(frame, kernel, mode, 9.0, True), frame, kernel, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_channels_and_rgb(backend):
    rng = np.random.default_rng(3)
    frames = rng.standard_normal((2, 9, 10, 6))  # 6 > 4: OpenCV goes channel by channel
    kernel = rng.standard_normal((3, 5))
    out = correlate(frames, kernel, boundary="mirror", backend=backend).compute()
    _assert_close(out, _reference(frames, kernel, "mirror", 0.0, False), frames, kernel,
                  "float64")


def test_channels_and_frames_do_not_mix():
    frames = np.zeros((3, 8, 8, 3))
    frames[1, :, :, 2] = 1.0  # only frame 1, channel 2 is non-zero
    out = convolve(da.from_array(frames, chunks=(1, 3, 3, 1)), np.ones((5, 5)),
                   boundary="wrap").compute()
    assert np.all(out[[0, 2]] == 0) and np.all(out[1, :, :, :2] == 0)
    np.testing.assert_allclose(out[1, :, :, 2], 25.0, rtol=1e-14)


def test_convolve_flips_correlate_does_not():
    ramp = np.tile(np.arange(12.0), (10, 1))  # intensity grows with x (columns)
    cor = correlate(ramp, sobel(1), boundary="nearest").compute()
    con = convolve(ramp, sobel(1), boundary="nearest").compute()
    assert cor[5, 5] == pytest.approx(8.0) and con[5, 5] == pytest.approx(-8.0)
    np.testing.assert_allclose(cor, ndi.sobel(ramp, axis=1, mode="nearest"), atol=1e-12)


def test_whole_frame_chunks_use_two_tasks_per_frame():
    frames = np.zeros((4, 32, 48), np.float32)
    out = convolve(frames, np.ones((3, 3)))
    assert len(out.__dask_graph__()) == 2 * 4  # from_array + one filter task per frame
    assert out.chunks == ((1, 1, 1, 1), (32,), (48,))
    split = convolve(da.zeros((4, 32, 48), chunks=(1, 16, 48)), np.ones((3, 3)))
    assert split.chunks == ((1,) * 4, (16, 16), (48,))  # overlap path keeps the chunks


def test_thin_chunks_are_merged_but_exact():
    frames = np.random.default_rng(4).standard_normal((1, 12, 12))
    out = convolve(da.from_array(frames, chunks=(1, 2, 12)), np.ones((7, 1)), boundary="reflect")
    assert min(out.chunks[1]) >= 3  # dask merged chunks thinner than the depth
    ref = _reference(frames, np.ones((7, 1)), "reflect", 0.0, True)
    _assert_close(out.compute(), ref, frames, np.ones((7, 1)), "float64")


# --- dtype policy -----------------------------------------------------------------------


def test_integer_input_computes_in_float32_by_default():
    frames = np.array([[1, 2], [3, 250]], np.uint8)
    out = convolve(frames, np.array([[0.5]]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.compute(), frames / 2)
    out64 = convolve(frames, np.array([[0.5]]), compute_dtype=np.float64)
    assert out64.dtype == np.float64 and out64.compute().dtype == np.float64


def test_output_input_rounds_half_to_even_and_clips():
    frames = np.array([[1, 3, 5, 200]], np.uint8)
    half = convolve(frames, np.array([[0.5]]), output_dtype="input").compute()
    assert half.dtype == np.uint8
    np.testing.assert_array_equal(half, [[0, 2, 2, 100]])  # 0.5->0, 1.5->2, 2.5->2
    doubled = convolve(frames, np.array([[2.0]]), output_dtype="input").compute()
    np.testing.assert_array_equal(doubled, [[2, 6, 10, 255]])  # 400 clipped to 255
    negated = convolve(frames, np.array([[-1.0]]), output_dtype="input").compute()
    np.testing.assert_array_equal(negated, [[0, 0, 0, 0]])
    signed = convolve(frames, np.array([[-1.0]]), output_dtype=np.int16).compute()
    assert signed.dtype == np.int16
    np.testing.assert_array_equal(signed, [[-1, -3, -5, -200]])


def test_int32_clip_does_not_overflow():
    frames = np.array([[2**31 - 1, -(2**31)]], np.int32)
    out = convolve(frames, np.array([[2.0]]), output_dtype="input").compute()
    assert out[0, 0] > 2**31 - 200 and out[0, 1] == -(2**31)


def test_float_input_keeps_its_dtype():
    f32 = np.random.default_rng(5).random((2, 6, 7)).astype(np.float32)
    assert convolve(f32, np.ones((3, 3))).dtype == np.float32
    assert convolve(f32, np.ones((3, 3)), compute_dtype="float64").dtype == np.float64
    f16 = f32.astype(np.float16)
    assert convolve(f16, np.ones((3, 3))).dtype == np.float32
    assert convolve(f16, np.ones((3, 3)), output_dtype="input").compute().dtype == np.float16


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, match", [
    (np.ones(3), r"2-D, got shape \(3,\)"),
    (np.ones((3, 3, 3)), r"2-D, got shape \(3, 3, 3\)"),
    (np.ones((2, 3)), r"odd.*\(2, 3\)"),
    (np.ones((3, 4)), r"odd.*\(3, 4\)"),
    (np.ones((0, 3)), r"\(0, 3\)"),
    (np.array([[np.nan]]), r"NaN"),
])
def test_bad_kernels(kernel, match):
    with pytest.raises(ValueError, match=match):
        convolve(np.zeros((4, 4)), kernel)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'periodic'"):
        convolve(np.zeros((4, 4)), np.ones((3, 3)), boundary="periodic")
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        convolve(np.zeros(4), np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 3, 4, 5\)"):
        convolve(da.zeros((1, 2, 3, 4, 5)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="bool"):
        convolve(np.zeros((4, 4), bool), np.ones((3, 3)))
    with pytest.raises(ValueError, match="int32"):
        convolve(np.zeros((4, 4)), np.ones((3, 3)), compute_dtype=np.int32)
    with pytest.raises(ValueError, match="bool"):
        convolve(np.zeros((4, 4)), np.ones((3, 3)), output_dtype=bool)
    with pytest.raises(ValueError, match="'gpu'"):
        convolve(np.zeros((4, 4)), np.ones((3, 3)), backend="gpu")
