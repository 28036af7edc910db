"""Colour transforms: colour-space conversion, normalisation and histogram equalisation.

Thin wrappers over OpenCV (``cv2.cvtColor``, ``cv2.equalizeHist``,
``cv2.createCLAHE``) and NumPy. Frames and batches follow the conventions of
:mod:`streamimg.operators.geometry` (a 4-D input is a batch, processed frame by
frame with :func:`~streamimg.operators.geometry.map_frames`; a 3-D input is one
frame), and:

- Channel order is RGB unless a function says otherwise. Frames decoded by
  OpenCV (and by Spark's image source, which uses OpenCV) are BGR: convert them
  with ``convert_color(frame, "BGR", "RGB")`` first.
- Functions never modify their input; they return a new C-contiguous array.
- A trailing channel axis of size 1 is preserved (OpenCV drops it; we restore it).

Errors are ``ValueError`` naming the bad value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from streamimg.operators.geometry import _pair, map_frames

__all__ = ["clahe", "convert_color", "equalize_hist", "normalize"]

COLOR_SPACES = ("RGB", "BGR", "GRAY", "HSV", "Lab")
# Direct OpenCV conversions; any other pair goes through RGB.
_CV_CODES = {
    ("RGB", "BGR"): cv2.COLOR_RGB2BGR, ("BGR", "RGB"): cv2.COLOR_BGR2RGB,
    ("RGB", "GRAY"): cv2.COLOR_RGB2GRAY, ("BGR", "GRAY"): cv2.COLOR_BGR2GRAY,
    ("GRAY", "RGB"): cv2.COLOR_GRAY2RGB, ("GRAY", "BGR"): cv2.COLOR_GRAY2BGR,
    ("RGB", "HSV"): cv2.COLOR_RGB2HSV, ("HSV", "RGB"): cv2.COLOR_HSV2RGB,
    ("BGR", "HSV"): cv2.COLOR_BGR2HSV, ("HSV", "BGR"): cv2.COLOR_HSV2BGR,
    ("RGB", "Lab"): cv2.COLOR_RGB2Lab, ("Lab", "RGB"): cv2.COLOR_Lab2RGB,
    ("BGR", "Lab"): cv2.COLOR_BGR2Lab, ("Lab", "BGR"): cv2.COLOR_Lab2BGR,
}


def _canonical_space(name: str) -> str:
    for space in COLOR_SPACES:
        if isinstance(name, str) and name.lower() == space.lower():
            return space
    raise ValueError(f"unknown colour space {name!r}; expected one of {COLOR_SPACES}")


def convert_color(frames: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert between colour spaces with ``cv2.cvtColor``.

    Ranges follow OpenCV (``cv2.cvtColor`` documentation, "Color conversions"):

    ============ ============================== =====================================
    space        uint8                          float32 (RGB/BGR/GRAY in [0, 1])
    ============ ============================== =====================================
    RGB, BGR     [0, 255]                       [0, 1]
    GRAY         [0, 255], Y = 0.299 R +        [0, 1], same weights
                 0.587 G + 0.114 B (BT.601;
                 ``skimage.color.rgb2gray``
                 uses BT.709 instead)
    HSV          H in [0, 180) (degrees / 2),   H in [0, 360) degrees, S and V in
                 S and V in [0, 255]            [0, 1]
    Lab (D65)    L * 255 / 100, a + 128,        L in [0, 100], a and b roughly
                 b + 128                        [-127, 127]
    ============ ============================== =====================================

    Parameters
    ----------
    frames : numpy.ndarray
        Frame ``(H, W, 3)`` (``(H, W)`` or ``(H, W, 1)`` for GRAY) or batch
        ``(n, H, W, C)``; uint8 or float32 (float64 is converted to float32).
        RGB <-> BGR accepts any dtype.
    src, dst : {"RGB", "BGR", "GRAY", "HSV", "Lab"}
        Colour spaces (case-insensitive). Pairs without a direct OpenCV code
        (e.g. HSV -> Lab, GRAY -> HSV) go through RGB.

    Returns
    -------
    numpy.ndarray
        New array, same dtype as the (float32-converted) input; GRAY output is
        ``(H, W)`` for 2-D/3-D input and ``(n, H, W, 1)`` for batches.

    Raises
    ------
    ValueError
        Unknown colour space, unsupported dtype, or a channel count that does
        not match ``src``.
    """
    src, dst = _canonical_space(src), _canonical_space(dst)
    frames = np.asarray(frames)
    channels = 1 if frames.ndim == 2 else frames.shape[-1]
    want = 1 if src == "GRAY" else 3
    if channels != want or frames.ndim not in (2, 3, 4):
        raise ValueError(f"{src} input needs {want} channel(s), got shape {frames.shape}")
    if src == dst:
        return frames.copy()
    if {src, dst} == {"RGB", "BGR"}:
        return np.ascontiguousarray(frames[..., ::-1])
    if frames.dtype == np.float64:
        frames = frames.astype(np.float32)
    if frames.dtype not in (np.uint8, np.float32):
        raise ValueError(f"convert_color supports uint8 and float32 frames, got {frames.dtype}")
    if (src, dst) in _CV_CODES:
        code = _CV_CODES[(src, dst)]
        out = map_frames(lambda f: cv2.cvtColor(f, code), frames)
        if frames.ndim == 4 and out.ndim == 3:
            out = out[..., None]
        return out
    return convert_color(convert_color(frames, src, "RGB"), "RGB", dst)


