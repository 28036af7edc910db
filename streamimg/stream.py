"""The chainable methods our topologies use, registered on ``streamz.Stream``.

This module is the only one that registers anything; the base modules
(batching, sources, sinks) do not import it, so there is no import cycle.
``import streamimg`` imports it. Each method maps a
:class:`~streamimg.batching.Batch` to a new batch lazily (Dask graphs only).

Names never shadow streamz's own methods (its ``to_kafka`` stays usable).
Sinks (``to_kafka_*``) do not produce anything themselves: they add the
records they want to the batch's outputs, and the daemon produces all of a
batch's outputs in one transaction with its input offsets (exactly-once).
They pass the batch on, so a pipeline can have several sinks.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

import dask
import numpy as np
from streamz import Stream

from streamimg.analytics import transforms as _transforms
from streamimg.analytics.annotate import draw_detections, draw_palette
from streamimg.analytics.palette import palette as _palette
from streamimg.batching import Batch, FrameGroup, Sink, Step, Timed
from streamimg.codecs.frame import ENCODINGS
from streamimg.operators import kernels as _kernels
from streamimg.operators.blur import gaussian_blur as _gaussian_blur
from streamimg.operators.convolve import BOUNDARIES
from streamimg.operators.convolve import convolve as _convolve
from streamimg.operators.convolve import correlate as _correlate
from streamimg.sinks.records import analytics_record, frame_records, pixel_records
from streamimg.sources.kafka import topology_of
from streamimg.topology import TopologyError


def _register(fn: Callable) -> Callable:
    Stream.register_api(attribute_name=fn.__name__)(fn)
    return fn


@_register
def gaussian_blur(stream: Stream, sigma: float, *, truncate: float = 4.0,
                          mode: str = "reflect") -> Stream:
    """Blur every frame (see ``streamimg.operators.blur.gaussian_blur``)."""
    if not sigma > 0:
        raise TopologyError(f"gaussian_blur: sigma must be > 0 pixels, got {sigma}")
    return stream.map(lambda b: b.map_frames(_gaussian_blur, sigma=sigma, truncate=truncate,
                                             mode=mode))


@_register
def palette(stream: Stream, k: int = 5, sample: int = 10_000, seed: int = 0,
            name: str = "palette") -> Stream:
    """Add each frame's K-means palette as analytics ``name`` (see ``analytics.palette``)."""
    if k < 1 or sample < 1:
        raise TopologyError(f"palette: k={k} and sample={sample} must be >= 1")
    return stream.map(lambda b: b.with_values(name, _palette, k=k, sample=sample, seed=seed))


def _kernel_or_error(kernel: Any, what: str) -> np.ndarray:
    try:
        return _kernels.from_matrix(np.asarray(kernel, dtype=np.float64))
    except ValueError as exc:
        raise TopologyError(f"{what}: {exc}") from None


def _filter_stream(stream: Stream, fn: Callable, what: str, kernel: Any, boundary: str,
                   cval: float, output_dtype: Any) -> Stream:
    k = _kernel_or_error(kernel, what)
    if boundary not in BOUNDARIES:
        raise TopologyError(f"{what}: boundary {boundary!r} not one of {BOUNDARIES}")
    return stream.map(lambda b: b.map_frames(fn, kernel=k, boundary=boundary, cval=cval,
                                             output_dtype=output_dtype))


@_register
def convolve(stream: Stream, kernel: Any, boundary: str = "reflect", cval: float = 0.0,
             output_dtype: Any = None) -> Stream:
    """Convolve every frame with a 2-D ``kernel`` over the spatial axes, per channel.

    See ``streamimg.operators.convolve.convolve`` (boundaries with scipy.ndimage
    names; integer frames computed in float32, ``output_dtype="input"`` rounds back).

    Raises
    ------
    TopologyError
        For a kernel that is not 2-D with odd sides, or an unknown boundary.
    """
    return _filter_stream(stream, _convolve, "convolve", kernel, boundary, cval, output_dtype)


@_register
def correlate(stream: Stream, kernel: Any, boundary: str = "reflect", cval: float = 0.0,
              output_dtype: Any = None) -> Stream:
    """Correlate every frame with ``kernel`` (as :func:`convolve`, kernel not flipped)."""
    return _filter_stream(stream, _correlate, "correlate", kernel, boundary, cval, output_dtype)


def _detect_frame(frame: np.ndarray, detector: Any) -> list:
    return detector.detect(frame)


def _batch_call(frames: np.ndarray, obj: Any, method: str) -> Timed:
    start = time.perf_counter()
    value = getattr(obj, method)(frames)
    return Timed(value, (time.perf_counter() - start) * 1e3 / max(1, len(frames)))


def _pick(results: Timed, i: int) -> Timed:
    return Timed(results.value[i], results.ms)


