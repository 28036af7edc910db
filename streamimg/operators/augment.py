"""Random augmentation seeded by the frame's identity, so that a redone frame is the same.

Datasets built from streams want flips, rotations, crops, brightness/contrast
changes and noise. Drawn from a global random state they would differ each time
a frame is processed, and exactly-once outputs would no longer be well defined:
a batch redone after a crash would commit other pixels than the aborted attempt
produced. Here every random number comes from a generator seeded by ``(seed,
CRC-32 of the stream id, frame index)`` (NumPy's ``SeedSequence`` mixing of the
three), so a frame gets the same augmentation in every run, on every worker, in
any batch.

Transformations are OpenCV's, in this order: crop (then resized back to the
frame's size), rotation about the centre (reflected border), horizontal flip,
vertical flip, contrast and brightness, Gaussian noise. The frame keeps its shape
and dtype; integer frames are rounded and clipped to their dtype's range.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = ["Augment", "augment_frame", "frame_rng"]


def frame_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The generator of one frame: ``default_rng([seed, crc32(stream), index])``."""
    return np.random.default_rng([int(seed), zlib.crc32(stream.encode()), int(index)])


@dataclass(frozen=True)
class Augment:
    """Augmentation settings (probabilities in [0, 1], magnitudes >= 0).

    Attributes
    ----------
    hflip, vflip : float
        Probability of a horizontal (left-right) / vertical (up-down) flip.
    rotate : float
        Largest rotation in degrees; the angle is uniform in [-rotate, rotate].
    crop : float
        Smallest crop side as a fraction of the frame's, in (0, 1]; the crop's scale is
        uniform in [crop, 1] and its position uniform; the crop is resized back (bilinear).
    brightness : float
        Largest brightness shift as a fraction of the dtype's range (255 for uint8, 1 for
        floats): uniform in [-brightness, brightness].
    contrast : float
        Largest relative contrast change: a gain uniform in [1 - contrast, 1 + contrast]
        about the frame's mean.
    noise : float
        Standard deviation of additive Gaussian noise, in intensity units.
    seed : int
        Mixed with the frame's identity (see the module docstring).
    """

    hflip: float = 0.0
    vflip: float = 0.0
    rotate: float = 0.0
    crop: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        for name in ("rotate", "brightness", "contrast", "noise"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"crop is the smallest crop side as a fraction, in (0, 1], "
                             f"got {self.crop}")


def augment_frame(frame: np.ndarray, info: Any, settings: Augment) -> np.ndarray:
    """Augment one frame as its identity (``info.header.stream``, ``.frame``) decides.

    Parameters
    ----------
    frame : numpy.ndarray, shape (h, w, c)
        Any dtype OpenCV handles (uint8, uint16, float32, float64).
    info : FrameInfo
        The frame's identity: ``info.header.stream`` and ``info.header.frame``.
    settings : Augment
        What to draw and how much.

    Returns
    -------
    numpy.ndarray
        Same shape and dtype.
    """
    rng = frame_rng(settings.seed, info.header.stream, info.header.frame)
    # Draw every number whatever is enabled, so a setting changes only its own step.
    scale, cx, cy = rng.uniform(settings.crop, 1.0), rng.random(), rng.random()
    angle = rng.uniform(-settings.rotate, settings.rotate)
    hflip, vflip = rng.random() < settings.hflip, rng.random() < settings.vflip
    gain = rng.uniform(1 - settings.contrast, 1 + settings.contrast)
    shift = rng.uniform(-settings.brightness, settings.brightness)
    h, w = frame.shape[:2]
    out = np.asarray(frame, dtype=np.float32)
    if settings.crop < 1.0:
        ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
        y0, x0 = int(cy * (h - ch)), int(cx * (w - cw))
        out = cv2.resize(out[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if settings.rotate > 0:
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        out = cv2.warpAffine(out, m, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
    out = out.reshape(h, w, -1)
    if hflip:
        out = out[:, ::-1]
    if vflip:
        out = out[::-1]
    top = float(np.iinfo(frame.dtype).max) if frame.dtype.kind in "ui" else 1.0
    if settings.contrast > 0:
        mean = out.mean(axis=(0, 1), keepdims=True)
        out = (out - mean) * gain + mean
    if settings.brightness > 0:
        out = out + shift * top
    if settings.noise > 0:
        out = out + rng.normal(0.0, settings.noise, out.shape).astype(np.float32)
    if frame.dtype.kind in "ui":
        info_ = np.iinfo(frame.dtype)
        out = np.clip(np.rint(out), info_.min, info_.max)
    return np.ascontiguousarray(out, dtype=frame.dtype)
