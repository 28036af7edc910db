"""Kafka records as JSON-ready dicts: what ``streamimg consume`` prints, one per line.

Each record becomes ``topic``, ``partition``, ``offset``, ``key``, ``headers`` (UTF-8,
undecodable bytes replaced) and one of:

- ``frame``: a frame message's decoded headers (``stream``, ``frame``, ``timestamp_ms``,
  ``shape`` ``[height, width, channels]``, ``dtype``, ``encoding``, ``order``) and
  ``value_bytes``; ``frame_error`` instead if its headers are malformed;
- ``value``: the parsed JSON (analytics records, dead letters);
- ``pixel``: a pixel record's fields ``name``, ``frame``, ``x`` (column), ``y`` (row),
  ``v``, and ``layout`` (``"text"`` or ``"binary"``), see :mod:`streamimg.codecs.pixel`;
- ``value_bytes``: the value's length, for anything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamimg.codecs.frame import PREFIX, FrameDecodeError, parse_header
from streamimg.codecs.pixel import BINARY_MAGIC, PixelDecodeError, decode_pixel


def describe(message: Any) -> dict[str, Any]:
    """One record (a confluent-kafka ``Message``) as a JSON-serialisable dict (see above)."""
    raw_headers = message.headers() or []
    value = message.value() or b""
    line: dict[str, Any] = {
        "topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
        "key": (message.key() or b"").decode("utf-8", "replace"),
        "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in raw_headers}}
    if any(k == PREFIX + "encoding" for k, _ in raw_headers):
        try:
            h = parse_header(raw_headers)
        except FrameDecodeError as exc:
            line["frame_error"] = str(exc)
        else:
            line["frame"] = {"stream": h.stream, "frame": h.frame, "timestamp_ms": h.timestamp_ms,
                             "shape": list(h.shape), "dtype": h.dtype, "encoding": h.encoding,
                             "order": h.order}
        line["value_bytes"] = len(value)
        return line
    try:
        line["value"] = json.loads(value)
        return line
    except (UnicodeDecodeError, ValueError):
        pass
    try:
        p = decode_pixel(value)
    except PixelDecodeError:
        line["value_bytes"] = len(value)
    else:
        line["pixel"] = {"name": p.name, "frame": p.frame, "x": p.x, "y": p.y, "v": p.v,
                         "layout": "binary" if value[:1] == bytes([BINARY_MAGIC]) else "text"}
    return line


def save_frame(message: Any, folder: Path) -> Path:
    """Write a frame message as ``<stream>_<frame:06d>.png`` in ``folder``; return the path.

    :func:`streamimg.sinks.files.save_frame_message` (the ``to_files`` sink's code): 8-
    and 16-bit frames, grey, RGB(A) or BGR(A), written whole.

    Raises
    ------
    ValueError
        If the record is not a valid frame message, or its frame is not a picture PNG
        stores (float, HSV, ...); the message says which.
    """
    from streamimg.sinks.files import save_frame_message

    return Path(save_frame_message(message, folder))
