"""Small 2-D filter kernels as float64 NumPy arrays.

Every kernel returned here is a C-contiguous ``float64`` array of shape ``(height, width)``
with odd ``height`` and ``width``; its centre element ``[height // 2, width // 2]`` is the
weight of the output pixel itself. Row offsets are ``dy`` (along image rows, "y") and column
offsets are ``dx`` (along image columns, "x").

The kernels are meant for :func:`streamimg.operators.convolve.convolve` and
:func:`~streamimg.operators.convolve.correlate`. For the symmetric kernels (box, Gaussian,
Laplacian of Gaussian, sharpen) the two agree; the Sobel kernels are antisymmetric and written
for ``correlate`` (the convention of :func:`scipy.ndimage.sobel`).

The matrix and function kernels follow the seed design (a Flink job that convolved pixel
streams ``name;frame;x;y;v`` with ``convolutionMatrix(m)`` and ``convolutionFunction(f, sx,
sy)``), with its kernel checks made explicit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "box",
    "from_function",
    "from_matrix",
    "gaussian",
    "laplacian_of_gaussian",
    "sharpen",
    "sobel",
]


def _odd_size(size: int | tuple[int, int], what: str = "size") -> tuple[int, int]:
    """Return ``(height, width)`` from an int or a pair, both odd and positive."""
    if isinstance(size, (int, np.integer)):
        pair = (int(size), int(size))
    else:
        try:
            pair = tuple(int(s) for s in size)
        except TypeError as exc:
            raise ValueError(f"{what} must be an odd int or an (height, width) pair, "
                             f"got {size!r}") from exc
        if len(pair) != 2:
            raise ValueError(f"{what} must be an odd int or an (height, width) pair, "
                             f"got {size!r}")
    if any(s < 1 or s % 2 == 0 for s in pair):
        raise ValueError(f"{what} must be odd and positive in both axes, got {size!r}")
    return pair  # type: ignore[return-value]


def _positive_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return sigma


def _default_size(sigma: float) -> int:
    # 2*ceil(3*sigma)+1 covers +-3 sigma, i.e. 99.7 % of a 1-D Gaussian's mass; for the seed's
    # LoG with sigma = 1.4 it gives 11, the 11x11 window the seed used (sizeX = sizeY = 5).
    return 2 * math.ceil(3.0 * sigma) + 1


def _offsets(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets ``dy`` (height, 1) and ``dx`` (1, width) around the centre."""
    hh, hw = height // 2, width // 2
    dy = np.arange(-hh, hh + 1, dtype=np.float64)[:, None]
    dx = np.arange(-hw, hw + 1, dtype=np.float64)[None, :]
    return dy, dx


def from_matrix(m: np.ndarray) -> np.ndarray:
    """Validate a matrix kernel and return it as a float64 array.

    The seed's ``convolutionMatrix`` required ``m.rows % 2 == 1 & m.cols % 2 == 1`` so that
    the kernel has a centre pixel; this check is kept and extended.

    Parameters
    ----------
    m : array_like, shape (height, width)
        Kernel weights, any real numeric dtype. ``height`` and ``width`` must be odd.

    Returns
    -------
    numpy.ndarray, shape (height, width), float64
        A C-contiguous copy of ``m``. Weights are kept as given (no normalisation).

    Raises
    ------
    ValueError
        If ``m`` is not 2-D, has an even or zero height or width, is not real-numeric, or
        holds a NaN or an infinity. The message names the shape.
    """
    arr = np.asarray(m)
    if arr.ndim != 2:
        raise ValueError(f"kernel must be 2-D, got shape {arr.shape}")
    if arr.size == 0 or arr.shape[0] % 2 == 0 or arr.shape[1] % 2 == 0:
        raise ValueError(f"kernel height and width must be odd and non-zero, got shape "
                         f"{arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"kernel must be real-numeric, got dtype {arr.dtype} "
                         f"(shape {arr.shape})")
    out = np.array(arr, dtype=np.float64, order="C", copy=True)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"kernel of shape {arr.shape} holds NaN or infinite weights")
    return out


