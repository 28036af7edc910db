"""Box geometry: intersection over union, non-maximum suppression, letterboxing.

Boxes are float pixel coordinates ``(x0, y0, x1, y1)`` in ``(N, 4)`` arrays:
``x`` is the column, ``y`` the row. Plain NumPy and OpenCV, no model: the
detectors (:mod:`streamimg.analytics.detect`, :mod:`streamimg.analytics.faces`)
letterbox their input with :func:`letterbox`, map boxes back with
:func:`unletterbox_boxes` and suppress duplicates with :func:`nms` /
:func:`batched_nms`.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["batched_nms", "box_iou", "letterbox", "nms", "unletterbox_boxes"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two sets of boxes.

    Parameters
    ----------
    a : numpy.ndarray
        ``(N, 4)`` float boxes ``(x0, y0, x1, y1)`` in pixels.
    b : numpy.ndarray
        ``(M, 4)`` float boxes.

    Returns
    -------
    numpy.ndarray
        ``(N, M)`` float64 IoU; 0 where the union is empty (degenerate boxes).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:])
                 - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Boxes are visited by descending score (ties: lower index first); a box is
    kept unless its IoU with an already kept box exceeds ``iou_threshold``.
    This is the classic greedy NMS (Felzenszwalb et al., 2010; the form used by
    ``torchvision.ops.nms``), vectorised with NumPy: one IoU row per kept box.

    ``cv2.dnn.NMSBoxes`` (OpenCV 5) was checked against the same brute-force
    reference and agrees on random float boxes, but it asserts a non-negative
    score threshold, drops zero scores and treats zero-area boxes and tied
    scores differently, so it is not used.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(N, 4)`` float boxes ``(x0, y0, x1, y1)`` in pixels.
    scores : numpy.ndarray
        ``(N,)`` float scores.
    iou_threshold : float
        Suppress boxes whose IoU with a kept box is strictly greater than this.

    Returns
    -------
    numpy.ndarray
        int64 indices of the kept boxes, by descending score.

    Raises
    ------
    ValueError
        If shapes disagree.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                iou_threshold: float) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Uses the coordinate-offset trick of ``torchvision.ops.batched_nms`` (also
    Ultralytics' ``non_max_suppression``): each class is shifted by
    ``class_index * (max coordinate + 1)`` so boxes of different classes cannot
    overlap, then one :func:`nms` runs.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(N, 4)`` float boxes ``(x0, y0, x1, y1)``.
    scores : numpy.ndarray
        ``(N,)`` float scores.
    classes : numpy.ndarray
        ``(N,)`` integer class indices.
    iou_threshold : float
        As in :func:`nms`.

    Returns
    -------
    numpy.ndarray
        int64 indices of kept boxes, by descending score.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = np.asarray(classes, dtype=np.float64)[:, None] * (np.abs(boxes).max() + 1.0)
    return nms(boxes + offset, scores, iou_threshold)


def letterbox(frame: np.ndarray, size: int | tuple[int, int], *, color: int = 114,
              center: bool = True) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio, then pad to ``size``.

    As Ultralytics' ``LetterBox`` (``ultralytics/data/augment.py``): scale
    ``r = min(h / H, w / W)``, resize to ``(round(H r), round(W r))`` with
    ``cv2.INTER_LINEAR``, pad with grey 114 split evenly (left/top gets
    ``round(d / 2 - 0.1)``). With ``center=False`` the image sits at the
    top-left and padding goes right/bottom (YOLOX's ``preproc``).

    Parameters
    ----------
    frame : numpy.ndarray
        ``(H, W, C)`` or ``(H, W)`` frame, any OpenCV dtype.
    size : int or (h, w)
        Output size in pixels.
    color : int
        Padding value for every channel.
    center : bool
        Centre the image (Ultralytics) or put it top-left (YOLOX).

    Returns
    -------
    padded : numpy.ndarray
        ``(h, w[, C])``, same dtype.
    scale : float
        ``r``: letterboxed pixels per input pixel.
    pad : (pad_x, pad_y)
        Left and top padding in letterboxed pixels.
    """
    h, w = (size, size) if np.isscalar(size) else size
    H, W = frame.shape[:2]
    r = min(h / H, w / W)
    nh, nw = round(H * r), round(W * r)
    resized = frame if (nh, nw) == (H, W) else cv2.resize(
        frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    dw, dh = (w - nw) / 2, (h - nh) / 2
    left, top = (round(dw - 0.1), round(dh - 0.1)) if center else (0, 0)
    right, bottom = w - nw - left, h - nh - top
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                value=(color,) * 4)
    if frame.ndim == 3 and padded.ndim == 2:
        padded = padded[:, :, None]
    return padded, r, (left, top)


def unletterbox_boxes(boxes: np.ndarray, scale: float, pad: tuple[float, float],
                      frame_shape: tuple[int, ...]) -> np.ndarray:
    """Map boxes from letterboxed pixels back to input-frame pixels, clipped.

    The inverse of :func:`letterbox` (Ultralytics ``scale_boxes``):
    ``x = (x' - pad_x) / scale``, ``y = (y' - pad_y) / scale``.

    Parameters
    ----------
    boxes : numpy.ndarray
        ``(N, 4)`` float boxes ``(x0, y0, x1, y1)`` in letterboxed pixels.
    scale, pad
        As returned by :func:`letterbox`.
    frame_shape : tuple
        Input frame shape ``(H, W, ...)``.

    Returns
    -------
    numpy.ndarray
        ``(N, 4)`` float64 boxes in input pixels, clipped to ``[0, W] x [0, H]``.
    """
    H, W = frame_shape[:2]
    out = (np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
           - np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float64)) / scale
    return np.clip(out, 0, [W, H, W, H])
