"""Gap record, version 1: a live stream says which captures it lost.

When a live source drops (camera unplugged, network down, server restarted) the
frames of the outage are gone. The reader (``streamimg.sources.live``) says so
with a :class:`Gap`, and the producer writes it into the frames topic, in order,
between the last frame before the outage and the first one after it:

- key: the stream id, UTF-8 (the frames' key, so the gap lands in their partition
  and keeps its place among them);
- value: none (``None``): a gap carries no pixels. (In a compacted topic a null
  value is a tombstone: frame topics are not compacted.)
- headers (UTF-8 text): ``streamimg.schema`` (``1``), ``streamimg.stream``,
  ``streamimg.gap`` (``1``: this record is a gap, not a frame),
  ``streamimg.gap.first_ts`` and ``streamimg.gap.last_ts`` (capture times of the
  first and last missing frames, ms since the Unix epoch, on the stream's frame
  clock, ``first_ts <= last_ts``), and optionally ``streamimg.gap.frames`` (the
  estimated number of frames lost, >= 0).

A consumer tells the two record kinds apart with :func:`is_gap` before parsing a
frame's headers. :func:`decode_gap` validates every header and raises
:class:`GapDecodeError` naming the one at fault.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from streamimg.codecs.frame import (
    PREFIX,
    SCHEMA_VERSION,
    FrameDecodeError,
    _header_dict,
    _int,
    _text,
)

GAP = PREFIX + "gap"
FIRST_TS = GAP + ".first_ts"
LAST_TS = GAP + ".last_ts"
FRAMES = GAP + ".frames"
MAX_TS = 1 << 62  # the frame codec's bound for timestamps and indices


class GapDecodeError(FrameDecodeError):
    """A gap record is malformed (a :class:`ValueError`, like every frame decode error).

    Attributes
    ----------
    field : str
        The header or part at fault (``"streamimg.gap.first_ts"``, ``"key"``, ...).
    """


@dataclass(frozen=True, slots=True)
class Gap:
    """Captures a live stream lost: the frames timed ``first_missing_ms..last_missing_ms``.

    Attributes
    ----------
    stream : str
        The stream id (the record key), non-empty.
    first_missing_ms, last_missing_ms : int
        Capture times of the first and last missing frames, ms since the Unix epoch
        (both included, ``0 <= first <= last``); see ``streamimg.sources.live`` for
        how a reader derives them from the frames around the outage.
    frames : int or None
        Estimated number of frames lost (>= 0), None when unknown.

    Raises
    ------
    ValueError
        If ``stream`` is empty, a time is outside ``[0, 2**62]``, ``first > last``, or
        ``frames`` is negative.
    """

    stream: str
    first_missing_ms: int
    last_missing_ms: int
    frames: int | None = None

    def __post_init__(self):
        if not self.stream:
            raise ValueError("a gap needs a stream id")
        if not 0 <= self.first_missing_ms <= self.last_missing_ms <= MAX_TS:
            raise ValueError(f"gap of {self.stream}: need 0 <= first_missing_ms "
                             f"({self.first_missing_ms}) <= last_missing_ms "
                             f"({self.last_missing_ms}) <= 2**62")
        if self.frames is not None and self.frames < 0:
            raise ValueError(f"gap of {self.stream}: frames={self.frames} < 0")

    @property
    def duration_ms(self) -> int:
        """``last_missing_ms - first_missing_ms`` (0 for a gap of one instant)."""
        return self.last_missing_ms - self.first_missing_ms


def encode_gap(gap: Gap) -> list[tuple[str, bytes]]:
    """The headers of ``gap``'s record (its key is ``gap.stream.encode()``, its value None).

    Returns
    -------
    list of (str, bytes)
        ``streamimg.schema``, ``streamimg.stream``, ``streamimg.gap``,
        ``streamimg.gap.first_ts``, ``streamimg.gap.last_ts`` and, when
        ``gap.frames`` is not None, ``streamimg.gap.frames``.
    """
    fields = [(PREFIX + "schema", SCHEMA_VERSION), (PREFIX + "stream", gap.stream),
              (GAP, 1), (FIRST_TS, gap.first_missing_ms), (LAST_TS, gap.last_missing_ms)]
    if gap.frames is not None:
        fields.append((FRAMES, gap.frames))
    return [(k, str(v).encode()) for k, v in fields]


def is_gap(headers: Iterable[tuple[str, bytes | None]] | None) -> bool:
    """Whether a record's headers mark it as a gap (a ``streamimg.gap`` header is present).

    Any value counts, so a malformed gap goes to :func:`decode_gap` and fails there
    with its own message, rather than as a frame without pixels.
    """
    return any(k == GAP for k, _ in headers or ())


def decode_gap(key: bytes | str | None, headers: Iterable[tuple[str, bytes | None]] | None
               ) -> Gap:
    """Validate a gap record and return its :class:`Gap`.

    Parameters
    ----------
    key : bytes, str or None
        The record key; when not None it must equal ``streamimg.stream``.
    headers : iterable of (str, bytes)
        The record headers, as confluent-kafka returns them.

    Raises
    ------
    GapDecodeError
        Naming the header (or ``key``) that is missing, duplicated, not UTF-8, not an
        integer, out of range, of another schema version, not ``1`` (``streamimg.gap``),
        or inconsistent (``first_ts > last_ts``, key against stream).
    """
    h = _header_dict(headers, GapDecodeError)
    version = _int(h, "schema", 0, 1 << 31, GapDecodeError)
    if version != SCHEMA_VERSION:
        raise GapDecodeError(PREFIX + "schema", f"version {version} unsupported (want 1)")
    if _text(h, "gap", GapDecodeError) != "1":
        raise GapDecodeError(GAP, f"must be '1', got {h[GAP][:32]!r}")
    stream = _text(h, "stream", GapDecodeError)
    if not stream:
        raise GapDecodeError(PREFIX + "stream", "empty stream id")
    if key is not None:
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if text != stream:
            raise GapDecodeError("key", f"{text[:64]!r} is not the stream {stream[:64]!r}")
    first = _int(h, "gap.first_ts", 0, MAX_TS, GapDecodeError)
    last = _int(h, "gap.last_ts", 0, MAX_TS, GapDecodeError)
    if first > last:
        raise GapDecodeError(FIRST_TS, f"{first} is after {LAST_TS} {last}")
    frames = _int(h, "gap.frames", 0, MAX_TS, GapDecodeError) if FRAMES in h else None
    return Gap(stream, first, last, frames)