def _values_by_group(batch: Batch, name: str, obj: Any, method: str) -> Batch:
    """Run ``obj.<method>(frames (n, h, w, c))`` once per group; each frame picks its result."""
    steps: list[Any] = [None] * len(batch.frames)
    for g in batch.groups:
        token = dask.base.tokenize(g.array.name, obj, method)
        whole = dask.delayed(_batch_call, pure=True)(g.array, obj, method,
                                                      dask_key_name=f"{name}-{token}")
        for j, i in enumerate(g.index):
            steps[i] = Step(_pick, whole, {"i": j}, block=False, timing=name)
    return batch.with_steps(name, steps)


@_register
def detect(stream: Stream, detector: Any, name: str = "detections",
           batched: bool | None = None) -> Stream:
    """Add detections per frame as analytics ``name`` (list of Detection dicts).

    ``detector`` is any ``streamimg.analytics.detect.Detector`` (e.g.
    ``FaceDetector()`` or ``OnnxDetector(path)``); it is pickled into the tasks
    (a few hundred bytes) and its ONNX session loads once per worker process.
    ``batched``: one inference call per group of frames (whole batches, as
    ``OnnxDetector`` does when the model has a dynamic batch axis) or one per
    frame, where the frame already is; by default the detector's own
    ``batch_inference`` (False for ``FaceDetector``: CenterFace measured 1.1-4x
    slower batched).
    """
    if not hasattr(detector, "detect") or not hasattr(detector, "detect_batch"):
        raise TopologyError(f"detect: {detector!r} is not a Detector (no detect/detect_batch)")
    if batched is None:
        batched = bool(getattr(detector, "batch_inference", True))
    if batched:
        return stream.map(_values_by_group, name=name, obj=detector, method="detect_batch")
    return stream.map(lambda b: b.with_values(name, _detect_frame, detector=detector))


