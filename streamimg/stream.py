"""The chainable methods our topologies use, registered on ``streamz.Stream``.

This module is the only one that registers anything; the base modules
(batching, sources, sinks) do not import it, so there is no import cycle.
``import streamimg`` imports it. Each method maps a
:class:`~streamimg.batching.Batch` to a new batch lazily (Dask graphs only).

Sinks (``to_kafka_*``) do not produce anything themselves: they add the
records they want to the batch's outputs, and the daemon produces all of a
batch's outputs in one transaction with its input offsets (exactly-once).
They pass the batch on, so a pipeline can have several sinks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask
from streamz import Stream

from streamimg.analytics.palette import palette as _palette
from streamimg.batching import Batch
from streamimg.codecs.frame import ENCODINGS
from streamimg.operators.blur import gaussian_blur as _gaussian_blur
from streamimg.sinks.records import analytics_record, frame_records
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


def _add_records(batch: Batch, topic: str, builder: Callable[..., list], **kwargs: Any) -> Batch:
    call = dask.delayed(builder, pure=True)
    blocks = batch.frame_blocks()
    records = [call(block, info, **kwargs,
                    dask_key_name=f"encode-{dask.base.tokenize(block.key, topic, kwargs)}")
               for block, info in zip(blocks, batch.frames, strict=True)]
    batch.outputs.add(topic, records)
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
                                    encoding=encoding, jpeg_quality=jpeg_quality), topic)


def _add_analytics(batch: Batch, topic: str) -> Batch:
    call = dask.delayed(analytics_record, pure=True)
    per_frame = [{name: values[i] for name, values in batch.values.items()}
                 for i in range(len(batch.frames))]
    batch.outputs.add(topic, [
        call(info, values, dask_key_name=f"analytics-{dask.base.tokenize(info, values)}")
        for info, values in zip(batch.frames, per_frame, strict=True)])
    return batch


@_register
def to_kafka_analytics(stream: Stream, topic: str | None = None) -> Stream:
    """Sink: one JSON analytics record per frame to ``topic`` (default ``<name>.analytics``)."""
    topo = topology_of(stream)
    topic = topo.add_output(topic or topo.analytics_topic)
    return topo.add_sink(stream.map(_add_analytics, topic=topic), topic)


@_register
def to_kafka(stream: Stream, topic: str,
             records: Callable[..., list[tuple[bytes | None, bytes | None, list]]],
             **kwargs: Any) -> Stream:
    """Sink: ``records(block (1, h, w, c), info: FrameInfo, **kwargs)`` per frame to ``topic``.

    ``records`` runs on a worker and returns a list of ``(key, value, headers)``.
    """
    topo = topology_of(stream)
    topo.add_output(topic)
    return topo.add_sink(stream.map(_add_records, topic=topic, builder=records, **kwargs), topic)
