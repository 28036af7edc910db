"""Model chains: classify the regions a detector found (faces -> gender, emotion).

The Spark video-analysis ancestor ran a face detector, then gender and emotion
models on every face crop. :func:`classify_regions` is that second step for any
detector and any :class:`~streamimg.analytics.classify.OnnxClassifier`: it crops
every detection of every frame of a chunk (with a margin), classifies all crops
in one inference call, and returns each frame's detections with their classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from streamimg.analytics.detections import parse_detections

__all__ = ["classify_regions", "crop_box"]


def crop_box(frame: np.ndarray, box: Sequence[float], margin: float = 0.0) -> np.ndarray:
    """The pixels of ``box`` grown by ``margin`` of its size on each side, clipped to the frame.

    Parameters
    ----------
    frame : numpy.ndarray, shape (h, w, c)
        The frame to crop.
    box : (x0, y0, x1, y1)
        Float pixel coordinates (x = column, y = row), as detectors give them.
    margin : float
        Fraction of the box's width (height) added left and right (top and bottom), >= 0.

    Returns
    -------
    numpy.ndarray, shape (h', w', c)
        A view of ``frame``; at least 1x1 pixel (a degenerate box takes the pixel at
        its corner).

    Raises
    ------
    ValueError
        If ``margin`` is negative.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    h, w = frame.shape[:2]
    c0 = min(max(int(np.floor(x0 - mx)), 0), w - 1)
    r0 = min(max(int(np.floor(y0 - my)), 0), h - 1)
    c1 = max(min(int(np.ceil(x1 + mx)), w), c0 + 1)
    r1 = max(min(int(np.ceil(y1 + my)), h), r0 + 1)
    return frame[r0:r1, c0:c1]


def classify_regions(frames: np.ndarray, classifier: Any, detections: Sequence[Any],
                     margin: float = 0.1, gray: bool = False) -> list[list[dict]]:
    """Classify every detected region of every frame in one inference call.

    Parameters
    ----------
    frames : numpy.ndarray, shape (n, h, w, 3)
        RGB frames (uint8 for :class:`~streamimg.analytics.classify.OnnxClassifier`).
    classifier : object with ``classify_batch(list of (h_i, w_i, 3) crops)``
        Returns per crop a list of classes (``to_dict()`` or dicts with ``label`` and
        ``score``), best first; it resizes crops to its input size itself.
    detections : sequence of n lists
        Per frame, its detections: :class:`~streamimg.analytics.detect.Detection` or
        dicts with ``label``, ``score`` and ``box`` (pixels).
    margin : float
        Context around each box, as a fraction of its size per side (see :func:`crop_box`).
    gray : bool
        Give the classifier the crop's luma (BT.601, ``cv2.COLOR_RGB2GRAY``) repeated to
        3 channels, for models trained on grey faces.

    Returns
    -------
    list of n lists of dict
        Per frame, each detection in order as ``{"label", "score", "box", "classes":
        [{"label", "score"}, ...]}``.

    Raises
    ------
    ValueError
        If ``detections`` has not one list per frame or a detection is malformed, or the
        classifier returns another number of results than crops.
    """
    if len(detections) != len(frames):
        raise ValueError(f"{len(detections)} detection lists for {len(frames)} frames")
    parsed = [parse_detections(d) for d in detections]
    crops = []
    for frame, dets in zip(frames, parsed, strict=True):
        for _, _, box in dets:
            crop = crop_box(frame, box, margin)
            if gray:
                crop = np.repeat(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
                                 [:, :, None], 3, axis=2)
            crops.append(np.ascontiguousarray(crop))
    results = classifier.classify_batch(crops) if crops else []
    if len(results) != len(crops):
        raise ValueError(f"the classifier returned {len(results)} results for {len(crops)} "
                         "crops")
    out, k = [], 0
    for dets in parsed:
        frame_out = []
        for label, score, box in dets:
            classes = [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in results[k]]
            frame_out.append({"label": label, "score": score, "box": list(box),
                              "classes": classes})
            k += 1
        out.append(frame_out)
    return out
