"""Output records: built per frame on the Dask workers, stamped with lineage on the daemon.

A record is ``(key, value, headers)``; the topic is the sink's. Every record
the daemon produces carries lineage headers naming its input:
``streamimg.source.topic``, ``streamimg.source.partition``,
``streamimg.source.offset`` and ``streamimg.run`` (a new id each daemon start).
Dead letters keep the input's key, value and headers whole and add
``streamimg.dlq.stage`` and ``streamimg.dlq.reason``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from streamimg.codecs.frame import encode_frame
from streamimg.codecs.pixel_frames import frame_to_pixels

if TYPE_CHECKING:
    from streamimg.batching import DeadLetter, FrameInfo, GapInfo

ANALYTICS_SCHEMA = 1
#: ``(key, value, headers)``. A frame record's value is a flat read-only uint8 ndarray
#: (``encode_frame(..., buffer=True)``: no copy of a raw frame), which confluent-kafka
#: produces as it produces bytes; use :func:`value_nbytes` for its size.
Record = tuple[bytes | None, bytes | np.ndarray | None, list[tuple[str, bytes]]]


def value_nbytes(value: bytes | np.ndarray | memoryview | None) -> int:
    """The size in bytes of a record value or payload (0 for None)."""
    if value is None:
        return 0
    return int(value.nbytes) if isinstance(value, (np.ndarray, memoryview)) else len(value)


def lineage_headers(topic: str, partition: int, offset: int, run: str) -> list[tuple[str, bytes]]:
    """Headers that tie an output to its input record and the daemon run that made it."""
    return [("streamimg.source.topic", topic.encode()),
            ("streamimg.source.partition", str(partition).encode()),
            ("streamimg.source.offset", str(offset).encode()),
            ("streamimg.run", run.encode())]


def read_lineage(headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
    """Parse lineage headers back: ``{"topic", "partition", "offset", "run"}``.

    Raises
    ------
    KeyError
        If a lineage header is missing.
    """
    h = {k: v for k, v in headers or ()}
    return {"topic": h["streamimg.source.topic"].decode(),
            "partition": int(h["streamimg.source.partition"]),
            "offset": int(h["streamimg.source.offset"]),
            "run": h["streamimg.run"].decode()}


def dead_letter_record(d: DeadLetter, run: str) -> Record:
    """The dead-letter record for ``d``: the input whole, plus reason and lineage headers."""
    extra = [("streamimg.dlq.stage", d.stage.encode()),
             ("streamimg.dlq.reason", d.reason.encode("utf-8", "replace")[:4096])]
    return d.key, d.value, list(d.headers) + extra + lineage_headers(
        d.topic, d.partition, d.offset, run)


def frame_records(frame: np.ndarray, info: FrameInfo, encoding: str,
                  jpeg_quality: int, order: str | None = None) -> list[Record]:
    """Encode a processed frame as a version-1 frame message (runs on a worker).

    ``frame`` is (h, w, c); the output keeps the input's stream id, frame
    index, timestamp and channel order (``order``, when the pipeline changed it, e.g.
    ``"HSV"`` after ``convert_color``), so an output topic is itself a valid
    input topic for another topology. Returns one record, with the encode time
    in ms in the ``streamimg.encode_ms`` header. Its value is the frame's own memory
    for ``raw`` (``encode_frame(..., buffer=True)``), so ``frame`` must not be written
    to afterwards: a chunk task's frames are new arrays, and the state task copies the
    values of its records (a temporal operator may reuse its output array).
    """
    start = time.perf_counter()
    h = info.header
    if encoding == "jpeg" and frame.dtype != np.uint8:  # e.g. float frames from convolutions
        frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    if order is None:
        order = h.order if frame.shape[-1] == h.channels else None  # else by channel count
    value, headers = encode_frame(frame, stream=h.stream, index=h.frame,
                                  timestamp_ms=h.timestamp_ms, encoding=encoding,
                                  order=order, jpeg_quality=jpeg_quality, buffer=True)
    ms = (time.perf_counter() - start) * 1e3
    extra = [("streamimg.encode_ms", f"{ms:.3f}".encode())]
    if info.mask is not None:
        extra.append(("streamimg.missing_pixels", str(int(info.mask.sum())).encode()))
    return [(info.key, value, headers + extra)]


def pixel_records(frame: np.ndarray, info: FrameInfo, binary: bool = False) -> list[Record]:
    """A processed frame as pixel messages ``name;frame;x;y;v`` (runs on a worker).

    ``frame`` is (h, w, 1); one record per pixel, key = the image name, in
    row-major order. Pixels missing from an incomplete assembled frame are not
    written. Values are float64 (text: shortest round-trip repr).

    Raises
    ------
    ValueError
        If the frame has more than one channel.
    """
    if frame.shape[-1] != 1:
        raise ValueError(f"pixel messages carry one channel, frame has shape {frame.shape}")
    values = frame_to_pixels(info.header.stream, info.header.frame, frame[:, :, 0], binary=binary)
    if info.mask is not None:
        keep = ~info.mask.ravel()
        values = [v for v, k in zip(values, keep, strict=True) if k]
    key = info.header.stream.encode()
    return [(key, v, []) for v in values]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def analytics_record(info: FrameInfo, values: dict[str, Any],
                     timings: dict[str, float] | None = None) -> list[Record]:
    """One JSON analytics record for a frame (runs on a worker).

    The value is UTF-8 JSON, schema ``1``::

        {"schema": 1, "stream": str, "frame": int, "timestamp_ms": int,
         "shape": [h, w, c], "source": {"topic", "partition", "offset"},
         "<name>": <value of each analytics stage>, ...}

    ``timings`` (ms per stage for this frame, measured where the stages ran:
    ``decode``, each operator, each analytics stage, ``annotate``, ``encode``)
    goes to the ``streamimg.timings_ms`` header as a JSON object; without it,
    each value's ``ms`` attribute. Timings and the daemon's run id travel in
    headers only, so the JSON of a frame is byte-identical in every run
    (exactly-once output is well defined).
    """
    h = info.header
    body: dict[str, Any] = {"schema": ANALYTICS_SCHEMA, "stream": h.stream, "frame": h.frame,
                            "timestamp_ms": h.timestamp_ms, "shape": list(h.shape),
                            "source": info.lineage()}
    if info.mask is not None:
        body["missing_pixels"] = int(info.mask.sum())
    own = {}
    for name, value in values.items():
        body[name] = _jsonable(value)
        if getattr(value, "ms", None) is not None:
            own[name] = round(float(value.ms), 3)
    ms = dict(timings) if timings is not None else own
    value = json.dumps(body, separators=(",", ":"), sort_keys=False).encode()
    return [(info.key, value, [("content-type", b"application/json"),
                               ("streamimg.schema", b"1"),
                               ("streamimg.timings_ms",
                                json.dumps(ms, separators=(",", ":")).encode())])]


def gap_record(g: GapInfo) -> Record:
    """The analytics record of a gap record (a live source's lost captures).

    UTF-8 JSON, schema ``1``, with ``gap`` instead of ``frame``::

        {"schema": 1, "stream": str, "gap": {"first_missing_ms": int,
         "last_missing_ms": int, "frames": int | null},
         "source": {"topic", "partition", "offset"}}

    and the header ``streamimg.gap`` = ``1``, so a consumer tells it from a frame's
    record without parsing; the daemon adds lineage headers. Built on the daemon (a few
    bytes, no pixels), in the transaction of the batch that read the gap.
    """
    body = {"schema": ANALYTICS_SCHEMA, "stream": g.gap.stream,
            "gap": {"first_missing_ms": g.gap.first_missing_ms,
                    "last_missing_ms": g.gap.last_missing_ms, "frames": g.gap.frames},
            "source": {"topic": g.topic, "partition": g.partition, "offset": g.offset}}
    return (g.key, json.dumps(body, separators=(",", ":")).encode(),
            [("content-type", b"application/json"), ("streamimg.schema", b"1"),
             ("streamimg.gap", b"1")])


def analytics_records(frame: None, info: FrameInfo, *, values: dict[str, Any],
                      timings: dict[str, float]) -> list[Record]:
    """The analytics sink's builder (see :class:`~streamimg.plan.SinkSpec`)."""
    return analytics_record(info, values, timings)
