"""Batching: frame messages read from Kafka, grouped into batches on the daemon.

A batcher (:class:`MessageBatcher` for frame messages,
``streamimg.assembly.PixelAssembler`` for pixel messages) takes the consumed
messages one by one and closes a :class:`Batch` at ``max_frames`` frames or
``max_wait_ms`` after its first frame. A batch holds the frames' coordinates
and headers (:class:`FrameInfo`), their payloads (still encoded: the workers
decode them), the messages that failed header checks (:class:`DeadLetter`)
and the offsets that are safe to commit with it. Nothing here computes: the
daemon sends a batch's payloads to the workers (``streamimg.worker``).

The batcher interface the daemon uses: ``add(message)``, ``room()``,
``wait_s()``, ``take() -> Batch | None``, ``drop(partitions)`` and, for
batchers with committed state, ``restore(partition, state)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamimg.codecs.frame import FrameDecodeError, FrameHeader, decode_payload, parse_header
from streamimg.codecs.gap import Gap, decode_gap, is_gap
from streamimg.worker import decode_block


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """Where a frame came from and what it is.

    ``offset`` is the Kafka offset of its record in ``topic``/``partition``;
    ``header`` holds stream id, frame index, capture time (ms since epoch),
    shape (pixels) and dtype.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    header: FrameHeader
    mask: np.ndarray | None = None  # (h, w) bool, True where an assembled frame lacks a pixel

    def lineage(self) -> dict[str, Any]:
        """The source coordinates as a JSON-ready dict."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be processed, with the reason, kept whole.

    ``stage`` is ``"decode"`` (on the daemon or the worker) or ``"process"``.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    stage: str
    reason: str


@dataclass(frozen=True, slots=True)
class GapInfo:
    """A gap record read in a batch: where it came from and the captures its stream lost."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    gap: Gap


@dataclass
class Batch:
    """What a batcher hands the daemon: one batch of frames read from Kafka.

    ``payloads[i]`` is what ``decode(payloads[i], frames[i].header)`` turns into
    frame i's (1, h, w, c) block on a worker. ``offsets`` are the next offsets
    that are safe to commit with this batch, ``{(topic, partition): offset}``.
    ``states`` maps an input partition to the batcher state committed with the
    batch (pixel assembly), or is empty. ``original(i)`` gives frame i's input
    as ``(key, value, headers)``, dead-lettered whole if the frame fails (built
    only then). ``gaps`` are the batch's gap records (a live source's lost captures,
    :mod:`streamimg.codecs.gap`): no frames, but an analytics record each.
    """

    frames: list[FrameInfo]
    payloads: list[Any]
    dead: list[DeadLetter]
    offsets: dict[tuple[str, int], int]
    decode: Callable[[Any, FrameHeader], np.ndarray] = decode_block
    states: dict[int, bytes] = field(default_factory=dict)
    original: Callable[[int], tuple[bytes | None, bytes | None, list]] = lambda i: (None, None, [])
    gaps: list[GapInfo] = field(default_factory=list)


class MessageBatcher:
    """Batches frame messages: a batch closes at ``max_frames`` or ``max_wait_ms``.

    Headers are validated here, on the daemon (microseconds each); a message
    whose headers (or raw payload size) are wrong becomes a dead letter and the
    rest go on. Payloads are decoded later, on the workers.

    Two limits protect memory before anything is decoded: a record larger than
    ``max_record_bytes`` is dead-lettered by reference (its value is not copied
    into the dead-letter topic, which could not take it; the reason gives its
    size), and a frame whose headers declare more than ``max_frame_pixels``
    pixels (height x width) is dead-lettered as a possible decompression bomb.
    """

    def __init__(self, max_frames: int, max_wait_ms: int,
                 max_record_bytes: int = 64 * 1024 * 1024,
                 max_frame_pixels: int = 8192 * 8192):
        self.max_frames = max_frames
        self.max_wait_s = max_wait_ms / 1e3
        self.max_record_bytes = max_record_bytes
        self.max_frame_pixels = max_frame_pixels
        self._pending: list[Any] = []
        self._since = 0.0

    def add(self, message: Any) -> None:
        """Queue a consumed ``confluent_kafka.Message`` (without error)."""
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(message)

    def room(self) -> int:
        """How many more messages the open batch takes."""
        return self.max_frames - len(self._pending)

    def wait_s(self) -> float:
        """Seconds until the open batch is due (0 if due, 0.1 when empty)."""
        if not self._pending:
            return 0.1
        return max(0.0, self.max_wait_s - (time.monotonic() - self._since))

    def take(self, early: bool = False) -> Batch | None:
        """Close the open batch if it is full or due (or ``early`` and not empty); else None.

        The daemon passes ``early`` when a worker thread is idle and the consumer has
        nothing more to give: waiting out ``max_wait_ms`` then would only add latency.
        """
        if not self._pending or (not early and self.room() > 0 and self.wait_s() > 0):
            return None
        messages, self._pending = self._pending, []
        taken = Batch([], [], [], {})
        kept: list[Any] = []
        taken.original = lambda i: (kept[i].key(), kept[i].value(), list(kept[i].headers() or ()))
        for m in messages:
            tp = (m.topic(), m.partition())
            taken.offsets[tp] = max(taken.offsets.get(tp, -1), m.offset() + 1)
            headers = list(m.headers() or ())
            size = len(m.value() or b"")
            if size > self.max_record_bytes:
                taken.dead.append(DeadLetter(
                    m.topic(), m.partition(), m.offset(), m.key(), None,
                    [*headers, ("streamimg.dlq.value_bytes", str(size).encode())], "decode",
                    f"record of {size} bytes exceeds max_message_bytes={self.max_record_bytes}; "
                    "dead-lettered by reference (value not copied)"))
                continue
            try:
                if is_gap(headers):
                    taken.gaps.append(GapInfo(m.topic(), m.partition(), m.offset(), m.key(),
                                              decode_gap(m.key(), headers)))
                    continue
                header = parse_header(headers)
                if m.value() is None:
                    raise FrameDecodeError("payload", "null value")
                if header.height * header.width > self.max_frame_pixels:
                    raise FrameDecodeError("streamimg.height", f"{header.height}x{header.width} "
                                           f"pixels exceed the limit of {self.max_frame_pixels}")
                if header.encoding == "raw" and len(m.value()) != header.nbytes:
                    decode_payload(header, m.value())  # raises the precise size error here
            except FrameDecodeError as exc:
                taken.dead.append(DeadLetter(m.topic(), m.partition(), m.offset(), m.key(),
                                             m.value(), headers, "decode", str(exc)))
                continue
            taken.frames.append(FrameInfo(m.topic(), m.partition(), m.offset(), m.key(), header))
            taken.payloads.append(m.value())
            kept.append(m)
        return taken

    def drop(self, partitions: set[tuple[str, int]] | None = None) -> None:
        """Forget queued messages (of ``partitions``, or all): they were not committed."""
        self._pending = [] if partitions is None else [
            m for m in self._pending if (m.topic(), m.partition()) not in partitions]
