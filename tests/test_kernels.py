import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from streamimg.operators import kernels as K


def _offsets(k):
    hh, hw = k.shape[0] // 2, k.shape[1] // 2
    return np.mgrid[-hh:hh + 1, -hw:hw + 1]


def test_box():
    k = K.box(3)
    assert k.shape == (3, 3) and k.dtype == np.float64
    np.testing.assert_allclose(k, 1 / 9)
    k = K.box((3, 5))
    assert k.shape == (3, 5) and k.sum() == pytest.approx(1.0, abs=1e-15)
    for bad in (2, 0, -3, (3, 4), (3, 3, 3)):
        with pytest.raises(ValueError):
            K.box(bad)


@pytest.mark.parametrize("sigma, size", [(0.5, 5), (1.0, 7), (1.4, 11), (2.0, 13), (3.2, 21)])
def test_gaussian_default_size_and_shape(sigma, size):
    k = K.gaussian(sigma)
    assert k.shape == (size, size) == (2 * math.ceil(3 * sigma) + 1,) * 2
    assert k.sum() == pytest.approx(1.0, abs=1e-14)
    c = size // 2
    assert k.argmax() == c * size + c
    np.testing.assert_allclose(k, k[::-1, :], rtol=0, atol=0)
    np.testing.assert_allclose(k, k.T, rtol=0, atol=1e-18)
    # Neighbour ratios follow exp(-d2 / (2 sigma^2)).
    assert k[c, c + 1] / k[c, c] == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-12)
    assert k[c + 1, c + 2] / k[c, c] == pytest.approx(math.exp(-5 / (2 * sigma**2)), rel=1e-12)


def test_gaussian_explicit_non_square_size_and_errors():
    k = K.gaussian(1.0, size=(3, 9))
    assert k.shape == (3, 9) and k.sum() == pytest.approx(1.0, abs=1e-15)
    for sigma in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            K.gaussian(sigma)
    with pytest.raises(ValueError, match="odd"):
        K.gaussian(1.0, size=4)


def test_gaussian_close_to_scipy_gaussian_filter_for_wide_support():
    # scipy truncates at 4 sigma and samples separable 1-D Gaussians; with a wide kernel both
    # sample the same function.
    img = np.zeros((41, 41))
    img[20, 20] = 1.0
    ours = ndi.correlate(img, K.gaussian(2.0, size=33), mode="constant")
    ref = ndi.gaussian_filter(img, 2.0, mode="constant", truncate=8.0)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 1.4, 2.0])
def test_log_is_zero_sum_negative_centre_and_symmetric(sigma):
    k = K.laplacian_of_gaussian(sigma)
    assert k.shape == (2 * math.ceil(3 * sigma) + 1,) * 2
    assert abs(k.sum()) < 1e-15
    c = k.shape[0] // 2
    assert k[c, c] == k.min() < 0
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=0)
    # The mean subtraction cancels in differences, so they follow the formula exactly.
    def log(r2):
        return -(1 - r2 / (2 * sigma**2)) * math.exp(-r2 / (2 * sigma**2)) / (math.pi * sigma**4)
    assert k[c, c] - k[c, c + 2] == pytest.approx(log(0) - log(4), rel=1e-12)


def test_log_recovers_the_laplacian_of_a_quadratic():
    # LoG * f = G * lap(f); for f = x^2 + y^2, lap f = 4 everywhere. The seed's formula, which
    # lacked sigma^2 in the exponential, gives 26 here for sigma = 2 (sign-corrected, zero-sum).
    k = K.laplacian_of_gaussian(2.0, size=41)
    dy, dx = _offsets(k)
    assert float((k * (dx**2 + dy**2)).sum()) == pytest.approx(4.0, rel=1e-9)
    k = K.laplacian_of_gaussian(1.4)  # seed's sigma and 11x11 window: truncation costs <1 %
    dy, dx = _offsets(k)
    assert float((k * (dx**2 + dy**2)).sum()) == pytest.approx(4.0, rel=0.01)


def test_log_close_to_scipy_gaussian_laplace():
    img = np.zeros((61, 61))
    img[30, 30] = 1.0
    ours = ndi.correlate(img, K.laplacian_of_gaussian(3.0, size=49), mode="constant")
    ref = ndi.gaussian_laplace(img, 3.0, mode="constant", truncate=8.0)
    # Sampled continuous LoG vs product of sampled 1-D derivatives: close, not identical.
    assert np.abs(ours - ref).max() < 0.02 * np.abs(ref).max()


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_sobel_matches_scipy_with_correlation(axis):
    img = np.random.default_rng(0).random((9, 12))
    got = ndi.correlate(img, K.sobel(axis), mode="reflect")
    np.testing.assert_allclose(got, ndi.sobel(img, axis=axis, mode="reflect"), atol=1e-13)


def test_sobel_bad_axis():
    with pytest.raises(ValueError, match="axis"):
        K.sobel(2)


def test_sharpen():
    np.testing.assert_array_equal(K.sharpen(), [[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
    assert K.sharpen(0.3).sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(K.sharpen(0.0), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="finite"):
        K.sharpen(float("nan"))


def test_from_matrix_copies_and_converts():
    m = np.arange(15, dtype=np.int32).reshape(3, 5)
    k = K.from_matrix(m)
    assert k.dtype == np.float64 and k.flags.c_contiguous
    m[0, 0] = 99
    assert k[0, 0] == 0
    assert K.from_matrix([[1]]).shape == (1, 1)


@pytest.mark.parametrize("m, shape_text", [
    (np.ones((2, 3)), "(2, 3)"),
    (np.ones((3, 2)), "(3, 2)"),
    (np.ones((0, 3)), "(0, 3)"),
    (np.ones(3), "(3,)"),
    (np.ones((3, 3, 1)), "(3, 3, 1)"),
    (np.array([[1.0, np.inf, 0.0]]), "(1, 3)"),
    (np.array([[np.nan]]), "(1, 1)"),
    (np.ones((3, 3), complex), "(3, 3)"),
])
def test_from_matrix_rejects_and_names_shape(m, shape_text):
    with pytest.raises(ValueError) as info:
        K.from_matrix(m)
    assert shape_text in str(info.value)


def test_from_function_grid_orientation():
    k = K.from_function(lambda dy, dx: 10 * dy + dx, 1, 2)
    assert k.shape == (3, 5)
    assert k[0, 0] == -12 and k[2, 4] == 12 and k[1, 2] == 0 and k[0, 4] == -8


def test_from_function_seed_gaussian_equals_gaussian_up_to_normalisation():
    s = 1.4

    def seed_gaussian(x, y):  # the seed's Gaussian(s)(x, y), continuous normalisation
        return 1.0 / 2 / math.pi / s / s * math.exp(-(x * x + y * y) / 2.0 / s / s)

    k = K.from_function(seed_gaussian, 5, 5)
    np.testing.assert_allclose(k / k.sum(), K.gaussian(s), rtol=1e-13)


def test_from_function_errors():
    with pytest.raises(ValueError, match="half_height"):
        K.from_function(lambda dy, dx: 1.0, -1, 1)
    with pytest.raises(ValueError, match="half_width"):
        K.from_function(lambda dy, dx: 1.0, 1, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        K.from_function(lambda dy, dx: float("nan") if dy == dx == 0 else 1.0, 1, 1)
