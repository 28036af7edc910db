"""Object detection on frames: the detector interface, ONNX Runtime YOLO-family detectors.

Detectors take RGB uint8 frames ``(H, W, 3)`` (or batches ``(n, H, W, 3)`` /
lists of frames of any sizes) and return :class:`Detection` objects whose boxes
are float pixel coordinates ``(x0, y0, x1, y1)`` in the input frame, clipped to
it (``0 <= x0 <= x1 <= W``, ``0 <= y0 <= y1 <= H``).

Detector objects carry only their settings; their models come from the
per-process session cache of :mod:`streamimg.analytics.sessions`, so they pickle
cheaply to Dask workers. Box geometry (NMS, letterboxing) is in
:mod:`streamimg.analytics.boxes`; the face detector in
:mod:`streamimg.analytics.faces`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from streamimg.analytics.boxes import batched_nms, letterbox, unletterbox_boxes
from streamimg.analytics.sessions import DEFAULT_PROVIDERS, dynamic_batch, load_session

__all__ = ["Detection", "Detector", "OnnxDetector", "frame_list", "to_detections"]


@dataclass(frozen=True)
class Detection:
    """One detected object.

    Attributes
    ----------
    label : str
        Class name (``"face"`` for
        :class:`~streamimg.analytics.faces.FaceDetector`).
    score : float
        Confidence in [0, 1].
    box : (x0, y0, x1, y1)
        Float pixel coordinates in the input frame, clipped to it; ``x`` is the
        column, ``y`` the row, ``x0 <= x1`` and ``y0 <= y1``.
    """

    label: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        """JSON-ready form ``{"label": str, "score": float, "box": [x0, y0, x1, y1]}``."""
        d = asdict(self)
        d["box"] = list(self.box)
        return d


def frame_list(frames) -> list[np.ndarray]:
    """A batch ``(n, h, w, 3)`` or a sequence of ``(h, w, 3)`` frames as a list of frames.

    What every :meth:`Detector.detect_batch` takes.

    Raises
    ------
    ValueError
        If ``frames`` is one frame ``(h, w, 3)`` rather than a batch, or a frame is not
        ``(h, w, 3)``.
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        raise ValueError(f"detect_batch takes a batch (n, h, w, 3) or a list of frames, "
                         f"got one frame of shape {frames.shape}")
    out = list(frames)
    for f in out:
        if f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"expected RGB frames (h, w, 3), got shape {f.shape}")
    return out