def normalize(frames: np.ndarray, mean: Sequence[float] | float | None = None,
              std: Sequence[float] | float | None = None) -> np.ndarray:
    """Scale pixels to float32 in [0, 1], then optionally standardise per channel.

    ``x = frame / 255`` for uint8 (``/ 65535`` for uint16; float input is taken as
    already in [0, 1]); then ``(x - mean) / std`` if ``mean`` or ``std`` is given
    (e.g. the ImageNet statistics ``mean=(0.485, 0.456, 0.406)``,
    ``std=(0.229, 0.224, 0.225)`` of torchvision, in RGB order).

    Parameters
    ----------
    frames : numpy.ndarray
        Frame ``(H, W[, C])`` or batch ``(n, H, W, C)``.
    mean, std : float or sequence of C floats, optional
        Per-channel statistics in [0, 1] units, in the frame's channel order.
        Missing ``mean`` is 0, missing ``std`` is 1.

    Returns
    -------
    numpy.ndarray
        float32, same shape.

    Raises
    ------
    ValueError
        If ``mean``/``std`` length does not match the channel count, ``std`` has
        a zero, or the dtype is not uint8, uint16 or floating.
    """
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        x = frames.astype(np.float32) / np.float32(255)
    elif frames.dtype == np.uint16:
        x = frames.astype(np.float32) / np.float32(65535)
    elif np.issubdtype(frames.dtype, np.floating):
        x = frames.astype(np.float32)
    else:
        raise ValueError(f"normalize supports uint8, uint16 and float frames, got {frames.dtype}")
    if mean is None and std is None:
        return x
    channels = 1 if frames.ndim == 2 else frames.shape[-1]
    m = np.atleast_1d(np.asarray(0.0 if mean is None else mean, dtype=np.float32))
    s = np.atleast_1d(np.asarray(1.0 if std is None else std, dtype=np.float32))
    for name, v in (("mean", m), ("std", s)):
        if v.ndim != 1 or len(v) not in (1, channels):
            raise ValueError(f"{name}={v.tolist()} does not match {channels} channel(s)")
    if np.any(s == 0):
        raise ValueError(f"std must be non-zero, got {s.tolist()}")
    return (x - m) / s


def _luma_op(op: Callable[[np.ndarray], np.ndarray], frames: np.ndarray) -> np.ndarray:
    """Apply a uint8 single-channel ``op`` to gray frames or to the L of Lab frames."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    channels = 1 if frames.ndim == 2 else frames.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got shape {frames.shape}")

    def one(frame: np.ndarray) -> np.ndarray:
        if frame.ndim == 2 or frame.shape[2] == 1:
            return op(np.ascontiguousarray(frame.reshape(frame.shape[:2])))
        lab = cv2.cvtColor(frame, cv2.COLOR_RGB2Lab)
        lab[:, :, 0] = op(np.ascontiguousarray(lab[:, :, 0]))
        return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)

    return map_frames(one, frames)


def equalize_hist(frames: np.ndarray) -> np.ndarray:
    """Global histogram equalisation (``cv2.equalizeHist``).

    Grayscale frames are equalised directly. RGB frames are equalised on the
    lightness channel L of CIE Lab and converted back, so hue is kept (the
    usual recipe; equalising R, G, B separately shifts colours).

    Parameters
    ----------
    frames : numpy.ndarray
        uint8 frame ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` RGB, or a batch
        ``(n, H, W, 1|3)``.

    Returns
    -------
    numpy.ndarray
        uint8, same shape.

    Raises
    ------
    ValueError
        Non-uint8 input or a channel count other than 1 or 3.
    """
    return _luma_op(cv2.equalizeHist, frames)


def clahe(frames: np.ndarray, clip_limit: float = 2.0,
          tile_grid: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (``cv2.createCLAHE``).

    Zuiderveld, "Contrast Limited Adaptive Histogram Equalization", Graphics
    Gems IV (1994). Applied like :func:`equalize_hist`: directly on gray
    frames, on the L channel of Lab for RGB frames.

    Parameters
    ----------
    frames : numpy.ndarray
        uint8 frame ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` RGB, or a batch.
    clip_limit : float
        OpenCV's clip limit: a histogram bin is clipped at ``clip_limit`` times
        the mean bin count of a tile (OpenCV's default is 40; 2.0 is the value
        in OpenCV's tutorial and a common choice).
    tile_grid : (rows, cols)
        Number of tiles the frame is divided into.

    Returns
    -------
    numpy.ndarray
        uint8, same shape.

    Raises
    ------
    ValueError
        Non-uint8 input, wrong channel count, non-positive ``clip_limit`` or
        ``tile_grid``.
    """
    if not clip_limit > 0:
        raise ValueError(f"clip_limit must be > 0, got {clip_limit!r}")
    rows, cols = _pair(tile_grid, "tile_grid")
    # A CLAHE object holds scratch buffers, so one per call keeps this thread-safe.
    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(cols, rows))
    return _luma_op(op.apply, frames)
