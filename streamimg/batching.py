"""Batches: frames read from Kafka, as Dask arrays living on the workers.

A :class:`Batch` is what flows through a topology. It holds

- ``frames``: one :class:`FrameInfo` per input frame, in input order;
- ``groups``: the frames as Dask arrays of shape (n, height, width, channels),
  one chunk per frame; frames of different shapes or dtypes go to separate
  groups (``FrameGroup.index`` maps rows back to ``frames``);
- ``values``: per-frame analytics by name, each a list of ``dask.delayed``
  objects aligned with ``frames``;
- ``outputs``: the records sinks asked for, shared by every batch derived from
  the same input so that all of them commit in one transaction;
- ``dead``: messages that failed to decode, bound for the dead-letter topic.

Operators return new batches (:meth:`Batch.map_frames`,
:meth:`Batch.with_values`); nothing computes until the daemon hands the
outputs to Dask. Payloads are scattered to the workers once and decoded there.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from streamimg.codecs.frame import FrameDecodeError, FrameHeader, decode_payload, parse_header


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
class FrameGroup:
    """Frames of one shape and dtype: ``array`` is (n, h, w, c), one chunk per frame.

    ``index[i]`` is the position in ``Batch.frames`` of row ``i``.
    """

    index: tuple[int, ...]
    array: da.Array


@dataclass
class Outputs:
    """Records requested by sinks for one input batch (all commit together).

    ``per_sink`` lists ``(topic, records)``, where ``records[i]`` is a
    ``dask.delayed`` yielding a list of ``(key, value, headers)`` for frame i.
    """

    per_sink: list[tuple[str, list[Any]]] = field(default_factory=list)

    def add(self, topic: str, records: Sequence[Any]) -> None:
        """Register a sink's per-frame records (delayed lists of records)."""
        self.per_sink.append((topic, list(records)))


@dataclass(frozen=True)
class Batch:
    """A batch of frames moving through a topology (see the module docstring)."""

    seq: int
    frames: tuple[FrameInfo, ...]
    groups: tuple[FrameGroup, ...]
    values: dict[str, list[Any]] = field(default_factory=dict)
    outputs: Outputs = field(default_factory=Outputs)
    dead: tuple[DeadLetter, ...] = ()
    created: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.frames)

    def map_frames(self, fn: Callable[..., da.Array], **kwargs: Any) -> Batch:
        """Apply ``fn(array, **kwargs) -> array`` to every group's (n, h, w, c) Dask array.

        ``fn`` must keep the leading frame axis and one chunk per frame.
        """
        groups = tuple(FrameGroup(g.index, fn(g.array, **kwargs)) for g in self.groups)
        return dataclasses.replace(self, groups=groups)

    @functools.cached_property
    def _blocks(self) -> tuple[Any, ...]:
        # Cached: several stages read the same batch's blocks, and each to_delayed()
        # optimises the array graph (~25 ms for an 8-frame 720p batch, measured).
        blocks: list[Any] = [None] * len(self.frames)
        for g in self.groups:
            for i, block in zip(g.index, g.array.to_delayed().ravel(), strict=True):
                blocks[i] = block
        return tuple(blocks)

    def frame_blocks(self) -> list[Any]:
        """One ``dask.delayed`` per frame, in input order, yielding its (1, h, w, c) block."""
        return list(self._blocks)

    def with_values(self, name: str, fn: Callable[..., Any], **kwargs: Any) -> Batch:
        """Add per-frame analytics ``name``: ``fn(frame (h, w, c), **kwargs)`` on the workers.

        Raises
        ------
        ValueError
            If ``name`` is already taken in this batch.
        """
        if name in self.values:
            raise ValueError(f"batch already has values named {name!r}")
        call = dask.delayed(_on_frame, pure=True)
        # Keys are named after the stage (the dashboard and the per-stage timings
        # group tasks by this prefix) and tokenised on the inputs, so two daemons
        # sharing one scheduler never collide.
        values = [call(fn, block, kwargs,
                       dask_key_name=f"{name}-{dask.base.tokenize(fn, block.key, kwargs)}")
                  for block in self.frame_blocks()]
        return dataclasses.replace(self, values={**self.values, name: values})


