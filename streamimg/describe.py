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

from streamimg.codecs.frame import PREFIX, FrameDecodeError, decode_payload, parse_header
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

    Raises
    ------
    ValueError
        If the record is not a valid frame message, or its frame is not uint8 RGB/BGR/grey
        (PNG here takes 8-bit pictures only); the message says which.
    """
    from streamimg.analytics.annotate import encode_image

    header = parse_header(message.headers())
    frame = decode_payload(header, message.value())
    if header.dtype != "uint8" or header.channels not in (1, 3):
        raise ValueError(f"a {header.dtype} frame with {header.channels} channels "
                         f"({header.order}) cannot be saved as an 8-bit PNG")
    rgb = frame if header.order != "BGR" else frame[:, :, ::-1]
    path = folder / f"{header.stream}_{header.frame:06d}.png"
    path.write_bytes(encode_image(rgb if rgb.shape[2] != 1 else rgb[:, :, 0], "png"))
    return path
