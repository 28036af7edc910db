"""The sinks of a topology, registered on ``streamz.Stream`` beside :mod:`streamimg.stream`.

Each sink is a node (:class:`KafkaSink`) whose ``update`` returns its
:class:`~streamimg.plan.SinkSpec` (what a worker runs to build the sink's records for a
frame) and passes the plan on, so sinks chain: ``source.emit(root)`` returns every
sink's spec, and the daemon produces all of a batch's records in one transaction with
its input offsets. :mod:`streamimg.stream` imports this module (registering the
methods); nothing else does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamz import Stream

from streamimg.codecs.frame import ENCODINGS
from streamimg.plan import Plan, SinkSpec
from streamimg.sinks.records import analytics_records, frame_records, pixel_records
from streamimg.sources.kafka import topology_of
from streamimg.topology import TopologyError


def _register(fn: Callable) -> Callable:
    Stream.register_api(attribute_name=fn.__name__)(fn)
    return fn


class KafkaSink(Stream):
    """A sink node: its ``update`` returns the :class:`~streamimg.plan.SinkSpec` of its plan.

    The spec travels back to the source as emit's return value (streamz
    collects what downstream nodes return); the plan is passed on downstream,
    so sinks can be chained.
    """

    def __init__(self, upstream: Stream, topic: str, builder: Callable[..., list],
                 analytics: bool = False, timing: str | None = None, ordered: bool = False,
                 external: bool = False, **kwargs: Any):
        self.topic, self.builder, self.analytics = topic, builder, analytics
        self.timing, self.kwargs, self.ordered = timing, kwargs, ordered
        self.external = external
        super().__init__(upstream, stream_name=f"to {topic}")

    def update(self, x: Plan, who: Any = None, metadata: Any = None) -> list:
        """Return this sink's spec, then whatever the nodes downstream return.

        An ``ordered`` sink's builder also gets ``order=``, the plan's channel order.
        """
        kwargs = {**self.kwargs, "order": x.order} if self.ordered else self.kwargs
        spec = SinkSpec(self.topic, self.builder, kwargs, x, self.analytics, self.timing,
                        self.external)
        return [spec, *self._emit(x, metadata=metadata)]


def _sink(stream: Stream, topic: str, builder: Callable[..., list], **kwargs: Any) -> Stream:
    topo = topology_of(stream)
    topic = topo.add_output(topic)
    return topo.add_sink(KafkaSink(stream, topic, builder, **kwargs), topic)


@_register
def to_kafka_frames(stream: Stream, encoding: str = "jpeg", topic: str | None = None,
                    jpeg_quality: int = 90) -> Stream:
    """Sink: each processed frame as a frame message to ``topic``.

    The record keeps the input's key (stream id), frame index, timestamp and channel
    order, so the output topic is a valid input of another topology. All of a batch's
    sinks commit in one transaction with its input offsets.

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    encoding : {"raw", "png", "jpeg"}
        Payload: ``raw`` carries any frame dtype; ``png`` uint8 or uint16; ``jpeg``
        uint8 (other dtypes are rounded and clipped to 0-255).
    topic : str, optional
        Output topic, ``<name>.frames`` by default; created by the daemon if missing.
    jpeg_quality : int
        0-100, for ``jpeg`` only.

    Raises
    ------
    TopologyError
        For an unknown encoding, an illegal topic or one that is also an input; when
        the topology compiles, for frames the encoding cannot carry (e.g. float32 into
        ``png``).
    """
    if encoding not in ENCODINGS:
        raise TopologyError(f"to_kafka_frames: encoding {encoding!r} not one of {ENCODINGS}")
    topic = topic or topology_of(stream).frames_topic
    return _sink(stream, topic, frame_records, timing="encode", ordered=True, encoding=encoding,
                 jpeg_quality=jpeg_quality)


@_register
def to_files(stream: Stream, template: str, format: str | None = None, quality: int = 90,
             storage_options: dict | None = None) -> Stream:
    """Sink: each processed frame as an image file, through fsspec (no Kafka records).

    See :mod:`streamimg.sinks.files`: ``template`` is a path or URL with fields
    ``{stream}``, ``{frame}``, ``{timestamp_ms}``, ``{topic}``, ``{partition}``,
    ``{offset}`` (e.g. ``"out/{stream}/{frame:06d}.png"``, ``"s3://bucket/{stream}/..."``);
    each file is written whole (temporary name, then rename), and a frame redone after a
    crash overwrites it: effectively exactly-once. PNG and TIFF keep 16-bit frames.

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    template : str
        Path or fsspec URL of each frame's file, with the fields above.
    format : {"png", "jpeg", "tiff", "webp"}, optional
        The template's suffix decides when omitted.
    quality : int
        JPEG/WebP quality, 1-100.
    storage_options : dict, optional
        Passed to fsspec (credentials, endpoint).

    Raises
    ------
    TopologyError
        For an unknown format or field, a template without ``{stream}`` or ``{frame}``,
        or (when the topology compiles) frames the format cannot store.
    """
    from streamimg.sinks.files import check_template, file_records, format_of

    try:
        check_template(template)
        format = format_of(template, format)
    except ValueError as exc:
        raise TopologyError(f"to_files: {exc}") from None
    if not 1 <= quality <= 100:
        raise TopologyError(f"to_files: quality must be in [1, 100], got {quality!r}")
    node = KafkaSink(stream, "", file_records, timing="write", ordered=True, external=True,
                     template=template, format=format, quality=quality,
                     storage_options=storage_options)
    return topology_of(stream).add_sink(node, None)


@_register
def to_kafka_analytics(stream: Stream, topic: str | None = None) -> Stream:
    """Sink: one JSON analytics record per frame to ``topic`` (default ``<name>.analytics``).

    The record holds ``stream``, ``frame``, ``timestamp_ms``, ``shape``, ``source``
    and one key per analytics value added upstream; stage timings travel in the
    ``streamimg.timings_ms`` header (see the README's "Analytics record").

    Raises
    ------
    TopologyError
        For an illegal topic or one that is also an input.
    """
    return _sink(stream, topic or topology_of(stream).analytics_topic, analytics_records,
                 analytics=True)


@_register
def to_kafka_pixels(stream: Stream, topic: str, binary: bool = False) -> Stream:
    """Sink: every pixel of each (single-channel) frame as a pixel message to ``topic``.

    Text ``name;frame;x;y;v`` or the binary layout of :mod:`streamimg.codecs.pixel`;
    key = image name; values as float64. Missing pixels of incomplete assembled frames
    are skipped.

    Parameters
    ----------
    stream : streamz.Stream
        The upstream node (``self`` when called as a method).
    topic : str
        Output topic; created by the daemon if missing.
    binary : bool
        Binary pixel records instead of text.

    Raises
    ------
    TopologyError
        For an illegal topic or one that is also an input; when the topology compiles,
        for frames with more than one channel.
    """
    return _sink(stream, topic, pixel_records, timing="encode_pixels", binary=binary)


@_register
def to_kafka_records(stream: Stream, topic: str,
                     records: Callable[..., list[tuple[bytes | None, bytes | None, list]]],
                     **kwargs: Any) -> Stream:
    """Sink: ``records(frame, info, **kwargs)`` per frame to ``topic``.

    ``records`` runs on a worker with the processed (h, w, c) frame and its
    :class:`~streamimg.batching.FrameInfo`, and returns a list of ``(key, value,
    headers)`` (bytes or None; headers a list of ``(str, bytes)``); lineage headers are
    added.

    Raises
    ------
    TopologyError
        For an illegal topic or one that is also an input.
    """
    return _sink(stream, topic, records, timing=f"records:{topic}", **kwargs)
