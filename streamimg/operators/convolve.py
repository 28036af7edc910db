"""2-D convolution and correlation of frame batches on Dask.

Frames are Dask (or NumPy) arrays shaped ``(height, width)``, ``(n, height, width)`` or
``(n, height, width, channels)``. The kernel runs over the two spatial axes only, per frame
and per channel, and the result equals :func:`scipy.ndimage.correlate` /
:func:`scipy.ndimage.convolve` applied with the matching ``mode`` and a kernel shaped
``(1, kh, kw, 1)`` (measured: float64 to 1e-12, float32 to 1e-5 relative to
``max|frame| * sum|kernel|``), whatever the chunking.

How the graph is built, and why:

- A frame that is one spatial chunk (the normal case, one frame or a few frames per chunk) is
  filtered by ``map_blocks``: the inner filter handles the boundary itself, 2 tasks per
  frame. A Dask-handled boundary costs ~82 tasks per frame (measured on this project).
- A spatially split frame goes through ``map_overlap`` with depth ``kernel half size`` on the
  split spatial axes and 0 elsewhere (so frames and channels never share data) and Dask
  boundary ``"none"``: the edge blocks then end at the true frame edge, where the inner
  filter applies the exact scipy mode. This also gives ``mirror``, which Dask has no
  boundary for. Only ``wrap`` needs data from the far side, so split axes use Dask's
  ``"periodic"`` (which equals scipy ``wrap``). Chunks thinner than the depth are merged by
  Dask's own ``allow_rechunk``; an axis shorter than the kernel reach is merged into one chunk.
- The inner filter is OpenCV's ``cv2.filter2D`` when importable (6x, 14x and 34x faster
  than ``scipy.ndimage.convolve`` for 3x3, 5x5 and 11x11 kernels on 1080p float32 frames,
  ``benchmarks/bench_convolve.py``), else scipy. Measured against scipy on this
  machine (OpenCV 5.0.0): ``BORDER_REFLECT`` = ``reflect``, ``BORDER_REFLECT_101`` =
  ``mirror``, ``BORDER_REPLICATE`` = ``nearest`` and ``BORDER_CONSTANT`` = ``constant`` with
  ``cval = 0`` agree to 3e-16 (float64) and 2e-7 (float32) relative, also for kernels larger
  than the frame. ``BORDER_WRAP`` is not usable: ``filter2D`` asserts on it for small kernels
  and returns wrong values (errors of 4-12 % of full scale) on its DFT path (kernels from
  11x11 on large frames). So ``wrap`` and ``constant`` with ``cval != 0`` pad the frame with
  :func:`numpy.pad` first and crop after filtering.
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
import scipy.ndimage as ndi

from streamimg.operators.kernels import from_matrix

try:  # OpenCV is optional: the scipy path gives the same numbers, only slower.
    import cv2
except ImportError:  # pragma: no cover - exercised only where OpenCV is absent
    cv2 = None

__all__ = ["BOUNDARIES", "convolve", "correlate"]

#: Boundary modes, named as in :mod:`scipy.ndimage`.
BOUNDARIES = ("reflect", "mirror", "nearest", "wrap", "constant")

_CV_BORDER = (
    {} if cv2 is None else {
        "reflect": cv2.BORDER_REFLECT,  # d c b a | a b c d, scipy "reflect"
        "mirror": cv2.BORDER_REFLECT_101,  # d c b | a b c d, scipy "mirror"
        "nearest": cv2.BORDER_REPLICATE,  # a a a | a b c d
        "constant": cv2.BORDER_CONSTANT,  # 0 0 0 | a b c d (filter2D has no fill value)
    }
)
_BACKENDS = ("auto", "opencv", "scipy")


def _compute_dtype(in_dtype: np.dtype, compute_dtype) -> np.dtype:
    if compute_dtype is not None:
        dt = np.dtype(compute_dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"compute_dtype must be float32 or float64, got {dt}")
        return dt
    if in_dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        return in_dtype
    if in_dtype.kind in "iu" or in_dtype == np.dtype(np.float16):
        return np.dtype(np.float32)
    return np.dtype(np.float64)  # longdouble and other exotic floats


def _output_dtype(in_dtype: np.dtype, compute: np.dtype, output_dtype) -> np.dtype:
    if output_dtype is None:
        return compute
    dt = in_dtype if isinstance(output_dtype, str) and output_dtype == "input" \
        else np.dtype(output_dtype)
    if dt.kind not in "iuf":
        raise ValueError(f"output_dtype must be 'input', an integer or a float dtype, got {dt}")
    return dt


def _cast(res: np.ndarray, out: np.ndarray | np.dtype) -> np.ndarray:
    """Cast a float result; integer targets are rounded half to even and clipped."""
    out = np.dtype(out)
    if out.kind not in "iu":
        return res.astype(out, copy=False)
    info = np.iinfo(out)
    # The clip bounds must be representable in the float dtype: float32(2**31 - 1) rounds up
    # to 2**31, which would overflow int32, so step down to the next float below.
    hi = np.array(info.max, dtype=res.dtype)
    if int(hi) > info.max:  # compare as Python ints: NEP 50 would compare in float32
        hi = np.nextafter(hi, res.dtype.type(0))
    res = np.rint(res)
    np.clip(res, res.dtype.type(info.min), hi, out=res)
    return res.astype(out)


def _as4d(shape: tuple[int, ...], ndim: int) -> tuple[int, int, int, int]:
    """View a block of a ``ndim``-D frame array as ``(n, height, width, channels)``."""
    if ndim == 2:
        return (1, shape[0], shape[1], 1)
    if ndim == 3:
        return (shape[0], shape[1], shape[2], 1)
    return shape  # type: ignore[return-value]


def _opencv_4d(x: np.ndarray, kernel: np.ndarray, mode: str, cval: float) -> np.ndarray:
    """Correlate each (height, width, channels) frame of ``x`` with OpenCV."""
    hh, hw = kernel.shape[0] // 2, kernel.shape[1] // 2
    k = kernel.astype(x.dtype)
    pad = mode == "wrap" or (mode == "constant" and cval != 0.0)
    border = cv2.BORDER_CONSTANT if pad else _CV_BORDER[mode]
    out = np.empty_like(x)
    height, width, channels = x.shape[1:]
    widths = ((hh, hh), (hw, hw), (0, 0))
    for i in range(x.shape[0]):
        img = x[i]
        if pad:
            img = np.pad(img, widths, mode="wrap") if mode == "wrap" else \
                np.pad(img, widths, mode="constant", constant_values=cval)
        # filter2D reads (h, w, c) as one c-channel image up to 4 channels; beyond that, go
        # channel by channel. Unpadded results go straight into `out` through dst=: a
        # separate result plus a copy cost 7.9 ms instead of 1.7 ms per 1080p float32 frame
        # (page faults on the fresh buffer, measured).
        groups = [slice(None)] if channels <= 4 else [slice(c, c + 1) for c in range(channels)]
        for g in groups:
            src = np.ascontiguousarray(img[..., g])
            if src.shape[2] == 1:
                src = src[..., 0]
            dst = out[i, ..., g]
            dst = dst[..., 0] if dst.shape[2] == 1 else dst
            if pad or not dst.flags.c_contiguous:
                res = cv2.filter2D(src, -1, k, borderType=border)
                if pad:
                    res = res[hh:hh + height, hw:hw + width]
                dst[...] = res
            else:
                cv2.filter2D(src, -1, k, dst=dst, borderType=border)
    return out


def _correlate_block(block: np.ndarray, *, kernel: np.ndarray, mode: str, cval: float,
                     compute: np.dtype, out: np.dtype, backend: str) -> np.ndarray:
    """Correlate one block (any of the three frame layouts) over its spatial axes."""
    x = np.ascontiguousarray(block, dtype=compute).reshape(_as4d(block.shape, block.ndim))
    if x.size == 0:
        res = x
    elif backend == "opencv":
        res = _opencv_4d(x, kernel, mode, cval)
    else:
        res = ndi.correlate(x, kernel[None, :, :, None], output=compute, mode=mode, cval=cval)
    return _cast(res.reshape(block.shape), out)


def _to_dask(frames) -> da.Array:
    if isinstance(frames, da.Array):
        return frames
    arr = np.asarray(frames)
    if arr.ndim not in (2, 3, 4):
        raise ValueError(f"frames must be 2-D, 3-D or 4-D, got shape {arr.shape}")
    # One frame per chunk, and name=False: tokenising hashes the whole buffer (~118 ms per
    # 265 MB measured), for a name nobody reuses.
    chunks = arr.shape if arr.ndim == 2 else (1,) + arr.shape[1:]
    return da.from_array(arr, chunks=chunks, name=False)


def correlate(frames, kernel, boundary: str = "reflect", cval: float = 0.0,
              output_dtype=None, compute_dtype=None, *, backend: str = "auto") -> da.Array:
    """Correlate every frame with a 2-D kernel, lazily on Dask.

    ``out[y, x] = sum_{i,j} kernel[i, j] * frame[y + i - kh//2, x + j - kw//2]`` per frame and
    per channel, with out-of-frame pixels supplied by ``boundary``. This is the operation
    the seed called "convolution" (its ``expand`` sent ``v * m(c + o)`` to ``p - o``); it
    equals :func:`scipy.ndimage.correlate` with ``mode=boundary``.

    Parameters
    ----------
    frames : dask.array.Array or array_like
        Shape ``(height, width)``, ``(n, height, width)`` or ``(n, height, width,
        channels)``; any real dtype except bool. NumPy input is wrapped one frame per chunk.
        Any chunking works; one spatial chunk per frame is fastest.
    kernel : array_like, shape (kh, kw)
        Odd ``kh`` and ``kw``, finite weights (see :mod:`streamimg.operators.kernels`).
    boundary : {"reflect", "mirror", "nearest", "wrap", "constant"}
        How the frame is extended beyond its edges, as in :mod:`scipy.ndimage`:
        ``reflect`` (d c b a | a b c d), ``mirror`` (d c b | a b c d), ``nearest``
        (a a a | a b c d), ``wrap`` (periodic: b c d | a b c d, the seed's boundary),
        ``constant`` (k k k | a b c d with ``k = cval``).
    cval : float
        Fill value for ``boundary="constant"``, in input intensity units.
    output_dtype : None, "input" or dtype
        ``None``: the compute dtype. ``"input"``: the input dtype. Integer targets are
        rounded half to even and clipped to the dtype's range; float targets are cast.
    compute_dtype : None, float32 or float64
        ``None``: float32/float64 input is computed in its own dtype, integer and float16
        input in float32, other floats in float64. An explicit value is used for all input.
    backend : {"auto", "opencv", "scipy"}
        Inner filter; ``"auto"`` picks OpenCV when importable. Both give the same numbers.

    Returns
    -------
    dask.array.Array
        Same shape as ``frames`` with dtype per ``output_dtype``. Chunks equal the input's
        unless spatial chunks were thinner than the kernel half size (then they are merged).

    Raises
    ------
    ValueError
        If the kernel is not 2-D, has an even or zero size or non-finite weights; if
        ``boundary`` or ``backend`` is unknown; if ``frames`` is not 2-, 3- or 4-D or has a
        bool/complex/non-numeric dtype; if a dtype argument is not allowed.
    """
    k = from_matrix(kernel)
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "opencv" and cv2 is None:
        raise ValueError("backend='opencv' requested but cv2 is not importable")
    inner = "opencv" if backend == "auto" and cv2 is not None else backend
    x = _to_dask(frames)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"frames must be 2-D, 3-D or 4-D, got shape {x.shape}")
    if x.dtype.kind not in "iuf":
        raise ValueError(f"frames must have an integer or float dtype, got {x.dtype}")
    compute = _compute_dtype(x.dtype, compute_dtype)
    out = _output_dtype(x.dtype, compute, output_dtype)

    spatial = (0, 1) if x.ndim == 2 else (1, 2)
    halves = dict(zip(spatial, (k.shape[0] // 2, k.shape[1] // 2), strict=True))
    # A split axis shorter than the kernel reach cannot be overlapped (Dask needs depth <=
    # axis length); as one chunk, the inner filter applies scipy's repeated extension.
    merge = {ax: -1 for ax, h in halves.items() if len(x.chunks[ax]) > 1 and h >= x.shape[ax]}
    if merge:
        x = x.rechunk(merge)
    func = partial(_correlate_block, kernel=k, mode=boundary, cval=float(cval),
                   compute=compute, out=out, backend=inner)
    meta = np.empty((0,) * x.ndim, dtype=out)
    depth = {ax: (h if len(x.chunks[ax]) > 1 else 0) for ax, h in halves.items()}
    if not any(depth.values()):
        return x.map_blocks(func, dtype=out, meta=meta)
    bound = {ax: ("periodic" if boundary == "wrap" and d else "none") for ax, d in depth.items()}
    return x.map_overlap(func, depth=depth, boundary=bound, dtype=out, meta=meta)


def convolve(frames, kernel, boundary: str = "reflect", cval: float = 0.0,
             output_dtype=None, compute_dtype=None, *, backend: str = "auto") -> da.Array:
    """Convolve every frame with a 2-D kernel, lazily on Dask.

    ``out[y, x] = sum_{i,j} kernel[i, j] * frame[y - i + kh//2, x - j + kw//2]``: a
    correlation with the kernel flipped in both axes, which for odd sizes equals
    :func:`scipy.ndimage.convolve` exactly. Symmetric kernels give the same result as
    :func:`correlate`.

    Parameters
    ----------
    frames, kernel, boundary, cval, output_dtype, compute_dtype, backend
        As for :func:`correlate`.

    Returns
    -------
    dask.array.Array
        Same shape as ``frames``; dtype per ``output_dtype``.

    Raises
    ------
    ValueError
        As for :func:`correlate`.
    """
    k = from_matrix(kernel)[::-1, ::-1]
    return correlate(frames, k, boundary=boundary, cval=cval, output_dtype=output_dtype,
                     compute_dtype=compute_dtype, backend=backend)