class Detector:
    """Base class: ``detect(frame)`` and ``detect_batch(frames)``.

    Subclasses implement :meth:`detect_batch`; :meth:`detect` calls it with one
    frame. Instances hold only settings (models come from the per-process
    cache), so they pickle cheaply to Dask workers.

    Parameters
    ----------
    score_threshold : float
        Minimum score in [0, 1] of a returned detection.
    iou_threshold : float
        NMS IoU threshold in [0, 1].

    Raises
    ------
    ValueError
        If a threshold is outside [0, 1].
    """

    #: Whether one inference call on a whole batch beats one call per frame; the
    #: ``detect`` stream operator runs ``detect_batch`` per group of frames if so.
    batch_inference = True

    def __init__(self, score_threshold: float, iou_threshold: float):
        for name, v in (("score_threshold", score_threshold), ("iou_threshold", iou_threshold)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Detect objects in one RGB uint8 frame ``(H, W, 3)``; see :meth:`detect_batch`."""
        return self.detect_batch([frame])[0]

    def detect_batch(self, frames) -> list[list[Detection]]:
        """Detect objects in each frame.

        Parameters
        ----------
        frames : numpy.ndarray or sequence of numpy.ndarray
            ``(n, H, W, 3)`` uint8 RGB batch, or a list of ``(H_i, W_i, 3)`` frames.

        Returns
        -------
        list of list of Detection
            One list per frame, by descending score; boxes in that frame's pixels.
        """
        raise NotImplementedError


def to_detections(boxes: np.ndarray, scores: np.ndarray, labels: Sequence[str]
                  ) -> list[Detection]:
    """Detections from boxes, scores and labels, best score first.

    ``boxes`` ``(n, 4)`` float (x0, y0, x1, y1 in pixels), ``scores`` ``(n,)`` and one
    label per box. Ties keep their order; scores are clipped to [0, 1].
    """
    order = np.argsort(-scores, kind="stable")
    return [Detection(str(labels[i]), float(min(max(scores[i], 0.0), 1.0)),
                      tuple(float(v) for v in boxes[i])) for i in order]


# ---------------------------------------------------------------------- YOLO family


class OnnxDetector(Detector):
    """Detector for user-supplied YOLO-family ONNX files (Ultralytics YOLOv8, YOLOX).

    Pre-processing: :func:`~streamimg.analytics.boxes.letterbox` to ``input_size``
    with grey 114 padding, NCHW float32. Per format:

    ``"yolov8"`` (Ultralytics export, also YOLOv5u/YOLO11 heads)
        RGB, pixels / 255, image centred. Output ``(B, 4 + num_classes, N)``:
        rows ``cx, cy, w, h`` in letterboxed input pixels, then per-class scores
        (already sigmoid). Score = max class score.
    ``"yolox"`` (Megvii ``tools/export_onnx.py`` default, i.e. *without*
        ``--decode_in_inference``): BGR, pixels 0-255 (no scaling, YOLOX >= 0.2),
        image at the top-left. Output ``(B, N, 5 + num_classes)`` raw, in grid
        order over strides 8, 16, 32: ``tx, ty, tw, th, objectness, classes...``
        (objectness and classes already sigmoid). Decoded as YOLOX's
        ``demo_postprocess``: ``cx = (tx + gx) * s``, ``w = exp(tw) * s``;
        score = objectness * class score. Models exported *with* decoding in the
        graph are not supported (their boxes would be decoded twice).

    Then class-aware NMS (:func:`~streamimg.analytics.boxes.batched_nms`), at most
    ``max_detections`` boxes, mapped back to input pixels
    (:func:`~streamimg.analytics.boxes.unletterbox_boxes`) and clipped.

    Parameters
    ----------
    path : str or os.PathLike
        ONNX file; input ``(B, 3, input_size, input_size)`` float32.
    format : {"yolov8", "yolox"}
        Output layout, see above.
    names : sequence of str, optional
        Class names, index = class id; default ``"0", "1", ...``.
    input_size : int
        Square network input side in pixels (640 for the stock models).
    score_threshold, iou_threshold : float
        Ultralytics' defaults 0.25 / 0.45.
    channel_order : {"RGB", "BGR"}, optional
        Override the format's channel order.
    max_detections : int
        Keep at most this many boxes per frame (Ultralytics: 300).
    providers : sequence of str
        ONNX Runtime providers.
    intra_op_num_threads : int
        Threads per inference, see :func:`~streamimg.analytics.sessions.load_session`.

    Raises
    ------
    ValueError
        Unknown ``format`` / ``channel_order``, thresholds outside [0, 1], or (at
        inference) an output shape that does not match the format or ``names``.
    FileNotFoundError
        If ``path`` does not exist.
    """

    _PRESETS = {"yolov8": ("RGB", 1 / 255, True), "yolox": ("BGR", 1.0, False)}

    def __init__(self, path: str | os.PathLike, format: str = "yolov8",
                 names: Sequence[str] | None = None, input_size: int = 640,
                 score_threshold: float = 0.25, iou_threshold: float = 0.45, *,
                 channel_order: str | None = None, max_detections: int = 300,
                 providers: Sequence[str] = DEFAULT_PROVIDERS,
                 intra_op_num_threads: int = 1):
        super().__init__(score_threshold, iou_threshold)
        if format not in self._PRESETS:
            raise ValueError(f"unknown format {format!r}; expected one of {list(self._PRESETS)}")
        order, self._pixel_scale, self._center = self._PRESETS[format]
        self.channel_order = channel_order or order
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.format = format
        self.names = None if names is None else [str(n) for n in names]
        self.input_size = int(input_size)
        self.max_detections = int(max_detections)
        self.providers = tuple(providers)
        self.intra_op_num_threads = int(intra_op_num_threads)
        self._load()  # fail early on a bad path

    def _load(self):
        return load_session(self.path, self.providers, self.intra_op_num_threads)

    def detect_batch(self, frames) -> list[list[Detection]]:
        """Detect objects in each frame; see :meth:`Detector.detect_batch`."""
        frames = frame_list(frames)
        if not frames:
            return []
        session = self._load()
        boxed = [letterbox(f, self.input_size, center=self._center) for f in frames]
        blob = np.stack([p for p, _, _ in boxed])
        if self.channel_order == "BGR":
            blob = blob[..., ::-1]
        blob = np.ascontiguousarray(blob.transpose(0, 3, 1, 2), dtype=np.float32)
        blob *= np.float32(self._pixel_scale)
        name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
        if any(isinstance(d, int) and d > 0 and d != self.input_size for d in shape[2:]):
            raise ValueError(f"input_size={self.input_size} but the model's input is {shape}")
        if dynamic_batch(session):
            raw = session.run(None, {name: blob})[0]
        else:
            raw = [session.run(None, {name: blob[i:i + 1]})[0][0] for i in range(len(blob))]
        return [self._postprocess(np.asarray(out), f.shape, scale, pad)
                for out, f, (_, scale, pad) in zip(raw, frames, boxed, strict=True)]

    def _decode(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 4) xyxy letterboxed pixels, (N,) scores, (N,) class ids."""
        if self.format == "yolov8":
            pred = out.T  # (N, 4 + nc)
            xywh, cls = pred[:, :4], pred[:, 4:]
        else:
            pred = out.astype(np.float64)
            grid, stride = _yolox_grid(self.input_size, len(pred))
            xywh = np.concatenate([(pred[:, :2] + grid) * stride,
                                   np.exp(pred[:, 2:4]) * stride], axis=1)
            cls = pred[:, 5:] * pred[:, 4:5]
        if cls.shape[1] < 1 or (self.names is not None and cls.shape[1] != len(self.names)):
            raise ValueError(f"{self.format} output shape {out.shape} does not match "
                             f"{len(self.names or [])} class names")
        ids = cls.argmax(axis=1)
        scores = cls[np.arange(len(cls)), ids]
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        return xyxy, scores, ids

    def _postprocess(self, out, shape, scale, pad) -> list[Detection]:
        if out.ndim != 2:
            raise ValueError(f"expected a {self.format} output (B, ., .), got {out.shape}")
        xyxy, scores, ids = self._decode(out)
        ok = scores > self.score_threshold
        xyxy, scores, ids = xyxy[ok], scores[ok], ids[ok]
        keep = batched_nms(xyxy, scores, ids, self.iou_threshold)[: self.max_detections]
        boxes = unletterbox_boxes(xyxy[keep], scale, pad, shape)
        names = self.names or [str(i) for i in range(int(ids.max(initial=0)) + 1)]
        return to_detections(boxes, scores[keep], [names[i] for i in ids[keep]])


@functools.lru_cache(maxsize=8)
def _yolox_grid(input_size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid offsets (N, 2) and strides (N, 1) of YOLOX's ``demo_postprocess``."""
    grids, strides = [], []
    for s in (8, 16, 32):
        side = input_size // s
        xv, yv = np.meshgrid(np.arange(side), np.arange(side))
        grids.append(np.stack([xv, yv], axis=2).reshape(-1, 2))
        strides.append(np.full((side * side, 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    if len(grid) != n:
        raise ValueError(f"yolox output has {n} rows; strides 8/16/32 at input {input_size} "
                         f"give {len(grid)}")
    return grid.astype(np.float64), stride.astype(np.float64)