@_register
def detect_faces(stream: Stream, name: str = "faces", **kwargs: Any) -> Stream:
    """Add face detections per frame (``FaceDetector(**kwargs)``, CenterFace by default)."""
    from streamimg.analytics.detect import FaceDetector

    try:
        detector = FaceDetector(**kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise TopologyError(f"detect_faces: {exc}") from None
    return detect(stream, detector, name=name)


@_register
def classify(stream: Stream, classifier: Any, name: str = "classes") -> Stream:
    """Add top-k classifications per frame, one inference call per group of frames.

    ``classifier`` is an ``OnnxClassifier`` (it resizes to its input size itself).
    """
    if not hasattr(classifier, "classify_batch"):
        raise TopologyError(f"classify: {classifier!r} has no classify_batch")
    return stream.map(_values_by_group, name=name, obj=classifier, method="classify_batch")


@functools.lru_cache(maxsize=256)
def _out_meta(fn: Callable, kwargs: tuple, shape: tuple, dtype: str) -> tuple[tuple, np.dtype]:
    # Shape/dtype of fn's output, found once per input kind on a 1-frame zero batch.
    out = fn(np.zeros((1, *shape), dtype), **dict(kwargs))
    return out.shape[1:], out.dtype


def _transform_batch(batch: Batch, fn: Callable, kwargs: dict[str, Any]) -> Batch:
    groups = []
    for g in batch.groups:
        shape, dtype = _out_meta(fn, tuple(sorted(kwargs.items())), g.array.shape[1:],
                                 g.array.dtype.str)
        token = dask.base.tokenize(g.array.name, fn, kwargs)
        arr = g.array.map_blocks(fn, **kwargs, chunks=((1,) * len(g.index), *[(n,) for n in shape]),
                                 dtype=dtype, name=f"{fn.__name__}-{token}")
        groups.append(FrameGroup(g.index, arr))
    return dataclasses.replace(batch, groups=tuple(groups))


def _register_transform(name: str) -> None:
    fn = getattr(_transforms, name)

    def method(stream: Stream, *args: Any, **kwargs: Any) -> Stream:
        params = list(inspect.signature(fn).parameters)[1:]
        kwargs.update(zip(params, args, strict=False))
        try:  # fail at start-up on bad arguments, not on the first frame
            _out_meta(fn, tuple(sorted(kwargs.items())), (8, 8, 3), "|u1")
        except (ValueError, TypeError) as exc:
            raise TopologyError(f"{name}: {exc}") from None
        return stream.map(_transform_batch, fn=fn, kwargs=kwargs)

    method.__name__ = name
    method.__doc__ = (f"Apply ``streamimg.analytics.transforms.{name}`` to every frame "
                      f"(shapes and dtypes as documented there).")
    Stream.register_api(attribute_name=name)(method)


for _name in ("resize", "crop", "center_crop", "convert_color", "normalize", "equalize_hist",
              "clahe", "flip", "hflip", "vflip", "rot90"):
    _register_transform(_name)


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
        frame = draw_palette(frame, pal.colors, pal.fractions, strip_height=strip_height)
    return frame


def _annotate_batch(batch: Batch, detections: str | None, palette: str | None) -> Batch:
    needs = tuple(n for n in (detections, palette) if n is not None)
    for name in needs:
        if name not in batch.values:
            raise ValueError(f"annotate: no analytics named {name!r} upstream "
                             f"(have {sorted(batch.values)})")
    if batch.drawn is not None:
        raise ValueError("annotate appears twice in the pipeline")
    drawn = tuple(
        Step(_annotate_frame, block,
             {"strip_height": max(16, info.header.height // 8) if palette else 0,
              "detections_name": detections, "palette_name": palette}, needs=needs,
             timing="annotate")
        for block, info in zip(batch.frame_blocks(), batch.frames, strict=True))
    return dataclasses.replace(batch, drawn=drawn)


@_register
def annotate(stream: Stream, detections: str | None = "faces",
             palette: str | None = "palette") -> Stream:
    """Draw analytics onto the frames: boxes with label and score, and a palette strip.

    The frames sinks after it publish RGB uint8 (h + strip, w, 3) frames,
    strip = max(16, h // 8) pixels when a palette is drawn. Drawing runs in the
    frame's output task, so frame operators (filters, transforms) must come
    before it. ``detections``/``palette`` name analytics added upstream (None: skip).
    """
    return stream.map(_annotate_batch, detections=detections, palette=palette)


@_register
def map_frames(stream: Stream, fn: Callable[..., Any], **kwargs: Any) -> Stream:
    """Apply ``fn(dask array (n, h, w, c), **kwargs) -> dask array`` to every batch."""
    return stream.map(lambda b: b.map_frames(fn, **kwargs))


@_register
def analyze(stream: Stream, name: str, fn: Callable[..., Any], **kwargs: Any) -> Stream:
    """Add analytics ``name``: ``fn(frame (h, w, c) ndarray, **kwargs)`` per frame, on workers.

    The result must be JSON-serialisable or have ``to_dict()``; an ``ms``
    attribute is reported in ``timings_ms``.
    """
    return stream.map(lambda b: b.with_values(name, fn, **kwargs))


def _add_records(batch: Batch, topic: str, builder: Callable[..., list], timing: str,
                 **kwargs: Any) -> Batch:
    drawn = batch.drawn is not None
    batch.outputs.add(Sink(topic, [
        Step(builder, None if drawn else block, {"info": info, **kwargs}, drawn=drawn,
             timing=timing)
        for block, info in zip(batch.frame_blocks(), batch.frames, strict=True)],
        batch.values, batch.drawn))
    return batch


@_register
def to_kafka_frames(stream: Stream, encoding: str = "jpeg", topic: str | None = None,
                    jpeg_quality: int = 90) -> Stream:
    """Sink: each processed frame as a frame message to ``topic`` (default ``<name>.frames``).

    Raises
    ------
    TopologyError
        For an unknown encoding or an illegal topic.
    """
    if encoding not in ENCODINGS:
        raise TopologyError(f"to_kafka_frames: encoding {encoding!r} not one of {ENCODINGS}")
    topo = topology_of(stream)
    topic = topo.add_output(topic or topo.frames_topic)
    return topo.add_sink(stream.map(_add_records, topic=topic, builder=frame_records,
                                    timing="encode", encoding=encoding,
                                    jpeg_quality=jpeg_quality), topic)


def _analytics_step(_: Any, info: Any, timings: dict[str, float], **values: Any) -> list:
    return analytics_record(info, values, timings)


def _add_analytics(batch: Batch, topic: str) -> Batch:
    needs = (*batch.values, "timings")
    batch.outputs.add(Sink(topic, [Step(_analytics_step, None, {"info": info}, needs=needs)
                                   for info in batch.frames], batch.values, None,
                           analytics=True))
    return batch


@_register
def to_kafka_analytics(stream: Stream, topic: str | None = None) -> Stream:
    """Sink: one JSON analytics record per frame to ``topic`` (default ``<name>.analytics``)."""
    topo = topology_of(stream)
    topic = topo.add_output(topic or topo.analytics_topic)
    return topo.add_sink(stream.map(_add_analytics, topic=topic), topic)


@_register
def to_kafka_pixels(stream: Stream, topic: str, binary: bool = False) -> Stream:
    """Sink: every pixel of each (single-channel) frame as a pixel message to ``topic``.

    Text ``name;frame;x;y;v`` or the binary layout of ``streamimg.codecs.pixel``;
    key = image name. Missing pixels of incomplete assembled frames are skipped.
    """
    topo = topology_of(stream)
    topo.add_output(topic)
    return topo.add_sink(stream.map(_add_records, topic=topic, builder=pixel_records,
                                    timing="encode_pixels", binary=binary), topic)


@_register
def to_kafka_records(stream: Stream, topic: str,
             records: Callable[..., list[tuple[bytes | None, bytes | None, list]]],
             **kwargs: Any) -> Stream:
    """Sink: ``records(frame (h, w, c), info: FrameInfo, **kwargs)`` per frame to ``topic``.

    ``records`` runs on a worker and returns a list of ``(key, value, headers)``.
    """
    topo = topology_of(stream)
    topo.add_output(topic)
    return topo.add_sink(stream.map(_add_records, topic=topic, builder=records,
                                    timing=f"records:{topic}", **kwargs), topic)