def from_function(f: Callable[[int, int], float], half_height: int,
                  half_width: int) -> np.ndarray:
    """Sample a kernel function on an integer grid, as the seed's ``convolutionFunction``.

    ``kernel[dy + half_height, dx + half_width] = f(dy, dx)`` for ``dy`` in
    ``[-half_height, half_height]`` (row offset) and ``dx`` in ``[-half_width, half_width]``
    (column offset). ``f`` is called once per grid point with Python ints, so it need not be
    vectorised.

    Parameters
    ----------
    f : callable ``(dy: int, dx: int) -> float``
        Weight at row offset ``dy`` and column offset ``dx`` (pixels).
    half_height, half_width : int
        Non-negative half sizes; the kernel shape is ``(2*half_height+1, 2*half_width+1)``.

    Returns
    -------
    numpy.ndarray, shape (2*half_height+1, 2*half_width+1), float64
        The sampled weights, not normalised.

    Raises
    ------
    ValueError
        If a half size is negative or not an integer, or ``f`` returns a NaN or an infinity.
    """
    for name, value in (("half_height", half_height), ("half_width", half_width)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    hh, hw = int(half_height), int(half_width)
    weights = [[float(f(dy, dx)) for dx in range(-hw, hw + 1)] for dy in range(-hh, hh + 1)]
    return from_matrix(np.array(weights, dtype=np.float64))


def box(size: int | tuple[int, int] = 3) -> np.ndarray:
    """Box (mean) kernel: every weight ``1 / (height * width)``, so the weights sum to 1.

    The seed's ``blur`` matrix was the 3x3 case.

    Parameters
    ----------
    size : int or (int, int)
        Odd kernel size, or odd ``(height, width)``. Default 3.

    Returns
    -------
    numpy.ndarray, shape (height, width), float64

    Raises
    ------
    ValueError
        If a size is even, zero or negative.
    """
    height, width = _odd_size(size)
    return np.full((height, width), 1.0 / (height * width), dtype=np.float64)


def gaussian(sigma: float, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Isotropic Gaussian kernel, normalised so that the sampled weights sum to 1.

    ``w(dy, dx) = exp(-(dx**2 + dy**2) / (2 * sigma**2)) / Z`` with ``Z`` the sum of the
    samples (Gonzalez & Woods, *Digital Image Processing*, 4th ed., sec. 3.5). The seed used
    the continuous normalisation ``1 / (2 pi sigma**2)`` instead, whose samples do not sum to
    1: 0.9999 for sigma = 1.4 on 11x11, but 1.029 for sigma = 0.5 (undersampled) and 0.87
    for sigma = 3 on 11x11 (truncated), so such a "blur" brightens or darkens the image.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, > 0.
    size : int or (int, int), optional
        Odd kernel size. Default ``2 * ceil(3 * sigma) + 1`` (covers +-3 sigma, 99.7 % of
        the mass per axis). Note :func:`scipy.ndimage.gaussian_filter` truncates at 4 sigma
        instead, so it differs slightly from this kernel.

    Returns
    -------
    numpy.ndarray, shape (height, width), float64
        Weights summing to 1 (to rounding), symmetric in both axes.

    Raises
    ------
    ValueError
        If ``sigma`` is not finite and positive, or a size is even or not positive.
    """
    sigma = _positive_sigma(sigma)
    height, width = _odd_size(_default_size(sigma) if size is None else size)
    dy, dx = _offsets(height, width)
    w = np.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))
    return np.ascontiguousarray(w / w.sum())


def laplacian_of_gaussian(sigma: float, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Laplacian of Gaussian (Marr & Hildreth, 1980), made zero-sum after sampling.

    Samples ``LoG(dy, dx) = -1 / (pi * sigma**4) * (1 - r2 / (2 * sigma**2))
    * exp(-r2 / (2 * sigma**2))`` with ``r2 = dx**2 + dy**2``, which is the Laplacian
    ``d2G/dx2 + d2G/dy2`` of the unit-mass Gaussian ``G = exp(-r2 / (2 sigma**2)) / (2 pi
    sigma**2)`` (D. Marr and E. Hildreth, "Theory of edge detection", Proc. R. Soc. Lond. B
    207, 1980; Gonzalez & Woods, *Digital Image Processing*, 4th ed., eq. 10-29). The centre
    is negative, the same sign as :func:`scipy.ndimage.gaussian_laplace`; negate it for the
    "Mexican hat" form. After sampling, the mean of the samples is subtracted so the weights
    sum to exactly zero (to rounding): a flat image then maps to 0, which the truncated
    continuous formula does not guarantee.

    The seed's ``LoG(s)(x, y)`` was the Mexican-hat sign with a bug: its exponential was
    ``exp(-(x*x + y*y) / 2.0)``, missing the ``sigma**2`` in the denominator, so for any
    ``sigma != 1`` its envelope had width 1 pixel whatever ``sigma`` was.

    Parameters
    ----------
    sigma : float
        Standard deviation of the Gaussian in pixels, > 0. The zero crossings are at
        ``r = sqrt(2) * sigma``.
    size : int or (int, int), optional
        Odd kernel size. Default ``2 * ceil(3 * sigma) + 1`` (11 for the seed's sigma = 1.4).

    Returns
    -------
    numpy.ndarray, shape (height, width), float64
        Zero-sum weights in units of 1/pixel**2, negative at the centre.

    Raises
    ------
    ValueError
        If ``sigma`` is not finite and positive, or a size is even or not positive.
    """
    sigma = _positive_sigma(sigma)
    height, width = _odd_size(_default_size(sigma) if size is None else size)
    dy, dx = _offsets(height, width)
    q = (dx * dx + dy * dy) / (2.0 * sigma * sigma)
    w = -(1.0 - q) * np.exp(-q) / (math.pi * sigma**4)
    return np.ascontiguousarray(w - w.mean())


def sobel(axis: int) -> np.ndarray:
    """3x3 Sobel derivative kernel, written for correlation.

    ``sobel(1)`` (derivative along columns, x) is ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]``;
    ``sobel(0)`` (along rows, y) is its transpose. With
    :func:`~streamimg.operators.convolve.correlate` the result equals
    :func:`scipy.ndimage.sobel` with the same ``axis`` (positive where intensity increases
    with x or y); :func:`~streamimg.operators.convolve.convolve` flips the kernel and so the
    sign. Not normalised: the weights sum to 0 and their absolute values to 8; divide the
    response by 8 for a gradient in intensity units per pixel (Gonzalez & Woods, 4th ed.,
    sec. 3.6).

    Parameters
    ----------
    axis : int
        0 for d/dy (rows) or 1 for d/dx (columns); -2 and -1 are accepted as aliases.

    Returns
    -------
    numpy.ndarray, shape (3, 3), float64

    Raises
    ------
    ValueError
        If ``axis`` is not one of 0, 1, -1, -2.
    """
    if axis not in (0, 1, -1, -2):
        raise ValueError(f"axis must be 0 (rows, y) or 1 (columns, x), got {axis!r}")
    kx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    return np.ascontiguousarray(kx if axis % 2 == 1 else kx.T)


def sharpen(amount: float = 1.0) -> np.ndarray:
    """3x3 sharpening kernel ``identity - amount * laplacian``, weights summing to 1.

    With the 4-neighbour discrete Laplacian ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` this is
    ``[[0, -a, 0], [-a, 1 + 4a, -a], [0, -a, 0]]``; ``amount = 1`` gives the classic
    ``[[0, -1, 0], [-1, 5, -1], [0, -1, 0]]`` (Gonzalez & Woods, 4th ed., sec. 3.6). Because
    the weights sum to 1, flat regions are unchanged.

    Parameters
    ----------
    amount : float
        Strength ``a`` of the Laplacian subtracted; finite. Default 1.

    Returns
    -------
    numpy.ndarray, shape (3, 3), float64

    Raises
    ------
    ValueError
        If ``amount`` is not finite.
    """
    a = float(amount)
    if not math.isfinite(a):
        raise ValueError(f"amount must be finite, got {amount!r}")
    return np.array([[0.0, -a, 0.0], [-a, 1.0 + 4.0 * a, -a], [0.0, -a, 0.0]])