def _on_frame(fn: Callable[..., Any], block: np.ndarray, kwargs: dict[str, Any]) -> Any:
    return fn(block[0], **kwargs)


def decode_block(payload: bytes, header: FrameHeader) -> np.ndarray:
    """Decode one frame message payload into a (1, h, w, c) block (runs on a Dask worker).

    Raises
    ------
    FrameDecodeError
        If the payload does not match its headers (see ``decode_payload``).
    """
    return decode_payload(header, payload)[None]


def array_block(frame: np.ndarray, header: FrameHeader) -> np.ndarray:
    """An assembled frame (h, w, c) as a (1, h, w, c) block (runs on a Dask worker)."""
    return frame.reshape((1, *header.shape))


@dataclass
class Taken:
    """What a batcher hands the daemon for one batch.

    ``payloads[i]`` is what ``decode(payloads[i], frames[i].header)`` turns into
    frame i's (1, h, w, c) block on a worker. ``offsets`` are the next offsets
    that are safe to commit with this batch, ``{(topic, partition): offset}``.
    ``states`` maps an input partition to the batcher state committed with the
    batch (pixel assembly), or is empty. ``original(i)`` gives frame i's input
    as ``(key, value, headers)``, dead-lettered whole if the frame fails (built
    only then).
    """

    frames: list[FrameInfo]
    payloads: list[Any]
    dead: list[DeadLetter]
    offsets: dict[tuple[str, int], int]
    decode: Callable[[Any, FrameHeader], np.ndarray] = decode_block
    states: dict[int, bytes] = field(default_factory=dict)
    original: Callable[[int], tuple[bytes | None, bytes | None, list]] = lambda i: (None, None, [])


class MessageBatcher:
    """Batches frame messages: a batch closes at ``max_frames`` or ``max_wait_ms``.

    Headers are validated here, on the daemon (microseconds each); a message
    whose headers (or raw payload size) are wrong becomes a dead letter and the
    rest go on. Payloads are decoded later, on the workers.
    """

    def __init__(self, max_frames: int, max_wait_ms: int):
        self.max_frames = max_frames
        self.max_wait_s = max_wait_ms / 1e3
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

    def take(self) -> Taken | None:
        """Close the open batch if it is full or due; None otherwise."""
        if not self._pending or (self.room() > 0 and self.wait_s() > 0):
            return None
        messages, self._pending = self._pending, []
        taken = Taken([], [], [], {})
        kept: list[Any] = []
        taken.original = lambda i: (kept[i].key(), kept[i].value(), list(kept[i].headers() or ()))
        for m in messages:
            tp = (m.topic(), m.partition())
            taken.offsets[tp] = max(taken.offsets.get(tp, -1), m.offset() + 1)
            headers = list(m.headers() or ())
            try:
                header = parse_header(headers)
                if m.value() is None:
                    raise FrameDecodeError("payload", "null value")
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


def build_batch(seq: int, taken: Taken, scatter: Callable[[list], list]) -> Batch:
    """Turn what a batcher took into a :class:`Batch` of Dask arrays.

    Payloads go to the workers with ``scatter`` (``Client.scatter`` with
    ``hash=False``) in one call and are decoded there, so the daemon never
    holds a decoded frame. Frames of one shape and dtype form one group.

    Parameters
    ----------
    seq : int
        Batch sequence number, unique within a daemon run.
    taken : Taken
        Frames, payloads and dead letters from a batcher.
    scatter : callable
        Sends a list of payloads to the workers and returns futures.
    """
    frames = taken.frames
    futures = scatter(taken.payloads) if taken.payloads else []
    by_kind: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        by_kind.setdefault((f.header.shape, f.header.dtype), []).append(i)
    decode = dask.delayed(taken.decode, pure=True)
    groups = []
    for (shape, dtype), index in by_kind.items():
        parts = [
            da.from_delayed(decode(futures[i], frames[i].header,
                                   dask_key_name=f"decode-{dask.base.tokenize(futures[i].key)}"),
                            shape=(1, *shape), dtype=dtype)
            for i in index
        ]
        groups.append(FrameGroup(tuple(index), da.concatenate(parts, axis=0)))
    return Batch(seq=seq, frames=tuple(frames), groups=tuple(groups), dead=tuple(taken.dead))
