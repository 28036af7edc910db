"""The results sink's input records, checked and turned into rows.

- analytics records (``<topology>.analytics``, README "Analytics record"): JSON objects
  with ``stream`` (the analysis id) and ``frame``, and the stage timings in the
  ``streamimg.timings_ms`` header;
- frame messages (``<topology>.frames``): their headers (``parse_header``);
- the ingest job's status records (``<requests>.status``, :mod:`streamimg.sources.ingest`):
  ``{"id", "state", "frames", "error", "source", "models", "updated_ms"}``;
- the topology's dead letters (``<topology>.dlq``): the input frame's headers plus
  ``streamimg.dlq.stage`` and ``streamimg.dlq.reason``.

A record that does not fit raises :class:`Malformed`. Everything that reaches the
database is valid text for it: ids are checked by :func:`check_id`, free text goes
through :func:`clean` (PostgreSQL refuses NUL characters, no driver encodes a lone
surrogate, and either would stop the sink at the same record after every restart).
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import Message

from streamimg.codecs.frame import PREFIX, FrameDecodeError, FrameHeader, parse_header
from streamimg.results.images import image_name
from streamimg.results.schema import Reject, ResultRow, StatusRow

ANALYTICS_SCHEMA = 1
STATUS_STATES = ("running", "done", "failed")


class Malformed(ValueError):
    """A record that cannot be stored; ``analysis`` is its analysis id when known."""

    def __init__(self, reason: str, analysis: str | None = None):
        super().__init__(clean(reason)[:1000])
        self.analysis = analysis


def clean(text: str) -> str:
    """``text`` with NUL characters and lone surrogates written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def whole(value: object) -> bool:
    """A JSON integer that fits the database's 64-bit columns (the frame codec's bound)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1 << 62


def check_id(stream: str) -> str:
    """``stream`` if it can name rows and image files.

    Raises
    ------
    Malformed
        For a NUL character, a lone surrogate (not UTF-8), or an id whose quoted form
        exceeds a file name's 255 bytes.
    """
    if "\x00" in stream:
        raise Malformed("stream id has a NUL character")
    try:
        quoted = image_name(stream, "t", 0).split("/")[0]
    except UnicodeEncodeError:
        raise Malformed("stream id is not valid Unicode") from None
    if len(quoted) > 255:
        raise Malformed(f"stream id too long ({len(stream)} characters)")
    return stream


def _header(m: Message, name: str) -> str | None:
    for key, value in m.headers() or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return None


def _id(text: str | None) -> str | None:
    """``text`` if it is a usable analysis id, else None."""
    try:
        return check_id(text) if text else None
    except Malformed:
        return None


def _object(value: bytes | None) -> tuple[str, dict[str, Any]]:
    try:
        text = (value or b"").decode("utf-8")
        record = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"not a JSON record: {exc}") from None
    if not isinstance(record, dict):
        raise Malformed(f"not a JSON object but {type(record).__name__}")
    return text, record


def analytics_row(m: Message, topology: str) -> ResultRow:
    """The analytics record of ``m`` as a row of ``topology`` (JSON text kept byte for byte).

    ``timings`` is the ``streamimg.timings_ms`` header re-serialised, None if it is
    missing or not a JSON object (the record is stored all the same).

    Raises
    ------
    Malformed
        Not a UTF-8 JSON object, no usable ``stream``, a ``schema`` other than 1, or no
        ``frame`` integer >= 0.
    """
    text, record = _object(m.value())
    stream, frame = record.get("stream"), record.get("frame")
    if not isinstance(stream, str) or not stream:
        raise Malformed("no stream id ('stream')")
    check_id(stream)
    if record.get("schema", ANALYTICS_SCHEMA) != ANALYTICS_SCHEMA:
        raise Malformed(f"schema {record.get('schema')!r} unsupported (want 1)", stream)
    if not whole(frame):
        raise Malformed(f"no frame index ('frame': {frame!r})", stream)
    ts = record.get("timestamp_ms")
    timings = None
    try:
        parsed = json.loads(_header(m, PREFIX + "timings_ms") or "null")
        timings = json.dumps(parsed) if isinstance(parsed, dict) else None
    except json.JSONDecodeError:
        pass
    return ResultRow(stream, frame, topology, ts if whole(ts) else None, text, timings)


def frame_header(m: Message) -> FrameHeader:
    """The validated headers of the frame message ``m``.

    Raises
    ------
    Malformed
        If a header is missing or invalid (``analysis``: the ``streamimg.stream`` header
        when usable), or the stream id cannot name rows and files.
    """
    try:
        header = parse_header(m.headers())
    except FrameDecodeError as exc:
        raise Malformed(f"frame headers: {exc}", _id(_header(m, PREFIX + "stream"))) from None
    check_id(header.stream)
    return header


def status_row(m: Message) -> StatusRow:
    """The ingest job's status record ``m`` as a row.

    Raises
    ------
    Malformed
        Not a JSON object, no usable ``id`` (or key), a ``state`` other than ``running``,
        ``done`` and ``failed``, or no ``frames`` integer >= 0.
    """
    _, record = _object(m.value())
    analysis = record.get("id")
    if not isinstance(analysis, str) or not analysis:
        raise Malformed("no request id ('id')")
    check_id(analysis)
    state, frames = record.get("state"), record.get("frames")
    if state not in STATUS_STATES:
        raise Malformed(f"state {state!r}: expected one of {STATUS_STATES}", analysis)
    if not whole(frames):
        raise Malformed(f"no frame count ('frames': {frames!r})", analysis)
    error, source, models = record.get("error"), record.get("source"), record.get("models")
    updated = record.get("updated_ms")
    return StatusRow(analysis, state, frames,
                     clean(str(error))[:4000] if error else None,
                     updated / 1e3 if whole(updated) else None,
                     clean(source) if isinstance(source, str) else None,
                     json.dumps(models) if isinstance(models, list) else None)


def dead_letter(m: Message) -> Reject:
    """The topology's dead letter ``m``, counted against the analysis of its frame."""
    key = m.key()
    analysis = _id(_header(m, PREFIX + "stream")) or _id(
        key.decode("utf-8", "replace") if key else None)
    stage = _header(m, "streamimg.dlq.stage") or "?"
    reason = _header(m, "streamimg.dlq.reason") or "no reason given"
    frame = _header(m, PREFIX + "frame")
    where = f" frame {frame}" if frame else ""
    return Reject(m.topic(), m.partition(), m.offset(), analysis,
                  clean(f"dead letter ({stage}){where}: {reason}")[:1000])
