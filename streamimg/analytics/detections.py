"""The detections value: what a detector's analytics value holds, checked in one place.

Detectors (:mod:`streamimg.analytics.detect`) give per frame a list of
:class:`~streamimg.analytics.detect.Detection`; a user's ``analyze`` function
may give dicts ``{"label", "score", "box"}`` instead. Operators that read
detections (tracking, region classification) accept both through
:func:`parse_detections`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamimg.analytics.detect import Detection

__all__ = ["check_box", "is_real", "parse_detections"]


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (a bool is not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_box(box: Any, where: str) -> list[float]:
    """``box`` as 4 floats ``[x0, y0, x1, y1]`` (pixels).

    Raises
    ------
    ValueError
        Naming ``where``, unless ``box`` is 4 finite numbers with x0 <= x1 and y0 <= y1.
    """
    if (not isinstance(box, list | tuple | np.ndarray) or len(box) != 4
            or not all(is_real(v) and math.isfinite(v) for v in box)
            or box[0] > box[2] or box[1] > box[3]):
        raise ValueError(f"{where} box must be 4 finite pixel coordinates [x0, y0, x1, y1] "
                         f"with x0 <= x1 and y0 <= y1, got {box!r:.200}")
    return [float(v) for v in box]


def parse_detections(value: Any, name: str = "detections") -> list[tuple[str, float, tuple]]:
    """Check one frame's detections and return them as ``(label, score, box)`` tuples.

    Parameters
    ----------
    value : list of Detection or dict
        Each element a :class:`~streamimg.analytics.detect.Detection` or a dict
        ``{"label": str, "score": float in [0, 1], "box": [x0, y0, x1, y1]}`` with
        finite float pixel coordinates, ``x0 <= x1`` and ``y0 <= y1``. Extra dict
        keys are ignored. A tuple is accepted as a list.
    name : str
        The value's name, for error messages.

    Returns
    -------
    list of (str, float, tuple of 4 float)

    Raises
    ------
    ValueError
        If ``value`` is not a list, or an element is not a Detection or such a dict.
    """
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be a list of Detection or dicts with label, score "
                         f"and box, got {type(value).__name__}: {value!r:.200}")
    out = []
    for i, det in enumerate(value):
        if isinstance(det, Detection):
            label, score, box = det.label, det.score, det.box
        elif isinstance(det, Mapping) and {"label", "score", "box"} <= det.keys():
            label, score, box = det["label"], det["score"], det["box"]
        else:
            raise ValueError(f"{name}[{i}] must be a Detection or a dict with keys label, "
                             f"score and box, got {det!r:.200}")
        if not isinstance(label, str):
            raise ValueError(f"{name}[{i}] label must be a str, got {label!r:.100}")
        if not is_real(score) or not 0.0 <= score <= 1.0:
            raise ValueError(f"{name}[{i}] score must be a number in [0, 1], got {score!r:.100}")
        out.append((label, float(score), tuple(check_box(box, f"{name}[{i}]"))))
    return out
