"""Frame transforms: thin wrappers over OpenCV and NumPy for frames and batches.

Conventions shared by every function here:

- A *frame* is ``(height, width, channels)`` or ``(height, width)`` (grayscale);
  a *batch* is ``(n, height, width, channels)``. A 4-D input is always a batch
  and is processed frame by frame along its leading axis; a 3-D input is always
  one frame (a grayscale batch must therefore be ``(n, h, w, 1)``).
- Channel order is RGB unless a function says otherwise. Frames decoded by
  OpenCV (and by Spark's image source, which uses OpenCV) are BGR: convert them
  with ``convert_color(frame, "BGR", "RGB")`` first.
- Functions never modify their input. ``crop`` and ``center_crop`` return views;
  everything else returns a new C-contiguous array.
- A trailing channel axis of size 1 is preserved (OpenCV drops it; we restore it).

Errors are ``ValueError`` naming the bad value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

__all__ = [
    "center_crop", "clahe", "convert_color", "crop", "equalize_hist", "flip", "hflip",
    "map_frames", "normalize", "resize", "rot90", "vflip",
]

_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST_EXACT,
                  "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}
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
        ``detect.letterbox`` for padding).
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
