"""Geometric frame transforms: resize, crop, flip and rotate frames and batches.

Thin wrappers over OpenCV (``cv2.resize``) and NumPy (views, ``numpy.flip``,
``numpy.rot90``). This module also holds what the frame transforms here and in
:mod:`streamimg.operators.color` share: :func:`map_frames`, which applies a per-frame
function to a frame or to each frame of a batch, and these conventions:

- A *frame* is ``(height, width, channels)`` or ``(height, width)`` (grayscale);
  a *batch* is ``(n, height, width, channels)``. A 4-D input is always a batch
  and is processed frame by frame along its leading axis; a 3-D input is always
  one frame (a grayscale batch must therefore be ``(n, h, w, 1)``).
- Sizes are in pixels, height first ``(h, w)``; boxes are ``(x0, y0, x1, y1)``.
- Functions never modify their input. ``crop`` and ``center_crop`` return views;
  everything else returns a new C-contiguous array.
- A trailing channel axis of size 1 is preserved (OpenCV drops it; we restore it).

Errors are ``ValueError`` naming the bad value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

__all__ = ["center_crop", "crop", "flip", "hflip", "map_frames", "resize", "rot90", "vflip"]

_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST_EXACT,
                  "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


def map_frames(fn: Callable[[np.ndarray], np.ndarray], frames: np.ndarray) -> np.ndarray:
    """Apply a per-frame function to a frame or to each frame of a batch.

    Parameters
    ----------
    fn : callable
        Takes one frame ``(h, w)`` or ``(h, w, c)`` and returns one frame.
    frames : numpy.ndarray
        One frame (2-D or 3-D) or a batch ``(n, h, w, c)``.

    Returns
    -------
    numpy.ndarray
        ``fn(frames)`` for a frame; for a batch, ``np.stack`` of the per-frame
        results, shape ``(n, h', w', c')``. If the input had a trailing channel
        axis of size 1 and ``fn`` returned a 2-D frame, the axis is restored.

    Raises
    ------
    ValueError
        If ``frames`` is not 2-D, 3-D or 4-D, or the batch is empty.
    """
    frames = np.asarray(frames)
    if frames.ndim == 4:
        if len(frames) == 0:
            raise ValueError(f"empty batch: shape {frames.shape}")
        return np.stack([_apply(fn, f) for f in frames])
    if frames.ndim in (2, 3):
        return _apply(fn, frames)
    raise ValueError(f"expected a frame (h, w[, c]) or a batch (n, h, w, c), got shape "
                     f"{frames.shape}")


def _apply(fn: Callable[[np.ndarray], np.ndarray], frame: np.ndarray) -> np.ndarray:
    out = fn(frame)
    if frame.ndim == 3 and frame.shape[2] == 1 and out.ndim == 2:
        out = out[:, :, None]
    return out


def _frame_shape(frames: np.ndarray) -> tuple[int, int]:
    """(height, width) of a frame or of the frames of a batch."""
    if frames.ndim not in (2, 3, 4):
        raise ValueError(f"expected a frame or a batch, got shape {frames.shape}")
    return frames.shape[1:3] if frames.ndim == 4 else frames.shape[:2]


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise ValueError(f"{name} must be positive integers (h, w), got {size!r}")
    return int(h), int(w)


def resize(frames: np.ndarray, size: int | tuple[int, int] | None = None, *,
           max_side: int | None = None, keep_aspect: bool = False,
           interpolation: str = "linear") -> np.ndarray:
    """Resize a frame or a batch with ``cv2.resize``.

    Parameters
    ----------
    frames : numpy.ndarray
        Frame ``(H, W[, C])`` or batch ``(n, H, W, C)``; uint8, uint16, int16,
        float32 or float64 (OpenCV's supported depths). Dtype is preserved.
    size : int or (h, w), optional
        Target size in pixels, height first. With ``keep_aspect=True`` the frame
        is scaled uniformly to fit inside ``(h, w)`` (no padding; see
        ``streamimg.analytics.boxes.letterbox`` for padding).
    max_side : int, optional
        Instead of ``size``: scale uniformly so the longer side is at most
        ``max_side`` pixels. Frames already small enough are returned unchanged
        (as a copy). Exactly one of ``size`` and ``max_side`` must be given.
    keep_aspect : bool
        See ``size``.
    interpolation : {"linear", "nearest", "area", "cubic"}
        ``cv2.INTER_LINEAR``, ``INTER_NEAREST_EXACT`` (pixel-centre nearest
        neighbour as in Pillow and scikit-image; OpenCV's plain ``INTER_NEAREST``
        is shifted by half a pixel), ``INTER_AREA`` (best for shrinking) or
        ``INTER_CUBIC``. All use pixel-centre alignment, so "linear" matches
        ``skimage.transform.resize(order=1, anti_aliasing=False, mode="edge")``
        within one grey level.

    Returns
    -------
    numpy.ndarray
        ``(h, w[, C])`` or ``(n, h, w, C)``, same dtype. Uniform scales round each
        side to the nearest pixel (at least 1).

    Raises
    ------
    ValueError
        Unknown ``interpolation``; both or neither of ``size`` / ``max_side``;
        non-positive sizes.
    """
    frames = np.asarray(frames)
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"unknown interpolation {interpolation!r}; "
                         f"expected one of {sorted(_INTERPOLATION)}")
    if (size is None) == (max_side is None):
        raise ValueError(f"give exactly one of size={size!r} and max_side={max_side!r}")
    H, W = _frame_shape(frames)
    if max_side is not None:
        if int(max_side) != max_side or max_side < 1:
            raise ValueError(f"max_side must be a positive integer, got {max_side!r}")
        scale = min(1.0, max_side / max(H, W))
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
    else:
        h, w = _pair(size, "size")
        if keep_aspect:
            scale = min(h / H, w / W)
            h, w = max(1, round(H * scale)), max(1, round(W * scale))
    if (h, w) == (H, W):
        return frames.copy()
    flag = _INTERPOLATION[interpolation]
    return map_frames(lambda f: cv2.resize(f, (w, h), interpolation=flag), frames)


def crop(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop a frame or every frame of a batch to ``box``.

    Parameters
    ----------
    frames : numpy.ndarray
        Frame ``(H, W[, C])`` or batch ``(n, H, W, C)``, any dtype.
    box : (x0, y0, x1, y1)
        Integer pixel box, half-open: columns ``x0 .. x1-1``, rows ``y0 .. y1-1``;
        requires ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H``.

    Returns
    -------
    numpy.ndarray
        A view ``(y1-y0, x1-x0[, C])`` (or with the batch axis); copy it before
        writing if the original must stay intact.

    Raises
    ------
    ValueError
        If the box is not four integers or lies (partly) outside the frame.
    """
    frames = np.asarray(frames)
    H, W = _frame_shape(frames)
    if len(box) != 4 or any(int(v) != v for v in box):
        raise ValueError(f"box must be four integers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
        raise ValueError(f"crop box {box!r} is empty or outside the {W}x{H} frame")
    if frames.ndim == 4:
        return frames[:, y0:y1, x0:x1]
    return frames[y0:y1, x0:x1]


def center_crop(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Crop the central ``size`` region of a frame or batch.

    Parameters
    ----------
    frames : numpy.ndarray
        Frame ``(H, W[, C])`` or batch ``(n, H, W, C)``.
    size : int or (h, w)
        Output size in pixels; the offset is ``((H - h) // 2, (W - w) // 2)``
        (the torchvision ``CenterCrop`` convention, rounding down).

    Returns
    -------
    numpy.ndarray
        A view ``(h, w[, C])`` (or with the batch axis).

    Raises
    ------
    ValueError
        If ``size`` is larger than the frame or not positive.
    """
    frames = np.asarray(frames)
    H, W = _frame_shape(frames)
    h, w = _pair(size, "size")
    if h > H or w > W:
        raise ValueError(f"center_crop size {(h, w)} is larger than the frame {(H, W)}")
    y0, x0 = (H - h) // 2, (W - w) // 2
    return crop(frames, (x0, y0, x0 + w, y0 + h))


def flip(frames: np.ndarray, axis: int) -> np.ndarray:
    """Mirror a frame or every frame of a batch.

    Parameters
    ----------
    frames : numpy.ndarray
        Frame ``(H, W[, C])`` or batch ``(n, H, W, C)``, any dtype.
    axis : {0, 1}
        Frame axis: 0 flips up-down (rows), 1 flips left-right (columns); for a
        batch the same frame axis is used (the batch order is kept).

    Returns
    -------
    numpy.ndarray
        New C-contiguous array, same shape and dtype.

    Raises
    ------
    ValueError
        If ``axis`` is not 0 or 1.
    """
    frames = np.asarray(frames)
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (up-down) or 1 (left-right), got {axis!r}")
    _frame_shape(frames)
    return np.ascontiguousarray(np.flip(frames, axis + (frames.ndim == 4)))


def hflip(frames: np.ndarray) -> np.ndarray:
    """Mirror left-right: ``flip(frames, 1)``; see :func:`flip`."""
    return flip(frames, 1)


def vflip(frames: np.ndarray) -> np.ndarray:
    """Mirror up-down: ``flip(frames, 0)``; see :func:`flip`."""
    return flip(frames, 0)


def rot90(frames: np.ndarray, k: int = 1) -> np.ndarray:
    """Rotate a frame or every frame of a batch by ``k`` quarter turns.

    Parameters
    ----------
    frames : numpy.ndarray
        Frame ``(H, W[, C])`` or batch ``(n, H, W, C)``, any dtype.
    k : int
        Quarter turns counter-clockwise as displayed (``numpy.rot90``
        convention); negative is clockwise.

    Returns
    -------
    numpy.ndarray
        New C-contiguous array; ``(W, H[, C])`` for odd ``k``.

    Raises
    ------
    ValueError
        If ``k`` is not an integer.
    """
    frames = np.asarray(frames)
    if int(k) != k:
        raise ValueError(f"k must be an integer, got {k!r}")
    _frame_shape(frames)
    axes = (1, 2) if frames.ndim == 4 else (0, 1)
    return np.ascontiguousarray(np.rot90(frames, int(k), axes=axes))
